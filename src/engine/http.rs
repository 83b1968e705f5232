//! HTTP routing: requests are read one at a time per connection, answered in order, and routed
//! to the handshake, a session's polling GET or POST, a WebSocket upgrade, a CORS preflight or
//! an error; a request for a session another worker owns is handed to that worker with the
//! connection and its unread bytes.
//!
//! Must never: parse HTTP itself (it calls `proto::http`), or serve a session it does not own.

use std::rc::Rc;

use super::server::EioServer;
use super::sessions::SessionId;
use super::{sid, ConnState, Core, Handler, OpenInfo, RequestInfo, Sid};
use crate::proto::eio::{self, open::Handshake, Session, Transport, Verified};
use crate::proto::http::{self, response, CorsDecision, Method, Request};
use crate::rt::{ConnId, Io};

impl<H: Handler> EioServer<H> {
    /// Bytes of a connection in its HTTP state; returns how many were consumed.
    pub(super) fn http(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, data: &mut [u8]) -> usize {
        let mut pos = 0;
        loop {
            match io.state(id) {
                Some(ConnState::Http) => {}
                Some(ConnState::Ws { .. }) => return pos + self.ws_data(io, id, &mut data[pos..]),
                // Parked or closing: the rest waits (reading is paused) or is dropped.
                _ => return pos,
            }
            if pos == data.len() {
                return pos;
            }
            let req = match http::parse_request(&data[pos..], self.core.cfg.max_payload) {
                Ok(None) => return pos,
                Ok(Some(r)) => r,
                Err(e) => {
                    Self::respond(&mut self.core, io, id, response::error(e.status(), "", &e.to_string(), false), false);
                    return data.len();
                }
            };
            let total = req.head_len + req.content_length;
            let complete = data.len() - pos >= total;
            if req.method == Method::Post && self.overlapping_post(io, id, &req, complete) {
                return data.len();
            }
            if !complete {
                return pos;
            }
            // A request for a session of another worker goes to that worker, bytes and all.
            if req.path() == self.core.cfg.path {
                if let Some(owner) = eio::parse_query(&req.target).sid.and_then(sid::owner) {
                    if owner != io.worker() && owner < io.workers() {
                        self.core.stop_http_wait(id);
                        // Its per-address count goes with it: the adopting worker releases it.
                        self.core.counted.remove(&id);
                        io.handoff(id, owner);
                        return pos;
                    }
                }
            }
            let body = &mut data[pos + req.head_len..pos + total];
            self.core.reply = Some((id, response::Reply::of(&req)));
            self.request(io, id, &req, body);
            self.core.reply = None;
            pos += total;
            if !req.keep_alive {
                if matches!(io.state(id), Some(ConnState::Http)) {
                    io.close_after_flush(id);
                }
                return data.len();
            }
            // A request completed: the wait for the next one starts now.
            if matches!(io.state(id), Some(ConnState::Http)) {
                self.core.wait_http(id, io.now());
            }
        }
    }

    /// Tracks the POST in progress of each session of this worker. A POST whose head arrives
    /// while another connection's POST for the same session is still being read is refused
    /// as the reference does ("data request overlap from client"): HTTP 400 with an empty
    /// body, this connection closed (the rest of its body is never read), the other POST
    /// dropped, and the session closed for a transport error. Returns whether it was refused.
    fn overlapping_post(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, req: &Request, complete: bool) -> bool {
        if req.path() != self.core.cfg.path {
            return false;
        }
        let Some(h) = eio::parse_query(&req.target).sid.and_then(|s| self.core.find(s)) else {
            return false;
        };
        let e = self.core.sessions.get_mut(h).expect("found");
        match e.posting {
            Some(other) if other != id => {
                e.posting = None;
                Self::respond(&mut self.core, io, id, response::build(400, "", None, b"", false), false);
                io.close(other);
                self.core.closing.push((h, crate::proto::eio::CloseReason::TransportError));
                self.finish(io);
                true
            }
            _ => {
                if complete {
                    e.posting = None;
                    self.core.posts.remove(&id);
                } else {
                    e.posting = Some(id);
                    self.core.posts.insert(id, h);
                }
                false
            }
        }
    }

    /// Queues a response; a connection that is not kept alive closes once it is written.
    pub(super) fn respond(core: &mut Core, io: &mut Io<ConnState, H::Mail>, id: ConnId, mut bytes: Vec<u8>, keep_alive: bool) {
        if let Some((conn, reply)) = core.reply {
            if conn == id {
                reply.apply(&mut bytes);
            }
        }
        // A client whose responses no longer fit its send queue (it pipelines and does not
        // read them) is closed.
        if io.send(id, bytes.into()).is_err() {
            core.stop_http_wait(id);
            io.close(id);
            return;
        }
        if !keep_alive {
            core.stop_http_wait(id);
            io.close_after_flush(id);
        }
    }

    fn request(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, req: &Request, body: &mut [u8]) {
        let cfg = self.core.cfg.clone();
        let ka = req.keep_alive;
        if req.path() != cfg.path {
            if req.upgrade.is_some() && self.handler.raw_websocket(req.path()) {
                return self.upgrade_raw(io, id, req);
            }
            return Self::respond(&mut self.core, io, id, response::error(404, "", "Not Found", ka), ka);
        }
        let cors = match cfg.cors.decide(req.origin.as_deref()) {
            CorsDecision::Allowed(h) => h,
            CorsDecision::Rejected => {
                return Self::respond(&mut self.core, io, id, response::error(400, "", http::cors::REJECTED_BODY, ka), ka);
            }
        };
        if req.method == Method::Options {
            let mut h = cors;
            h.push_str(&cfg.cors.preflight_headers(req.access_control_request_headers.as_deref()));
            return Self::respond(&mut self.core, io, id, response::build(204, &h, None, b"", ka), ka);
        }
        let query = eio::parse_query(&req.target);
        let core = &self.core;
        // A closed polling session still answers polls until its last packets are collected.
        let collecting = req.method == Method::Get && req.upgrade.is_none();
        let verified = eio::verify(&query, req.method.as_str(), req.upgrade.is_some(), &cfg.transports, |s| {
            core.find(s).and_then(|h| core.sessions.get(h)).filter(|e| !e.closing || (collecting && !e.outbox.is_empty())).map(|e| e.session.transport())
        });
        let verified = match verified {
            Ok(v) => v,
            Err(e) => {
                let resp = response::build(e.http_status(), &cors, Some("application/json"), e.body().as_bytes(), ka);
                return Self::respond(&mut self.core, io, id, resp, ka);
            }
        };
        if let Verified::Handshake(transport) = verified {
            // Node's allowRequest: before any session exists.
            if let Some(allow) = &cfg.allow_request {
                let peer = io.peer_addr(id);
                let info = RequestInfo {
                    method: req.method.as_str(),
                    path: req.path(),
                    query: req.query(),
                    headers: &req.headers,
                    peer,
                    address: peer.map(|p| http::forwarded::client_addr(p, &req.headers, &cfg.trusted_proxies)),
                };
                if let Err(message) = (allow.0)(&info) {
                    let e = eio::EioError::Forbidden;
                    let message = message.unwrap_or_else(|| e.to_string());
                    let resp = if transport == Transport::WebSocket {
                        // As Node's abortUpgrade: 400 with the message as text, then closed.
                        response::build(400, "", Some("text/html"), message.as_bytes(), false)
                    } else {
                        let body = serde_json::json!({ "code": e.code(), "message": message }).to_string();
                        response::build(e.http_status(), &cors, Some("application/json"), body.as_bytes(), ka)
                    };
                    let keep = ka && transport != Transport::WebSocket;
                    return Self::respond(&mut self.core, io, id, resp, keep);
                }
            }
        }
        match verified {
            Verified::Handshake(Transport::Polling) => self.handshake_polling(io, id, req, &cors),
            Verified::Handshake(Transport::WebSocket) => self.handshake_ws(io, id, req, None),
            Verified::Session { transport: Transport::WebSocket, .. } if !cfg.allow_upgrades => {
                let e = eio::EioError::BadRequest;
                Self::respond(&mut self.core, io, id, response::build(400, &cors, Some("application/json"), e.body().as_bytes(), ka), ka)
            }
            Verified::Session { sid, transport: Transport::WebSocket } => {
                let h = self.core.find(sid).expect("verified");
                self.handshake_ws(io, id, req, Some(h))
            }
            Verified::Session { sid, transport: Transport::Polling } => {
                let h = self.core.find(sid).expect("verified");
                match req.method {
                    Method::Get => self.poll(io, id, req, h, cors),
                    Method::Post => self.post(io, id, req, h, body, &cors),
                    _ => {
                        let e = eio::EioError::BadRequest;
                        Self::respond(&mut self.core, io, id, response::build(400, &cors, Some("application/json"), e.body().as_bytes(), ka), ka)
                    }
                }
            }
        }
    }

    /// A new session of this worker and its open packet.
    pub(super) fn new_session(&mut self, io: &mut Io<ConnState, H::Mail>, transport: Transport) -> (SessionId, Vec<u8>) {
        let cfg = &self.core.cfg;
        let sid: Sid = Rc::from(sid::generate(io.worker()));
        let offer = cfg.allow_upgrades && transport == Transport::Polling && cfg.transports.contains(&Transport::WebSocket);
        let upgrades: &[&str] = if offer { &["websocket"] } else { &[] };
        let open = Handshake {
            sid: &sid,
            upgrades,
            ping_interval: cfg.session.ping_interval.as_millis() as u64,
            ping_timeout: cfg.session.ping_timeout.as_millis() as u64,
            max_payload: cfg.max_payload as u64,
        }
        .encode();
        let session = Session::new(cfg.session, transport, io.now());
        (self.core.insert(sid, session), open)
    }

    fn cookie_header(&self, sid: &str) -> String {
        match &self.core.cfg.cookie {
            Some(name) => self.core.cfg.cookie_attrs.header(name, sid),
            None => String::new(),
        }
    }

    fn handshake_polling(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, req: &Request, cors: &str) {
        let (h, open) = self.new_session(io, Transport::Polling);
        let sid = self.core.sessions.get(h).expect("just inserted").sid.clone();
        let headers = format!("{cors}{}", self.cookie_header(&sid));
        let resp = response::build(200, &headers, Some("text/plain; charset=UTF-8"), &open, req.keep_alive);
        Self::respond(&mut self.core, io, id, resp, req.keep_alive);
        let peer = io.peer_addr(id);
        let address = peer.map(|p| http::forwarded::client_addr(p, &req.headers, &self.core.cfg.trusted_proxies));
        let info = OpenInfo { query: req.query(), origin: req.origin.as_deref(), transport: Transport::Polling, headers: &req.headers, peer, address };
        let mut ctx = Self::ctx(&mut self.core, io);
        self.handler.on_open(&mut ctx, h, &info);
        self.finish(io);
    }
}
