//! `ServerHandle`: `Send + Sync + Clone`, usable from any thread (a tokio task reading a feed,
//! say, or a handler) to emit, manage rooms and ask about sockets. Everything goes through the
//! workers' mailboxes; a worker is never blocked.
//!
//! - The posting calls (emit, join, leave, disconnect) return once the mail is posted.
//! - The asking calls (`count`, `fetch_sockets`, `rooms`, `emit_with_ack`, `flush`) return a
//!   [`Pending`] at once: `.wait()` it on an ordinary thread, `.await` it in async code, or give
//!   it a callback with `.then(..)` — the way to ask from inside a handler, where waiting would
//!   wait for the handler's own worker.
//! - Once the server is shut down (or a worker has exited), every call returns
//!   [`HandleError::Stopped`], and a [`Pending`] that was waiting ends with it.
//!
//! Must never: block a worker, or leave a caller waiting for an answer that cannot come.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use super::adapter::{node, AckTarget, Adapter, ClusterStats, Outbound, Question, QuestionKind, Reply};
use super::admin_ui::tap::{AdminMail, NamespaceCounts};
use super::namespace::{Handshake, PartialResponses, Responses};
use super::pending::{self, AckSink, Merge, Part, Pending, RoomNames};
use super::recovery::Recovery;
use super::worker::{AckOrigin, Broadcast, BroadcastAck, Selector, SioMail};
use crate::engine::SendFlags;
use crate::proto::sio::encode;
use crate::rt::threads::{Poster, Stopped};

/// Why a [`ServerHandle`] call did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// The server was shut down (or one of its workers has exited).
    #[error("the server has shut down")]
    Stopped,
    /// [`Pending::wait`] was called on a worker thread (inside a handler) before the answer was
    /// complete: it would wait for its own worker. Use [`Pending::then`] there.
    #[error("waiting for the workers' answers on a worker thread (inside a handler) would wait for itself; use Pending::then")]
    WouldDeadlock,
    /// [`Pending::wait_timeout`] gave up.
    #[error("no complete answer in time")]
    TimedOut,
}

impl From<Stopped> for HandleError {
    fn from(_: Stopped) -> Self {
        HandleError::Stopped
    }
}

/// One socket, as [`Operator::fetch_sockets`] reports it (the reference's `RemoteSocket`).
#[derive(Debug, Clone, PartialEq)]
pub struct SocketInfo {
    /// The socket id.
    pub id: String,
    /// Its namespace.
    pub nsp: String,
    /// The rooms it is in (its own id included), sorted.
    pub rooms: Vec<String>,
    /// What its client sent when it connected.
    pub handshake: Handshake,
    /// What handlers stored with [`Socket::set_shared_data`](super::Socket::set_shared_data)
    /// (the reference's `socket.data`).
    pub data: Option<Value>,
    /// The worker that serves it (0 for a socket of another node).
    pub worker: usize,
    /// `None` for a socket of this node; for a socket of another node of the cluster, that
    /// node's id (its adapter uid; empty when the answer did not say).
    pub node: Option<String>,
}

/// What became of an emit beyond this node ([`Operator::emit_reporting`]); this node's workers
/// were all handed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Emitted {
    /// `None` on a single node. In a cluster, whether the adapter took it for the other nodes:
    /// `Some(false)` when its queue was full or its backend is unreachable (counted in
    /// [`ClusterStats::not_delivered`]), so the other nodes' clients will not get it.
    pub cluster: Option<bool>,
}

#[derive(Clone)]
/// A handle to a running server, for any thread: `Send + Sync + Clone`.
pub struct ServerHandle {
    poster: Poster<SioMail>,
    cluster: Option<Arc<dyn Adapter>>,
    /// Connection state recovery, when on: emits get an offset.
    recovery: Option<Arc<Recovery>>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle").field("workers", &self.poster.workers()).field("stopped", &self.poster.stopped()).finish()
    }
}

/// Whether the server behind `poster` has stopped, as a [`Pending`] asks it.
fn stopped_check(poster: &Poster<SioMail>) -> Arc<dyn Fn() -> bool + Send + Sync> {
    let p = poster.clone();
    Arc::new(move || p.stopped())
}

/// Asks every worker for its part: `mail` wraps each worker's [`Part`]. A part whose post
/// fails is dropped, which ends the answer with [`HandleError::Stopped`].
fn ask<T: Merge>(poster: &Poster<SioMail>, mail: impl Fn(Part<T>) -> SioMail) -> Pending<T> {
    let workers = poster.workers();
    let (pending, parts) = pending::gather(workers.max(1), stopped_check(poster));
    if workers == 0 || poster.stopped() {
        drop(parts);
        return pending;
    }
    for (w, part) in parts.into_iter().enumerate() {
        // On failure the mail (and the part in it) is dropped: the answer ends Stopped.
        let _ = poster.post(w, mail(part));
    }
    pending
}

impl ServerHandle {
    pub(crate) fn new(poster: Poster<SioMail>, cluster: Option<Arc<dyn Adapter>>) -> ServerHandle {
        ServerHandle { poster, cluster, recovery: None }
    }

    pub(crate) fn with_recovery(mut self, recovery: Option<Arc<Recovery>>) -> ServerHandle {
        self.recovery = recovery;
        self
    }

    /// A handle that belongs to no running server: every call answers
    /// [`HandleError::Stopped`] (the handle of a worker built outside [`super::Server`], as in
    /// the in-memory test harness).
    pub fn detached() -> ServerHandle {
        ServerHandle { poster: Poster::detached(), cluster: None, recovery: None }
    }

    /// Operations on namespace `nsp`: on this node's sockets and, in a cluster, on every other
    /// node's (emits, joins, leaves and disconnects are published to them; `count` is this
    /// node's).
    pub fn of(&self, nsp: &str) -> Operator {
        Operator {
            poster: self.poster.clone(),
            cluster: self.cluster.clone(),
            sel: Selector { nsp: nsp.to_string(), ..Default::default() },
            flags: SendFlags::default(),
            recovery: self.recovery.clone(),
        }
    }

    /// The cluster adapter's counters (`None` for a single node).
    pub fn cluster_stats(&self) -> Option<ClusterStats> {
        self.cluster.as_ref().map(|c| c.stats())
    }

    /// Completes once every worker has handled everything posted to it before this call (mail
    /// is FIFO per worker) — from this thread or any other. From inside a handler, the
    /// handler's own worker handles it after the handler returns, so use
    /// [`Pending::then`] there.
    pub fn flush(&self) -> Pending<()> {
        ask(&self.poster, |part| SioMail::Flush { part })
    }

    /// Every socket of this node, as the admin UI shows them (its development mode).
    pub(crate) fn admin_sockets(&self) -> Pending<Vec<Value>> {
        ask(&self.poster, |part| SioMail::Admin(AdminMail::Sockets { part }))
    }

    /// The sockets per namespace of this node (the admin UI's `server_stats`).
    pub(crate) fn admin_namespaces(&self) -> Pending<NamespaceCounts> {
        ask(&self.poster, |part| SioMail::Admin(AdminMail::Namespaces { part }))
    }

    /// Removes every socket of `nsp` from `room`.
    pub fn close_room(&self, nsp: &str, room: &str) -> Result<(), HandleError> {
        self.of(nsp).to(room).sockets_leave(&[room])
    }
}

/// A selection of sockets of one namespace, across every worker.
#[derive(Clone)]
pub struct Operator {
    poster: Poster<SioMail>,
    cluster: Option<Arc<dyn Adapter>>,
    sel: Selector,
    flags: SendFlags,
    recovery: Option<Arc<Recovery>>,
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

    fn all(&self, mail: impl Fn() -> SioMail) -> Result<(), HandleError> {
        for w in 0..self.poster.workers() {
            self.poster.post(w, mail())?;
        }
        Ok(())
    }

    /// Emits to the selection; encoded once here, shared by every worker.
    pub fn emit(&self, event: &str, args: &[Value]) -> Result<(), HandleError> {
        self.emit_binary(event, args, Vec::new())
    }

    /// Emits an event whose arguments hold placeholders for `attachments`.
    pub fn emit_binary(&self, event: &str, args: &[Value], attachments: Vec<Bytes>) -> Result<(), HandleError> {
        self.emit_binary_reporting(event, args, attachments).map(|_| ())
    }

    /// [`Operator::emit`], saying whether the cluster adapter took it for the other nodes.
    pub fn emit_reporting(&self, event: &str, args: &[Value]) -> Result<Emitted, HandleError> {
        self.emit_binary_reporting(event, args, Vec::new())
    }

    /// [`Operator::emit_binary`], saying whether the cluster adapter took it for the other
    /// nodes.
    pub fn emit_binary_reporting(&self, event: &str, args: &[Value], attachments: Vec<Bytes>) -> Result<Emitted, HandleError> {
        // With connection state recovery, a non-volatile emit carries an offset.
        let offset = self.recovery.as_ref().filter(|_| !self.flags.volatile).map(|r| r.offset());
        let text = offset.map(super::recovery::offset_text);
        let packet = encode::event_with_offset(&self.sel.nsp, event, args, text.as_deref(), None, attachments);
        let b = Arc::new(Broadcast { sel: self.sel.clone(), packet, flags: self.flags, ack: None, offset });
        self.publish(b.clone())?;
        Ok(Emitted { cluster: self.tell_cluster(|| Outbound::Broadcast(b)) })
    }

    /// Posts a broadcast to every worker; worker 0 counts it as emitted (`SioMail::Publish`).
    fn publish(&self, b: Arc<Broadcast>) -> Result<(), HandleError> {
        for w in 0..self.poster.workers() {
            self.poster.post(w, if w == 0 { SioMail::Publish(b.clone()) } else { SioMail::Broadcast(b.clone()) })?;
        }
        Ok(())
    }

    /// Hands an operation to the other nodes, when there are any: `None` on a single node,
    /// else whether the adapter took it (not taken: dropped and counted by the adapter).
    fn tell_cluster(&self, out: impl FnOnce() -> Outbound) -> Option<bool> {
        self.cluster.as_ref().map(|c| c.send(out()))
    }

    /// Emits to the selection and collects every recipient's ack, on every worker (the
    /// reference's `io.timeout(t).emitWithAck()`): the answer is every recipient's arguments
    /// and attachments, or — `Err(PartialResponses)` — those that came within `timeout`.
    pub fn emit_with_ack(&self, event: &str, args: &[Value], timeout: Duration) -> Pending<Result<Responses, PartialResponses>> {
        self.emit_binary_with_ack(event, args, Vec::new(), timeout)
    }

    /// [`Operator::emit_with_ack`] with binary attachments (placeholders in `args`).
    pub fn emit_binary_with_ack(
        &self,
        event: &str,
        args: &[Value],
        attachments: Vec<Bytes>,
        timeout: Duration,
    ) -> Pending<Result<Responses, PartialResponses>> {
        let workers = self.poster.workers();
        // In a cluster, the other nodes count as one more reporter until the adapter knows how
        // many they are.
        let (pending, sink) = AckSink::new(workers + usize::from(self.cluster.is_some()), stopped_check(&self.poster));
        if workers == 0 || self.poster.stopped() {
            sink.stop();
            return pending;
        }
        let id = super::worker::next_handle_broadcast_id();
        let packet = encode::event(&self.sel.nsp, event, args, Some(id), attachments);
        let ack = BroadcastAck { id, origin: AckOrigin::Handle(sink.clone()), deadline: Instant::now() + timeout };
        let b = Arc::new(Broadcast { sel: self.sel.clone(), packet, flags: self.flags, ack: Some(ack), offset: None });
        if self.publish(b.clone()).is_err() {
            sink.stop();
            return pending;
        }
        self.tell_cluster(|| Outbound::AckedBroadcast(b, AckTarget::Sink(sink), timeout));
        pending
    }

    /// Makes the selected sockets join `rooms`.
    pub fn sockets_join(&self, rooms: &[&str]) -> Result<(), HandleError> {
        let sel = Arc::new(self.sel.clone());
        let rooms = Arc::new(rooms.iter().map(|r| r.to_string()).collect::<Vec<_>>());
        self.all(|| SioMail::Join { sel: sel.clone(), rooms: rooms.clone() })?;
        self.tell_cluster(|| Outbound::Join(sel, rooms));
        Ok(())
    }

    /// Makes the selected sockets leave `rooms`.
    pub fn sockets_leave(&self, rooms: &[&str]) -> Result<(), HandleError> {
        let sel = Arc::new(self.sel.clone());
        let rooms = Arc::new(rooms.iter().map(|r| r.to_string()).collect::<Vec<_>>());
        self.all(|| SioMail::Leave { sel: sel.clone(), rooms: rooms.clone() })?;
        self.tell_cluster(|| Outbound::Leave(sel, rooms));
        Ok(())
    }

    /// Disconnects the selected sockets; with `close_client`, their whole clients.
    pub fn disconnect_sockets(&self, close_client: bool) -> Result<(), HandleError> {
        let sel = Arc::new(self.sel.clone());
        self.all(|| SioMail::Disconnect { sel: sel.clone(), close_client })?;
        self.tell_cluster(|| Outbound::Disconnect(sel, close_client));
        Ok(())
    }

    /// Counts the selected sockets across workers and, in a cluster, on every other node
    /// (their `SOCKETS` answers; [`HandleError::TimedOut`] when one does not answer within
    /// the adapter's request timeout).
    pub fn count(&self) -> Pending<usize> {
        let sel = Arc::new(self.sel.clone());
        let local = ask(&self.poster, |part| SioMail::Count { sel: sel.clone(), part });
        self.cluster_wide(local, QuestionKind::Sockets, |ids| ids.len())
    }

    /// The selected sockets across workers and, in a cluster, on every other node: id, rooms,
    /// handshake and shared data of each (the reference's `fetchSockets()`), in no particular
    /// order. Sockets of other nodes have [`SocketInfo::node`] set.
    pub fn fetch_sockets(&self) -> Pending<Vec<SocketInfo>> {
        let sel = Arc::new(self.sel.clone());
        let local = ask(&self.poster, |part| SioMail::Fetch { sel: sel.clone(), part });
        let nsp = self.sel.nsp.clone();
        self.cluster_wide(local, QuestionKind::Fetch, move |v| v.iter().filter_map(|s| node::socket_info(&nsp, s, Some(""))).collect())
    }

    /// The rooms of the namespace that have a member, across workers, sorted, each once — the
    /// sockets' own-id rooms left out (the reference's `adapter.rooms` without them). Rooms,
    /// except-rooms and except-ids of the selection do not apply. In a cluster the other
    /// nodes' rooms are added (`ALL_ROOMS`; a Node.js node's answer includes its sockets'
    /// own-id rooms, as its `allRooms()` does).
    pub fn rooms(&self) -> Pending<Vec<String>> {
        let nsp: Arc<str> = Arc::from(self.sel.nsp.as_str());
        let (pending, done) = Pending::new(stopped_check(&self.poster));
        let local = ask::<RoomNames>(&self.poster, |part| SioMail::Rooms { nsp: nsp.clone(), part });
        let names = |v: Vec<Value>| RoomNames(v.into_iter().filter_map(|r| r.as_str().map(str::to_string)).collect());
        self.cluster_wide(local, QuestionKind::Rooms, names).then(move |r| done.complete(r.map(|n| n.0)));
        pending
    }

    /// Emits a server-side event to every other node of the cluster (the reference's
    /// `serverSideEmit`): their namespace's [`on_server_side`](super::Namespace::on_server_side)
    /// handler (or `io.on(event)` on a Node.js node) runs with `args`. Nothing happens on a
    /// single node, nor on this one.
    pub fn server_side_emit(&self, event: &str, args: &[Value]) -> Result<(), HandleError> {
        if self.poster.stopped() {
            return Err(HandleError::Stopped);
        }
        let mut data = vec![Value::String(event.to_string())];
        data.extend_from_slice(args);
        self.tell_cluster(|| Outbound::ServerSideEmit(self.sel.nsp.clone(), data));
        Ok(())
    }

    /// [`Operator::server_side_emit`] asking every other node's handler for an answer (the
    /// reference's `serverSideEmitWithAck`): one value per other node, or
    /// [`HandleError::TimedOut`] when one did not answer within the adapter's request timeout.
    /// On a single node, no answers at once.
    pub fn server_side_emit_with_ack(&self, event: &str, args: &[Value]) -> Pending<Vec<Value>> {
        let (pending, done) = Pending::new(stopped_check(&self.poster));
        let Some(cluster) = &self.cluster else {
            done.complete(Ok(Vec::new()));
            return pending;
        };
        let mut data = vec![Value::String(event.to_string())];
        data.extend_from_slice(args);
        let reply: Reply = Box::new(move |r| done.complete(r));
        // Not taken: the adapter has answered the question.
        let _ = cluster.send(Outbound::Ask(Question { kind: QuestionKind::ServerSideEmit, sel: self.sel.clone(), data, reply }));
        pending
    }

    /// `local`, and in a cluster the other nodes' answers to the same question (`convert`ed)
    /// merged into it; the first error wins.
    fn cluster_wide<T: Merge>(&self, local: Pending<T>, kind: QuestionKind, convert: impl FnOnce(Vec<Value>) -> T + Send + 'static) -> Pending<T> {
        let Some(cluster) = &self.cluster else { return local };
        let (pending, done) = Pending::new(stopped_check(&self.poster));
        let both = Arc::new(Both { parts: std::sync::Mutex::new((None, None)), done });
        let b = both.clone();
        local.then(move |r| b.put(true, r));
        let b = both.clone();
        let reply: Reply = Box::new(move |r| b.put(false, r.map(convert)));
        // Not taken: the adapter has answered the question.
        let _ = cluster.send(Outbound::Ask(Question { kind, sel: self.sel.clone(), data: Vec::new(), reply }));
        pending
    }
}

/// One side's answer, once it is in.
type Side<T> = Option<Result<T, HandleError>>;

/// This node's answer and the other nodes', until both are in.
struct Both<T: Merge> {
    parts: std::sync::Mutex<(Side<T>, Side<T>)>,
    done: Arc<pending::Completion<T>>,
}

impl<T: Merge> Both<T> {
    fn put(&self, local: bool, r: Result<T, HandleError>) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        if local {
            parts.0 = Some(r);
        } else {
            parts.1 = Some(r);
        }
        if parts.0.is_none() || parts.1.is_none() {
            return;
        }
        let (a, b) = (parts.0.take().expect("checked"), parts.1.take().expect("checked"));
        drop(parts);
        self.done.complete(match (a, b) {
            (Ok(mut a), Ok(b)) => {
                a.merge(b);
                a.finish();
                Ok(a)
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        });
    }
}
