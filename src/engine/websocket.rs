//! The WebSocket transport: accepting an upgrade (a new session, or the probe of a polling
//! session's upgrade), running a connection's bytes through the codec, Engine.IO packets over
//! WebSocket frames, and sending a session's packets as shared or per-connection compressed
//! frames.
//!
//! Must never: parse frames itself (it calls `proto::ws`), or hold a message's bytes beyond
//! what the codec's limits allow.

use bytes::Bytes;

use super::server::EioServer;
use super::sessions::SessionId;
use super::{ConnState, Handler, OpenInfo, RawConn};
use crate::proto::eio::{self, CloseReason, Packet, SharedPacket, Transport};
use crate::proto::http::{response, Request};
use crate::proto::ws::{self, close::code, deflate::DeflatePolicy, handshake, CodecConfig, Decoded, Decoder, Message, OpCode, ServerCodec};
use crate::rt::{ConnId, Io, SendError};

/// A WebSocket connection: its codec and what it carries.
pub struct WsConn {
    pub(super) decoder: Decoder,
    pub(super) role: WsRole,
}

/// What a WebSocket carries.
#[derive(Clone, Copy)]
pub(super) enum WsRole {
    /// The session's transport.
    Session(SessionId),
    /// Probing an upgrade of a polling session.
    Probe(SessionId),
    /// A raw WebSocket on another path, its messages handed to the handler as they are.
    Raw,
}

/// Sends one packet on a WebSocket connection: the shared frame, or a per-connection
/// compressed one when deflate applies (and `compress` allows it). The encoder is never taken
/// out of the connection, so this works from inside the connection's own decoding.
pub(super) fn ws_send<M>(io: &mut Io<ConnState, M>, conn: ConnId, p: &SharedPacket, compress: bool) -> Result<(), SendError> {
    let Some(ConnState::Ws { encoder, .. }) = io.state(conn) else { return Err(SendError::Gone) };
    let (payload, binary) = p.ws_payload();
    if compress && encoder.compresses(payload.len()) {
        let mut out = Vec::with_capacity(payload.len() / 2 + 16);
        encoder.encode_message(binary, payload, &mut out);
        io.send(conn, Bytes::from(out))
    } else {
        io.send(conn, p.ws_frame().clone())
    }
}

/// Queues a close frame and closes the connection once it is written.
pub(super) fn close_ws<M>(io: &mut Io<ConnState, M>, id: ConnId, close_code: u16) {
    let _ = io.send(id, Bytes::from(ws::codec::encode_close(close_code, "")));
    io.close_after_flush(id);
}

/// Queues a close frame without a status code and closes the connection once it is written.
pub(super) fn close_ws_bare<M>(io: &mut Io<ConnState, M>, id: ConnId) {
    let _ = io.send(id, Bytes::from(ws::codec::encode_control(OpCode::Close, &[])));
    io.close_after_flush(id);
}

impl<H: Handler> EioServer<H> {
    /// Answers a WebSocket upgrade with 101 (or the handshake's refusal) and returns the codec.
    fn accept_ws(&self, io: &mut Io<ConnState, H::Mail>, id: ConnId, req: &Request) -> Option<ServerCodec> {
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
        let accepted = handshake::accept(&v, |_| None, self.core.cfg.websocket_compression.then_some(&policy), "");
        let _ = io.send(id, Bytes::from(accepted.response));
        Some(ServerCodec::new(CodecConfig { max_message_size: self.core.cfg.max_payload, deflate: accepted.deflate, compress_threshold: 1024 }))
    }

    fn set_ws(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, codec: ServerCodec, role: WsRole) {
        let (decoder, encoder) = codec.into_parts();
        self.core.stop_http_wait(id);
        if let Some(st) = io.state(id) {
            *st = ConnState::Ws { encoder, inner: Some(Box::new(WsConn { decoder, role })) };
        }
    }

    /// A WebSocket handshake: a new session, or the probe of `existing`'s upgrade.
    pub(super) fn handshake_ws(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, req: &Request, existing: Option<SessionId>) {
        let now = io.now();
        match existing {
            None => {
                let Some(codec) = self.accept_ws(io, id, req) else {
                    return;
                };
                let (h, open) = self.new_session(io, Transport::WebSocket);
                self.set_ws(io, id, codec, WsRole::Session(h));
                let e = self.core.sessions.get_mut(h).expect("just inserted");
                e.ws = Some(id);
                let _ = ws_send(io, id, &SharedPacket::raw_text(&open), true);
                let peer = io.peer_addr(id);
                let address = peer.map(|p| crate::proto::http::forwarded::client_addr(p, &req.headers, &self.core.cfg.trusted_proxies));
                let info =
                    OpenInfo { query: req.query(), origin: req.origin.as_deref(), transport: Transport::WebSocket, headers: &req.headers, peer, address };
                let mut ctx = Self::ctx(&mut self.core, io);
                self.handler.on_open(&mut ctx, h, &info);
                self.finish(io);
            }
            Some(h) => {
                let e = self.core.sessions.get_mut(h).expect("verified");
                if !e.session.begin_upgrade(now) {
                    let err = eio::EioError::BadRequest;
                    let resp = response::build(400, "", Some("application/json"), err.body().as_bytes(), false);
                    return Self::respond(&mut self.core, io, id, resp, false);
                }
                e.probe = Some(id);
                self.core.rearm(h);
                let Some(codec) = self.accept_ws(io, id, req) else {
                    let e = self.core.sessions.get_mut(h).expect("verified");
                    e.session.abort_upgrade();
                    e.probe = None;
                    self.core.rearm(h);
                    return;
                };
                self.set_ws(io, id, codec, WsRole::Probe(h));
            }
        }
    }

    /// A raw WebSocket on a path the handler serves itself ([`Handler::raw_websocket`]).
    pub(super) fn upgrade_raw(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, req: &Request) {
        if let Some(codec) = self.accept_ws(io, id, req) {
            self.set_ws(io, id, codec, WsRole::Raw);
        }
    }

    /// Bytes of a WebSocket connection.
    pub(super) fn ws_data(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, data: &mut [u8]) -> usize {
        let Some(ConnState::Ws { inner, .. }) = io.state(id) else {
            return data.len();
        };
        let Some(mut w) = inner.take() else {
            return data.len();
        };
        let mut pos = 0;
        let mut ended = false;
        while pos < data.len() && !ended {
            let WsConn { decoder, role } = &mut *w;
            match decoder.decode(&mut data[pos..]) {
                Ok(Decoded::Incomplete { .. }) => break,
                Ok(Decoded::Frame { consumed, message }) => {
                    pos += consumed;
                    if let Some(m) = message {
                        ended = self.ws_message(io, id, role, m);
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, "websocket protocol error");
                    close_ws(io, id, err.close_code());
                    self.ws_gone(*role, CloseReason::TransportError);
                    pos = data.len();
                    ended = true;
                }
            }
        }
        // Free the reassembly buffer of messages already handled: an idle connection holds none.
        // What a message in progress holds counts against the worker's read budget.
        w.decoder.release_buffers();
        io.set_charged(id, w.decoder.held_bytes());
        // Put the connection back (unless it is closing).
        if let Some(ConnState::Ws { inner, .. }) = io.state(id) {
            *inner = Some(w);
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
                close_ws(io, id, c.map_or(code::NORMAL, |c| c.code));
                self.ws_gone(*role, CloseReason::TransportClose);
                true
            }
            Message::Text(t) => match *role {
                WsRole::Raw => self.raw_message(io, id, false, t),
                WsRole::Session(h) | WsRole::Probe(h) => match eio::decode_text(t) {
                    Ok(p) => {
                        self.packet(io, h, Transport::WebSocket, p);
                        self.sync_role(role, h);
                        false
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "bad Engine.IO packet");
                        close_ws(io, id, code::PROTOCOL_ERROR);
                        self.ws_gone(*role, CloseReason::ParseError);
                        true
                    }
                },
            },
            Message::Binary(b) => match *role {
                WsRole::Raw => self.raw_message(io, id, true, b),
                WsRole::Session(h) | WsRole::Probe(h) => {
                    self.packet(io, h, Transport::WebSocket, Packet::Binary(b.to_vec()));
                    false
                }
            },
        }
    }

    /// A message of a raw WebSocket goes to the handler as it is; the connection goes on.
    fn raw_message(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, binary: bool, data: &mut [u8]) -> bool {
        let mut ctx = Self::ctx(&mut self.core, io);
        self.handler.on_raw_message(&mut ctx, RawConn(id), binary, data);
        false
    }

    /// After an upgrade completes on the connection being processed, its role becomes the
    /// session's transport.
    fn sync_role(&mut self, role: &mut WsRole, h: SessionId) {
        if let WsRole::Probe(_) = role {
            if self.core.sessions.get(h).is_some_and(|e| e.ws.is_some() && e.probe.is_none()) {
                *role = WsRole::Session(h);
            }
        }
    }

    /// The WebSocket of `role` is ending: its session closes, or its upgrade is abandoned.
    pub(super) fn ws_gone(&mut self, role: WsRole, reason: CloseReason) {
        match role {
            WsRole::Raw => {}
            WsRole::Session(h) => {
                if let Some(e) = self.core.sessions.get_mut(h) {
                    e.ws = None;
                    self.core.closing.push((h, reason));
                }
            }
            WsRole::Probe(h) => {
                if let Some(e) = self.core.sessions.get_mut(h) {
                    e.probe = None;
                    e.session.abort_upgrade();
                    self.core.rearm(h);
                }
            }
        }
    }

    /// Whether the WebSocket `id` with `role` is still its session's transport or probe.
    pub(super) fn ws_is_current(&self, id: ConnId, role: WsRole) -> bool {
        match role {
            WsRole::Session(h) => self.core.sessions.get(h).is_some_and(|e| e.ws == Some(id)),
            WsRole::Probe(h) => self.core.sessions.get(h).is_some_and(|e| e.probe == Some(id)),
            WsRole::Raw => false,
        }
    }
}
