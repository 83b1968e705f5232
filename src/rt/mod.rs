//! The per-core machine: io_uring rings, connections, send queues, timers, the cross-worker
//! mailbox, and the threads that run them.
//!
//! - [`ring`]: ring setup, fallbacks, feature probe, completion tags.
//! - [`bufring`]: the provided receive-buffer ring.
//! - [`worker`]: one worker's event loop and the [`worker::Service`] trait it drives.
//! - [`sendq`]: bounded, corked, vectored per-connection send queues.
//! - [`bus`]: lock-free mailboxes with eventfd wake-up.
//! - [`timer`]: FIFO deadline queues.
//! - [`listener`]: `SO_REUSEPORT` listening sockets.
//! - [`threads`]: starting, pinning, signalling and joining the workers.
//!
//! Must never: parse protocol bytes; the service on top does.

pub mod bufring;
pub mod bus;
pub mod listener;
pub mod ring;
pub mod sendq;
pub mod threads;
pub mod timer;
pub mod worker;

pub use worker::{ConnId, Io, RtMail, SendError, Service, WorkerConfig};
