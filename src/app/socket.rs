//! The `Socket` handle that handlers receive: one client's connection to one namespace, with
//! emit, acks, rooms, broadcast operators, disconnect and a per-socket data slot.
//!
//! Its accessors never panic: the id, namespace and handshake are the socket's own (kept by the
//! handle), and after [`Socket::disconnect`] the socket is only marked as leaving until the
//! handler returns, so they keep their last values.
//!
//! Must never: outlive the handler call (it borrows the worker's state), or run a disconnect
//! (and so other user code) from inside the handler that asked for it.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use super::defer::AckReply;
use super::limits::JoinError;
use super::namespace::{AckId, AckTimeout, Handshake, PartialResponses, Responses};
use super::worker::{Broadcast, Intent, SioMail, WorkerCore};
use crate::engine::{Ctx, SendFlags};
use crate::proto::sio::encode;

/// Why [`Socket::defer_ack`] gave no reply handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeferError {
    /// The socket already waits for [`SocketLimits::max_pending_acks`](super::SocketLimits)
    /// acks (or this ack is already deferred).
    #[error("too many pending acks on this socket")]
    TooManyPendingAcks,
    /// The socket has left (or is leaving) its namespace.
    #[error("the socket is not connected")]
    NotConnected,
}

/// One socket, inside a handler.
pub struct Socket<'a, 'c> {
    core: &'a mut WorkerCore,
    ctx: &'a mut Ctx<'c, SioMail>,
    idx: u32,
    gen: u32,
    id: Rc<str>,
    nsp: Rc<str>,
    handshake: Rc<Handshake>,
}

impl<'a, 'c> Socket<'a, 'c> {
    /// A handle on the socket in slot `idx`, which must hold one.
    pub(crate) fn new(core: &'a mut WorkerCore, ctx: &'a mut Ctx<'c, SioMail>, idx: u32) -> Self {
        let s = core.sockets.at(idx);
        let (gen, id, nsp, handshake) = (s.gen, s.id.clone(), s.nsp.clone(), s.handshake.clone());
        Socket { core, ctx, idx, gen, id, nsp, handshake }
    }

    /// Connected, not leaving, and still the socket this handle was made for.
    fn alive(&self) -> bool {
        self.core.usable(self.idx, self.gen)
    }

    /// The socket id (also the name of the room only it is in).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The namespace of this socket.
    pub fn nsp(&self) -> &str {
        &self.nsp
    }

    /// What the client sent when it connected.
    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    /// Whether the socket is still connected: false once a handler has disconnected it (even
    /// before the disconnect is carried out, when that handler returns).
    pub fn connected(&self) -> bool {
        self.alive()
    }

    /// Emits an event to this socket.
    pub fn emit(&mut self, event: &str, args: &[Value]) {
        self.emit_binary(event, args, Vec::new());
    }

    /// Emits an event whose arguments hold placeholders for `attachments`.
    pub fn emit_binary(&mut self, event: &str, args: &[Value], attachments: Vec<Bytes>) {
        self.emit_with_flags(event, args, attachments, SendFlags::default());
    }

    /// Emits an event the client may drop when it cannot take it right now (the reference's
    /// `socket.volatile.emit`).
    pub fn emit_volatile(&mut self, event: &str, args: &[Value]) {
        self.emit_with_flags(event, args, Vec::new(), SendFlags { volatile: true, ..SendFlags::default() });
    }

    /// Emits with explicit flags (`volatile`, `compress`).
    pub fn emit_with_flags(&mut self, event: &str, args: &[Value], attachments: Vec<Bytes>, flags: SendFlags) {
        if !self.alive() {
            return;
        }
        self.core.outgoing(self.ctx, self.idx, event, args);
        // With connection state recovery, an emit to one socket is kept and carries an offset
        // too (Node sends it through the adapter to the socket's own room).
        if let Some(offset) = self.core.stamp(flags) {
            let sel = super::worker::Selector { nsp: self.nsp.to_string(), rooms: vec![self.id.to_string()], ..Default::default() };
            let packet = encode::event_with_offset(self.nsp(), event, args, Some(&super::recovery::offset_text(offset)), None, attachments);
            self.core.send_to(self.ctx, self.idx, &packet, flags);
            let b = std::sync::Arc::new(Broadcast { sel, packet, flags, ack: None, offset: Some(offset) });
            self.core.keep_packet(self.ctx, &b);
            return;
        }
        let enc = encode::event(self.nsp(), event, args, None, attachments);
        self.core.send_to(self.ctx, self.idx, &enc, flags);
    }

    /// Whether this socket was recovered after a short disconnection (connection state
    /// recovery): same id, rooms and data, and the packets it missed were sent again.
    pub fn recovered(&self) -> bool {
        self.core.sockets.get(self.idx).is_some_and(|s| s.gen == self.gen && s.recovered)
    }

    /// Emits an event and waits for the client's ack: `cb` gets the ack's arguments (and
    /// attachments), or [`AckTimeout`] after `timeout`. A late ack is ignored. When the socket
    /// already waits for [`SocketLimits::max_pending_acks`](super::SocketLimits) acks, nothing
    /// is sent and `cb` gets [`AckTimeout`] at once.
    pub fn emit_with_ack(
        &mut self,
        event: &str,
        args: &[Value],
        timeout: Duration,
        cb: impl FnOnce(&mut Socket<'_, '_>, Result<(Vec<Value>, Vec<Bytes>), AckTimeout>) + 'static,
    ) {
        self.emit_binary_with_ack(event, args, Vec::new(), timeout, cb);
    }

    /// [`Socket::emit_with_ack`] with binary attachments (placeholders in `args`): the
    /// BINARY_EVENT header and then each attachment, as the reference sends them.
    pub fn emit_binary_with_ack(
        &mut self,
        event: &str,
        args: &[Value],
        attachments: Vec<Bytes>,
        timeout: Duration,
        cb: impl FnOnce(&mut Socket<'_, '_>, Result<(Vec<Value>, Vec<Bytes>), AckTimeout>) + 'static,
    ) {
        if !self.alive() {
            return;
        }
        let deadline = self.ctx.now() + timeout;
        match self.core.add_ack(self.idx, deadline, Box::new(cb)) {
            Ok(id) => {
                self.core.outgoing(self.ctx, self.idx, event, args);
                let enc = encode::event(self.nsp(), event, args, Some(id), attachments);
                self.core.send_to(self.ctx, self.idx, &enc, SendFlags::default());
            }
            // Too many acks pending on this socket: nothing is sent, the callback gets its
            // timeout now.
            Err(cb) => cb(self, Err(AckTimeout)),
        }
    }

    /// Answers an incoming event's ack.
    pub fn ack(&mut self, ack: AckId, args: &[Value]) {
        self.ack_binary(ack, args, Vec::new());
    }

    /// Answers an ack with binary attachments (placeholders in `args`).
    pub fn ack_binary(&mut self, ack: AckId, args: &[Value], attachments: Vec<Bytes>) {
        if !self.alive() {
            return;
        }
        // Answered here: a deferred reply for the same id, if any, will find nothing owed.
        self.core.sockets.at_mut(self.idx).acks.undefer(ack.0);
        let enc = encode::ack(self.nsp(), ack.0, args, attachments);
        self.core.send_to(self.ctx, self.idx, &enc, SendFlags::default());
    }

    /// Takes an incoming event's ack out of the handler, to answer it later from any thread:
    /// the [`AckReply`] is `Send` (move it to a thread pool or a tokio task) and posts the
    /// answer to this socket's worker. It counts against the socket's pending-ack limit
    /// ([`SocketLimits::max_pending_acks`](super::SocketLimits)) until it is sent or dropped;
    /// at the limit, or for an id already taken, this gives [`DeferError`] and the client
    /// gets no answer. Never block the handler waiting for the answer yourself: the handler
    /// runs on the worker thread that serves every other client of its core.
    pub fn defer_ack(&mut self, ack: AckId) -> Result<AckReply, DeferError> {
        if !self.alive() {
            return Err(DeferError::NotConnected);
        }
        let max = self.core.acks_max();
        if !self.core.sockets.at_mut(self.idx).acks.defer(ack.0, max) {
            return Err(DeferError::TooManyPendingAcks);
        }
        Ok(AckReply::new(self.ctx.remote(), self.idx, self.gen, ack.0, std::sync::Arc::from(&*self.nsp)))
    }

    /// Joins a room (on this worker's shard of the room table). Past the socket's
    /// [`SocketLimits`](super::SocketLimits) the join is dropped; [`Socket::try_join`] says so.
    pub fn join(&mut self, room: &str) {
        if let Err(e) = self.try_join(room) {
            tracing::debug!(socket = %self.id, room, error = %e, "join refused");
        }
    }

    /// Joins a room, or says why not: too many rooms, a name too long, or the socket left.
    pub fn try_join(&mut self, room: &str) -> Result<(), JoinError> {
        if !self.alive() {
            return Err(JoinError::NotConnected);
        }
        self.core.join_noted(self.ctx, self.idx, room)
    }

    /// Leaves a room.
    pub fn leave(&mut self, room: &str) {
        if self.alive() {
            self.core.leave_noted(self.ctx, self.idx, room);
        }
    }

    /// The rooms this socket is in (its own id included); none once it has left.
    pub fn rooms(&self) -> Vec<String> {
        self.core.sockets.live(self.idx, self.gen).map(|s| s.rooms.iter().map(|r| r.to_string()).collect()).unwrap_or_default()
    }

    /// Sockets in `room`, except this one (the reference's `socket.to(room)`).
    pub fn to(&mut self, room: &str) -> Operator<'_, 'a, 'c> {
        let mut op = self.broadcast();
        op.sel.rooms.push(room.to_string());
        op
    }

    /// Every socket of the namespace except this one (`socket.broadcast`).
    pub fn broadcast(&mut self) -> Operator<'_, 'a, 'c> {
        let me = self.id.to_string();
        let mut op = self.within_namespace();
        op.sel.except_ids.push(me);
        op
    }

    /// Sockets of the whole namespace, this one included (the reference's `io.of(nsp)`).
    pub fn within_namespace(&mut self) -> Operator<'_, 'a, 'c> {
        let nsp = self.nsp.to_string();
        Operator { sel: super::worker::Selector { nsp, ..Default::default() }, flags: SendFlags::default(), socket: self }
    }

    /// Leaves this namespace: the client gets a DISCONNECT for it. Done when the running
    /// handler returns (its disconnect handler never runs inside this one); from now on the
    /// socket is [not connected](Socket::connected) and emits to it are dropped.
    pub fn disconnect(&mut self) {
        if self.alive() {
            self.core.request(self.idx, Intent::Leave);
        }
    }

    /// Disconnects the whole client: every namespace it joined (in that order), then its
    /// Engine.IO session. Done when the running handler returns, like [`Socket::disconnect`].
    pub fn disconnect_client(&mut self) {
        if self.alive() {
            let client = self.core.sockets.at(self.idx).client;
            self.core.request(self.idx, Intent::CloseClient(client));
        }
    }

    /// The per-socket data slot (empty once the socket is gone).
    pub fn data<T: 'static>(&mut self) -> Option<&mut T> {
        let (idx, gen) = (self.idx, self.gen);
        self.core.sockets.get_mut(idx).filter(|s| s.gen == gen)?.data.as_mut()?.downcast_mut()
    }

    /// Data about this socket that other threads may read: what
    /// [`Operator::fetch_sockets`](super::handle::Operator::fetch_sockets) reports (the
    /// reference's `socket.data`). None once the socket is gone.
    pub fn shared_data(&self) -> Option<&Value> {
        self.core.sockets.live(self.idx, self.gen)?.shared.as_ref()
    }

    /// Sets the data [`Socket::shared_data`] returns.
    pub fn set_shared_data(&mut self, value: Value) {
        let (idx, gen) = (self.idx, self.gen);
        let Some(s) = self.core.sockets.get_mut(idx).filter(|s| s.gen == gen) else { return };
        match self.core.admin.clone() {
            None => s.shared = Some(value),
            Some(tap) => {
                s.shared = Some(value.clone());
                tap.updated(self.core, self.ctx, idx, "data", value);
            }
        }
    }

    /// Tells the admin UI (development mode) about an incoming event: its namespace hook.
    pub(crate) fn admin_received(&mut self, ev: &super::namespace::Event) {
        if let Some(tap) = self.core.admin.clone() {
            tap.received(self.core, self.ctx, self.idx, ev);
        }
    }

    /// This server's [`ServerHandle`](super::ServerHandle), so handlers need no global: emit
    /// anywhere, manage rooms, and ask questions whose answers come later
    /// ([`Pending::then`](super::Pending::then) inside a handler).
    pub fn handle(&self) -> super::ServerHandle {
        self.core.handle.clone()
    }

    /// Stores a value in the per-socket data slot (dropped when the socket is gone). It is
    /// `Send` so that connection state recovery can hand it to the worker the client comes
    /// back on.
    pub fn set_data<T: Send + 'static>(&mut self, value: T) {
        let (idx, gen) = (self.idx, self.gen);
        if let Some(s) = self.core.sockets.get_mut(idx).filter(|s| s.gen == gen) {
            s.data = Some(Box::new(value));
        }
    }
}

/// Emits to a selection of sockets, on every worker; the packet is encoded once.
pub struct Operator<'s, 'a, 'c> {
    socket: &'s mut Socket<'a, 'c>,
    sel: super::worker::Selector,
    flags: SendFlags,
}

impl Operator<'_, '_, '_> {
    /// Adds a room (sockets in any of the rooms are picked, each once).
    pub fn to(mut self, room: &str) -> Self {
        self.sel.rooms.push(room.to_string());
        self
    }

    /// Leaves out sockets in `room`.
    pub fn except(mut self, room: &str) -> Self {
        self.sel.except_rooms.push(room.to_string());
        self
    }

    /// Drop the message for clients that cannot take it now.
    pub fn volatile(mut self) -> Self {
        self.flags.volatile = true;
        self
    }

    /// Whether to compress for clients that negotiated permessage-deflate (default true).
    pub fn compress(mut self, compress: bool) -> Self {
        self.flags.compress = compress;
        self
    }

    /// Emits an event to the selection.
    pub fn emit(self, event: &str, args: &[Value]) {
        self.emit_binary(event, args, Vec::new());
    }

    /// Emits an event whose arguments hold placeholders for `attachments`.
    pub fn emit_binary(self, event: &str, args: &[Value], attachments: Vec<Bytes>) {
        let offset = self.socket.core.stamp(self.flags);
        let text = offset.map(super::recovery::offset_text);
        let packet = encode::event_with_offset(&self.sel.nsp, event, args, text.as_deref(), None, attachments);
        let b = Broadcast { sel: self.sel, packet, flags: self.flags, ack: None, offset };
        self.socket.core.broadcast(self.socket.ctx, b);
    }

    /// Emits to every selected socket, on every worker, and collects each one's ack (the
    /// reference's `timeout(d).emitWithAck()`): `cb` runs on this socket with all the answers,
    /// or with the answers that came before `timeout`. A collection counts against this
    /// socket's pending-ack limit; past it nothing is sent and `cb` gets no answers at once.
    pub fn emit_with_ack(
        self,
        event: &str,
        args: &[Value],
        timeout: Duration,
        cb: impl FnOnce(&mut Socket<'_, '_>, Result<Responses, PartialResponses>) + 'static,
    ) {
        self.emit_binary_with_ack(event, args, Vec::new(), timeout, cb);
    }

    /// [`Operator::emit_with_ack`] with binary attachments (placeholders in `args`).
    pub fn emit_binary_with_ack(
        self,
        event: &str,
        args: &[Value],
        attachments: Vec<Bytes>,
        timeout: Duration,
        cb: impl FnOnce(&mut Socket<'_, '_>, Result<Responses, PartialResponses>) + 'static,
    ) {
        let s = self.socket;
        if !s.alive() {
            return;
        }
        let r = s.core.broadcast_with_ack(s.ctx, s.idx, self.sel, event, args, attachments, self.flags, timeout, Box::new(cb));
        // Too many acks pending on this socket: nothing is sent, the callback gets its
        // timeout (with no answers) now.
        if let Err(cb) = r {
            cb(s, Err(PartialResponses { responses: Vec::new() }));
        }
    }
}
