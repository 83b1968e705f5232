//! The admin UI's login: one thread that checks `{ username, password }` against the bcrypt
//! hash (tens of milliseconds of CPU each, which a worker must never spend) or a session id a
//! previous login was given, and settles the connection's `ConnectDecision`.
//!
//! A reconnect with a known `sessionId` is accepted at once, without the queue. A password
//! login waits for the thread: at most [`MAX_QUEUED`] in all and [`MAX_PER_ADDRESS`] per client
//! address (the proxy-aware `Handshake::address` the per-address limits use), one more refused
//! at once with `{"message":"too many login attempts"}`, so a flood from one address cannot keep
//! another address's login out. A queued login whose connection left or timed out is skipped,
//! not checked. At most [`MAX_SESSIONS`] session ids are kept (the oldest is forgotten; its UI
//! logs in again with the password), and the hash's cost is capped at load
//! ([`super::MAX_COST`]) so that one check stays in the tens of milliseconds.
//!
//! Must never: run on a worker, keep a password, or queue without bound.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::app::defer::ConnectDecision;

/// Logins waiting for the thread, at most.
pub(crate) const MAX_QUEUED: usize = 64;
/// Logins of one client address waiting for (or in) the thread, at most.
pub(crate) const MAX_PER_ADDRESS: usize = 2;
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
    address: Option<IpAddr>,
    decision: ConnectDecision,
}

/// What the workers' side and the login thread share: the session ids given out, and the
/// logins queued per client address.
#[derive(Default)]
struct Shared {
    sessions: Mutex<Sessions>,
    queued: Mutex<HashMap<Option<IpAddr>, usize>>,
}

impl Shared {
    /// One login of `address` left the queue.
    fn done(&self, address: Option<IpAddr>) {
        let mut q = self.queued.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = q.get_mut(&address) {
            *n -= 1;
            if *n == 0 {
                q.remove(&address);
            }
        }
    }
}

/// Where the admin namespace's middleware hands logins.
#[derive(Clone)]
pub(crate) struct Sender {
    tx: SyncSender<Login>,
    username: Arc<str>,
    shared: Arc<Shared>,
}

fn too_many() -> Value {
    json!({ "message": "too many login attempts" })
}

impl Sender {
    /// Settles at once what needs no bcrypt (a known `sessionId`, a wrong user name, no
    /// password); queues the rest, refusing at once when [`MAX_QUEUED`] already wait or
    /// [`MAX_PER_ADDRESS`] of the same client address (`Handshake::address`, proxy-aware) do.
    pub(crate) fn submit(&self, auth: Option<&Value>, address: Option<IpAddr>, decision: ConnectDecision) {
        match quick_check(&self.shared, &self.username, auth) {
            Some(Verdict::Session) => return decision.accept(),
            Some(_) => return decision.refuse(invalid()),
            None => {}
        }
        {
            let mut q = self.shared.queued.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = q.entry(address).or_insert(0);
            if *n >= MAX_PER_ADDRESS {
                drop(q);
                return decision.refuse(too_many());
            }
            *n += 1;
        }
        match self.tx.try_send(Login { auth: auth.cloned(), address, decision }) {
            Ok(()) => {}
            Err(TrySendError::Full(l)) => {
                self.shared.done(l.address);
                l.decision.refuse(too_many());
            }
            // The server is stopping: dropping the decision refuses it.
            Err(TrySendError::Disconnected(l)) => self.shared.done(l.address),
        }
    }
}

fn invalid() -> Value {
    json!({ "message": "invalid credentials" })
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
        let shared = Arc::new(Shared::default());
        let sender = Sender { tx, username: Arc::from(username.as_str()), shared: shared.clone() };
        let checker = Checker { username, hash, shared };
        let join =
            std::thread::Builder::new().name("shardcast-admin-auth".into()).spawn(move || run(rx, &flag, checker)).expect("spawn the admin UI login thread");
        AuthThread { tx: sender, stop, join }
    }

    pub(crate) fn sender(&self) -> Sender {
        self.tx.clone()
    }

    pub(crate) fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let _ = self.join.join();
    }
}

fn run(rx: Receiver<Login>, stop: &std::sync::atomic::AtomicBool, checker: Checker) {
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) => {
                // A login whose connection left or whose deadline passed is not checked: its
                // verdict would do nothing.
                if l.decision.is_waiting() {
                    match checker.check(l.auth.as_ref()) {
                        Verdict::Session => l.decision.accept(),
                        Verdict::NewSession(id) => l.decision.accept_with_data(EmitFirst { event: "session", args: vec![Value::String(id)] }),
                        Verdict::Invalid => l.decision.refuse(invalid()),
                    }
                } else {
                    l.decision.refuse(invalid());
                }
                checker.shared.done(l.address);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// What can be decided without bcrypt: a known `sessionId` passes (Node's middleware checks it
/// first); a wrong user name or no password string fails. `None`: bcrypt must decide.
fn quick_check(shared: &Shared, username: &str, auth: Option<&Value>) -> Option<Verdict> {
    let field = |k: &str| auth.and_then(|a| a.get(k)).and_then(Value::as_str);
    if let Some(id) = field("sessionId") {
        if shared.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).ids.contains(id) {
            return Some(Verdict::Session);
        }
    }
    (field("username") != Some(username) || field("password").is_none()).then_some(Verdict::Invalid)
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
    shared: Arc<Shared>,
}

impl Checker {
    /// Node's middleware: a known `sessionId` passes; else `username` must match and
    /// `password` match the hash, which gives a new session id.
    fn check(&self, auth: Option<&Value>) -> Verdict {
        if let Some(v) = quick_check(&self.shared, &self.username, auth) {
            return v;
        }
        let field = |k: &str| auth.and_then(|a| a.get(k)).and_then(Value::as_str);
        let Some(password) = field("password") else { return Verdict::Invalid };
        if !bcrypt::verify(password, &self.hash).unwrap_or(false) {
            return Verdict::Invalid;
        }
        let mut raw = [0u8; 8];
        if getrandom::fill(&mut raw).is_err() {
            return Verdict::Invalid;
        }
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        self.shared.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id.clone());
        Verdict::NewSession(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker() -> Checker {
        Checker { username: "admin".into(), hash: bcrypt::hash("s3cret", 4).unwrap(), shared: Arc::default() }
    }

    #[test]
    fn password_then_session_id_and_wrong_ones_refused() {
        let c = checker();
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
