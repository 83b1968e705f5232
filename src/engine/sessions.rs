//! The sessions this worker owns: an arena of [`Entry`]s named by copyable [`SessionId`]s
//! (the string id is looked up once, when an HTTP request names it), one deadline per
//! session updated in place (heartbeat, upgrade, or the grace of a closed polling session),
//! one HTTP deadline per connection, and sending to a session's active transport with the
//! slow-consumer policy. [`Ctx`] is the handler's view of it.
//!
//! Must never: push a timer entry per packet, or keep a session after it is over.

use rustc_hash::FxHashMap as HashMap;
use std::rc::Rc;
use std::time::Instant;

use super::websocket::ws_send;
use super::{ConnState, EngineConfig, SendFailure, SendFlags, Sid, SlowConsumer};
use crate::proto::eio::{CloseReason, PacketType, Session, SharedPacket, Transport};
use crate::rt::arena::{Arena, Handle};
use crate::rt::timer::Deadlines;
use crate::rt::{ConnId, Io, SendError};

/// A session's handle within its worker.
pub type SessionId = Handle;

/// One session.
pub(super) struct Entry {
    /// The session id.
    pub sid: Sid,
    pub session: Session,
    pub ws: Option<ConnId>,
    pub probe: Option<ConnId>,
    pub poll: Option<ConnId>,
    /// The connection whose POST for this session has its head in and its body still coming.
    pub posting: Option<ConnId>,
    pub outbox: Vec<SharedPacket>,
    pub outbox_bytes: usize,
    /// Closed; kept only until a last poll collects the outbox (or the grace ends).
    pub closing: bool,
    /// Closed while packets were queued: the close packet follows once they are collected.
    pub close_after_drain: bool,
    /// A closed polling session is dropped at this instant if nobody collected it.
    pub grace_until: Option<Instant>,
}

/// Everything of the engine except the handler, so handler callbacks can borrow it.
pub struct Core {
    pub(super) cfg: Rc<EngineConfig>,
    pub(super) sessions: Arena<Entry>,
    /// String id to handle. Keyed by server-chosen random ids: clients can look up but never
    /// insert, so an unkeyed fast hash is safe here.
    pub(super) by_sid: HashMap<Sid, SessionId>,
    pub(super) dirty_polls: Vec<SessionId>,
    pub(super) closing: Vec<(SessionId, CloseReason)>,
    /// One deadline per session, keyed by its slot.
    pub(super) session_due: Deadlines,
    /// One deadline per connection waiting for an HTTP request, keyed by its slot.
    pub(super) http_due: Deadlines,
    pub(super) shutting_down: bool,
    /// The request being answered and what it asks of its response (HEAD, HTTP/1.0
    /// keep-alive); applied by `respond` to that connection's responses only.
    pub(super) reply: Option<(ConnId, crate::proto::http::response::Reply)>,
    /// The session each connection with a POST body in progress posts to (at most one entry
    /// per connection), so a connection that goes away releases it.
    pub(super) posts: HashMap<ConnId, SessionId>,
    /// Connections counted in the per-address limits (released when they close, wherever).
    pub(super) counted: rustc_hash::FxHashSet<ConnId>,
    pub(super) stats: super::EngineStats,
    /// What this worker's sessions sent and received, and what was dropped: plain integers,
    /// read when the worker is scraped.
    pub(super) counters: Counters,
}

/// The engine's counters of one worker (see `rt::metrics`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Message packets (text or binary) delivered to the handler.
    pub packets_in: u64,
    /// Message packets the handler queued to a session.
    pub packets_out: u64,
    /// Volatile packets dropped because the client could not take them.
    pub dropped_volatile: u64,
    /// Packets that did not fit a slow consumer's queue (its session was closed).
    pub dropped_slow_consumer: u64,
}

impl Core {
    pub(super) fn new(cfg: Rc<EngineConfig>) -> Core {
        Core {
            cfg,
            sessions: Arena::default(),
            by_sid: HashMap::default(),
            dirty_polls: Vec::new(),
            closing: Vec::new(),
            session_due: Deadlines::default(),
            http_due: Deadlines::default(),
            shutting_down: false,
            reply: None,
            posts: HashMap::default(),
            counted: Default::default(),
            stats: Default::default(),
            counters: Counters::default(),
        }
    }

    /// A connection counted in the per-address limits is gone (closed, or handed over: then
    /// the adopting worker releases it, see `adopt_counted`).
    pub(super) fn release_address<M>(&mut self, io: &Io<ConnState, M>, id: ConnId) {
        if self.counted.remove(&id) {
            if let (Some(l), Some(p)) = (&self.cfg.address_limits, io.peer_addr(id)) {
                l.release(p.ip());
            }
        }
    }

    /// The handle of a session by its string id.
    pub(super) fn find(&self, sid: &str) -> Option<SessionId> {
        self.by_sid.get(sid).copied()
    }

    /// Opens a session: its entry, its handle, its first deadline.
    pub(super) fn insert(&mut self, sid: Sid, session: Session) -> SessionId {
        tracing::debug!(sid = &*sid, transport = session.transport().name(), "session opened");
        let h = self.sessions.insert(Entry {
            sid: sid.clone(),
            session,
            ws: None,
            probe: None,
            poll: None,
            posting: None,
            outbox: Vec::new(),
            outbox_bytes: 0,
            closing: false,
            close_after_drain: false,
            grace_until: None,
        });
        self.by_sid.insert(sid, h);
        self.rearm(h);
        h
    }

    /// Forgets a session and its deadline.
    pub(super) fn remove(&mut self, h: SessionId) {
        if let Some(e) = self.sessions.remove(h) {
            self.by_sid.remove(&e.sid);
            self.session_due.clear(h.idx);
        }
    }

    /// Moves the session's one deadline to what its state says now.
    pub(super) fn rearm(&mut self, h: SessionId) {
        let Some(e) = self.sessions.get(h) else {
            return;
        };
        let at = if e.closing { e.grace_until } else { e.session.poll_timeout() };
        match at {
            Some(t) => self.session_due.set(h.idx, t),
            None => self.session_due.clear(h.idx),
        }
    }

    /// The connection `id` is gone: a POST it was reading no longer holds its session.
    /// Returns that session when the POST was still its session's (its body cut short).
    pub(super) fn forget_post(&mut self, id: ConnId) -> Option<SessionId> {
        let h = self.posts.remove(&id)?;
        let e = self.sessions.get_mut(h)?;
        if e.posting != Some(id) {
            return None;
        }
        e.posting = None;
        Some(h)
    }

    /// The connection `id` starts waiting for its next HTTP request now.
    pub(super) fn wait_http(&mut self, id: ConnId, now: Instant) {
        self.http_due.set(id.idx, now + self.cfg.http_timeout);
    }

    /// The connection `id` is not waiting for a request (it is parked, upgraded, gone).
    pub(super) fn stop_http_wait(&mut self, id: ConnId) {
        self.http_due.clear(id.idx);
    }

    pub(super) fn send<M>(&mut self, io: &mut Io<ConnState, M>, h: SessionId, p: &SharedPacket, flags: SendFlags) -> Result<(), SendFailure> {
        let r = self.try_send(io, h, p, flags);
        match r {
            Err(SendFailure::Dropped) => self.counters.dropped_volatile += 1,
            Err(SendFailure::SlowConsumer) => self.counters.dropped_slow_consumer += 1,
            _ => {}
        }
        r
    }

    fn try_send<M>(&mut self, io: &mut Io<ConnState, M>, h: SessionId, p: &SharedPacket, flags: SendFlags) -> Result<(), SendFailure> {
        let limit = self.cfg.max_send_buffer;
        let policy = self.cfg.slow_consumer;
        let e = self.sessions.get_mut(h).ok_or(SendFailure::NoSession)?;
        if e.closing {
            return Err(SendFailure::NoSession);
        }
        if e.session.transport() == Transport::WebSocket {
            let conn = e.ws.expect("a WebSocket session has its connection");
            if flags.volatile && io.queued_bytes(conn) >= VOLATILE_BACKLOG {
                return Err(SendFailure::Dropped);
            }
            match ws_send(io, conn, p, flags.compress) {
                Ok(()) => return Ok(()),
                Err(SendError::Gone) => return Err(SendFailure::NoSession),
                Err(SendError::Overflow) => {}
            }
        } else {
            if flags.volatile && e.poll.is_none() {
                return Err(SendFailure::Dropped);
            }
            let len = p.ws_frame().len();
            if e.outbox_bytes + len <= limit || e.outbox.is_empty() {
                e.outbox_bytes += len;
                e.outbox.push(p.clone());
                if e.poll.is_some() {
                    self.dirty_polls.push(h);
                }
                return Ok(());
            }
        }
        // The client's buffer is full.
        if flags.volatile && policy == SlowConsumer::DropVolatile {
            return Err(SendFailure::Dropped);
        }
        tracing::debug!(sid = &*e.sid, "slow consumer: closing its session");
        self.closing.push((h, CloseReason::TransportError));
        Err(SendFailure::SlowConsumer)
    }
}

/// A volatile packet is dropped for a WebSocket with at least this many bytes waiting.
const VOLATILE_BACKLOG: usize = 64 * 1024;

/// The handler's view: send to sessions of this worker, close them, post mail.
pub struct Ctx<'a, M> {
    pub(super) core: &'a mut Core,
    pub(super) io: &'a mut Io<ConnState, M>,
}

impl<M> Ctx<'_, M> {
    /// The index of this worker.
    pub fn worker(&self) -> usize {
        self.io.worker()
    }

    /// How many workers the server runs.
    pub fn workers(&self) -> usize {
        self.io.workers()
    }

    /// The time at the start of this loop pass.
    pub fn now(&self) -> Instant {
        self.io.now()
    }

    /// Posts mail to a worker's handler (this one included).
    pub fn post(&self, worker: usize, mail: M) {
        self.io.post(worker, mail)
    }

    /// This worker's mailbox, for user code on another thread to post to later.
    pub fn remote(&self) -> crate::rt::Remote<M> {
        self.io.remote()
    }

    /// Whether a session is open on this worker.
    pub fn has_session(&self, session: SessionId) -> bool {
        self.core.sessions.get(session).is_some_and(|e| !e.closing)
    }

    /// The handle of a session of this worker by its string id.
    pub fn find(&self, sid: &str) -> Option<SessionId> {
        self.core.find(sid)
    }

    /// The string id of a session.
    pub fn sid(&self, session: SessionId) -> Option<&Sid> {
        self.core.sessions.get(session).map(|e| &e.sid)
    }

    /// The current transport of a session of this worker.
    pub fn transport(&self, session: SessionId) -> Option<crate::proto::eio::Transport> {
        self.core.sessions.get(session).map(|e| e.session.transport())
    }

    /// Sends one packet to a session.
    pub fn send(&mut self, session: SessionId, p: &SharedPacket, flags: SendFlags) -> Result<(), SendFailure> {
        self.core.send(self.io, session, p, flags)?;
        self.core.counters.packets_out += 1;
        Ok(())
    }

    /// Sends one message on a raw WebSocket (compressed when it negotiated deflate).
    pub fn send_raw(&mut self, conn: super::RawConn, p: &SharedPacket) -> Result<(), SendFailure> {
        ws_send(self.io, conn.0, p, true).map_err(|_| SendFailure::NoSession)?;
        self.core.counters.packets_out += 1;
        Ok(())
    }

    /// Closes a session ("forced close"); `Handler::on_close` follows.
    pub fn close(&mut self, session: SessionId) {
        if self.core.sessions.get(session).is_some() {
            self.core.closing.push((session, CloseReason::ForcedClose));
        }
    }
}

static PING: std::sync::OnceLock<SharedPacket> = std::sync::OnceLock::new();
static NOOP: std::sync::OnceLock<SharedPacket> = std::sync::OnceLock::new();
static CLOSE: std::sync::OnceLock<SharedPacket> = std::sync::OnceLock::new();

pub(super) fn ping() -> &'static SharedPacket {
    PING.get_or_init(|| SharedPacket::text(PacketType::Ping, b""))
}
pub(super) fn noop() -> &'static SharedPacket {
    NOOP.get_or_init(|| SharedPacket::text(PacketType::Noop, b""))
}
pub(super) fn close_packet() -> &'static SharedPacket {
    CLOSE.get_or_init(|| SharedPacket::text(PacketType::Close, b""))
}
