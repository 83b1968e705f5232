//! `ServerHandle`: `Send + Sync + Clone`, usable from any thread (a tokio task reading a feed,
//! say) to emit and manage rooms. Everything goes through the workers' mailboxes; a worker is
//! never blocked. Only [`Operator::count`] waits, on the calling thread, for the workers'
//! answers.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::worker::{Broadcast, Selector, SioMail};
use crate::engine::SendFlags;
use crate::proto::sio::encode;
use crate::rt::threads::Poster;

#[derive(Clone)]
/// A handle to a running server, for any thread: `Send + Sync + Clone`.
pub struct ServerHandle {
    poster: Poster<SioMail>,
}

impl ServerHandle {
    pub(crate) fn new(poster: Poster<SioMail>) -> ServerHandle {
        ServerHandle { poster }
    }

    /// Operations on namespace `nsp`.
    pub fn of(&self, nsp: &str) -> Operator {
        Operator { poster: self.poster.clone(), sel: Selector { nsp: nsp.to_string(), ..Default::default() }, flags: SendFlags::default() }
    }

    /// Waits until every worker has handled everything this handle posted before (mail is
    /// FIFO per worker). Call it from outside the workers.
    pub fn flush(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        for w in 0..self.poster.workers() {
            self.poster.post(w, SioMail::Flush { reply: tx.clone() });
        }
        drop(tx);
        let _ = rx.iter().take(self.poster.workers()).count();
    }

    /// Removes every socket of `nsp` from `room`.
    pub fn close_room(&self, nsp: &str, room: &str) {
        self.of(nsp).to(room).sockets_leave(&[room]);
    }
}

/// A selection of sockets of one namespace, across every worker.
#[derive(Clone)]
pub struct Operator {
    poster: Poster<SioMail>,
    sel: Selector,
    flags: SendFlags,
}

impl Operator {
    /// Sockets in `room` (repeatable: any of the rooms).
    pub fn to(mut self, room: &str) -> Self {
        self.sel.rooms.push(room.to_string());
        self
    }

    /// One socket, by id (every socket is in the room named by its id).
    pub fn socket(self, id: &str) -> Self {
        self.to(id)
    }

    /// Leaves out sockets in `room`.
    pub fn except(mut self, room: &str) -> Self {
        self.sel.except_rooms.push(room.to_string());
        self
    }

    /// Leaves out one socket, by id.
    pub fn except_socket(mut self, id: &str) -> Self {
        self.sel.except_ids.push(id.to_string());
        self
    }

    /// Drop the message for clients that cannot take it right now.
    pub fn volatile(mut self) -> Self {
        self.flags.volatile = true;
        self
    }

    /// Whether to compress for clients that negotiated permessage-deflate (default true).
    pub fn compress(mut self, compress: bool) -> Self {
        self.flags.compress = compress;
        self
    }

    fn all(&self, mail: impl Fn() -> SioMail) {
        for w in 0..self.poster.workers() {
            self.poster.post(w, mail());
        }
    }

    /// Emits to the selection; encoded once here, shared by every worker.
    pub fn emit(&self, event: &str, args: &[Value]) {
        self.emit_binary(event, args, Vec::new());
    }

    /// Emits an event whose arguments hold placeholders for `attachments`.
    pub fn emit_binary(&self, event: &str, args: &[Value], attachments: Vec<Bytes>) {
        let packet = encode::event(&self.sel.nsp, event, args, None, attachments);
        let b = Arc::new(Broadcast { sel: self.sel.clone(), packet, flags: self.flags, ack: None });
        self.all(|| SioMail::Broadcast(b.clone()));
    }

    /// Makes the selected sockets join `rooms`.
    pub fn sockets_join(&self, rooms: &[&str]) {
        let sel = Arc::new(self.sel.clone());
        let rooms = Arc::new(rooms.iter().map(|r| r.to_string()).collect::<Vec<_>>());
        self.all(|| SioMail::Join { sel: sel.clone(), rooms: rooms.clone() });
    }

    /// Makes the selected sockets leave `rooms`.
    pub fn sockets_leave(&self, rooms: &[&str]) {
        let sel = Arc::new(self.sel.clone());
        let rooms = Arc::new(rooms.iter().map(|r| r.to_string()).collect::<Vec<_>>());
        self.all(|| SioMail::Leave { sel: sel.clone(), rooms: rooms.clone() });
    }

    /// Disconnects the selected sockets; with `close_client`, their whole clients.
    pub fn disconnect_sockets(&self, close_client: bool) {
        let sel = Arc::new(self.sel.clone());
        self.all(|| SioMail::Disconnect { sel: sel.clone(), close_client });
    }

    /// Counts the selected sockets across workers (waits for every worker's answer; call it
    /// from outside the workers).
    pub fn count(&self) -> usize {
        let (tx, rx) = std::sync::mpsc::channel();
        let sel = Arc::new(self.sel.clone());
        self.all(|| SioMail::Count { sel: sel.clone(), reply: tx.clone() });
        drop(tx);
        rx.iter().take(self.poster.workers()).sum()
    }
}
