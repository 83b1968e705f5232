//! Answering later, from any thread: an incoming event's ack ([`AckReply`]) and a connect
//! middleware's verdict ([`ConnectDecision`]) as `Send` values that user code may move to a
//! thread pool or a tokio task and settle after the handler returned. Settling posts mail to
//! the socket's worker (its mailbox, an eventfd wake-up); the worker checks the socket is
//! still there and that the ack is still owed before anything is sent.
//!
//! Handlers, middleware and callbacks run on the worker thread, which serves every client of
//! its core: a handler that blocks (a database call, a file read, `std::thread::sleep`,
//! waiting on a channel) stalls all of them. Do the I/O elsewhere and answer with these
//! handles (see `examples/offload.rs`).
//!
//! Must never: touch a worker's state from another thread (everything goes through the
//! mailbox), block, or panic when the socket is gone or the value is settled twice.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::namespace::AckId;
use super::worker::SioMail;
use crate::proto::sio::{encode, Encoded};
use crate::rt::Remote;

/// What a deferred answer carries to the socket's worker.
pub struct DeferredMail(pub(crate) Deferred);

impl std::fmt::Debug for DeferredMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeferredMail")
    }
}

pub(crate) enum Deferred {
    /// The answer to ack `id` of socket `(slot, gen)`, encoded by the answering thread;
    /// `None` when the reply was dropped unanswered (the ack no longer counts as owed).
    Ack { slot: u32, gen: u32, id: u64, packet: Option<Encoded> },
    /// The verdict on pending connection `token`.
    Connect { token: u64, verdict: Verdict },
}

/// A connect middleware's verdict.
pub(crate) enum Verdict {
    /// Go on with the next middleware (or connect), with this value in the socket's data slot.
    Accept(Option<Box<dyn Any + Send>>),
    /// Refuse with CONNECT_ERROR carrying this data.
    Refuse(Value),
}

/// The answer to an incoming event's ack, to be sent later from any thread: get it with
/// [`Socket::defer_ack`](super::Socket::defer_ack). It counts against the socket's pending-ack
/// limit until it is sent or dropped.
///
/// [`send`](Self::send) consumes it, so an ack is answered at most once. Sending after the
/// socket left (or after the server stopped) does nothing. Dropping it unanswered releases
/// its place in the pending-ack limit; the client's callback then never runs (use a timeout on
/// the client, as with Node's server).
#[must_use = "an ack reply does nothing until it is sent"]
pub struct AckReply {
    remote: Remote<SioMail>,
    slot: u32,
    gen: u32,
    id: u64,
    nsp: std::sync::Arc<str>,
    settled: bool,
}

impl AckReply {
    pub(crate) fn new(remote: Remote<SioMail>, slot: u32, gen: u32, id: u64, nsp: std::sync::Arc<str>) -> AckReply {
        AckReply { remote, slot, gen, id, nsp, settled: false }
    }

    /// The ack id it answers.
    pub fn id(&self) -> AckId {
        AckId(self.id)
    }

    /// Answers the ack with `args` (encoded here, on the calling thread).
    pub fn send(self, args: &[Value]) {
        self.send_binary(args, Vec::new());
    }

    /// Answers with binary attachments (placeholders in `args`).
    pub fn send_binary(mut self, args: &[Value], attachments: Vec<Bytes>) {
        let packet = encode::ack(&self.nsp, self.id, args, attachments);
        self.settled = true;
        self.remote.post(SioMail::Deferred(DeferredMail(Deferred::Ack { slot: self.slot, gen: self.gen, id: self.id, packet: Some(packet) })));
    }
}

impl Drop for AckReply {
    fn drop(&mut self) {
        if !self.settled {
            self.remote.post(SioMail::Deferred(DeferredMail(Deferred::Ack { slot: self.slot, gen: self.gen, id: self.id, packet: None })));
        }
    }
}

/// The verdict of a deferred connect middleware
/// ([`Namespace::use_deferred_middleware`](super::Namespace::use_deferred_middleware)), to be
/// given later from any thread. Until it is given, the connection waits (its packets for the
/// namespace are held, within [`SocketLimits`](super::SocketLimits)); past
/// [`SocketLimits::connect_decision_timeout`](super::SocketLimits::connect_decision_timeout)
/// the client is refused with `{"message":"Connection timed out"}`. Dropped without a verdict
/// (a bug of the middleware, like a panic in it), the client is refused with
/// `{"message":"Internal server error"}`. A verdict given after the client left, or after the
/// timeout, does nothing.
#[must_use = "the connection waits until a verdict is given"]
pub struct ConnectDecision {
    remote: Remote<SioMail>,
    token: u64,
    settled: bool,
    waiting: Arc<AtomicBool>,
}

/// Held by the waiting connection: dropped (the connection settled, timed out, or its client
/// left), the decision's [`ConnectDecision::is_waiting`] turns false.
pub(crate) struct Waiting(Arc<AtomicBool>);

impl Waiting {
    pub(crate) fn new() -> Waiting {
        Waiting(Arc::new(AtomicBool::new(true)))
    }

    pub(crate) fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl ConnectDecision {
    pub(crate) fn new(remote: Remote<SioMail>, token: u64, waiting: Arc<AtomicBool>) -> ConnectDecision {
        ConnectDecision { remote, token, settled: false, waiting }
    }

    /// Whether the connection still waits for this verdict: false once its client left or its
    /// deadline passed (a verdict then does nothing, so costly work for it can be skipped).
    pub fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire)
    }

    fn settle(mut self, verdict: Verdict) {
        self.settled = true;
        self.remote.post(SioMail::Deferred(DeferredMail(Deferred::Connect { token: self.token, verdict })));
    }

    /// Lets the connection go on (to the next middleware, then the connection handler).
    pub fn accept(self) {
        self.settle(Verdict::Accept(None));
    }

    /// Lets it go on with `data` in the socket's data slot ([`Socket::data`](super::Socket::data)).
    pub fn accept_with_data<T: Send + 'static>(self, data: T) {
        self.settle(Verdict::Accept(Some(Box::new(data))));
    }

    /// Refuses with CONNECT_ERROR `data` (a string `s` is sent as `{"message": s}`, as the
    /// synchronous middleware's refusal).
    pub fn refuse(self, data: Value) {
        let data = match data {
            Value::String(s) => serde_json::json!({ "message": s }),
            other => other,
        };
        self.settle(Verdict::Refuse(data));
    }
}

impl Drop for ConnectDecision {
    fn drop(&mut self) {
        if !self.settled {
            let verdict = Verdict::Refuse(serde_json::json!({ "message": "Internal server error" }));
            self.remote.post(SioMail::Deferred(DeferredMail(Deferred::Connect { token: self.token, verdict })));
        }
    }
}
