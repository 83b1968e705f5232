//! Per-socket and per-client limits of the Socket.IO layer: how much state one client can make
//! a worker hold (pending acks, rooms, namespaces), and the typed errors a breach gives.
//!
//! Must never: enforce anything itself (the worker does, and answers on the wire).

/// Bounds on what one socket (or one client) can make its worker hold. Each breach has an
/// answer: an ack callback gets its error at once, a join is refused (the contract app acks
/// `false`), a CONNECT is answered with CONNECT_ERROR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLimits {
    /// Acks one socket may wait for at once: its own `emit_with_ack`s, broadcast acks it owes
    /// and broadcast-ack collections it started. One more gets its error (timeout) at once.
    pub max_pending_acks: usize,
    /// Rooms one socket may be in, the room named by its own id included.
    pub max_rooms: usize,
    /// Longest room name accepted, in bytes.
    pub max_room_name_len: usize,
    /// Namespaces one client (Engine.IO session) may be connected to at once (connections
    /// waiting for a deferred middleware included).
    pub max_namespaces_per_client: usize,
    /// Packets a client may send to a namespace whose deferred connect middleware has not
    /// decided yet; held, and handled once it accepts. One more closes the session (as Node
    /// answers a packet for a namespace that is not connected).
    pub max_held_packets: usize,
    /// Bytes of such held packets, together.
    pub max_held_bytes: usize,
    /// Bytes of held packets over every connection of one worker, together: past it the
    /// sessions holding the most are closed (the one whose packet would pass it when none
    /// holds more), as past their own limits.
    pub max_worker_held_bytes: usize,
    /// How long a deferred connect middleware may take; then the client is refused with
    /// CONNECT_ERROR `{"message":"Connection timed out"}`.
    pub connect_decision_timeout: std::time::Duration,
    /// Events one socket may send per second, with a burst of as many (`None`: no limit).
    /// Past it the socket is disconnected (a DISCONNECT for its namespace, reason "server
    /// namespace disconnect"; socket.io-client does not reconnect after it).
    pub max_event_rate: Option<u32>,
    /// Bytes of events one socket may send per second, with a burst of as many (or of one
    /// packet, whichever is more). Past it the socket is disconnected, as above.
    pub max_byte_rate: Option<u64>,
}

impl Default for SocketLimits {
    fn default() -> Self {
        SocketLimits {
            max_pending_acks: 1024,
            max_rooms: 1024,
            max_room_name_len: 256,
            max_namespaces_per_client: 64,
            max_held_packets: 64,
            max_held_bytes: 1 << 20,
            max_worker_held_bytes: 16 << 20,
            connect_decision_timeout: std::time::Duration::from_secs(10),
            max_event_rate: None,
            max_byte_rate: None,
        }
    }
}

/// Why a socket could not join a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The socket is already in [`SocketLimits::max_rooms`] rooms.
    #[error("too many rooms (at most {max})")]
    TooManyRooms {
        /// The limit.
        max: usize,
    },
    /// The name is longer than [`SocketLimits::max_room_name_len`].
    #[error("room name too long (at most {max} bytes)")]
    NameTooLong {
        /// The limit.
        max: usize,
    },
    /// The socket has left (or is leaving) its namespace.
    #[error("the socket is not connected")]
    NotConnected,
}

/// A token bucket refilled continuously: `rate` tokens per second, at most `rate` (or one
/// cost, whichever is more) held.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    at: std::time::Instant,
}

impl Bucket {
    pub(crate) fn full(rate: u64, now: std::time::Instant) -> Bucket {
        Bucket { tokens: rate as f64, at: now }
    }

    /// Takes `cost` tokens at `now`; false (nothing taken) when there are not enough.
    pub(crate) fn take(&mut self, rate: u64, cost: u64, now: std::time::Instant) -> bool {
        let cap = rate.max(cost) as f64;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate as f64).min(cap);
        self.at = now;
        if self.tokens >= cost as f64 {
            self.tokens -= cost as f64;
            true
        } else {
            false
        }
    }
}
