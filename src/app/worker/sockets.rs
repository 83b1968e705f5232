//! This worker's sockets and the clients (Engine.IO sessions) that own them: a slab of socket
//! slots with a generation per slot — so a reference kept across calls (a deadline, a
//! collector, a deferred disconnect) to a slot that was freed and reused is detected — and each
//! client's sockets in the order they connected.
//!
//! Must never: call user code, or touch rooms and acks (the worker takes a socket out of those
//! before it frees the slot here).

use std::rc::Rc;
use std::sync::Arc;

use super::acks::SocketAcks;
use rustc_hash::FxHashMap;

use crate::app::namespace::{DisconnectReason, Handshake, Namespace};
use crate::engine::SessionId;
use crate::proto::sio::BinaryAssembler;
use crate::rt::arena::Arena;

/// One client's connection to one namespace.
pub(crate) struct SocketState {
    pub(crate) id: Rc<str>,
    pub(crate) nsp: Rc<str>,
    pub(crate) client: SessionId,
    /// Room names are chosen by clients (the contract's `join`): keyed hashing.
    pub(crate) rooms: super::KeyedSet<Rc<str>>,
    pub(crate) handshake: Rc<Handshake>,
    pub(crate) data: Option<Box<dyn std::any::Any + Send>>,
    /// Data other threads may read (`fetch_sockets`): the reference's `socket.data`.
    pub(crate) shared: Option<serde_json::Value>,
    pub(crate) acks: SocketAcks,
    pub(crate) ns: Arc<Namespace>,
    pub(crate) gen: u32,
    /// The last selection that picked this socket (each socket is picked once per selection).
    pub(crate) stamp: u64,
    /// False once the socket has left its namespace (during its disconnect handler).
    pub(crate) connected: bool,
    /// Set when user code asked to disconnect it; done once that code has returned.
    pub(crate) leaving: bool,
    /// Its private id for connection state recovery (when recovery is on).
    pub(crate) pid: Option<Rc<str>>,
    /// It was recovered after a disconnection.
    pub(crate) recovered: bool,
    /// What it may still send ([`crate::app::SocketLimits::max_event_rate`] and
    /// `max_byte_rate`), when limited.
    pub(crate) event_bucket: Option<crate::app::limits::Bucket>,
    pub(crate) byte_bucket: Option<crate::app::limits::Bucket>,
}

/// One Engine.IO session.
pub(crate) struct Client {
    /// Sockets in the order they connected: (namespace, slot).
    pub(crate) sockets: Vec<(Rc<str>, u32)>,
    /// Boxed: only a client in the middle of a binary packet has one, and inline it would
    /// more than double every client's entry.
    pub(crate) assembler: Option<Box<BinaryAssembler>>,
    pub(crate) query: Arc<str>,
    pub(crate) origin: Option<Arc<str>>,
    pub(crate) headers: Arc<[(String, String)]>,
    pub(crate) peer: Option<std::net::SocketAddr>,
    pub(crate) address: Option<std::net::IpAddr>,
    /// Set when this layer closes the session, so its sockets get the right reason.
    pub(crate) closing_reason: Option<DisconnectReason>,
    /// Namespaces whose connection waits for a deferred middleware: (namespace, token).
    pub(crate) pending: Vec<(Rc<str>, u64)>,
    /// Bytes of the binary packet being assembled so far (its text and attachments).
    pub(crate) assembling: usize,
}

/// The slab of sockets, and the clients.
#[derive(Default)]
pub(crate) struct Sockets {
    slots: Arena<SocketState>,
    /// Clients by their engine session handle: server-chosen slot numbers, so the fast
    /// unkeyed hash is safe here.
    pub(crate) clients: FxHashMap<SessionId, Client>,
    stamp: u64,
}

impl Sockets {
    /// Sockets in the slab (connected, or leaving within this pass).
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn get(&self, idx: u32) -> Option<&SocketState> {
        self.slots.get_at(idx)
    }

    pub(crate) fn get_mut(&mut self, idx: u32) -> Option<&mut SocketState> {
        self.slots.get_at_mut(idx)
    }

    /// The socket in `idx` if it is still generation `gen` and connected.
    pub(crate) fn live(&self, idx: u32, gen: u32) -> Option<&SocketState> {
        self.get(idx).filter(|s| s.gen == gen && s.connected)
    }

    pub(crate) fn live_mut(&mut self, idx: u32, gen: u32) -> Option<&mut SocketState> {
        self.get_mut(idx).filter(|s| s.gen == gen && s.connected)
    }

    /// A live socket, for the worker's own use (a missing one is a bug of the worker).
    pub(crate) fn at(&self, idx: u32) -> &SocketState {
        self.get(idx).expect("a live socket")
    }

    pub(crate) fn at_mut(&mut self, idx: u32) -> &mut SocketState {
        self.get_mut(idx).expect("a live socket")
    }

    /// Stores a new socket, built by `make` from its slot's new generation; returns the slot.
    pub(crate) fn insert(&mut self, make: impl FnOnce(u32) -> SocketState) -> u32 {
        self.slots.insert_with(|h| make(h.gen)).idx
    }

    /// Frees a slot; returns its socket for the caller to drop (its data may be user code).
    pub(crate) fn take(&mut self, idx: u32) -> Option<SocketState> {
        let h = self.slots.handle_at(idx)?;
        self.slots.remove(h)
    }

    /// A new selection's stamp.
    pub(crate) fn next_stamp(&mut self) -> u64 {
        self.stamp += 1;
        self.stamp
    }

    /// Every slot, for a selection to mark.
    pub(crate) fn slots_mut(&mut self) -> &mut Arena<SocketState> {
        &mut self.slots
    }

    /// The slot of `client`'s socket in namespace `nsp`.
    pub(crate) fn client_socket(&self, client: SessionId, nsp: &str) -> Option<u32> {
        self.clients.get(&client)?.sockets.iter().find(|(n, _)| **n == *nsp).map(|(_, i)| *i)
    }

    /// `client`'s sockets, in the order they connected.
    pub(crate) fn of_client(&self, client: SessionId) -> Vec<u32> {
        self.clients.get(&client).map(|c| c.sockets.iter().map(|(_, i)| *i).collect()).unwrap_or_default()
    }
}
