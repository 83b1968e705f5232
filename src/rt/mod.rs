//! The per-core machine: the I/O backends (io_uring, epoll), connections, send queues, timers,
//! the cross-worker mailbox, and the threads that run them.
//!
//! - [`conn`]: the connection table, the [`Service`] trait, and the rules every backend shares
//!   (budgets, pauses, hand-offs, closes).
//! - [`arena`]: the generational slab behind connection and session handles.
//! - [`ring`]: ring setup, fallbacks, feature probe, completion tags.
//! - [`bufring`]: the provided receive-buffer ring.
//! - [`worker`]: one worker's event loop, the same over every backend.
//! - [`backend`]: the io_uring backend, the epoll backend, and the `--io` probe that chooses.
//! - [`sim`]: the deterministic in-memory backend with an injected clock, for tests.
//! - [`sendq`]: bounded, corked, vectored per-connection send queues.
//! - [`bus`]: lock-free mailboxes with eventfd wake-up.
//! - [`memory`]: the `--max-memory` guard: resident-memory sampling and shedding.
//! - [`metrics`]: what a worker reports when scraped (plain per-worker counters, summed by the
//!   scraper).
//! - [`tls`]: rustls per connection, driven by the connection table for every backend, and
//!   the certificate store SIGHUP reloads.
//! - [`timer`]: deadlines updated in place, one per key.
//! - [`listener`]: `SO_REUSEPORT` listening sockets.
//! - [`threads`]: starting, pinning, signalling and joining the workers.
//!
//! Must never: parse protocol bytes; the service on top does.

pub mod arena;
pub mod backend;
pub mod bufring;
pub mod bus;
pub mod conn;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod ring;
pub mod sendq;
pub mod sim;
pub mod threads;
pub mod timer;
pub mod tls;
pub mod worker;

pub use backend::IoBackend;
pub use conn::{ConnId, Io, Remote, RtMail, SendError, Service, Stats, Traffic};
pub use worker::WorkerConfig;
