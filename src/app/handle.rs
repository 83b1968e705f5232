//! `ServerHandle`: `Send + Sync + Clone`, usable from any thread (a tokio task reading a feed,
//! say) to emit and manage rooms. Everything goes through the workers' mailboxes; a worker is
//! never blocked.
//!
//! Every call returns a `Result` and none can hang:
//! - Once the server is shut down (or a worker has exited), every call returns
//!   [`HandleError::Stopped`]; a [`Operator::count`] or [`ServerHandle::flush`] waiting when
//!   that happens returns it too, instead of waiting for an answer that will never come.
//! - [`Operator::count`] and [`ServerHandle::flush`] wait, on the calling thread, for every
//!   worker's answer. On a worker thread (inside a handler) that would wait for the worker
//!   itself, or for a worker waiting for this one, so there they return
//!   [`HandleError::WouldDeadlock`] at once. The posting calls (emit, join, leave, disconnect)
//!   never wait and work from a handler too.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::adapter::{Adapter, ClusterStats, Outbound};
use super::worker::{Broadcast, Selector, SioMail};
use crate::engine::SendFlags;
use crate::proto::sio::encode;
use crate::rt::threads::{self, Poster, Stopped};

/// Why a [`ServerHandle`] call did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// The server was shut down (or one of its workers has exited).
    #[error("the server has shut down")]
    Stopped,
    /// A call that waits for the workers' answers was made on a worker thread (inside a
    /// handler), where it would wait for itself.
    #[error("count() and flush() wait for every worker and cannot be called on a worker thread (inside a handler)")]
    WouldDeadlock,
}

impl From<Stopped> for HandleError {
    fn from(_: Stopped) -> Self {
        HandleError::Stopped
    }
}

/// How often a waiting call checks whether the server is still running.
const LIVENESS_POLL: Duration = Duration::from_millis(20);

/// Collects one answer per worker from `rx`, or [`HandleError::Stopped`] as soon as the server
/// stops (mail posted to a worker that has exited is never answered).
fn gather<T>(poster: &Poster<SioMail>, rx: &Receiver<T>) -> Result<Vec<T>, HandleError> {
    let mut answers = Vec::with_capacity(poster.workers());
    while answers.len() < poster.workers() {
        match rx.recv_timeout(LIVENESS_POLL) {
            Ok(a) => answers.push(a),
            Err(RecvTimeoutError::Timeout) if !poster.stopped() => {}
            Err(_) => return Err(HandleError::Stopped),
        }
    }
    Ok(answers)
}

/// Refuses a waiting call on a worker thread.
fn may_wait() -> Result<(), HandleError> {
    if threads::on_worker_thread() {
        Err(HandleError::WouldDeadlock)
    } else {
        Ok(())
    }
}

#[derive(Clone)]
/// A handle to a running server, for any thread: `Send + Sync + Clone`.
pub struct ServerHandle {
    poster: Poster<SioMail>,
    cluster: Option<Arc<dyn Adapter>>,
}

impl ServerHandle {
    pub(crate) fn new(poster: Poster<SioMail>, cluster: Option<Arc<dyn Adapter>>) -> ServerHandle {
        ServerHandle { poster, cluster }
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
        }
    }

    /// The cluster adapter's counters (`None` for a single node).
    pub fn cluster_stats(&self) -> Option<ClusterStats> {
        self.cluster.as_ref().map(|c| c.stats())
    }

    /// Waits until every worker has handled everything this handle posted before (mail is
    /// FIFO per worker). [`HandleError::WouldDeadlock`] on a worker thread (inside a handler);
    /// [`HandleError::Stopped`] once the server is gone.
    pub fn flush(&self) -> Result<(), HandleError> {
        may_wait()?;
        let (tx, rx) = std::sync::mpsc::channel();
        for w in 0..self.poster.workers() {
            self.poster.post(w, SioMail::Flush { reply: tx.clone() })?;
        }
        drop(tx);
        gather(&self.poster, &rx).map(drop)
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
        let packet = encode::event(&self.sel.nsp, event, args, None, attachments);
        let b = Arc::new(Broadcast { sel: self.sel.clone(), packet, flags: self.flags, ack: None });
        self.all(|| SioMail::Broadcast(b.clone()))?;
        self.tell_cluster(|| Outbound::Broadcast(b));
        Ok(())
    }

    /// Hands an operation to the other nodes, when there are any.
    fn tell_cluster(&self, out: impl FnOnce() -> Outbound) {
        if let Some(c) = &self.cluster {
            c.send(out());
        }
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

    /// Counts the selected sockets across workers, waiting for every worker's answer:
    /// [`HandleError::WouldDeadlock`] on a worker thread (inside a handler), where it would
    /// wait for itself; [`HandleError::Stopped`] once the server is gone.
    pub fn count(&self) -> Result<usize, HandleError> {
        may_wait()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let sel = Arc::new(self.sel.clone());
        self.all(|| SioMail::Count { sel: sel.clone(), reply: tx.clone() })?;
        drop(tx);
        Ok(gather(&self.poster, &rx)?.into_iter().sum())
    }
}
