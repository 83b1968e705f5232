//! The long-polling transport: a GET parks until its session has packets (the connection reads
//! nothing more meanwhile: one request at a time per connection), a POST delivers a payload,
//! and a parked GET is answered with everything queued, compressed when the client accepts it.
//!
//! Must never: hold more than one parked GET per session, or read a connection past a parked
//! request.

use super::server::EioServer;
use super::sessions::{close_packet, noop, SessionId};
use super::{ConnState, Handler};
use crate::proto::eio::{self, CloseReason, SharedPacket, Transport};
use crate::proto::http::{response, Request};
use crate::rt::{ConnId, Io};

impl<H: Handler> EioServer<H> {
    /// A polling GET: parked until the session has something to send.
    pub(super) fn poll(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, req: &Request, h: SessionId, cors: String) {
        if self.core.sessions.get(h).expect("verified").poll.is_some() {
            // A second concurrent GET: the reference server errors the session ("overlap from
            // client") and answers 400 with an empty body.
            Self::respond(&mut self.core, io, id, response::build(400, &cors, None, b"", req.keep_alive), req.keep_alive);
            self.core.closing.push((h, CloseReason::TransportError));
            self.finish(io);
            return;
        }
        let threshold = self.core.cfg.http_compression_threshold;
        let encoding = threshold.and_then(|_| response::choose_encoding(req.accept_encoding.as_deref()));
        if let Some(st) = io.state(id) {
            *st = ConnState::Poll { session: h, headers: cors, encoding, keep_alive: req.keep_alive, http10: req.http10 };
        }
        // Parked: no HTTP deadline (the heartbeat answers it within the ping interval), and
        // nothing more is read from the connection until it is answered.
        self.core.stop_http_wait(id);
        io.pause_reading(id);
        let e = self.core.sessions.get_mut(h).expect("verified");
        e.poll = Some(id);
        if e.session.is_upgrading() {
            // The client is pausing polling: answer at once.
            let mut packets = std::mem::take(&mut e.outbox);
            e.outbox_bytes = 0;
            packets.push(noop().clone());
            e.poll = None;
            self.answer_poll(io, id, packets);
        } else if !e.outbox.is_empty() {
            self.core.dirty_polls.push(h);
        }
    }

    /// A polling POST: its packets go to the session.
    pub(super) fn post(&mut self, io: &mut Io<ConnState, H::Mail>, id: ConnId, req: &Request, h: SessionId, body: &mut [u8], cors: &str) {
        let ka = req.keep_alive;
        if let Err(err) = eio::check_payload(body, self.core.cfg.max_payload) {
            Self::respond(&mut self.core, io, id, response::error(err.http_status(), cors, &err.to_string(), ka), ka);
            self.core.closing.push((h, CloseReason::ParseError));
            self.finish(io);
            return;
        }
        Self::respond(&mut self.core, io, id, response::build(200, cors, Some("text/html"), b"ok", ka), ka);
        // One packet at a time: a body of many tiny packets is never a vector of them.
        for p in eio::payload_packets(body) {
            self.packet(io, h, Transport::Polling, p);
        }
        self.finish(io);
    }

    /// Answers a parked GET with `packets`; the connection reads its next request.
    pub(super) fn answer_poll(&mut self, io: &mut Io<ConnState, H::Mail>, conn: ConnId, packets: Vec<SharedPacket>) {
        let Some(st) = io.state(conn) else { return };
        let ConnState::Poll { headers, encoding, keep_alive, http10, .. } = std::mem::replace(st, ConnState::Http) else {
            return;
        };
        self.core.wait_http(conn, io.now());
        io.resume_reading(conn);
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
        // The GET may be answered while another request is being handled: its own framing.
        let reply = response::Reply { head_only: false, http10_keep_alive: http10 && keep_alive };
        let outer = self.core.reply.replace((conn, reply));
        Self::respond(&mut self.core, io, conn, resp, keep_alive);
        self.core.reply = outer;
    }

    /// Answers every parked GET whose session has packets queued.
    pub(super) fn flush_polls(&mut self, io: &mut Io<ConnState, H::Mail>) {
        let dirty = std::mem::take(&mut self.core.dirty_polls);
        for h in dirty {
            let Some(e) = self.core.sessions.get_mut(h) else {
                continue;
            };
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
                self.core.remove(h);
            }
        }
    }
}
