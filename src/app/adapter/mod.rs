//! The adapter seam: between the Socket.IO layer and "who else, beyond this process, must hear
//! this". The workers and their mailboxes already carry a broadcast to every socket of this
//! process; an [`Adapter`] carries what originated here to the other nodes of a cluster, and
//! brings theirs in as the same encode-once [`Broadcast`] mail the workers already handle.
//!
//! - The default is the in-process adapter ([`AdapterConfig::Local`]): nobody else. The workers
//!   then hold no adapter at all (`None`), so a single-node broadcast pays one branch on an
//!   `Option`, no allocation, lock or atomic.
//! - [`AdapterConfig::Redis`]: the Redis adapter ([`redis`]), in the wire format of Node's
//!   `@socket.io/redis-adapter` ([`node`]) or of python-socketio's `RedisManager` ([`python`]),
//!   so shardcast, Node.js and Python nodes share one cluster.
//!
//! Must never: block a worker (an adapter's [`Adapter::send`] only hands the message to its own
//! thread, and drops it, counted, when that thread cannot take it), or hold messages without
//! bound.

pub mod node;
pub mod python;
pub mod redis;
pub mod sharded;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::handle::HandleError;
use super::pending::AckSink;
use super::worker::{Broadcast, Selector};
use crate::proto::eio::SharedPacket;
use crate::proto::sio::{Decoder, Limits, PacketType};

/// What a [`Question`] asks every other node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuestionKind {
    /// The ids of the selected sockets (the Node adapter's `SOCKETS`, for counts).
    Sockets,
    /// The rooms of the namespace (`ALL_ROOMS`).
    Rooms,
    /// Id, rooms, handshake and data of the selected sockets (`REMOTE_FETCH`).
    Fetch,
    /// A server-side event (`SERVER_SIDE_EMIT` with a request id); each node's handler answers
    /// once.
    ServerSideEmit,
}

/// Called once with every other node's answers (each answer's items, concatenated: socket
/// ids, room names, or socket objects in the Node adapter's JSON), or
/// [`HandleError::TimedOut`] when a node did not answer within the request timeout.
pub type Reply = Box<dyn FnOnce(Result<Vec<Value>, HandleError>) + Send>;

/// A question to every other node of the cluster.
pub struct Question {
    /// What is asked.
    pub kind: QuestionKind,
    /// Of which sockets (the namespace, rooms and except rooms).
    pub sel: Selector,
    /// For [`QuestionKind::ServerSideEmit`]: the event name and its arguments.
    pub data: Vec<Value>,
    /// Where the answers go.
    pub reply: Reply,
}

impl std::fmt::Debug for Question {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Question").field("kind", &self.kind).field("sel", &self.sel).finish()
    }
}

/// What this node tells the other nodes of its cluster.
#[derive(Debug)]
pub enum Outbound {
    /// A broadcast that originated on this node (a handler's or a `ServerHandle`'s), already
    /// delivered to this node's sockets.
    Broadcast(Arc<Broadcast>),
    /// The selected sockets, on every other node, join `rooms`.
    Join(Arc<Selector>, Arc<Vec<String>>),
    /// The selected sockets, on every other node, leave `rooms`.
    Leave(Arc<Selector>, Arc<Vec<String>>),
    /// The selected sockets, on every other node, are disconnected (their whole clients with
    /// `close`).
    Disconnect(Arc<Selector>, bool),
    /// A broadcast whose every recipient, on every other node, acks to `target` within the
    /// timeout (a `ServerHandle`'s or a handler's `emit_with_ack`).
    AckedBroadcast(Arc<Broadcast>, AckTarget, std::time::Duration),
    /// A server-side event for every other node's handlers, in namespace `.0`: `[event,
    /// args...]`, no answer asked.
    ServerSideEmit(String, Vec<Value>),
    /// Asks every other node; the answer goes to the question's reply. A question that cannot
    /// be sent is answered [`HandleError::Stopped`] at once.
    Ask(Question),
}

/// What another node (or an emitter) asks of this node's sockets, decoded once on the adapter
/// thread and posted to every worker.
#[derive(Debug)]
pub enum Inbound {
    /// Deliver to the selected sockets.
    Broadcast(Broadcast),
    /// The selected sockets join rooms.
    Join(Selector, Vec<String>),
    /// The selected sockets leave rooms.
    Leave(Selector, Vec<String>),
    /// The selected sockets are disconnected (their whole clients with `true`).
    Disconnect(Selector, bool),
}

/// Where the other nodes' recipient counts and acks of an acked broadcast go.
#[derive(Debug, Clone)]
pub enum AckTarget {
    /// A `ServerHandle` caller's collector.
    Sink(Arc<AckSink>),
    /// The collector of the emitting socket's worker: reports go there as `AckNodes`,
    /// `AckCount` and `AckAnswer` mail.
    Worker {
        /// The worker.
        worker: usize,
        /// The broadcast's ack id.
        id: u64,
    },
}

/// Carries what originated on this node to the other nodes of a cluster.
pub trait Adapter: Send + Sync + 'static {
    /// Hands `out` to the other nodes; false when it was not taken. Never blocks: when the
    /// adapter cannot take it now (its queue is full, its backend is down) it is dropped and
    /// counted in [`ClusterStats::not_delivered`]; a question is then answered at once, an
    /// acked broadcast to a [`AckTarget::Sink`] told that no other node will report (an
    /// [`AckTarget::Worker`] is the caller's to settle, on its own worker).
    fn send(&self, out: Outbound) -> bool;

    /// [`send`](Self::send) of lower priority (the admin UI's events): an adapter with a
    /// queue refuses it at once, uncounted in [`ClusterStats`] (the caller counts it), while
    /// that queue is half full, so that it never takes the room of the application's messages.
    fn send_low(&self, out: Outbound) -> bool {
        self.send(out)
    }

    /// The adapter's counters.
    fn stats(&self) -> ClusterStats;

    /// A worker's shard of `room` (joined through `join`, not a socket's own room) came to
    /// exist or ended. Only adapters that subscribe per room (sharded Redis) care; it is called
    /// on room creation and deletion only, never on a broadcast.
    fn room_changed(&self, _nsp: &str, _room: &str, _exists: bool) {}
}

/// Which adapter a server uses.
#[derive(Debug, Clone, Default)]
pub enum AdapterConfig {
    /// In-process only: the server is a single node (the default).
    #[default]
    Local,
    /// A cluster over Redis pub/sub.
    Redis(RedisConfig),
}

/// The wire format spoken on Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisFormat {
    /// `@socket.io/redis-adapter` (Node.js socket.io 4.x, `@socket.io/redis-emitter`): msgpack
    /// `[uid, packet, opts]` on `socket.io#<nsp>#` and `socket.io#<nsp>#<room>#`.
    #[default]
    Node,
    /// python-socketio's `RedisManager` (and its write-only emitter): JSON messages on the
    /// `socketio` channel.
    Python,
    /// Both at once: this node is a member of a Node cluster and of a python-socketio cluster
    /// on the same Redis. Its own broadcasts are published in both formats and it hears both;
    /// with [`RedisConfig::relay`] it also carries each format's foreign broadcasts into the
    /// other (see [`redis`] and docs/cluster.md for how duplicates and loops are prevented).
    Bridge,
}

impl RedisFormat {
    /// Whether this node speaks the Node adapter's format.
    pub fn speaks_node(self) -> bool {
        matches!(self, RedisFormat::Node | RedisFormat::Bridge)
    }

    /// Whether this node speaks python-socketio's format.
    pub fn speaks_python(self) -> bool {
        matches!(self, RedisFormat::Python | RedisFormat::Bridge)
    }
}

/// The Redis adapter's settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/` (a database number and credentials as the `redis` crate takes
    /// them).
    pub url: String,
    /// The wire format.
    pub format: RedisFormat,
    /// The channel prefix (`key` of the Node adapter, `socket.io` by default) or the channel
    /// (python-socketio's `channel`, `socketio` by default); `None` for the format's default.
    /// In [`RedisFormat::Bridge`] it is the Node prefix; the Python channel is `socketio`.
    pub channel: Option<String>,
    /// [`RedisFormat::Bridge`] only: this node relays foreign broadcasts between the formats
    /// (a Node node's or emitter's into python-socketio's format, a Python node's or emitter's
    /// into Node's). Exactly one bridge node of a cluster relays.
    pub relay: bool,
    /// Redis 7 sharded pub/sub (`SPUBLISH` / `SSUBSCRIBE`), as `@socket.io/redis-adapter`'s
    /// `createShardedAdapter` speaks it ([`sharded`]); Node format only.
    pub sharded: bool,
    /// Messages waiting for the adapter thread, at most, and messages from other nodes the
    /// workers have not handled yet, at most; past either bound they are dropped and counted.
    pub queue: usize,
    /// Answers to other nodes' questions, acked broadcasts and server-side events in progress
    /// at once, at most (each may hold a whole `fetch_sockets` answer, or this node's sockets'
    /// acks until the timeout); past it a request is dropped and counted.
    pub max_answers: usize,
    /// How long a question to the other nodes (`fetch_sockets`, `count`, `rooms`) waits for
    /// every answer (the Node adapter's `requestsTimeout`, 5 s).
    pub request_timeout: std::time::Duration,
    /// The namespaces whose request channels this node subscribes to, so that Node nodes count
    /// it when they ask (`PUBSUB NUMSUB`); the server fills it with its fixed namespaces.
    /// Broadcasts reach every namespace, dynamic ones included.
    pub namespaces: Vec<String>,
}

impl RedisConfig {
    /// A Node-format adapter on `url` with the default channel and a queue of 4096 messages.
    pub fn new(url: &str) -> RedisConfig {
        RedisConfig {
            url: url.to_string(),
            format: RedisFormat::Node,
            channel: None,
            queue: 4096,
            max_answers: 64,
            request_timeout: std::time::Duration::from_secs(5),
            namespaces: vec!["/".to_string()],
            relay: false,
            sharded: false,
        }
    }

    /// The channel prefix (Node, Bridge) or channel (Python) in use.
    pub fn channel(&self) -> &str {
        match (&self.channel, self.format) {
            (Some(c), _) => c,
            (None, RedisFormat::Node | RedisFormat::Bridge) => "socket.io",
            (None, RedisFormat::Python) => "socketio",
        }
    }

    /// The python-socketio channel in use (Python, Bridge).
    pub fn python_channel(&self) -> &str {
        match self.format {
            RedisFormat::Bridge => "socketio",
            _ => self.channel(),
        }
    }
}

/// Counters of one adapter, shared by the workers (which count drops) and its thread.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub published: AtomicU64,
    pub not_delivered: AtomicU64,
    pub received: AtomicU64,
    pub inbound_dropped: AtomicU64,
    pub outages: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ClusterStats {
        ClusterStats {
            published: self.published.load(Ordering::Relaxed),
            not_delivered: self.not_delivered.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            inbound_dropped: self.inbound_dropped.load(Ordering::Relaxed),
            outages: self.outages.load(Ordering::Relaxed),
            connected: false,
        }
    }
}

/// What an adapter has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Messages published to the other nodes.
    pub published: u64,
    /// Messages that did not reach the other nodes: dropped because the queue was full or the
    /// backend was unreachable, or refused by it.
    pub not_delivered: u64,
    /// Messages from other nodes (or emitters) handed to the workers.
    pub received: u64,
    /// Messages from other nodes dropped because the workers had `queue` of them not handled
    /// yet.
    pub inbound_dropped: u64,
    /// Times the backend was lost.
    pub outages: u64,
    /// Whether the adapter is connected and subscribed now.
    pub connected: bool,
}

/// An event as the other nodes' formats carry it: name, arguments (binary values as
/// `{"_placeholder":true,"num":N}`), and the attachments they refer to.
#[derive(Debug, Clone, PartialEq)]
pub struct EventParts {
    /// The event name.
    pub event: String,
    /// The arguments after the name.
    pub args: Vec<Value>,
    /// The binary attachments the placeholders in `args` refer to.
    pub attachments: Vec<Bytes>,
}

/// Recovers the event of an encoded broadcast (on the adapter thread, never on a worker): the
/// workers only keep the packet as encoded once for the wire.
pub fn event_of(b: &Broadcast) -> Option<EventParts> {
    let mut text = b.packet.packet_text().to_vec();
    let limits = Limits { max_depth: 1024, max_attachments: usize::MAX, max_packet_size: usize::MAX, max_ack_id_digits: 20 };
    let p = Decoder::new(limits).decode(&mut text).ok()?;
    if !matches!(p.kind, PacketType::Event | PacketType::BinaryEvent) {
        return None;
    }
    let Some(Value::Array(mut all)) = p.data else { return None };
    // With connection state recovery, the last argument is this node's offset, meaningless to
    // the other nodes' clients.
    if b.offset.is_some() {
        all.pop();
    }
    if all.is_empty() {
        return None;
    }
    let event = match all.remove(0) {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let attachments = b
        .packet
        .attachments
        .iter()
        .map(|a| match a {
            SharedPacket::Binary { raw, .. } => raw.clone(),
            SharedPacket::Text { text, .. } => text.clone(),
        })
        .collect();
    Some(EventParts { event, args: all, attachments })
}

/// Every room a broadcast leaves out, socket ids included (each socket is in the room named by
/// its id, so the other formats carry both as rooms).
pub fn except_all(sel: &Selector) -> Vec<String> {
    let mut out: Vec<String> = sel.except_rooms.clone();
    for id in &sel.except_ids {
        if !out.contains(id) {
            out.push(id.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SendFlags;
    use crate::proto::sio::encode;

    #[test]
    fn an_encoded_broadcast_gives_its_event_back() {
        let packet = encode::event(
            "/custom",
            "hi",
            &[serde_json::json!({"a": 1}), crate::proto::sio::packet::placeholder(0)],
            None,
            vec![Bytes::from_static(b"\x01\x02")],
        );
        let b = Broadcast { sel: Selector { nsp: "/custom".into(), ..Default::default() }, packet, flags: SendFlags::default(), ack: None, offset: None };
        let e = event_of(&b).unwrap();
        assert_eq!(e.event, "hi");
        assert_eq!(e.args, vec![serde_json::json!({"a": 1}), serde_json::json!({"_placeholder": true, "num": 0})]);
        assert_eq!(e.attachments, vec![Bytes::from_static(b"\x01\x02")]);
    }

    #[test]
    fn a_recovery_offset_stays_on_this_node() {
        let packet = encode::event_with_offset("/", "hi", &[serde_json::json!(1)], Some("42"), None, Vec::new());
        let b = Broadcast { sel: Selector { nsp: "/".into(), ..Default::default() }, packet, flags: SendFlags::default(), ack: None, offset: Some(42) };
        assert_eq!(event_of(&b).unwrap().args, vec![serde_json::json!(1)]);
    }

    #[test]
    fn except_carries_rooms_and_ids_once() {
        let sel = Selector { nsp: "/".into(), rooms: vec![], except_rooms: vec!["a".into(), "x".into()], except_ids: vec!["x".into(), "id1".into()] };
        assert_eq!(except_all(&sel), vec!["a", "x", "id1"]);
    }
}
