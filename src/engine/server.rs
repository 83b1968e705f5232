//! The Engine.IO service of one worker: routes HTTP requests (handshake, poll, post, upgrade,
//! CORS preflight, errors), runs WebSocket connections through the codec, keeps the sessions
//! this worker owns, their heartbeats and upgrades, and hands requests for sessions owned by
//! another worker to that worker (socket and bytes already read).
//!
//! Must never: block, or keep a session's memory once the session is over.

use rustc_hash::FxHashMap as HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{sid, EngineConfig, Handler, OpenInfo, SendFailure, SendFlags, Sid, SlowConsumer};
use crate::proto::eio::{self, open::Handshake, Action, CloseReason, Packet, PacketType, Session, SharedPacket, Transport, Verified};
use crate::proto::http::{self, response, CorsDecision, Method, Request};
use crate::proto::ws::{self, close::code, deflate::DeflatePolicy, handshake, CodecConfig, Decoded, Message, OpCode, ServerCodec};
use crate::rt::timer::Fifo;
use crate::rt::{ConnId, Io, SendError, Service};

/// Per-connection state.
pub enum ConnState {
    /// Reading HTTP requests; `since` is when it last started waiting for one (a connection
    /// that does not complete a request within the HTTP timeout is closed: idle keep-alive
    /// connections and slowloris heads alike).
    Http {
        /// When the connection started waiting for its next request.
        since: Instant,
    },
    /// Over `--max-connections`: answered 503 and closed.
    Refused,
    /// A long-polling GET parked until its session has something to send.
    Poll {
        /// The session it polls for.
        sid: Sid,
        /// CORS header lines for the response.
        headers: String,
        /// Content coding for the response, if the client accepts one.
        encoding: Option<response::Encoding>,
        /// Whether the connection stays open after the response.
        keep_alive: bool,
    },
    /// A WebSocket. `inner` is taken out while its bytes are being processed.
    Ws {
        /// Whether permessage-deflate was negotiated.
        compress: bool,
        /// The codec and role; `None` while its bytes are being processed.
        inner: Option<Box<WsConn>>,
    },
}

/// A WebSocket connection: its codec and what it carries.
pub struct WsConn {
    codec: ServerCodec,
    role: WsRole,
}

#[derive(Clone)]
enum WsRole {
    /// The session's transport.
    Session(Sid),
    /// Probing an upgrade of a polling session.
    Probe(Sid),
    /// Raw WebSocket echo (`shardcast echo`, any other path).
    Echo,
}

struct Entry {
    /// The session id (the map's key), so one lookup gives both.
    sid: Sid,
    session: Session,
    ws: Option<ConnId>,
    probe: Option<ConnId>,
    poll: Option<ConnId>,
    outbox: Vec<SharedPacket>,
    outbox_bytes: usize,
    /// Closed; kept only until a last poll collects the outbox (or the grace period ends).
    closing: bool,
    /// Closed while packets were queued: the close packet follows once they are collected.
    close_after_drain: bool,
}

/// Everything of the engine except the handler, so handler callbacks can borrow it.
pub struct Core {
    cfg: Rc<EngineConfig>,
    sessions: HashMap<Sid, Entry>,
    dirty_polls: Vec<Sid>,
    closing: Vec<(Sid, CloseReason)>,
    deferred: Vec<(ConnId, SharedPacket, bool)>,
    ping_due: Fifo<Sid>,
    pong_due: Fifo<Sid>,
    upgrade_due: Fifo<Sid>,
    grace_due: Fifo<Sid>,
    /// Connections waiting for an HTTP request, with when they started waiting.
    http_due: Fifo<(ConnId, Instant)>,
    conns_total: Arc<AtomicUsize>,
    shutting_down: bool,
}

/// The handler's view: send to sessions of this worker, close them, post mail.
pub struct Ctx<'a, M> {
    core: &'a mut Core,
    io: &'a mut Io<ConnState, M>,
}

static PING: std::sync::OnceLock<SharedPacket> = std::sync::OnceLock::new();
static NOOP: std::sync::OnceLock<SharedPacket> = std::sync::OnceLock::new();
static CLOSE: std::sync::OnceLock<SharedPacket> = std::sync::OnceLock::new();

fn ping() -> &'static SharedPacket {
    PING.get_or_init(|| SharedPacket::text(PacketType::Ping, b""))
}
fn noop() -> &'static SharedPacket {
    NOOP.get_or_init(|| SharedPacket::text(PacketType::Noop, b""))
}
fn close_packet() -> &'static SharedPacket {
    CLOSE.get_or_init(|| SharedPacket::text(PacketType::Close, b""))
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

    /// Whether a session is open on this worker.
    pub fn has_session(&self, sid: &str) -> bool {
        self.core.sessions.get(sid).is_some_and(|e| !e.closing)
    }

    /// Sends one packet to a session.
    pub fn send(&mut self, sid: &str, p: &SharedPacket, flags: SendFlags) -> Result<(), SendFailure> {
        self.core.send(self.io, sid, p, flags)
    }

    /// Closes a session ("forced close"); `Handler::on_close` follows.
    pub fn close(&mut self, sid: &str) {
        if let Some((k, _)) = self.core.sessions.get_key_value(sid) {
            self.core.closing.push((k.clone(), CloseReason::ForcedClose));
        }
    }
}

impl Core {
    fn send<M>(&mut self, io: &mut Io<ConnState, M>, sid: &str, p: &SharedPacket, flags: SendFlags) -> Result<(), SendFailure> {
        let limit = self.cfg.max_send_buffer;
        let policy = self.cfg.slow_consumer;
        let e = self.sessions.get_mut(sid).ok_or(SendFailure::NoSession)?;
        if e.closing {
            return Err(SendFailure::NoSession);
        }
        if e.session.transport() == Transport::WebSocket {
            let conn = e.ws.expect("a WebSocket session has its connection");
            if flags.volatile && io.queued_bytes(conn) >= VOLATILE_BACKLOG {
                return Err(SendFailure::Dropped);
            }
            match ws_send(io, &mut self.deferred, conn, p, flags.compress) {
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
                    self.dirty_polls.push(e.sid.clone());
                }
                return Ok(());
            }
        }
        // The client's buffer is full.
        if flags.volatile && policy == SlowConsumer::DropVolatile {
            return Err(SendFailure::Dropped);
        }
        tracing::debug!(sid, "slow consumer: closing its session");
        self.closing.push((e.sid.clone(), CloseReason::TransportError));
        Err(SendFailure::SlowConsumer)
    }

    /// Sends to the session's active transport without the slow-consumer bookkeeping (control
    /// packets of the engine itself).
    fn send_control<M>(&mut self, io: &mut Io<ConnState, M>, sid: &Sid, p: &SharedPacket) {
        let _ = self.send(io, sid, p, SendFlags::default());
    }
}

/// A volatile packet is dropped for a WebSocket with at least this many bytes waiting.
const VOLATILE_BACKLOG: usize = 64 * 1024;

/// Sends one packet on a WebSocket connection: the shared frame, or a per-connection
/// compressed one when deflate applies (and `compress` allows it). While the connection's codec is busy decoding (the
/// handler answers from inside it), the packet waits in `deferred`, in order.
fn ws_send<M>(io: &mut Io<ConnState, M>, deferred: &mut Vec<(ConnId, SharedPacket, bool)>, conn: ConnId, p: &SharedPacket, compress: bool) -> Result<(), SendError> {
    match io.state(conn) {
        Some(ConnState::Ws { compress: false, .. }) => io.send(conn, p.ws_frame().clone()),
        Some(ConnState::Ws { .. }) if !compress => io.send(conn, p.ws_frame().clone()),
        Some(ConnState::Ws { compress: true, inner: None }) => {
            deferred.push((conn, p.clone(), compress));
            Ok(())
        }
        Some(ConnState::Ws { compress: true, inner: Some(w) }) => {
            let (payload, binary) = p.ws_payload();
            if w.codec.compresses(payload.len()) {
                let mut out = Vec::with_capacity(payload.len() / 2 + 16);
                w.codec.encode_message(binary, payload, &mut out);
                io.send(conn, Bytes::from(out))
            } else {
                io.send(conn, p.ws_frame().clone())
            }
        }
        _ => Err(SendError::Gone),
    }
}

fn open_info(req: &Request, transport: Transport) -> OpenInfo<'_> {
    OpenInfo { query: req.target.split_once('?').map_or("", |(_, q)| q), origin: req.origin.as_deref(), transport, headers: &req.headers }
}

/// The Engine.IO service of one worker, with handler `H` on top.
pub struct EioServer<H: Handler> {
    core: Core,
    handler: H,
}

impl<H: Handler> EioServer<H> {
    /// `conns_total` counts connections across all workers (for `--max-connections`).
    pub fn new(cfg: Rc<EngineConfig>, conns_total: Arc<AtomicUsize>, handler: H) -> Self {
        EioServer {
            core: Core {
                cfg,
                sessions: HashMap::default(),
                dirty_polls: Vec::new(),
                closing: Vec::new(),
                deferred: Vec::new(),
                ping_due: Fifo::default(),
                pong_due: Fifo::default(),
                upgrade_due: Fifo::default(),
                grace_due: Fifo::default(),
                http_due: Fifo::default(),
                conns_total,
                shutting_down: false,
            },
            handler,
        }
    }

    /// Sessions open on this worker (for tests and metrics).
    pub fn session_count(&self) -> usize {
        self.core.sessions.len()
    }

    fn ctx<'a>(core: &'a mut Core, io: &'a mut Io<ConnState, H::Mail>) -> Ctx<'a, H::Mail> {
        Ctx { core, io }
    }

    // ---------------------------------------------------------------- HTTP

    fn http(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, data: &mut [u8]) -> usize {
        let mut pos = 0;
        loop {
            match io.state(id) {
                Some(ConnState::Http { .. }) => {}
                Some(ConnState::Ws { .. }) => return pos + self.ws_data(io, id, &mut data[pos..]),
                _ => return pos,
            }
            let req = match http::parse_request(&data[pos..], self.core.cfg.max_payload) {
                Ok(None) => return pos,
                Ok(Some(r)) => r,
                Err(e) => {
                    let _ = io.send(id, response::error(e.status(), "", &e.to_string(), false).into());
                    io.close_after_flush(id);
                    return data.len();
                }
            };
            let total = req.head_len + req.content_length;
            if data.len() - pos < total {
                return pos;
            }
            // A request for a session of another worker goes to that worker, bytes and all.
            if req.path() == self.core.cfg.path {
                if let Some(owner) = eio::parse_query(&req.target).sid.and_then(sid::owner) {
                    if owner != io.worker() && owner < io.workers() {
                        io.handoff(id, owner);
                        return pos;
                    }
                }
            }
            let body = &mut data[pos + req.head_len..pos + total];
            self.request(io, id, &req, body);
            pos += total;
            if !req.keep_alive {
                if matches!(io.state(id), Some(ConnState::Http { .. })) {
                    io.close_after_flush(id);
                }
                return data.len();
            }
            // A request completed: the wait for the next one starts now.
            self.wait_http(io, id);
        }
    }

    fn respond(io: &mut Io<ConnState, H::Mail>, id: ConnId, bytes: Vec<u8>, keep_alive: bool) {
        let _ = io.send(id, Bytes::from(bytes));
        if !keep_alive {
            io.close_after_flush(id);
        }
    }

    fn request(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, req: &Request, body: &mut [u8]) {
        let cfg = self.core.cfg.clone();
        let ka = req.keep_alive;
        if req.path() != cfg.path {
            if cfg.raw_ws_echo && req.upgrade.is_some() {
                return self.upgrade_echo(io, id, req);
            }
            return Self::respond(io, id, response::error(404, "", "Not Found", ka), ka);
        }
        let cors = match cfg.cors.decide(req.origin.as_deref()) {
            CorsDecision::Allowed(h) => h,
            CorsDecision::Rejected => {
                return Self::respond(io, id, response::error(400, "", http::cors::REJECTED_BODY, ka), ka);
            }
        };
        if req.method == Method::Options {
            let mut h = cors;
            h.push_str(&cfg.cors.preflight_headers(req.access_control_request_headers.as_deref()));
            return Self::respond(io, id, response::build(204, &h, None, b"", ka), ka);
        }
        let query = eio::parse_query(&req.target);
        let sessions = &self.core.sessions;
        // A closed polling session still answers polls until its last packets are collected.
        let collecting = req.method == Method::Get && req.upgrade.is_none();
        let verified = eio::verify(&query, req.method.as_str(), req.upgrade.is_some(), &cfg.transports, |s| {
            sessions.get(s).filter(|e| !e.closing || (collecting && !e.outbox.is_empty())).map(|e| e.session.transport())
        });
        let verified = match verified {
            Ok(v) => v,
            Err(e) => {
                let resp = response::build(e.http_status(), &cors, Some("application/json"), e.body().as_bytes(), ka);
                return Self::respond(io, id, resp, ka);
            }
        };
        match verified {
            Verified::Handshake(Transport::Polling) => self.handshake_polling(io, id, req, &cors),
            Verified::Handshake(Transport::WebSocket) => self.handshake_ws(io, id, req, None),
            Verified::Session { sid, transport: Transport::WebSocket } => {
                let sid: Sid = self.core.sessions.get_key_value(sid).expect("verified").0.clone();
                self.handshake_ws(io, id, req, Some(sid))
            }
            Verified::Session { sid, transport: Transport::Polling } => {
                let sid: Sid = self.core.sessions.get_key_value(sid).expect("verified").0.clone();
                match req.method {
                    Method::Get => self.poll(io, id, req, sid, cors),
                    Method::Post => self.post(io, id, req, sid, body, &cors),
                    _ => {
                        let e = eio::EioError::BadRequest;
                        Self::respond(io, id, response::build(400, &cors, Some("application/json"), e.body().as_bytes(), ka), ka)
                    }
                }
            }
        }
    }

    fn new_session(&mut self, io: &mut Io<ConnState, H::Mail>, transport: Transport) -> (Sid, Vec<u8>) {
        let cfg = &self.core.cfg;
        let sid: Sid = Rc::from(sid::generate(io.worker()));
        let upgrades: &[&str] = if transport == Transport::Polling && cfg.transports.contains(&Transport::WebSocket) {
            &["websocket"]
        } else {
            &[]
        };
        let open = Handshake {
            sid: &sid,
            upgrades,
            ping_interval: cfg.session.ping_interval.as_millis() as u64,
            ping_timeout: cfg.session.ping_timeout.as_millis() as u64,
            max_payload: cfg.max_payload as u64,
        }
        .encode();
        let now = io.now();
        let session = Session::new(cfg.session, transport, now);
        self.core.ping_due.push(now + cfg.session.ping_interval, sid.clone());
        self.core.sessions.insert(
            sid.clone(),
            Entry { sid: sid.clone(), session, ws: None, probe: None, poll: None, outbox: Vec::new(), outbox_bytes: 0, closing: false, close_after_drain: false },
        );
        (sid, open)
    }

    fn cookie_header(&self, sid: &str) -> String {
        match &self.core.cfg.cookie {
            Some(name) => format!("Set-Cookie: {name}={sid}; Path=/; HttpOnly; SameSite=Lax\r\n"),
            None => String::new(),
        }
    }

    fn handshake_polling(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, req: &Request, cors: &str) {
        let (sid, open) = self.new_session(io, Transport::Polling);
        let headers = format!("{cors}{}", self.cookie_header(&sid));
        let resp = response::build(200, &headers, Some("text/plain; charset=UTF-8"), &open, req.keep_alive);
        Self::respond(io, id, resp, req.keep_alive);
        let info = open_info(req, Transport::Polling);
        let mut ctx = Self::ctx(&mut self.core, io);
        self.handler.on_open(&mut ctx, &sid, &info);
        self.finish(io);
    }

    /// Answers a WebSocket upgrade with 101 (or the handshake's refusal) and returns the codec.
    fn accept_ws(&self, io: &mut Io<ConnState, H::Mail>, id: ConnId, req: &Request, extra: &str) -> Option<ServerCodec> {
        let up = match req.upgrade.as_ref().expect("an upgrade request") {
            Ok(u) => u,
            Err(e) => {
                let _ = io.send(id, Bytes::from(e.response()));
                io.close_after_flush(id);
                return None;
            }
        };
        let v = handshake::UpgradeRequest {
            key: &up.key,
            protocols: up.protocols.iter().map(String::as_str).collect(),
            extensions: up.extensions.iter().map(String::as_str).collect(),
        };
        let policy = DeflatePolicy::default();
        let accepted = handshake::accept(&v, |_| None, self.core.cfg.websocket_compression.then_some(&policy), extra);
        let _ = io.send(id, Bytes::from(accepted.response));
        Some(ServerCodec::new(CodecConfig {
            max_message_size: self.core.cfg.max_payload,
            deflate: accepted.deflate,
            compress_threshold: 1024,
        }))
    }

    fn set_ws(io: &mut Io<ConnState, H::Mail>, id: ConnId, codec: ServerCodec, role: WsRole) {
        if let Some(st) = io.state(id) {
            *st = ConnState::Ws { compress: codec.config().deflate.is_some(), inner: Some(Box::new(WsConn { codec, role })) };
        }
    }

    fn handshake_ws(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, req: &Request, existing: Option<Sid>) {
        let now = io.now();
        match existing {
            None => {
                let Some(codec) = self.accept_ws(io, id, req, "") else { return };
                let (sid, open) = self.new_session(io, Transport::WebSocket);
                Self::set_ws(io, id, codec, WsRole::Session(sid.clone()));
                let e = self.core.sessions.get_mut(&sid).expect("just inserted");
                e.ws = Some(id);
                let _ = ws_send(io, &mut self.core.deferred, id, &SharedPacket::raw_text(&open), true);
                let info = open_info(req, Transport::WebSocket);
                let mut ctx = Self::ctx(&mut self.core, io);
                self.handler.on_open(&mut ctx, &sid, &info);
                self.finish(io);
            }
            Some(sid) => {
                let e = self.core.sessions.get_mut(&sid).expect("verified");
                if !e.session.begin_upgrade(now) {
                    let err = eio::EioError::BadRequest;
                    let resp = response::build(400, "", Some("application/json"), err.body().as_bytes(), false);
                    return Self::respond(io, id, resp, false);
                }
                e.probe = Some(id);
                self.core.upgrade_due.push(now + self.core.cfg.session.upgrade_timeout, sid.clone());
                let Some(codec) = self.accept_ws(io, id, req, "") else {
                    let e = self.core.sessions.get_mut(&sid).expect("verified");
                    e.session.abort_upgrade();
                    e.probe = None;
                    return;
                };
                Self::set_ws(io, id, codec, WsRole::Probe(sid));
            }
        }
    }

    fn upgrade_echo(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, req: &Request) {
        if let Some(codec) = self.accept_ws(io, id, req, "") {
            Self::set_ws(io, id, codec, WsRole::Echo);
        }
    }

    fn poll(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, req: &Request, sid: Sid, cors: String) {
        let e = self.core.sessions.get_mut(&sid).expect("verified");
        if e.poll.is_some() {
            // A second concurrent GET: the reference server errors the session.
            Self::respond(io, id, response::error(400, &cors, "overlap from client", req.keep_alive), req.keep_alive);
            self.core.closing.push((sid, CloseReason::TransportError));
            self.finish(io);
            return;
        }
        let threshold = self.core.cfg.http_compression_threshold;
        let encoding = threshold.and_then(|_| response::choose_encoding(req.accept_encoding.as_deref()));
        if let Some(st) = io.state(id) {
            *st = ConnState::Poll { sid: sid.clone(), headers: cors, encoding, keep_alive: req.keep_alive };
        }
        e.poll = Some(id);
        if e.session.is_upgrading() {
            // The client is pausing polling: answer at once.
            let mut packets = std::mem::take(&mut e.outbox);
            e.outbox_bytes = 0;
            packets.push(noop().clone());
            e.poll = None;
            self.answer_poll(io, id, packets);
        } else if !e.outbox.is_empty() {
            self.core.dirty_polls.push(sid);
        }
    }

    fn post(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, req: &Request, sid: Sid, body: &mut [u8], cors: &str) {
        let ka = req.keep_alive;
        let packets = match eio::decode_payload(body, self.core.cfg.max_payload) {
            Ok(p) => p,
            Err(err) => {
                Self::respond(io, id, response::error(err.http_status(), cors, &err.to_string(), ka), ka);
                self.core.closing.push((sid, CloseReason::ParseError));
                self.finish(io);
                return;
            }
        };
        Self::respond(io, id, response::build(200, cors, Some("text/html"), b"ok", ka), ka);
        for p in packets {
            self.packet(io, &sid, Transport::Polling, p);
        }
        self.finish(io);
    }

    // ---------------------------------------------------------------- sessions

    /// Feeds one Engine.IO packet that arrived over `via` to its session.
    fn packet(&mut self, io: &mut Io<ConnState, H::Mail>, sid: &Sid, via: Transport, p: Packet<'_>) {
        let now = io.now();
        let Some(e) = self.core.sessions.get_mut(sid) else { return };
        let (action, message, binary) = match p {
            Packet::Message(m) => (e.session.handle_packet(now, via, PacketType::Message, b""), Some(m), None),
            Packet::Binary(b) => (e.session.handle_binary(via), None, Some(b)),
            Packet::Ping(d) => (e.session.handle_packet(now, via, PacketType::Ping, d), None, None),
            Packet::Pong(d) => {
                let a = e.session.handle_packet(now, via, PacketType::Pong, d);
                if let Some(t) = e.session.poll_timeout() {
                    self.core.ping_due.push(t, sid.clone());
                }
                (a, None, None)
            }
            Packet::Open(_) => (e.session.handle_packet(now, via, PacketType::Open, b""), None, None),
            Packet::Close => (e.session.handle_packet(now, via, PacketType::Close, b""), None, None),
            Packet::Upgrade => (e.session.handle_packet(now, via, PacketType::Upgrade, b""), None, None),
            Packet::Noop => (e.session.handle_packet(now, via, PacketType::Noop, b""), None, None),
        };
        match action {
            Action::Deliver => {
                let mut ctx = Self::ctx(&mut self.core, io);
                if let Some(m) = message {
                    self.handler.on_message(&mut ctx, sid, m);
                } else if let Some(b) = binary {
                    self.handler.on_binary(&mut ctx, sid, Bytes::from(b));
                }
            }
            other => self.apply(io, sid, other),
        }
    }

    fn apply(&mut self, io: &mut Io<ConnState, H::Mail>, sid: &Sid, action: Action) {
        let now = io.now();
        let Some(e) = self.core.sessions.get_mut(sid) else { return };
        match action {
            Action::None | Action::Deliver => {}
            Action::SendPing => {
                self.core.pong_due.push(now + self.core.cfg.session.ping_timeout, sid.clone());
                self.core.send_control(io, sid, ping());
            }
            Action::ProbeAccepted => {
                if let Some(probe) = e.probe {
                    let pong = SharedPacket::text(PacketType::Pong, b"probe");
                    let _ = ws_send(io, &mut self.core.deferred, probe, &pong, true);
                }
                // Release a pending poll (now, or as soon as one arrives) so the client can
                // pause polling and finish the upgrade. The noop never enters the outbox: it
                // is for the polling transport only.
                if let Some(poll) = e.poll.take() {
                    let mut packets = std::mem::take(&mut e.outbox);
                    e.outbox_bytes = 0;
                    packets.push(noop().clone());
                    self.answer_poll(io, poll, packets);
                }
            }
            Action::Upgraded => {
                // The probe's role becomes Session in `sync_role`, once its packet is handled.
                let ws = e.probe.take().expect("upgraded from a probe");
                e.ws = Some(ws);
                let outbox = std::mem::take(&mut e.outbox);
                e.outbox_bytes = 0;
                let parked = e.poll.take();
                for p in &outbox {
                    let _ = ws_send(io, &mut self.core.deferred, ws, p, true);
                }
                if let Some(poll) = parked {
                    self.answer_poll(io, poll, vec![noop().clone()]);
                }
            }
            Action::AbortUpgrade => {
                if let Some(probe) = e.probe.take() {
                    let _ = io.send(probe, Bytes::from(ws::codec::encode_close(code::NORMAL, "")));
                    io.close_after_flush(probe);
                }
            }
            Action::Close(reason) => self.core.closing.push((sid.clone(), reason)),
        }
    }

    /// Processes queued session closes: transports are closed, the handler is told. Loops,
    /// since the handler may close more sessions.
    fn finish(&mut self, io: &mut Io<ConnState, H::Mail>) {
        while let Some((sid, reason)) = self.core.closing.pop() {
            let Some(e) = self.core.sessions.get_mut(&sid) else { continue };
            if e.closing {
                continue;
            }
            e.closing = true;
            e.session.close_with(reason);
            if let Some(probe) = e.probe.take() {
                io.close(probe);
            }
            let ws = e.ws.take();
            if let Some(ws) = ws {
                if matches!(reason, CloseReason::ForcedClose | CloseReason::ServerShutdown) {
                    let c = if reason == CloseReason::ServerShutdown { code::GOING_AWAY } else { code::NORMAL };
                    let _ = io.send(ws, Bytes::from(ws::codec::encode_close(c, "")));
                    io.close_after_flush(ws);
                } else {
                    io.close(ws);
                }
            } else {
                // Polling, as the reference server does it: what is queued drains first, and
                // the close packet goes out on the poll after that (a client handles a poll's
                // packets asynchronously, so a close in the same response would overtake them).
                if e.outbox.is_empty() {
                    e.outbox.push(close_packet().clone());
                } else {
                    e.close_after_drain = true;
                }
                if e.poll.is_some() {
                    self.core.dirty_polls.push(sid.clone());
                }
                self.core.grace_due.push(io.now() + self.core.cfg.session.ping_interval + self.core.cfg.session.ping_timeout, sid.clone());
            }
            let remove = ws.is_some();
            let mut ctx = Self::ctx(&mut self.core, io);
            self.handler.on_close(&mut ctx, &sid, reason);
            if remove {
                self.core.sessions.remove(&sid);
            }
        }
    }

    fn answer_poll(&mut self, io: &mut Io<ConnState, H::Mail>, conn: ConnId, packets: Vec<SharedPacket>) {
        let now = io.now();
        let Some(st) = io.state(conn) else { return };
        let ConnState::Poll { headers, encoding, keep_alive, .. } = std::mem::replace(st, ConnState::Http { since: now }) else { return };
        self.wait_http(io, conn);
        let mut w = eio::PayloadWriter::new();
        for p in &packets {
            match p {
                SharedPacket::Text { text, .. } => w.push_text(text),
                SharedPacket::Binary { raw, .. } => w.push_binary(raw),
            }
        }
        let body = w.finish();
        let threshold = self.core.cfg.http_compression_threshold.unwrap_or(usize::MAX);
        let resp = match encoding {
            Some(enc) if body.len() >= threshold => {
                let z = response::compress(enc, &body);
                let name = if enc == response::Encoding::Gzip { "gzip" } else { "deflate" };
                let h = format!("{headers}Content-Encoding: {name}\r\nVary: Accept-Encoding\r\n");
                response::build(200, &h, Some("text/plain; charset=UTF-8"), &z, keep_alive)
            }
            _ => response::build(200, &headers, Some("text/plain; charset=UTF-8"), &body, keep_alive),
        };
        Self::respond(io, conn, resp, keep_alive);
    }

    fn flush_polls(&mut self, io: &mut Io<ConnState, H::Mail>) {
        let dirty = std::mem::take(&mut self.core.dirty_polls);
        for sid in dirty {
            let Some(e) = self.core.sessions.get_mut(&sid) else { continue };
            if e.outbox.is_empty() {
                continue;
            }
            let Some(conn) = e.poll.take() else { continue };
            let packets = std::mem::take(&mut e.outbox);
            e.outbox_bytes = 0;
            let done = e.closing && !e.close_after_drain;
            if e.close_after_drain {
                e.close_after_drain = false;
                e.outbox.push(close_packet().clone());
            }
            self.answer_poll(io, conn, packets);
            if done {
                self.core.sessions.remove(&sid);
            }
        }
    }

    // ---------------------------------------------------------------- WebSocket

    fn ws_data(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, data: &mut [u8]) -> usize {
        let Some(ConnState::Ws { inner, .. }) = io.state(id) else { return data.len() };
        let Some(mut w) = inner.take() else { return data.len() };
        let mut pos = 0;
        let mut ended = false;
        while pos < data.len() && !ended {
            let WsConn { codec, role } = &mut *w;
            match codec.decode(&mut data[pos..]) {
                Ok(Decoded::Incomplete { .. }) => break,
                Ok(Decoded::Frame { consumed, message }) => {
                    pos += consumed;
                    if let Some(m) = message {
                        ended = self.ws_message(io, id, role, m);
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, "websocket protocol error");
                    let _ = io.send(id, Bytes::from(ws::codec::encode_close(err.close_code(), "")));
                    io.close_after_flush(id);
                    self.ws_gone(role, CloseReason::TransportError);
                    pos = data.len();
                    ended = true;
                }
            }
        }
        // Free the reassembly buffer of messages already handled: an idle connection holds none.
        w.codec.release_buffers();
        // Put the connection back (unless it is closing), then send what waited for it.
        if let Some(ConnState::Ws { inner, .. }) = io.state(id) {
            *inner = Some(w);
        }
        let mut waiting = Vec::new();
        self.core.deferred.retain(|(c, p, compress)| {
            if *c == id {
                waiting.push((p.clone(), *compress));
                false
            } else {
                true
            }
        });
        for (p, compress) in waiting {
            let _ = ws_send(io, &mut self.core.deferred, id, &p, compress);
        }
        self.finish(io);
        pos
    }

    /// Handles one WebSocket message; returns whether the connection is ending.
    fn ws_message(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, role: &mut WsRole, m: Message<'_>) -> bool {
        match m {
            Message::Ping(p) => {
                let _ = io.send(id, Bytes::from(ws::codec::encode_control(OpCode::Pong, p)));
                false
            }
            Message::Pong(_) => false,
            Message::Close(c) => {
                let code = c.map_or(code::NORMAL, |c| c.code);
                let _ = io.send(id, Bytes::from(ws::codec::encode_close(code, "")));
                io.close_after_flush(id);
                self.ws_gone(role, CloseReason::TransportClose);
                true
            }
            Message::Text(t) => match role.clone() {
                WsRole::Echo => {
                    let _ = ws_send(io, &mut self.core.deferred, id, &SharedPacket::raw_text(t), true);
                    false
                }
                WsRole::Session(sid) | WsRole::Probe(sid) => match eio::decode_text(t) {
                    Ok(p) => {
                        self.packet(io, &sid, Transport::WebSocket, p);
                        self.sync_role(role, &sid);
                        false
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "bad Engine.IO packet");
                        let _ = io.send(id, Bytes::from(ws::codec::encode_close(code::PROTOCOL_ERROR, "")));
                        io.close_after_flush(id);
                        self.ws_gone(role, CloseReason::ParseError);
                        true
                    }
                },
            },
            Message::Binary(b) => match role.clone() {
                WsRole::Echo => {
                    let _ = ws_send(io, &mut self.core.deferred, id, &SharedPacket::binary(Bytes::copy_from_slice(b)), true);
                    false
                }
                WsRole::Session(sid) | WsRole::Probe(sid) => {
                    self.packet(io, &sid, Transport::WebSocket, Packet::Binary(b.to_vec()));
                    false
                }
            },
        }
    }

    /// After an upgrade completes on the connection being processed, its role becomes the
    /// session's transport.
    fn sync_role(&mut self, role: &mut WsRole, sid: &Sid) {
        if let WsRole::Probe(_) = role {
            if self.core.sessions.get(sid).is_some_and(|e| e.ws.is_some() && e.probe.is_none()) {
                *role = WsRole::Session(sid.clone());
            }
        }
    }

    /// The WebSocket of `role` is ending: its session closes, or its upgrade is abandoned.
    fn ws_gone(&mut self, role: &WsRole, reason: CloseReason) {
        match role {
            WsRole::Echo => {}
            WsRole::Session(sid) => {
                if let Some(e) = self.core.sessions.get_mut(sid) {
                    e.ws = None;
                    self.core.closing.push((sid.clone(), reason));
                }
            }
            WsRole::Probe(sid) => {
                if let Some(e) = self.core.sessions.get_mut(sid) {
                    e.probe = None;
                    e.session.abort_upgrade();
                }
            }
        }
    }

    /// The connection starts waiting for its next request now.
    fn wait_http(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId) {
        let now = io.now();
        if let Some(ConnState::Http { since }) = io.state(id) {
            *since = now;
            self.core.http_due.push(now + self.core.cfg.http_timeout, (id, now));
        }
    }

    fn timers(&mut self, io: &mut Io<ConnState, H::Mail>, now: Instant) {
        while let Some((id, since)) = self.core.http_due.pop_due(now) {
            if matches!(io.state(id), Some(ConnState::Http { since: s }) if *s == since) {
                tracing::debug!("closing a connection that sent no complete request in time");
                io.close(id);
            }
        }
        let mut due = Vec::new();
        for q in [&mut self.core.ping_due, &mut self.core.pong_due, &mut self.core.upgrade_due] {
            while let Some(sid) = q.pop_due(now) {
                due.push(sid);
            }
        }
        for sid in due {
            while let Some(e) = self.core.sessions.get_mut(&sid) {
                if e.closing {
                    break;
                }
                let a = e.session.handle_timeout(now);
                if a == Action::None {
                    break;
                }
                self.apply(io, &sid, a);
            }
        }
        while let Some(sid) = self.core.grace_due.pop_due(now) {
            if self.core.sessions.get(&sid).is_some_and(|e| e.closing && e.poll.is_none()) {
                self.core.sessions.remove(&sid);
            }
        }
        self.finish(io);
    }
}

impl<H: Handler> Service for EioServer<H> {
    type Conn = ConnState;
    type Mail = H::Mail;

    fn on_accept(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId) -> ConnState {
        let n = self.core.conns_total.fetch_add(1, Ordering::Relaxed) + 1;
        if n > self.core.cfg.max_connections || self.core.shutting_down {
            let _ = io.send(id, Bytes::from(response::error(503, "", "Service Unavailable", false)));
            io.close_after_flush(id);
            return ConnState::Refused;
        }
        self.core.http_due.push(io.now() + self.core.cfg.http_timeout, (id, io.now()));
        ConnState::Http { since: io.now() }
    }

    fn on_data(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, data: &mut [u8]) -> usize {
        let used = match io.state(id) {
            Some(ConnState::Http { .. }) => self.http(io, id, data),
            Some(ConnState::Ws { .. }) => self.ws_data(io, id, data),
            Some(ConnState::Poll { .. }) => 0,
            Some(ConnState::Refused) | None => data.len(),
        };
        self.finish(io);
        used
    }

    fn on_closed(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, state: ConnState) {
        self.core.conns_total.fetch_sub(1, Ordering::Relaxed);
        match state {
            ConnState::Poll { sid, .. } => {
                if let Some(e) = self.core.sessions.get_mut(&sid) {
                    if e.poll == Some(id) {
                        e.poll = None;
                        // "poll connection closed prematurely"
                        self.core.closing.push((sid, CloseReason::TransportClose));
                    }
                }
            }
            ConnState::Ws { inner: Some(w), .. } => {
                let is_current = match &w.role {
                    WsRole::Session(sid) => self.core.sessions.get(sid).is_some_and(|e| e.ws == Some(id)),
                    WsRole::Probe(sid) => self.core.sessions.get(sid).is_some_and(|e| e.probe == Some(id)),
                    WsRole::Echo => false,
                };
                if is_current {
                    self.ws_gone(&w.role, CloseReason::TransportClose);
                }
            }
            _ => {}
        }
        self.finish(io);
    }

    fn on_mail(&mut self, io: &mut Io<ConnState, H::Mail>, mail: H::Mail) {
        let mut ctx = Self::ctx(&mut self.core, io);
        self.handler.on_mail(&mut ctx, mail);
        self.finish(io);
    }

    fn on_timers(&mut self, io: &mut Io<ConnState, H::Mail>, now: Instant) {
        self.timers(io, now);
        let mut ctx = Self::ctx(&mut self.core, io);
        self.handler.on_timers(&mut ctx, now);
        self.finish(io);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let c = &self.core;
        [c.ping_due.next(), c.pong_due.next(), c.upgrade_due.next(), c.grace_due.next(), c.http_due.next(), self.handler.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    fn on_turn_end(&mut self, io: &mut Io<ConnState, H::Mail>) {
        self.finish(io);
        self.flush_polls(io);
    }

    fn on_shutdown(&mut self, io: &mut Io<ConnState, H::Mail>) {
        self.core.shutting_down = true;
        let mut ctx = Self::ctx(&mut self.core, io);
        self.handler.on_shutdown(&mut ctx);
        let all: Vec<Sid> = self.core.sessions.keys().cloned().collect();
        for sid in all {
            self.core.closing.push((sid, CloseReason::ServerShutdown));
        }
        self.finish(io);
        self.flush_polls(io);
    }
}
