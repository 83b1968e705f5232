//! The Engine.IO service of one worker: the connection states, the session life cycle
//! (packets in, heartbeat and upgrade actions, closes), the timers, and the [`Service`]
//! callbacks the runtime drives. The transports and HTTP routing live beside it:
//! [`super::http`], [`super::polling`], [`super::websocket`]; the session table in
//! [`super::sessions`].
//!
//! Must never: block, or keep a session's memory once the session is over.

use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

use super::sessions::{close_packet, noop, ping, Core, Ctx, SessionId};
use super::websocket::{close_ws, close_ws_bare, ws_send, WsConn};
use super::{EngineConfig, Handler, SendFlags};
use crate::proto::eio::{Action, CloseReason, Packet, PacketType, SharedPacket, Transport};
use crate::proto::http::response;
use crate::proto::ws::close::code;
use crate::proto::ws::Encoder;
use crate::rt::metrics::WorkerMetrics;
use crate::rt::{ConnId, Io, Service};

/// Per-connection state.
pub enum ConnState {
    /// Reading HTTP requests (its deadline is in the session table's HTTP deadlines).
    Http,
    /// Over `--max-connections` or shutting down: answered 503 and closed.
    Refused,
    /// A long-polling GET parked until its session has something to send.
    Poll {
        /// The session it polls for.
        session: SessionId,
        /// CORS header lines for the response.
        headers: String,
        /// Content coding for the response, if the client accepts one.
        encoding: Option<response::Encoding>,
        /// Whether the connection stays open after the response.
        keep_alive: bool,
        /// An HTTP/1.0 request (told `Connection: keep-alive` when kept alive).
        http10: bool,
    },
    /// A WebSocket. `inner` is taken out while its bytes are being processed.
    Ws {
        /// Whether permessage-deflate was negotiated.
        /// The sending half of the codec: always here, so the connection can be sent to while
        /// its bytes are being decoded.
        encoder: Encoder,
        /// The receiving half and the role; `None` while its bytes are being processed.
        inner: Option<Box<WsConn>>,
    },
}

/// The Engine.IO service of one worker, with handler `H` on top.
pub struct EioServer<H: Handler> {
    pub(super) core: Core,
    pub(super) handler: H,
}

impl<H: Handler> EioServer<H> {
    /// A worker's engine with `handler` on top.
    pub fn new(cfg: Rc<EngineConfig>, handler: H) -> Self {
        EioServer { core: Core::new(cfg), handler }
    }

    /// Sessions open on this worker (for tests and metrics).
    pub fn session_count(&self) -> usize {
        self.core.sessions.len()
    }

    /// Deadlines held by this worker's engine (sessions and HTTP connections): at most one per
    /// session and one per connection.
    pub fn deadline_count(&self) -> usize {
        self.core.session_due.len() + self.core.http_due.len()
    }

    /// What this worker's engine refused so far.
    pub fn stats(&self) -> super::EngineStats {
        self.core.stats
    }

    /// The handler (for tests and metrics).
    pub fn handler(&self) -> &H {
        &self.handler
    }

    pub(super) fn ctx<'a>(core: &'a mut Core, io: &'a mut Io<ConnState, H::Mail>) -> Ctx<'a, H::Mail> {
        Ctx { core, io }
    }

    // ---------------------------------------------------------------- sessions

    /// Feeds one Engine.IO packet that arrived over `via` to its session.
    pub(super) fn packet(&mut self, io: &mut Io<ConnState, H::Mail>, h: SessionId, via: Transport, p: Packet<'_>) {
        let now = io.now();
        let Some(e) = self.core.sessions.get_mut(h) else {
            return;
        };
        let (action, message, binary) = match p {
            Packet::Message(m) => (e.session.handle_packet(now, via, PacketType::Message, b""), Some(m), None),
            Packet::Binary(b) => (e.session.handle_binary(via), None, Some(b)),
            Packet::Ping(d) => (e.session.handle_packet(now, via, PacketType::Ping, d), None, None),
            Packet::Pong(d) => (e.session.handle_packet(now, via, PacketType::Pong, d), None, None),
            Packet::Open(_) => (e.session.handle_packet(now, via, PacketType::Open, b""), None, None),
            Packet::Close => (e.session.handle_packet(now, via, PacketType::Close, b""), None, None),
            Packet::Upgrade => (e.session.handle_packet(now, via, PacketType::Upgrade, b""), None, None),
            Packet::Noop => (e.session.handle_packet(now, via, PacketType::Noop, b""), None, None),
        };
        // The session's one deadline moves in place (a pong moves the next ping).
        self.core.rearm(h);
        match action {
            Action::Deliver => {
                self.core.counters.packets_in += 1;
                let mut ctx = Self::ctx(&mut self.core, io);
                if let Some(m) = message {
                    self.handler.on_message(&mut ctx, h, m);
                } else if let Some(b) = binary {
                    self.handler.on_binary(&mut ctx, h, Bytes::from(b));
                }
            }
            other => self.apply(io, h, other),
        }
    }

    fn apply(&mut self, io: &mut Io<ConnState, H::Mail>, h: SessionId, action: Action) {
        let Some(e) = self.core.sessions.get_mut(h) else {
            return;
        };
        match action {
            Action::None | Action::Deliver => {}
            Action::SendPing => {
                let _ = self.core.send(io, h, ping(), SendFlags::default());
            }
            Action::ProbeAccepted => {
                if let Some(probe) = e.probe {
                    let pong = SharedPacket::text(PacketType::Pong, b"probe");
                    let _ = ws_send(io, probe, &pong, true);
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
                tracing::debug!(sid = &*e.sid, "session upgraded to websocket");
                // The probe's role becomes Session in `sync_role`, once its packet is handled.
                let ws = e.probe.take().expect("upgraded from a probe");
                e.ws = Some(ws);
                let outbox = std::mem::take(&mut e.outbox);
                e.outbox_bytes = 0;
                let parked = e.poll.take();
                for p in &outbox {
                    let _ = ws_send(io, ws, p, true);
                }
                if let Some(poll) = parked {
                    self.answer_poll(io, poll, vec![noop().clone()]);
                }
                self.core.rearm(h);
                let mut ctx = Self::ctx(&mut self.core, io);
                self.handler.on_upgrade(&mut ctx, h);
                return;
            }
            Action::AbortUpgrade => {
                // The reference closes the probe with `ws.close()`: a close frame without a
                // status code.
                if let Some(probe) = e.probe.take() {
                    close_ws_bare(io, probe);
                }
            }
            Action::Close(reason) => self.core.closing.push((h, reason)),
        }
        self.core.rearm(h);
    }

    /// Processes queued session closes: transports are closed, the handler is told. Loops,
    /// since the handler may close more sessions.
    pub(super) fn finish(&mut self, io: &mut Io<ConnState, H::Mail>) {
        while let Some((h, reason)) = self.core.closing.pop() {
            let grace = self.core.cfg.session.ping_interval + self.core.cfg.session.ping_timeout;
            let Some(e) = self.core.sessions.get_mut(h) else {
                continue;
            };
            if e.closing {
                continue;
            }
            e.closing = true;
            e.session.close_with(reason);
            tracing::debug!(sid = &*e.sid, reason = reason.as_str(), "session closed");
            if let Some(probe) = e.probe.take() {
                io.close(probe);
            }
            let ws = e.ws.take();
            let mut forget = ws.is_some();
            if let Some(ws) = ws {
                // A close frame first. Shutdown says 1001; a ping timeout or a forced close
                // gets a close frame without a status code, as the reference's `ws.close()`
                // sends. A slow consumer (its queue is full: it would never read the frame) is
                // closed at once.
                match reason {
                    CloseReason::ServerShutdown => close_ws(io, ws, code::GOING_AWAY),
                    CloseReason::TransportError => io.close(ws),
                    _ => close_ws_bare(io, ws),
                }
            } else if !matches!(reason, CloseReason::ForcedClose | CloseReason::ServerShutdown) {
                // Polling, closed for cause (ping timeout, bad input, the client's close packet,
                // a transport error): as the reference server does it, what was queued is
                // dropped, a parked GET is answered at once (`6` when the client closed, `1`
                // otherwise), and the session is forgotten: the next request for it gets
                // "Session ID unknown".
                e.outbox.clear();
                e.outbox_bytes = 0;
                e.close_after_drain = false;
                if e.poll.is_some() {
                    e.outbox.push(if reason == CloseReason::TransportClose { noop() } else { close_packet() }.clone());
                    self.core.dirty_polls.push(h);
                    // Removed by `flush_polls` at the end of this pass, once answered.
                    e.grace_until = Some(io.now() + grace);
                } else {
                    forget = true;
                }
            } else {
                // Polling, closed gracefully by the server: what is queued drains first, and
                // the close packet goes out on the poll after that (a client handles a poll's
                // packets asynchronously, so a close in the same response would overtake them).
                if e.outbox.is_empty() {
                    e.outbox.push(close_packet().clone());
                } else {
                    e.close_after_drain = true;
                }
                if e.poll.is_some() {
                    self.core.dirty_polls.push(h);
                }
                e.grace_until = Some(io.now() + grace);
            }
            self.core.rearm(h);
            let mut ctx = Self::ctx(&mut self.core, io);
            self.handler.on_close(&mut ctx, h, reason);
            if forget {
                self.core.remove(h);
            }
        }
    }

    fn timers(&mut self, io: &mut Io<ConnState, H::Mail>, now: Instant) {
        while let Some(idx) = self.core.http_due.pop_due(now) {
            let Some(id) = io.conn_at(idx) else { continue };
            if matches!(io.state(id), Some(ConnState::Http)) {
                tracing::debug!("closing a connection that sent no complete request in time");
                io.close(id);
            }
        }
        while let Some(idx) = self.core.session_due.pop_due(now) {
            let Some(h) = self.core.sessions.handle_at(idx) else {
                continue;
            };
            let e = self.core.sessions.get_mut(h).expect("a live handle");
            if e.closing {
                // The grace of a closed polling session is over.
                if e.poll.is_none() {
                    self.core.remove(h);
                } else {
                    self.core.rearm(h);
                }
                continue;
            }
            while let Some(e) = self.core.sessions.get_mut(h).filter(|e| !e.closing) {
                let a = e.session.handle_timeout(now);
                if a == Action::None {
                    break;
                }
                self.apply(io, h, a);
            }
            self.core.rearm(h);
        }
        self.finish(io);
    }
}

impl<H: Handler> Service for EioServer<H> {
    type Conn = ConnState;
    type Mail = H::Mail;

    fn metrics(&self, io: &Io<ConnState, H::Mail>, out: &mut WorkerMetrics) {
        let w = io.worker().to_string();
        let (mut http, mut ws) = (0u64, 0u64);
        for s in io.states() {
            match s {
                ConnState::Ws { .. } => ws += 1,
                ConnState::Http | ConnState::Refused | ConnState::Poll { .. } => http += 1,
            }
        }
        const CONNS: &str = "Open connections by transport: HTTP (long-polling requests and handshakes) or WebSocket.";
        out.gauge("shardcast_connections", CONNS, &[("transport", "polling"), ("worker", &w)], http);
        out.gauge("shardcast_connections", CONNS, &[("transport", "websocket"), ("worker", &w)], ws);
        let (mut polling, mut websocket) = (0u64, 0u64);
        for (_, e) in self.core.sessions.iter().filter(|(_, e)| !e.closing) {
            match e.session.transport() {
                Transport::Polling => polling += 1,
                Transport::WebSocket => websocket += 1,
            }
        }
        const SESSIONS: &str = "Open Engine.IO sessions by their current transport.";
        out.gauge("shardcast_sessions", SESSIONS, &[("transport", "polling"), ("worker", &w)], polling);
        out.gauge("shardcast_sessions", SESSIONS, &[("transport", "websocket"), ("worker", &w)], websocket);
        let c = self.core.counters;
        out.counter("shardcast_packets_received_total", "Engine.IO message packets (text or binary) received from clients.", &[], c.packets_in);
        out.counter(
            "shardcast_packets_sent_total",
            "Engine.IO message packets queued to clients (a broadcast counts once per recipient; binary attachments are packets of their own).",
            &[],
            c.packets_out,
        );
        const DROPPED: &str =
            "Packets not delivered, by reason: volatile (the client could not take it now), slow_consumer (its send queue was full; the session is closed).";
        out.counter("shardcast_dropped_total", DROPPED, &[("reason", "volatile")], c.dropped_volatile);
        out.counter("shardcast_dropped_total", DROPPED, &[("reason", "slow_consumer")], c.dropped_slow_consumer);
        let st = self.stats();
        const REFUSED: &str = "Connections refused with HTTP 429 by the per-address limits, by reason: address_connections (--max-connections-per-address), address_rate (--max-connection-rate-per-address).";
        out.counter("shardcast_refused_total", REFUSED, &[("reason", "address_connections")], st.address_too_many);
        out.counter("shardcast_refused_total", REFUSED, &[("reason", "address_rate")], st.address_too_fast);
        self.handler.metrics(out);
    }

    fn on_accept(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId) -> ConnState {
        if io.total_conns() > self.core.cfg.max_connections || self.core.shutting_down || io.overloaded() {
            let _ = io.send(id, Bytes::from(response::error(503, "", "Service Unavailable", false)));
            io.close_after_flush(id);
            return ConnState::Refused;
        }
        if let Some(limits) = &self.core.cfg.address_limits {
            let peer = io.peer_addr(id).map(|p| p.ip()).filter(|ip| !self.core.cfg.trusted_proxies.iter().any(|n| n.contains(ip)));
            if let Some(ip) = peer {
                if let Err(why) = limits.admit(ip, io.now()) {
                    match why {
                        super::address::Refusal::TooMany => self.core.stats.address_too_many += 1,
                        super::address::Refusal::TooFast => self.core.stats.address_too_fast += 1,
                    }
                    tracing::debug!(%ip, ?why, "connection refused by the per-address limits");
                    let _ = io.send(id, Bytes::from(response::error(429, "", "Too Many Requests", false)));
                    io.close_after_flush(id);
                    return ConnState::Refused;
                }
                self.core.counted.insert(id);
            }
        }
        self.core.wait_http(id, io.now());
        ConnState::Http
    }

    fn on_adopt(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId) -> ConnState {
        // Counted in the per-address limits by the worker that accepted it.
        let trusted = |ip: &std::net::IpAddr| self.core.cfg.trusted_proxies.iter().any(|n| n.contains(ip));
        if self.core.cfg.address_limits.is_some() && io.peer_addr(id).is_some_and(|p| !trusted(&p.ip())) {
            self.core.counted.insert(id);
        }
        self.core.wait_http(id, io.now());
        ConnState::Http
    }

    fn on_data(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, data: &mut [u8]) -> usize {
        let used = match io.state(id) {
            Some(ConnState::Http) => self.http(io, id, data),
            Some(ConnState::Ws { .. }) => self.ws_data(io, id, data),
            Some(ConnState::Poll { .. }) => 0,
            Some(ConnState::Refused) | None => data.len(),
        };
        self.finish(io);
        used
    }

    fn on_shed(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId) {
        match io.state(id) {
            Some(ConnState::Ws { .. }) => close_ws(io, id, code::TRY_AGAIN_LATER),
            Some(_) => {
                let _ = io.send(id, Bytes::from(response::error(503, "", "Service Unavailable", false)));
                io.close_after_flush(id);
            }
            None => io.close(id),
        }
    }

    fn on_closed(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, state: ConnState) {
        self.core.stop_http_wait(id);
        self.core.release_address(io, id);
        if matches!(state, ConnState::Http) {
            if let Some(h) = self.core.forget_post(id) {
                // "data request connection closed prematurely": the reference closes the
                // session, whose packets would otherwise be lost midway.
                self.core.closing.push((h, CloseReason::TransportError));
            }
        }
        match state {
            ConnState::Poll { session, .. } => {
                if let Some(e) = self.core.sessions.get_mut(session) {
                    if e.poll == Some(id) {
                        e.poll = None;
                        // "poll connection closed prematurely"
                        self.core.closing.push((session, CloseReason::TransportClose));
                    }
                }
            }
            ConnState::Ws { inner: Some(w), .. } if self.ws_is_current(id, w.role) => self.ws_gone(w.role, CloseReason::TransportClose),
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
        [c.session_due.next(), c.http_due.next(), self.handler.next_deadline()].into_iter().flatten().min()
    }

    fn on_turn_end(&mut self, io: &mut Io<ConnState, H::Mail>) {
        self.finish(io);
        self.flush_polls(io);
    }

    fn on_shutdown(&mut self, io: &mut Io<ConnState, H::Mail>) {
        self.core.shutting_down = true;
        let mut ctx = Self::ctx(&mut self.core, io);
        self.handler.on_shutdown(&mut ctx);
        for h in self.core.sessions.handles() {
            self.core.closing.push((h, CloseReason::ServerShutdown));
        }
        self.finish(io);
        self.flush_polls(io);
    }
}
