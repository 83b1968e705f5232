//! [`Pending`]: the answer to a `ServerHandle` request that every worker answers a part of
//! (`count`, `fetch_sockets`, `rooms`, `flush`, `emit_with_ack`), usable the three ways a
//! caller may be placed:
//!
//! - [`Pending::wait`] blocks the calling thread (any thread but a worker's);
//! - [`Pending::then`] hands the answer to a callback, which runs on the thread that completes
//!   the answer (a worker thread: it must not block) — the way to ask from inside a handler;
//! - `.await` (it is a [`Future`]) from any async runtime.
//!
//! Each worker gets a [`Part`] in its mail and answers it once; a `Part` dropped unanswered (its
//! mail was never read: the server stopped, or the post failed) ends the request with
//! [`HandleError::Stopped`]. So no request outlives the server: a worker drops its unread mail
//! when it exits.
//!
//! Must never: hold its lock while running user code (callbacks and wakers run after it is
//! released), or let a panic in a callback reach the worker that completed it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use super::handle::HandleError;
use super::namespace::{PartialResponses, Responses};
use crate::rt::threads;

/// How often a blocked [`Pending::wait`] checks whether the server still runs.
const LIVENESS_POLL: Duration = Duration::from_millis(20);

type Then<T> = Box<dyn FnOnce(Result<T, HandleError>) + Send>;

/// Where the outcome lands, and who is told.
struct Slot<T> {
    outcome: Option<Result<T, HandleError>>,
    /// Set once the outcome has been handed out (to `wait`, `then` or a poll).
    taken: bool,
    waker: Option<Waker>,
    then: Option<Then<T>>,
}

/// The completion side shared by a [`Pending`] and whatever completes it.
pub(crate) struct Completion<T> {
    slot: Mutex<Slot<T>>,
    cond: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic never happens while these locks are held (no user code runs under them), but a
    // poisoned lock must not take a worker down either.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: Send + 'static> Completion<T> {
    fn new() -> Arc<Completion<T>> {
        Arc::new(Completion { slot: Mutex::new(Slot { outcome: None, taken: false, waker: None, then: None }), cond: Condvar::new() })
    }

    /// Sets the outcome unless one is already set; tells the waiter, the waker or the callback.
    pub(crate) fn complete(&self, outcome: Result<T, HandleError>) {
        let mut slot = lock(&self.slot);
        if slot.outcome.is_some() || slot.taken {
            return;
        }
        if let Some(f) = slot.then.take() {
            slot.taken = true;
            drop(slot);
            run_callback(f, outcome);
            return;
        }
        slot.outcome = Some(outcome);
        let waker = slot.waker.take();
        drop(slot);
        self.cond.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn is_done(&self) -> bool {
        let slot = lock(&self.slot);
        slot.outcome.is_some() || slot.taken
    }
}

/// Runs a `then` callback; a panic in it is logged and goes no further.
fn run_callback<T>(f: Then<T>, outcome: Result<T, HandleError>) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(outcome))).is_err() {
        tracing::error!("a ServerHandle callback panicked");
    }
}

/// The answer to a request every worker answers a part of; see the [module](self) docs.
#[must_use = "a Pending does nothing until waited for, awaited, or given a callback with `then`"]
pub struct Pending<T: Send + 'static> {
    done: Arc<Completion<T>>,
    /// Whether the server has stopped (then nobody may wait for an answer that is not there).
    stopped: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl<T: Send + 'static> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("done", &self.done.is_done()).finish()
    }
}

impl<T: Send + 'static> Pending<T> {
    pub(crate) fn new(stopped: Arc<dyn Fn() -> bool + Send + Sync>) -> (Pending<T>, Arc<Completion<T>>) {
        let done = Completion::new();
        (Pending { done: done.clone(), stopped }, done)
    }

    /// Blocks the calling thread until every worker has answered. On a worker thread (inside a
    /// handler) an answer that is not complete yet would wait for that very worker, so it
    /// returns [`HandleError::WouldDeadlock`] at once: use [`then`](Self::then) there.
    /// [`HandleError::Stopped`] once the server is gone.
    pub fn wait(self) -> Result<T, HandleError> {
        self.wait_until(None)
    }

    /// [`wait`](Self::wait), giving up with [`HandleError::TimedOut`] after `timeout`.
    pub fn wait_timeout(self, timeout: Duration) -> Result<T, HandleError> {
        self.wait_until(Some(Instant::now() + timeout))
    }

    fn wait_until(self, deadline: Option<Instant>) -> Result<T, HandleError> {
        let mut slot = lock(&self.done.slot);
        loop {
            if let Some(o) = slot.outcome.take() {
                slot.taken = true;
                return o;
            }
            if threads::on_worker_thread() {
                return Err(HandleError::WouldDeadlock);
            }
            if (self.stopped)() {
                return Err(HandleError::Stopped);
            }
            let mut step = LIVENESS_POLL;
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(HandleError::TimedOut);
                }
                step = step.min(left);
            }
            slot = self.done.cond.wait_timeout(slot, step).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Runs `f` with the answer once every worker has given its part: at once on this thread
    /// when it is already complete, otherwise on the worker thread that completes it (so `f`
    /// must be quick and must not block; a panic in it is logged and stops there). Works from
    /// any thread, inside a handler too.
    pub fn then(self, f: impl FnOnce(Result<T, HandleError>) + Send + 'static) {
        let mut slot = lock(&self.done.slot);
        if let Some(o) = slot.outcome.take() {
            slot.taken = true;
            drop(slot);
            return run_callback(Box::new(f), o);
        }
        slot.then = Some(Box::new(f));
    }
}

impl<T: Send + 'static> Future for Pending<T> {
    type Output = Result<T, HandleError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = lock(&self.done.slot);
        if let Some(o) = slot.outcome.take() {
            slot.taken = true;
            return Poll::Ready(o);
        }
        if slot.taken {
            return Poll::Ready(Err(HandleError::Stopped));
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// How the workers' parts of an answer add up (implemented for the answer types of the
/// `ServerHandle` questions).
pub trait Merge: Send + 'static {
    /// Adds one worker's part.
    fn merge(&mut self, part: Self);
    /// Runs once on the complete answer.
    fn finish(&mut self) {}
}

impl Merge for usize {
    fn merge(&mut self, part: usize) {
        *self += part;
    }
}

impl Merge for () {
    fn merge(&mut self, _: ()) {}
}

impl<T: Send + 'static> Merge for Vec<T> {
    fn merge(&mut self, part: Vec<T>) {
        self.extend(part);
    }
}

/// Room names, one worker's or all of them (then sorted, each once).
#[derive(Debug, Default)]
pub struct RoomNames(pub(crate) Vec<String>);

impl Merge for RoomNames {
    fn merge(&mut self, part: RoomNames) {
        self.0.extend(part.0);
    }
    fn finish(&mut self) {
        self.0.sort_unstable();
        self.0.dedup();
    }
}

/// The parts given so far.
struct Tally<T> {
    acc: Option<T>,
    left: usize,
}

/// Collects one part per worker.
struct Gather<T> {
    tally: Mutex<Tally<T>>,
    done: Arc<Completion<T>>,
}

/// One worker's share of a request: answer it once. Dropped unanswered, it ends the request
/// with [`HandleError::Stopped`].
pub struct Part<T: Merge> {
    gather: Option<Arc<Gather<T>>>,
}

impl<T: Merge> Part<T> {
    /// Gives this worker's part.
    pub(crate) fn answer(mut self, part: T) {
        let Some(g) = self.gather.take() else { return };
        let mut t = lock(&g.tally);
        match t.acc.as_mut() {
            Some(acc) => acc.merge(part),
            None => t.acc = Some(part),
        }
        t.left -= 1;
        if t.left == 0 {
            let mut all = t.acc.take().expect("at least one part");
            drop(t);
            all.finish();
            g.done.complete(Ok(all));
        }
    }
}

impl<T: Merge> Drop for Part<T> {
    fn drop(&mut self) {
        if let Some(g) = self.gather.take() {
            g.done.complete(Err(HandleError::Stopped));
        }
    }
}

/// A request for `workers` parts: the caller's [`Pending`] and one [`Part`] per worker.
pub(crate) fn gather<T: Merge>(workers: usize, stopped: Arc<dyn Fn() -> bool + Send + Sync>) -> (Pending<T>, Vec<Part<T>>) {
    let (pending, done) = Pending::new(stopped);
    let g = Arc::new(Gather { tally: Mutex::new(Tally { acc: None, left: workers }), done });
    let parts = (0..workers).map(|_| Part { gather: Some(g.clone()) }).collect();
    (pending, parts)
}

/// What a [`AckSink`] has so far.
struct AckTally {
    /// Workers that have not said how many sockets they sent to.
    reports_left: usize,
    /// Recipients reported so far.
    expected: usize,
    responses: Responses,
}

/// Collects every recipient's ack of a broadcast made from a `ServerHandle`, on whatever
/// worker each recipient lives: complete when every worker has reported its recipients and
/// each has answered; at its deadline (armed on every worker that delivered), complete with the
/// answers so far.
pub struct AckSink {
    tally: Mutex<AckTally>,
    done: Arc<Completion<Result<Responses, PartialResponses>>>,
}

impl std::fmt::Debug for AckSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AckSink")
    }
}

impl AckSink {
    pub(crate) fn new(workers: usize, stopped: Arc<dyn Fn() -> bool + Send + Sync>) -> (Pending<Result<Responses, PartialResponses>>, Arc<AckSink>) {
        let (pending, done) = Pending::new(stopped);
        (pending, Arc::new(AckSink { tally: Mutex::new(AckTally { reports_left: workers, expected: 0, responses: Vec::new() }), done }))
    }

    fn settle(&self, t: MutexGuard<'_, AckTally>) {
        if t.reports_left == 0 && t.responses.len() >= t.expected {
            let mut t = t;
            let all = std::mem::take(&mut t.responses);
            drop(t);
            self.done.complete(Ok(Ok(all)));
        }
    }

    /// A worker sent the broadcast to `count` of its sockets.
    pub(crate) fn report(&self, count: usize) {
        let mut t = lock(&self.tally);
        t.reports_left = t.reports_left.saturating_sub(1);
        t.expected += count;
        self.settle(t);
    }

    /// The other nodes of a cluster are `remote` more reporters: the one report the cluster was
    /// given at [`AckSink::new`] becomes `remote` (none: the cluster is done).
    pub(crate) fn nodes_known(&self, remote: usize) {
        let mut t = lock(&self.tally);
        t.reports_left = t.reports_left.saturating_sub(1) + remote;
        self.settle(t);
    }

    /// One recipient answered.
    pub(crate) fn answer(&self, args: Vec<Value>, attachments: Vec<Bytes>) {
        let mut t = lock(&self.tally);
        t.responses.push((args, attachments));
        self.settle(t);
    }

    /// The deadline passed: complete with the answers so far (if not complete already).
    pub(crate) fn expire(&self) {
        if self.done.is_done() {
            return;
        }
        let responses = std::mem::take(&mut lock(&self.tally).responses);
        self.done.complete(Ok(Err(PartialResponses { responses })));
    }

    /// The broadcast could not reach a worker (the server stopped).
    pub(crate) fn stop(&self) {
        self.done.complete(Err(HandleError::Stopped));
    }

    /// Whether the answer is complete (a worker's deadline entry for it can be dropped).
    pub(crate) fn is_done(&self) -> bool {
        self.done.is_done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn running() -> Arc<dyn Fn() -> bool + Send + Sync> {
        Arc::new(|| false)
    }

    #[test]
    fn parts_add_up_and_complete_once_all_are_in() {
        let (p, parts) = gather::<usize>(3, running());
        let mut it = parts.into_iter();
        it.next().unwrap().answer(2);
        it.next().unwrap().answer(5);
        assert!(!p.done.is_done());
        it.next().unwrap().answer(1);
        assert_eq!(p.wait(), Ok(8));
    }

    #[test]
    fn a_part_dropped_unanswered_ends_the_request_stopped() {
        let (p, mut parts) = gather::<usize>(2, running());
        parts.pop().unwrap().answer(1);
        drop(parts);
        assert_eq!(p.wait(), Err(HandleError::Stopped));
    }

    #[test]
    fn then_runs_on_the_completing_thread_or_at_once() {
        let (p, mut parts) = gather::<Vec<u8>>(1, running());
        let (tx, rx) = std::sync::mpsc::channel();
        p.then(move |r| tx.send((r, std::thread::current().id())).unwrap());
        let part = parts.pop().unwrap();
        let completer = std::thread::spawn(move || {
            part.answer(vec![7]);
            std::thread::current().id()
        })
        .join()
        .unwrap();
        assert_eq!(rx.recv().unwrap(), (Ok(vec![7]), completer));
        // Already complete: the callback runs at once, here.
        let (p, mut parts) = gather::<()>(1, running());
        parts.pop().unwrap().answer(());
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        p.then(move |o| r.store(o.is_ok(), Ordering::SeqCst));
        assert!(ran.load(Ordering::SeqCst));
    }

    #[test]
    fn a_panicking_callback_stays_with_its_caller() {
        let (p, mut parts) = gather::<usize>(1, running());
        p.then(|_| panic!("user code"));
        parts.pop().unwrap().answer(1); // must not unwind into the "worker"
    }

    #[test]
    fn wait_gives_up_when_the_server_stops_or_the_timeout_passes() {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let (p, _parts) = gather::<usize>(1, Arc::new(move || s.load(Ordering::SeqCst)));
        let (p2, _parts2) = gather::<usize>(1, running());
        assert_eq!(p2.wait_timeout(Duration::from_millis(30)), Err(HandleError::TimedOut));
        let t = std::thread::spawn(move || p.wait());
        stop.store(true, Ordering::SeqCst);
        assert_eq!(t.join().unwrap(), Err(HandleError::Stopped));
    }

    #[test]
    fn room_names_come_sorted_and_once() {
        let (p, parts) = gather::<RoomNames>(2, running());
        for (part, names) in parts.into_iter().zip([vec!["b", "a"], vec!["a", "c"]]) {
            part.answer(RoomNames(names.into_iter().map(String::from).collect()));
        }
        assert_eq!(p.wait().unwrap().0, ["a", "b", "c"]);
    }

    #[test]
    fn an_ack_sink_completes_with_every_answer_or_the_partial_ones_at_its_deadline() {
        let (p, sink) = AckSink::new(2, running());
        sink.report(2);
        sink.answer(vec![Value::from(1)], vec![]);
        sink.report(0);
        assert!(!sink.is_done());
        sink.answer(vec![Value::from(2)], vec![]);
        assert_eq!(p.wait().unwrap().unwrap().len(), 2);

        let (p, sink) = AckSink::new(1, running());
        sink.report(3);
        sink.answer(vec![], vec![]);
        sink.expire();
        sink.answer(vec![], vec![]); // late: ignored
        assert_eq!(p.wait().unwrap().unwrap_err().responses.len(), 1);
    }

    #[test]
    fn a_future_resolves_when_completed_from_another_thread() {
        let (p, mut parts) = gather::<usize>(1, running());
        let part = parts.pop().unwrap();
        std::thread::spawn(move || part.answer(41));
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut p = Box::pin(p);
        loop {
            if let Poll::Ready(r) = p.as_mut().poll(&mut cx) {
                assert_eq!(r, Ok(41));
                break;
            }
            std::thread::yield_now();
        }
    }
}
