//! The I/O backends behind the one worker loop ([`super::worker`]): io_uring ([`uring`]) where
//! the kernel and the sandbox allow it, epoll ([`epoll`]) everywhere else, and the start-up
//! probe that chooses between them (`--io auto|uring|epoll`).
//!
//! A backend turns its kernel events into the same calls on the loop's [`Sink`] (accepted,
//! received, receive ended, sent) and carries out the shard's operations as a [`Driver`];
//! the connection table, the service, mail, timers and hand-offs above it are the same code
//! whichever runs.
//!
//! Owns: the choice of backend and the probe's diagnosis. Must never: know a protocol, or let
//! anything above `rt` see which backend runs.

pub mod epoll;
pub mod probe;
pub mod uring;

use std::os::fd::RawFd;
use std::time::Duration;

use super::conn::{ConnId, Driver};

pub use probe::{select, Unavailable};

/// Which I/O backend the workers use (`--io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoBackend {
    /// io_uring when the start-up probe passes, epoll otherwise (one warning line says why).
    #[default]
    Auto,
    /// io_uring, or fail at start with the probe's diagnosis.
    Uring,
    /// epoll (readiness), even where io_uring works.
    Epoll,
}

/// The backend the workers actually run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    Uring,
    Epoll,
}

impl Chosen {
    pub fn name(self) -> &'static str {
        match self {
            Chosen::Uring => "io_uring",
            Chosen::Epoll => "epoll",
        }
    }
}

/// What the loop hears from a backend while it dispatches one pass's events.
pub trait Sink {
    /// A connection was accepted from the listener.
    fn accepted(&mut self, drv: &mut impl Driver, fd: RawFd);
    /// Accepting failed with `errno` (EMFILE/ENFILE/ENOBUFS/ENOMEM pause accepting).
    fn accept_failed(&mut self, errno: i32);
    /// Bytes arrived on `id`, borrowed from the backend's buffer.
    fn received(&mut self, id: ConnId, data: &mut [u8]);
    /// The receive armed on `id` ended (see [`super::conn::Shard::recv_ended`]).
    fn recv_ended(&mut self, id: ConnId, error: Option<i32>);
    /// The write on `id` completed with `res` bytes, or `-errno`.
    fn sent(&mut self, id: ConnId, res: i32);
}

/// One worker's I/O: the shard's operations ([`Driver`]) plus accepting, the mailbox doorbell,
/// waiting, and the teardown.
pub trait Backend: Driver {
    /// Accept on `listener` from now on (`true`) or stop (`false`); idempotent, called every
    /// pass.
    fn set_accepting(&mut self, listener: RawFd, on: bool);
    /// Watch the mailbox's eventfd; called every pass (re-arms what a wake-up consumed).
    fn arm_mailbox(&mut self, eventfd: RawFd);
    /// Submits what is queued and waits at most `wait` for an event (`None`: no limit; zero:
    /// does not sleep). `Err` is a fatal message: the backend cannot do I/O any more.
    fn wait(&mut self, wait: Option<Duration>) -> Result<(), String>;
    /// Hands every event of the last wait to `sink`.
    fn dispatch(&mut self, sink: &mut impl Sink);
    /// Teardown: cancels every operation still outstanding; their ends follow through
    /// [`Backend::dispatch`].
    fn cancel_all(&mut self);
    /// Operations handed to the kernel since the start (io_uring entries; epoll's `sendmsg` and
    /// `epoll_ctl` calls), for the loop's submissions-per-pass histogram.
    fn submitted(&self) -> u64;
    /// Operations whose end has not been dispatched yet (the teardown waits for 0 before
    /// freeing anything they reference).
    fn outstanding(&self) -> usize;
}
