//! Pending acks of this worker's sockets and the broadcast-ack collections it started: for each
//! socket the acks it owes us (bounded by [`SocketLimits::max_pending_acks`]), one deadline per
//! pending ack in a min-heap, and the collectors that gather every recipient's answer to a
//! broadcast with ack.
//!
//! The heaps drop an entry lazily: an ack answered before its deadline leaves its entry behind,
//! skipped when it comes due. So that this never grows with the packets a client sends, a heap
//! that holds more than twice its live entries (plus a small constant) is compacted.
//!
//! Must never: call user code (callbacks are handed back to the caller, which runs them under
//! `catch_unwind`), read the clock (time is passed in), or hold an entry for an ack that no
//! socket can answer any more beyond the compaction bound.
//!
//! Maps here are keyed by ack ids this worker chose (a per-socket counter, or a broadcast's id)
//! and slot numbers: integers a client cannot pick, so the unkeyed Fx hasher is safe. A client's
//! ACK with an id of its own choosing only misses.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use bytes::Bytes;
use rustc_hash::FxHashMap;
use serde_json::Value;

use super::super::limits::SocketLimits;
use super::super::namespace::{AckCallback, BroadcastAckCallback, Responses};
use super::mail::AckOrigin;
use crate::app::pending::AckSink;

/// An ack a socket owes: to a callback of this worker, or to a broadcast's collector.
pub(crate) enum PendingAck {
    Callback(AckCallback),
    Collect { origin: AckOrigin },
}

impl std::fmt::Debug for PendingAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PendingAck::Callback(_) => f.write_str("Callback"),
            PendingAck::Collect { origin: AckOrigin::Worker(w) } => f.debug_struct("Collect").field("worker", w).finish(),
            PendingAck::Collect { origin: AckOrigin::Handle(_) } => f.write_str("Collect(handle)"),
        }
    }
}

/// The acks one socket owes, and the collections it started.
#[derive(Default)]
pub(crate) struct SocketAcks {
    next: u64,
    pending: FxHashMap<u64, PendingAck>,
    /// Broadcast-ack collections this socket started that have not finished.
    pub(crate) collecting: usize,
    /// Ids of the client's acks that user code will answer later (an `AckReply` is out). The
    /// client chose them: keyed hashing.
    deferred: crate::app::worker::KeyedSet<u64>,
}

impl SocketAcks {
    /// Acks owed plus collections running plus deferred answers: what counts against the
    /// per-socket limit.
    pub(crate) fn load(&self) -> usize {
        self.pending.len() + self.collecting + self.deferred.len()
    }

    /// The client's ack `id` will be answered later; false (nothing recorded) when the socket
    /// is at its pending-ack limit or `id` is already deferred.
    pub(crate) fn defer(&mut self, id: u64, max: usize) -> bool {
        self.load() < max && self.deferred.insert(id)
    }

    /// The deferred answer to `id` came (or was dropped); true when it was still owed.
    pub(crate) fn undefer(&mut self, id: u64) -> bool {
        self.deferred.remove(&id)
    }

    /// Whether ack `id` is still owed.
    pub(crate) fn is_pending(&self, id: u64) -> bool {
        self.pending.contains_key(&id)
    }
}

/// One pending ack, as its deadline entry names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct AckKey {
    pub(crate) slot: u32,
    pub(crate) gen: u32,
    pub(crate) id: u64,
}

/// Gathers the answers to one broadcast with ack, on its origin worker.
pub(crate) struct Collector {
    /// The emitting socket: (slot, generation).
    pub(crate) socket: (u32, u32),
    /// Workers that have not reported their recipient count yet.
    pub(crate) waiting: usize,
    pub(crate) expected: usize,
    pub(crate) responses: Responses,
    pub(crate) cb: BroadcastAckCallback,
}

/// A socket's own acks are numbered from 0 like the reference server's. A broadcast's ack id
/// (the same for every recipient, on every worker) comes from a range no socket reaches, and
/// names its worker: `BROADCAST_ACK_BASE + n * MAX_WORKERS + worker`, so it never collides with
/// an id a recipient already waits on. All stay below 2^53, exact in JavaScript.
const BROADCAST_ACK_BASE: u64 = 1 << 40;
const MAX_WORKERS: u64 = 4096;
/// The "worker" number of broadcasts with ack made from a `ServerHandle` (no worker has it:
/// a runtime has fewer workers).
const HANDLE_ORIGIN: u64 = MAX_WORKERS - 1;

static HANDLE_BROADCASTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The id of a new broadcast with ack made from a `ServerHandle`.
pub(crate) fn next_handle_broadcast_id() -> u64 {
    let n = HANDLE_BROADCASTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    BROADCAST_ACK_BASE + n * MAX_WORKERS + HANDLE_ORIGIN
}

/// The deadlines of the `ServerHandle` broadcasts with ack this worker delivered: at each, the
/// collection ends with the answers so far (every delivering worker arms the same deadline;
/// the first to fire ends it). Entries of collections that completed before their deadline
/// are dropped when they come due, or by compaction.
#[derive(Default)]
pub(crate) struct HandleAcks {
    due: BinaryHeap<Reverse<HandleAckDue>>,
    /// Entries left by the last compaction: the next one waits until the heap doubles.
    kept: usize,
}

struct HandleAckDue(Instant, std::sync::Arc<AckSink>);

impl PartialEq for HandleAckDue {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for HandleAckDue {}
impl PartialOrd for HandleAckDue {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HandleAckDue {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl HandleAcks {
    pub(crate) fn arm(&mut self, deadline: Instant, sink: std::sync::Arc<AckSink>) {
        self.due.push(Reverse(HandleAckDue(deadline, sink)));
        if self.due.len() > 2 * self.kept + SLACK {
            self.due.retain(|Reverse(d)| !d.1.is_done());
            self.kept = self.due.len();
        }
    }

    /// Ends every collection due at `now`.
    pub(crate) fn expire(&mut self, now: Instant) {
        while self.due.peek().is_some_and(|Reverse(d)| d.0 <= now) {
            if let Some(Reverse(d)) = self.due.pop() {
                d.1.expire();
            }
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse(d)| d.0)
    }
}

/// Extra stale entries a heap may hold before it is compacted.
const SLACK: usize = 64;

/// Every pending ack of the worker and their deadlines.
pub(crate) struct Acks {
    max_per_socket: usize,
    due: BinaryHeap<Reverse<(Instant, AckKey)>>,
    /// Acks owed, summed over every socket.
    pending: usize,
    collectors: FxHashMap<u64, Collector>,
    collect_due: BinaryHeap<Reverse<(Instant, u64)>>,
    counter: u64,
}

impl Acks {
    /// The most acks one socket may be waiting on (see [`SocketLimits::max_pending_acks`]).
    pub(crate) fn max_per_socket(&self) -> usize {
        self.max_per_socket
    }

    pub(crate) fn new(limits: &SocketLimits) -> Acks {
        Acks {
            max_per_socket: limits.max_pending_acks,
            due: BinaryHeap::new(),
            pending: 0,
            collectors: FxHashMap::default(),
            collect_due: BinaryHeap::new(),
            counter: 0,
        }
    }

    /// Registers an ack socket `(slot, gen)` owes, due at `deadline`, under `id` (a broadcast's)
    /// or the socket's next own id; returns the id, or the ack back when the socket is at its
    /// limit. `live` tells whether a deadline entry still names a pending ack (for compaction).
    pub(crate) fn arm(&mut self, sa: &mut SocketAcks, (slot, gen): (u32, u32), deadline: Instant, ack: PendingAck, id: Option<u64>) -> Result<u64, PendingAck> {
        if sa.load() >= self.max_per_socket {
            return Err(ack);
        }
        let id = id.unwrap_or_else(|| {
            let id = sa.next;
            sa.next += 1;
            id
        });
        if sa.pending.insert(id, ack).is_none() {
            self.pending += 1;
            self.due.push(Reverse((deadline, AckKey { slot, gen, id })));
        }
        Ok(id)
    }

    /// Takes ack `id` out of a socket's pending acks (answered, or due).
    pub(crate) fn take(&mut self, sa: &mut SocketAcks, id: u64) -> Option<PendingAck> {
        let a = sa.pending.remove(&id)?;
        self.pending -= 1;
        Some(a)
    }

    /// A socket is gone: its pending acks are no longer counted. Returns them for the caller to
    /// drop (a callback's drop may be user code).
    pub(crate) fn forget(&mut self, sa: &mut SocketAcks) -> FxHashMap<u64, PendingAck> {
        self.pending -= sa.pending.len();
        sa.collecting = 0;
        sa.deferred.clear();
        std::mem::take(&mut sa.pending)
    }

    /// Whether the deadline heap holds enough stale entries to be worth a compaction.
    pub(crate) fn needs_compaction(&self) -> bool {
        self.due.len() > 2 * self.pending + SLACK
    }

    /// Drops the deadline entries `live` says no longer name a pending ack.
    pub(crate) fn compact(&mut self, live: impl Fn(&AckKey) -> bool) {
        self.due.retain(|Reverse((_, k))| live(k));
    }

    /// One deadline entry due at `now` (it may be stale: check the socket still owes it).
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<AckKey> {
        match self.due.peek() {
            Some(Reverse((at, _))) if *at <= now => self.due.pop().map(|Reverse((_, k))| k),
            _ => None,
        }
    }

    /// The id of a new broadcast with ack, from `worker`.
    pub(crate) fn next_broadcast_id(&mut self, worker: usize) -> u64 {
        self.counter += 1;
        BROADCAST_ACK_BASE + self.counter * MAX_WORKERS + worker as u64
    }

    /// Starts collecting the answers to broadcast `id` for socket `sa`; gives `cb` back when the
    /// socket is at its limit.
    pub(crate) fn start_collector(
        &mut self,
        sa: &mut SocketAcks,
        id: u64,
        socket: (u32, u32),
        waiting: usize,
        deadline: Instant,
        cb: BroadcastAckCallback,
    ) -> Result<(), BroadcastAckCallback> {
        if sa.load() >= self.max_per_socket {
            return Err(cb);
        }
        sa.collecting += 1;
        self.collectors.insert(id, Collector { socket, waiting, expected: 0, responses: Vec::new(), cb });
        self.collect_due.push(Reverse((deadline, id)));
        if self.collect_due.len() > 2 * self.collectors.len() + SLACK {
            let collectors = &self.collectors;
            self.collect_due.retain(|Reverse((_, id))| collectors.contains_key(id));
        }
        Ok(())
    }

    /// Another worker reported its recipient count (`worker_report`), or this one did; true
    /// when the collection is complete.
    pub(crate) fn count(&mut self, id: u64, count: usize, worker_report: bool) -> bool {
        let Some(c) = self.collectors.get_mut(&id) else { return false };
        if worker_report {
            c.waiting = c.waiting.saturating_sub(1);
        }
        c.expected += count;
        c.waiting == 0 && c.responses.len() >= c.expected
    }

    /// The other nodes of a cluster are `remote` more reporters: the one report they were
    /// given at [`Acks::start_collector`] becomes `remote`; true when the collection is
    /// complete.
    pub(crate) fn nodes(&mut self, id: u64, remote: usize) -> bool {
        let Some(c) = self.collectors.get_mut(&id) else { return false };
        c.waiting = c.waiting.saturating_sub(1) + remote;
        c.waiting == 0 && c.responses.len() >= c.expected
    }

    /// One recipient's answer; true when the collection is complete.
    pub(crate) fn answer(&mut self, id: u64, answer: (Vec<Value>, Vec<Bytes>)) -> bool {
        let Some(c) = self.collectors.get_mut(&id) else { return false };
        c.responses.push(answer);
        c.waiting == 0 && c.responses.len() >= c.expected
    }

    /// Ends a collection.
    pub(crate) fn finish(&mut self, id: u64) -> Option<Collector> {
        self.collectors.remove(&id)
    }

    /// A collection whose deadline is due at `now` (it may have finished already).
    pub(crate) fn pop_collect_due(&mut self, now: Instant) -> Option<u64> {
        match self.collect_due.peek() {
            Some(Reverse((at, _))) if *at <= now => self.collect_due.pop().map(|Reverse((_, id))| id),
            _ => None,
        }
    }

    /// The earliest deadline of either heap.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let a = self.due.peek().map(|Reverse((at, _))| *at);
        let c = self.collect_due.peek().map(|Reverse((at, _))| *at);
        a.into_iter().chain(c).min()
    }

    #[cfg(test)]
    fn heap_len(&self) -> usize {
        self.due.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cb() -> PendingAck {
        PendingAck::Callback(Box::new(|_, _| {}))
    }

    fn limits(max: usize) -> SocketLimits {
        SocketLimits { max_pending_acks: max, ..SocketLimits::default() }
    }

    #[test]
    fn deadlines_come_due_in_order_whatever_the_order_armed() {
        let t = Instant::now();
        let mut acks = Acks::new(&limits(16));
        let mut sa = SocketAcks::default();
        for ms in [30u64, 10, 20] {
            acks.arm(&mut sa, (0, 1), t + Duration::from_millis(ms), cb(), None).unwrap();
        }
        assert_eq!(acks.next_deadline(), Some(t + Duration::from_millis(10)));
        assert_eq!(acks.pop_due(t + Duration::from_millis(25)).map(|k| k.id), Some(1));
        assert_eq!(acks.pop_due(t + Duration::from_millis(25)).map(|k| k.id), Some(2));
        assert_eq!(acks.pop_due(t + Duration::from_millis(25)), None);
    }

    #[test]
    fn the_limit_gives_the_extra_ack_back() {
        let t = Instant::now();
        let mut acks = Acks::new(&limits(2));
        let mut sa = SocketAcks::default();
        assert_eq!(acks.arm(&mut sa, (0, 1), t, cb(), None).ok(), Some(0));
        assert_eq!(acks.arm(&mut sa, (0, 1), t, cb(), None).ok(), Some(1));
        assert!(acks.arm(&mut sa, (0, 1), t, cb(), None).is_err());
        assert!(acks.start_collector(&mut sa, 99, (0, 1), 0, t, Box::new(|_, _| {})).is_err());
        // An answer frees a place.
        assert!(acks.take(&mut sa, 0).is_some());
        assert!(acks.take(&mut sa, 0).is_none(), "answered once");
        assert_eq!(acks.arm(&mut sa, (0, 1), t, cb(), None).ok(), Some(2));
    }

    #[test]
    fn answered_acks_do_not_grow_the_heap() {
        // A client answering every ack at once, forever: the heap stays near the live count.
        let t = Instant::now();
        let mut acks = Acks::new(&limits(1024));
        let mut sa = SocketAcks::default();
        for _ in 0..100_000 {
            let id = acks.arm(&mut sa, (3, 7), t + Duration::from_secs(5), cb(), None).unwrap();
            assert!(acks.take(&mut sa, id).is_some());
            if acks.needs_compaction() {
                acks.compact(|k| k.slot == 3 && k.gen == 7 && sa.is_pending(k.id));
            }
            assert!(acks.heap_len() <= 2 + SLACK + 1, "{}", acks.heap_len()); // at most one live ack
        }
        assert_eq!(acks.pop_due(t + Duration::from_secs(6)).map(|k| sa.is_pending(k.id)), Some(false));
    }

    #[test]
    fn forgetting_a_socket_uncounts_its_acks() {
        let t = Instant::now();
        let mut acks = Acks::new(&limits(8));
        let mut sa = SocketAcks::default();
        for _ in 0..5 {
            acks.arm(&mut sa, (0, 1), t, cb(), None).unwrap();
        }
        assert_eq!(acks.forget(&mut sa).len(), 5);
        assert_eq!(acks.pending, 0);
        assert_eq!(sa.load(), 0);
    }

    #[test]
    fn a_collection_completes_when_every_worker_reported_and_answered() {
        let t = Instant::now();
        let mut acks = Acks::new(&limits(8));
        let mut sa = SocketAcks::default();
        acks.start_collector(&mut sa, 5, (0, 1), 1, t, Box::new(|_, _| {})).ok().unwrap();
        assert!(!acks.count(5, 1, false), "one recipient here, another worker to report");
        assert!(!acks.answer(5, (vec![], vec![])));
        assert!(acks.count(5, 0, true));
        assert!(acks.finish(5).is_some());
        assert_eq!(acks.pop_collect_due(t), Some(5), "a stale deadline is still popped; finish() then misses");
        assert!(acks.finish(5).is_none());
    }
}
