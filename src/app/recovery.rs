//! Connection state recovery, as socket.io 4.6+ does it (wire-compatible with
//! `socket.io-client`'s `connectionStateRecovery`): the options, and the offsets that name
//! every recoverable packet.
//!
//! With a recovery window set (off by default, as in Node):
//! - each socket gets a private id (`pid`), sent in its CONNECT answer `{"sid":..,"pid":..}`;
//! - every event the server sends without an ack and not volatile — to a socket, a room, a
//!   broadcast, from a handler or a `ServerHandle` — carries an offset, a string appended as
//!   its last argument (the client remembers the last one it saw), and is kept by each worker
//!   that delivered it, in its delivery order, for the window;
//! - a socket that leaves for a transport reason (transport close or error, ping timeout,
//!   server shutdown) is kept for the window: its id, rooms and data;
//! - a client that connects again with `{pid, offset}` in its CONNECT auth, within the window
//!   and while its offset is still kept, gets the same id, rooms and data, every kept packet
//!   after its offset that its rooms select (in order, before its CONNECT, as Node sends them),
//!   and `recovered` set; its connect middleware is skipped (Node's `skipMiddlewares`). Any
//!   other client gets a fresh socket.
//!
//! Where Node keeps this per process, shardcast keeps it per worker: the packets each worker
//! delivered, and the sockets that left it. A client coming back on another worker is served
//! there: when its own store does not hold the `pid`, every other worker is asked by mail, and
//! the one that kept the state answers with it and the packets, removing them (the others
//! answer that they hold nothing; the connection waits for all of them, within a deadline). Across nodes
//! (a cluster adapter) nothing is recovered: a client landing on another node gets a fresh
//! socket, as with Node's in-memory adapter.
//!
//! Bounded: per server, at most `max_packets` packets and `max_bytes` bytes of them are kept,
//! and at most `max_sockets` disconnected sockets with `max_bytes` bytes of ids and room names
//! (each cap split evenly between the workers, the oldest dropped first; counted in the
//! worker's stats), and nothing is kept longer than the window.
//!
//! Must never: deliver a gap (a client whose offset is no longer kept is not recovered), or
//! keep anything past the window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Connection state recovery options ([`ServerBuilder::recovery`](super::ServerBuilder::recovery)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// How long a socket that left is kept for its client to come back (Node's
    /// `maxDisconnectionDuration`), and how long each packet is kept.
    pub window: Duration,
    /// Packets kept at most, over the whole server.
    pub max_packets: usize,
    /// Bytes of kept packets at most, over the whole server; the kept sockets' ids and room
    /// names have a budget of the same size beside it.
    pub max_bytes: usize,
    /// Disconnected sockets kept at most, over the whole server.
    pub max_sockets: usize,
}

impl RecoveryConfig {
    /// A window of `window`, with the default caps (100,000 packets, 64 MiB, 100,000 sockets).
    pub fn new(window: Duration) -> RecoveryConfig {
        RecoveryConfig { window, max_packets: 100_000, max_bytes: 64 << 20, max_sockets: 100_000 }
    }
}

/// What the workers and the handles of one server share: the options and the offset counter.
#[derive(Debug)]
pub struct Recovery {
    pub(crate) cfg: RecoveryConfig,
    next: AtomicU64,
}

impl Recovery {
    /// The shared state of one server's recovery (`SioWorker::with_recovery` takes it).
    pub fn new(cfg: RecoveryConfig) -> Recovery {
        Recovery { cfg, next: AtomicU64::new(1) }
    }

    /// A new offset, unique in the server.
    pub(crate) fn offset(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// An offset as the client sees it (a string, as the client requires).
pub(crate) fn offset_text(offset: u64) -> String {
    itoa::Buffer::new().format(offset).to_string()
}

/// An offset the client sent back, if it is one of ours.
pub(crate) fn parse_offset(s: &str) -> Option<u64> {
    s.parse().ok()
}
