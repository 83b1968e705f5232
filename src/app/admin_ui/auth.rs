//! The admin UI's login: one thread that checks `{ username, password }` against the bcrypt
//! hash (tens of milliseconds of CPU each, which a worker must never spend) or a session id a
//! previous login was given, and settles the connection's `ConnectDecision`.
//!
//! Bounded: at most [`MAX_QUEUED`] logins wait for the thread (one more is refused at once with
//! `{"message":"too many login attempts"}`), and at most [`MAX_SESSIONS`] session ids are kept
//! (the oldest is forgotten; its UI logs in again with the password).
//!
//! Must never: run on a worker, keep a password, or queue without bound.

use std::collections::{HashSet, VecDeque};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::app::defer::ConnectDecision;

/// Logins waiting for the thread, at most.
pub(crate) const MAX_QUEUED: usize = 64;
/// Session ids kept, at most.
pub(crate) const MAX_SESSIONS: usize = 1024;

/// Sent to the client before its CONNECT, when a login succeeded: `session` with its id (Node
/// emits it from the middleware, so it precedes the CONNECT on the wire).
pub(crate) struct EmitFirst {
    /// The event's name and arguments.
    pub(crate) event: &'static str,
    pub(crate) args: Vec<Value>,
}

struct Login {
    auth: Option<Value>,
    decision: ConnectDecision,
}

/// Where the admin namespace's middleware hands logins.
#[derive(Clone)]
pub(crate) struct Sender(SyncSender<Login>);

impl Sender {
    /// Queues a login; refuses at once when [`MAX_QUEUED`] already wait.
    pub(crate) fn submit(&self, auth: Option<&Value>, decision: ConnectDecision) {
        match self.0.try_send(Login { auth: auth.cloned(), decision }) {
            Ok(()) => {}
            Err(TrySendError::Full(l)) => l.decision.refuse(json!({ "message": "too many login attempts" })),
            // The server is stopping: dropping the decision refuses it.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The login thread.
pub(crate) struct AuthThread {
    tx: Sender,
    stop: Arc<std::sync::atomic::AtomicBool>,
    join: std::thread::JoinHandle<()>,
}

impl AuthThread {
    pub(crate) fn spawn(username: String, hash: String) -> AuthThread {
        let (tx, rx) = sync_channel(MAX_QUEUED);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let join = std::thread::Builder::new()
            .name("shardcast-admin-auth".into())
            .spawn(move || run(rx, &flag, Checker { username, hash, sessions: Sessions::default() }))
            .expect("spawn the admin UI login thread");
        AuthThread { tx: Sender(tx), stop, join }
    }

    pub(crate) fn sender(&self) -> Sender {
        self.tx.clone()
    }

    pub(crate) fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let _ = self.join.join();
    }
}

fn run(rx: Receiver<Login>, stop: &std::sync::atomic::AtomicBool, mut checker: Checker) {
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) => match checker.check(l.auth.as_ref()) {
                Verdict::Session => l.decision.accept(),
                Verdict::NewSession(id) => l.decision.accept_with_data(EmitFirst { event: "session", args: vec![Value::String(id)] }),
                Verdict::Invalid => l.decision.refuse(json!({ "message": "invalid credentials" })),
            },
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// A known session id.
    Session,
    /// The password matched: a new session id.
    NewSession(String),
    Invalid,
}

/// Session ids given out, oldest first.
#[derive(Default)]
struct Sessions {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Sessions {
    fn insert(&mut self, id: String) {
        if self.order.len() >= MAX_SESSIONS {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(id.clone());
        self.order.push_back(id);
    }
}

struct Checker {
    username: String,
    hash: String,
    sessions: Sessions,
}

impl Checker {
    /// Node's middleware: a known `sessionId` passes; else `username` must match and
    /// `password` match the hash, which gives a new session id.
    fn check(&mut self, auth: Option<&Value>) -> Verdict {
        let field = |k: &str| auth.and_then(|a| a.get(k)).and_then(Value::as_str);
        if field("sessionId").is_some_and(|s| self.sessions.ids.contains(s)) {
            return Verdict::Session;
        }
        if field("username") != Some(self.username.as_str()) {
            return Verdict::Invalid;
        }
        let Some(password) = field("password") else { return Verdict::Invalid };
        if !bcrypt::verify(password, &self.hash).unwrap_or(false) {
            return Verdict::Invalid;
        }
        let mut raw = [0u8; 8];
        if getrandom::fill(&mut raw).is_err() {
            return Verdict::Invalid;
        }
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        self.sessions.insert(id.clone());
        Verdict::NewSession(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker() -> Checker {
        Checker { username: "admin".into(), hash: bcrypt::hash("s3cret", 4).unwrap(), sessions: Sessions::default() }
    }

    #[test]
    fn password_then_session_id_and_wrong_ones_refused() {
        let mut c = checker();
        assert_eq!(c.check(Some(&json!({"type": "basic", "username": "admin", "password": "nope"}))), Verdict::Invalid);
        assert_eq!(c.check(Some(&json!({"username": "root", "password": "s3cret"}))), Verdict::Invalid);
        assert_eq!(c.check(None), Verdict::Invalid);
        assert_eq!(c.check(Some(&json!({"username": "admin", "password": 5}))), Verdict::Invalid);
        let Verdict::NewSession(id) = c.check(Some(&json!({"type": "basic", "username": "admin", "password": "s3cret"}))) else { panic!("no session") };
        assert_eq!(id.len(), 16);
        assert_eq!(c.check(Some(&json!({"sessionId": id}))), Verdict::Session);
        assert_eq!(c.check(Some(&json!({"sessionId": "0123456789abcdef"}))), Verdict::Invalid);
    }

    #[test]
    fn sessions_are_bounded_oldest_forgotten_first() {
        let mut s = Sessions::default();
        for i in 0..MAX_SESSIONS + 1 {
            s.insert(i.to_string());
        }
        assert_eq!(s.ids.len(), MAX_SESSIONS);
        assert!(!s.ids.contains("0") && s.ids.contains("1") && s.ids.contains(&MAX_SESSIONS.to_string()));
    }
}
