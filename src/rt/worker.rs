//! One worker: a thread pinned to a core, with its own I/O backend (io_uring or epoll), listener,
//! connections, timers and mailbox. Nothing here is shared with another worker; other workers
//! reach it only by mail.
//!
//! Owns: the event loop, the same for every backend ([`Backend`]). Each pass: submit and wait
//! once (bounded by the service's next deadline), dispatch every event (accepts, receives,
//! finished writes), read the mailbox, run timers, then let the service finish its turn and
//! write every connection's queued frames in one vectored send each. Accept pauses (out of
//! descriptors), shutdown and the teardown are decided here; the backend only carries them out.
//!
//! Must never: parse protocol bytes (the [`Service`] does), block, touch another worker's
//! connections, or know which backend it drives.

use std::os::fd::RawFd;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backend::{Backend, Sink};
use super::bus::Mailbox;
use super::conn::{ConnId, Driver, Io, Peers, RtMail, Service, Shard};
use super::memory::MemoryGuard;
use super::metrics;

/// Settings of the runtime.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Bytes a connection may have queued for sending (the slow-consumer limit).
    pub max_send_buffer: usize,
    /// Unconsumed bytes a connection may hold (a request head and body, a WebSocket frame);
    /// a connection past it is closed.
    pub max_read_buffer: usize,
    /// Unconsumed bytes every connection of one worker may hold together; past it the
    /// largest holders are shed.
    pub read_budget: usize,
    /// Submission queue entries of the ring (io_uring).
    pub ring_entries: u32,
    /// Receive buffers in the provided-buffer ring (io_uring).
    pub buf_count: u16,
    /// Size of one receive buffer (io_uring; epoll reads up to 4 of these per ready socket
    /// per pass into one worker buffer).
    pub buf_size: usize,
    /// How long sessions get to close politely at shutdown.
    pub shutdown_grace: Duration,
    /// How long a connection closing after its last frames waits for the peer to read them.
    pub close_grace: Duration,
    /// Resident memory of the process past which new connections are refused and the
    /// largest holders are shed (`--max-memory`).
    pub max_memory: Option<usize>,
    /// TLS on every accepted connection (`--tls-cert`, `--tls-key`); `None`: plain TCP.
    pub tls: Option<super::tls::Tls>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            max_send_buffer: 4 << 20,
            max_read_buffer: (1 << 20) + (64 << 10),
            read_budget: 64 << 20,
            ring_entries: 4096,
            buf_count: 1024,
            buf_size: 16 * 1024,
            shutdown_grace: Duration::from_secs(3),
            max_memory: None,
            close_grace: Duration::from_secs(5),
            tls: None,
        }
    }
}

impl WorkerConfig {
    /// The per-connection read limit for a largest message of `max_payload` bytes: the
    /// message, its HTTP head or frame header, and one receive's worth of what follows.
    pub fn read_buffer_for(max_payload: usize) -> usize {
        max_payload.saturating_add(64 << 10)
    }
}

/// How long accepting stops after the process ran out of file descriptors (or memory).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// At most one warning about refused accepts per this interval.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(1);
/// How long the teardown waits for cancelled operations to complete.
const TEARDOWN_WAIT: Duration = Duration::from_secs(1);
/// Test hook: the worker with this index panics in its loop (see `tests/hostile_runtime.rs`).
const TEST_PANIC_ENV: &str = "SHARDCAST_TEST_PANIC_WORKER";

/// Whether the loop accepts, and the out-of-descriptors pause.
struct Accepting {
    worker: usize,
    /// The listening socket; -1 once closed (at shutdown start).
    listener: RawFd,
    /// False from the start of the shutdown.
    on: bool,
    /// Out of file descriptors: nothing is accepted before this instant.
    paused_until: Option<Instant>,
    /// Accepts refused for lack of descriptors since the last warning.
    refused: u64,
    warned_at: Option<Instant>,
}

impl Accepting {
    /// Whether the backend should accept now.
    fn wanted(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|until| now >= until) {
            self.paused_until = None;
        }
        self.on && self.paused_until.is_none() && self.listener >= 0
    }

    /// The process is out of descriptors (`EMFILE`/`ENFILE`) or kernel memory: stop accepting
    /// for [`ACCEPT_PAUSE`] instead of retrying at once (each retry fails the same way, and an
    /// accept re-armed at once spins a core and floods the log). The pending connections wait
    /// in the listen backlog; one warning per [`ACCEPT_WARN_EVERY`] counts them.
    fn pause(&mut self, errno: i32) {
        self.refused += 1;
        if self.paused_until.is_some() {
            return;
        }
        let now = Instant::now();
        self.paused_until = Some(now + ACCEPT_PAUSE);
        if self.warned_at.is_none_or(|t| now.duration_since(t) >= ACCEPT_WARN_EVERY) {
            tracing::warn!(
                worker = self.worker,
                error = %std::io::Error::from_raw_os_error(errno),
                refused = self.refused,
                pause_ms = ACCEPT_PAUSE.as_millis() as u64,
                "cannot accept connections (out of file descriptors or memory); pausing accepts"
            );
            self.warned_at = Some(now);
            self.refused = 0;
        }
    }
}

/// The loop's side of a dispatch: events go to the shard (and accept failures to the pause).
struct Events<'a, S: Service> {
    shard: &'a mut Shard<S>,
    accepting: &'a mut Accepting,
    stopping: bool,
}

impl<S: Service> Sink for Events<'_, S> {
    fn accepted(&mut self, drv: &mut impl Driver, fd: RawFd) {
        if self.stopping {
            // Accepted just before the listener closed: refuse it like the rest.
            // SAFETY: a descriptor we were just given and nothing else knows of.
            unsafe { libc::close(fd) };
        } else {
            super::listener::set_nodelay(fd);
            self.shard.accept(drv, fd);
        }
    }

    fn accept_failed(&mut self, errno: i32) {
        if matches!(errno, libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) {
            self.accepting.pause(errno);
        } else if errno != libc::ECANCELED && !self.stopping {
            tracing::warn!(error = %std::io::Error::from_raw_os_error(errno), "accept failed");
        }
    }

    fn received(&mut self, id: ConnId, data: &mut [u8]) {
        self.shard.received(id, data);
    }

    fn recv_ended(&mut self, id: ConnId, error: Option<i32>) {
        self.shard.recv_ended(id, error);
    }

    fn sent(&mut self, id: ConnId, res: i32) {
        self.shard.sent(id, res);
    }
}

pub struct Worker<S: Service, B: Backend> {
    backend: B,
    accepting: Accepting,
    test_panic: bool,
    shard: Shard<S>,
    mailbox: Arc<Mailbox<RtMail<S::Mail>>>,
    shutdown_at: Option<Instant>,
    cfg: WorkerConfig,
}

impl<S: Service, B: Backend> Worker<S, B> {
    /// A worker on `backend` (set up on the worker's own thread), serving `listener`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        backend: B,
        listener: RawFd,
        peers: Peers<S::Mail>,
        conns_total: Arc<AtomicUsize>,
        memory: MemoryGuard,
        service: S,
        cfg: WorkerConfig,
    ) -> Worker<S, B> {
        let mailbox = peers[index].clone();
        let io = Io::new(index, peers, cfg.clone(), conns_total, memory, Instant::now());
        Worker {
            backend,
            accepting: Accepting { worker: index, listener, on: true, paused_until: None, refused: 0, warned_at: None },
            test_panic: std::env::var(TEST_PANIC_ENV).ok().and_then(|v| v.parse::<usize>().ok()) == Some(index),
            shard: Shard::new(io, service),
            mailbox,
            shutdown_at: None,
            cfg,
        }
    }

    /// Arms (or, paused or stopping, cancels) the accept and the mailbox's doorbell.
    fn arm(&mut self) {
        let on = self.accepting.wanted(Instant::now());
        self.backend.set_accepting(self.accepting.listener, on);
        self.backend.arm_mailbox(self.mailbox.eventfd());
    }

    fn dispatch(&mut self) {
        let mut events = Events { shard: &mut self.shard, accepting: &mut self.accepting, stopping: self.shutdown_at.is_some() };
        self.backend.dispatch(&mut events);
    }

    fn drain_mailbox(&mut self) {
        while let Some(m) = self.mailbox.take() {
            if self.shard.mail(&mut self.backend, m) {
                self.begin_shutdown();
            }
        }
    }

    /// Closes the listening socket so new clients are refused at once, not queued for the
    /// grace period. `shutdown(2)` takes it out of the listening state even while an accept
    /// operation still holds a reference to it; the accept then completes.
    fn close_listener(&mut self) {
        let fd = self.accepting.listener;
        if fd < 0 {
            return;
        }
        self.backend.set_accepting(fd, false);
        // SAFETY: the listener is ours; it is shut down and closed once, then forgotten.
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
            libc::close(fd);
        }
        self.accepting.listener = -1;
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_at.is_some() {
            return;
        }
        self.shutdown_at = Some(self.shard.io.now() + self.cfg.shutdown_grace);
        self.accepting.on = false;
        self.accepting.paused_until = None;
        self.close_listener();
        self.shard.service.on_shutdown(&mut self.shard.io);
    }

    /// Runs the loop until shutdown completes.
    pub fn run(mut self) {
        self.arm();
        // The previous pass's start (after its wait) and the operations submitted before it:
        // the pass is measured at the top of the next one, which reads the clock anyway.
        let mut pass: Option<(Instant, u64)> = None;
        loop {
            let now = Instant::now();
            if let Some((start, submitted)) = pass.take() {
                let stats = &mut self.shard.io.loop_stats;
                stats.pass_nanos.record(&metrics::PASS_NANOS, now.duration_since(start).as_nanos() as u64);
                stats.submissions.record(&metrics::SUBMISSIONS, self.backend.submitted() - submitted);
            }
            if self.test_panic {
                panic!("{TEST_PANIC_ENV}={}: a runtime panic on purpose", self.shard.io.worker());
            }
            let mut wait = self.shard.next_deadline().map(|d| d.saturating_duration_since(now));
            if let Some(s) = self.shutdown_at {
                let left = s.saturating_duration_since(now).min(Duration::from_millis(20));
                wait = Some(wait.map_or(left, |w| w.min(left)));
            }
            if let Some(t) = self.shard.io.memory_next_check() {
                let left = t.saturating_duration_since(now);
                wait = Some(wait.map_or(left, |w| w.min(left)));
            }
            if let Some(p) = self.accepting.paused_until {
                let left = p.saturating_duration_since(now);
                wait = Some(wait.map_or(left, |w| w.min(left)));
            }
            if self.mailbox.prepare_sleep() {
                wait = Some(Duration::ZERO);
            }
            let res = self.backend.wait(wait);
            self.mailbox.awake();
            if let Err(e) = res {
                // A server that cannot do I/O must not pretend to run (nor spin logging).
                eprintln!("shardcast: worker {}: {e}; exiting", self.shard.io.worker());
                std::process::exit(70);
            }
            let woke = Instant::now();
            pass = Some((woke, self.backend.submitted()));
            self.shard.io.set_now(woke);
            self.dispatch();
            self.drain_mailbox();
            self.shard.turn(&mut self.backend);
            self.arm();
            if let Some(deadline) = self.shutdown_at {
                if self.shard.live() == 0 || Instant::now() >= deadline {
                    break;
                }
            }
        }
        if !self.teardown() {
            // The kernel may still write into receive buffers or read frames: leak the backend
            // and every buffer rather than free memory it can touch.
            std::mem::forget(self);
        }
    }

    /// After the grace: every connection is shut down and closed, every operation still
    /// outstanding is cancelled, and their ends are dispatched until none is left, so the
    /// kernel never touches a receive buffer, a send queue's frame or the eventfd buffer after
    /// it is freed. Returns whether that point was reached.
    fn teardown(&mut self) -> bool {
        self.close_listener();
        // Connections handed to this worker after it stopped: their descriptors are ours.
        super::conn::drop_unread(&self.mailbox);
        self.shard.close_all(&mut self.backend);
        self.backend.cancel_all();
        let give_up = Instant::now() + TEARDOWN_WAIT;
        while self.backend.outstanding() > 0 {
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::error!(
                    worker = self.shard.io.worker(),
                    outstanding = self.backend.outstanding(),
                    "operations still in flight {} ms after cancelling them; leaking their buffers instead of freeing memory the kernel may still use",
                    TEARDOWN_WAIT.as_millis()
                );
                return false;
            }
            if let Err(e) = self.backend.wait(Some(left)) {
                tracing::error!(worker = self.shard.io.worker(), error = %e, "waiting failed during teardown");
                return false;
            }
            self.dispatch();
            self.shard.close_all(&mut self.backend);
        }
        true
    }
}
