//! One worker: a thread pinned to a core, with its own ring, listener, connections, timers and
//! mailbox. Nothing here is shared with another worker; other workers reach it only by mail.
//!
//! Owns: the event loop. Each pass: submit and wait once (`submit_with_args`, bounded by the
//! service's next deadline), handle every completion (accepts, receives from the provided
//! buffer ring, finished writes), read the mailbox, run timers, then let the service finish its
//! turn and write every connection's queued frames in one vectored send each.
//!
//! Hand-written on `io-uring` on purpose: a general async runtime would add a waker, a task
//! and a future per connection, cross-thread wake-ups and an extra copy from its own buffers;
//! here a completion goes straight to the protocol code with a borrowed buffer.
//!
//! Must never: parse protocol bytes (the [`Service`] does), block, or touch another worker's
//! connections.

use std::os::fd::RawFd;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types, IoUring};

use super::bufring::BufRing;
use super::bus::Mailbox;
use super::conn::{ConnId, Driver, Io, Peers, RtMail, Service, Shard};
use super::memory::MemoryGuard;
use super::ring::{self, tag, untag, EnterError, Op, RingError, Taskrun};

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
    /// Submission queue entries of the ring.
    pub ring_entries: u32,
    /// Receive buffers in the provided-buffer ring.
    pub buf_count: u16,
    /// Size of one receive buffer.
    pub buf_size: usize,
    /// How long sessions get to close politely at shutdown.
    pub shutdown_grace: Duration,
    /// How long a connection closing after its last frames waits for the peer to read them.
    pub close_grace: Duration,
    /// Resident memory of the process past which new connections are refused and the
    /// largest holders are shed (`--max-memory`).
    pub max_memory: Option<usize>,
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

const BGID: u16 = 7;
const PROBE_BGID: u16 = 8;

pub struct Worker<S: Service> {
    // Field order matters: the ring is dropped (and the kernel lets go of the buffer ring)
    // before the buffers are freed.
    ring: Uring,
    bufs: BufRing,
    multishot: bool,
    taskrun: Taskrun,
    /// The listening socket; -1 once closed (at shutdown start).
    listener: RawFd,
    accept_armed: bool,
    accepting: bool,
    /// Out of file descriptors: no accept is armed before this instant.
    accept_paused_until: Option<Instant>,
    /// Accepts refused for lack of descriptors since the last warning.
    accept_refused: u64,
    accept_warned_at: Option<Instant>,
    test_panic: bool,
    shard: Shard<S>,
    mailbox: Arc<Mailbox<RtMail<S::Mail>>>,
    eventfd_buf: Box<u64>,
    mailbox_armed: bool,
    shutdown_at: Option<Instant>,
    cfg: WorkerConfig,
    cqes: Vec<(u64, i32, u32)>,
}

/// The ring and the count of operations submitted whose last completion is not reaped yet:
/// the teardown waits for it to reach 0 before freeing anything they reference.
struct Uring {
    ring: IoUring,
    inflight: usize,
}

impl Uring {
    /// Pushes one entry, submitting first when the queue is full.
    fn push(&mut self, e: io_uring::squeue::Entry) {
        // SAFETY: every entry built by this worker references memory that outlives the
        // operation: provided buffers (owned by `bufs`), the eventfd buffer (boxed in the
        // worker), and send iovecs/frames kept in the connection's `SendQueue` until its
        // completion; the teardown reaps every operation before any of them is freed.
        unsafe {
            while self.ring.submission().push(&e).is_err() {
                let _ = self.ring.submit();
            }
        }
        self.inflight += 1;
    }

    /// Takes the pass's completions into `out`, counting finished operations.
    fn reap(&mut self, out: &mut Vec<(u64, i32, u32)>) {
        out.clear();
        for c in self.ring.completion() {
            if !cqueue::more(c.flags()) {
                self.inflight = self.inflight.saturating_sub(1);
            }
            out.push((c.user_data(), c.result(), c.flags()));
        }
    }
}

/// The shard's operations as io_uring submissions.
struct RingDriver<'a> {
    ring: &'a mut Uring,
    multishot: bool,
}

impl Driver for RingDriver<'_> {
    fn peer_addr(&mut self, fd: RawFd) -> Option<std::net::SocketAddr> {
        super::conn::peer_addr_of(fd)
    }

    fn arm_recv(&mut self, id: ConnId, fd: RawFd) {
        let e = if self.multishot {
            opcode::RecvMulti::new(types::Fd(fd), BGID).build()
        } else {
            opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), 0).buf_group(BGID).build().flags(io_uring::squeue::Flags::BUFFER_SELECT)
        };
        self.ring.push(e.user_data(tag(Op::Recv, id.idx, id.gen)));
    }

    fn cancel_recv(&mut self, id: ConnId) {
        let ud = tag(Op::Recv, id.idx, id.gen);
        self.ring.push(opcode::AsyncCancel::new(ud).build().user_data(tag(Op::Cancel, 0, 0)));
    }

    fn write(&mut self, id: ConnId, fd: RawFd, iov: *const libc::iovec, n: u32) {
        self.ring.push(opcode::Writev::new(types::Fd(fd), iov, n).build().user_data(tag(Op::Send, id.idx, id.gen)));
    }

    fn shutdown(&mut self, fd: RawFd) {
        // SAFETY: shutting down our own socket; pending operations then complete.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }

    fn shutdown_write(&mut self, fd: RawFd) {
        // SAFETY: shutting down the sending side of our own socket; receives go on.
        unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    }

    fn close(&mut self, fd: RawFd) {
        // SAFETY: no operation on this descriptor is in flight any more; it is closed once.
        unsafe { libc::close(fd) };
    }
}

impl<S: Service> Worker<S> {
    /// Sets up the ring and buffers; must run on the worker's own thread.
    pub fn new(
        index: usize,
        listener: RawFd,
        peers: Peers<S::Mail>,
        conns_total: Arc<AtomicUsize>,
        memory: MemoryGuard,
        service: S,
        cfg: WorkerConfig,
    ) -> Result<Worker<S>, RingError> {
        let (mut ring, taskrun) = ring::create_with_taskrun(cfg.ring_entries)?;
        // A ring that can be set up but not entered (a seccomp profile blocking only
        // io_uring_enter) fails here, before the server says it is listening.
        ring::check_enter(&mut ring)?;
        // Probe multishot receive on a throw-away buffer group, then set up the real one.
        let probe_bufs = BufRing::new(&ring, 8, 4096, PROBE_BGID)?;
        let multishot = ring::probe_multishot_recv(&mut ring, PROBE_BGID);
        let _ = ring.submitter().unregister_buf_ring(PROBE_BGID);
        drop(probe_bufs);
        let bufs = BufRing::new(&ring, cfg.buf_count, cfg.buf_size, BGID)?;
        tracing::debug!(worker = index, multishot, "worker ring ready");
        let mailbox = peers[index].clone();
        let io = Io::new(index, peers, cfg.clone(), conns_total, memory, Instant::now());
        Ok(Worker {
            ring: Uring { ring, inflight: 0 },
            bufs,
            multishot,
            taskrun,
            listener,
            accept_armed: false,
            accepting: true,
            accept_paused_until: None,
            accept_refused: 0,
            accept_warned_at: None,
            test_panic: std::env::var(TEST_PANIC_ENV).ok().and_then(|v| v.parse::<usize>().ok()) == Some(index),
            shard: Shard::new(io, service),
            mailbox,
            eventfd_buf: Box::new(0),
            mailbox_armed: false,
            shutdown_at: None,
            cfg,
            cqes: Vec::with_capacity(1024),
        })
    }

    fn arm_accept(&mut self) {
        if let Some(until) = self.accept_paused_until {
            if Instant::now() < until {
                return;
            }
            self.accept_paused_until = None;
        }
        if self.accepting && !self.accept_armed && self.listener >= 0 {
            self.ring.push(opcode::AcceptMulti::new(types::Fd(self.listener)).flags(libc::SOCK_CLOEXEC).build().user_data(tag(Op::Accept, 0, 0)));
            self.accept_armed = true;
        }
    }

    fn arm_mailbox(&mut self) {
        if !self.mailbox_armed {
            let ptr = (&mut *self.eventfd_buf as *mut u64).cast::<u8>();
            self.ring.push(opcode::Read::new(types::Fd(self.mailbox.eventfd()), ptr, 8).build().user_data(tag(Op::Mailbox, 0, 0)));
            self.mailbox_armed = true;
        }
    }

    fn handle_cqe(&mut self, ud: u64, res: i32, flags: u32) {
        let (op, idx, gen) = untag(ud);
        match op {
            Some(Op::Accept) => {
                if !cqueue::more(flags) {
                    self.accept_armed = false;
                }
                if res >= 0 {
                    if self.shutdown_at.is_some() {
                        // Accepted just before the listener closed: refuse it like the rest.
                        // SAFETY: a descriptor we were just given and nothing else knows of.
                        unsafe { libc::close(res) };
                    } else {
                        super::listener::set_nodelay(res);
                        let mut drv = RingDriver { ring: &mut self.ring, multishot: self.multishot };
                        self.shard.accept(&mut drv, res);
                    }
                } else if matches!(-res, libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) {
                    self.pause_accepting(-res);
                } else if res != -libc::ECANCELED && self.shutdown_at.is_none() {
                    tracing::warn!(error = %std::io::Error::from_raw_os_error(-res), "accept failed");
                }
            }
            Some(Op::Mailbox) => {
                self.mailbox_armed = false;
            }
            Some(Op::Recv) => {
                let bid = cqueue::buffer_select(flags);
                let id = ConnId { idx, gen };
                if res > 0 {
                    let b = bid.expect("a successful buffer-select receive names its buffer");
                    // SAFETY: `b` came from this completion of our buffer group and is recycled
                    // below, before any other completion is looked at.
                    let data = unsafe { self.bufs.buffer(b, res as usize) };
                    self.shard.received(id, data);
                    self.bufs.recycle(b);
                } else if let Some(b) = bid {
                    self.bufs.recycle(b);
                }
                if res <= 0 || !cqueue::more(flags) {
                    let error = if res > 0 { None } else { Some(-res) };
                    if res == -libc::ENOBUFS {
                        tracing::debug!("receive buffers exhausted; re-arming");
                    }
                    self.shard.recv_ended(id, error);
                }
            }
            Some(Op::Send) => self.shard.sent(ConnId { idx, gen }, res),
            Some(Op::Cancel) | None => {}
        }
    }

    fn drain_mailbox(&mut self) {
        while let Some(m) = self.mailbox.take() {
            let mut drv = RingDriver { ring: &mut self.ring, multishot: self.multishot };
            if self.shard.mail(&mut drv, m) {
                self.begin_shutdown();
            }
        }
    }

    /// The process is out of descriptors (`EMFILE`/`ENFILE`) or kernel memory: stop accepting
    /// for [`ACCEPT_PAUSE`] instead of retrying at once (each retry fails the same way, and a
    /// multishot accept re-armed at once spins a core and floods the log). The pending
    /// connections wait in the listen backlog; one warning per [`ACCEPT_WARN_EVERY`] counts
    /// them.
    fn pause_accepting(&mut self, errno: i32) {
        self.accept_refused += 1;
        if self.accept_paused_until.is_some() {
            return;
        }
        let now = Instant::now();
        self.accept_paused_until = Some(now + ACCEPT_PAUSE);
        if self.accept_armed {
            self.ring.push(opcode::AsyncCancel::new(tag(Op::Accept, 0, 0)).build().user_data(tag(Op::Cancel, 0, 0)));
        }
        if self.accept_warned_at.is_none_or(|t| now.duration_since(t) >= ACCEPT_WARN_EVERY) {
            tracing::warn!(
                worker = self.shard.io.worker(),
                error = %std::io::Error::from_raw_os_error(errno),
                refused = self.accept_refused,
                pause_ms = ACCEPT_PAUSE.as_millis() as u64,
                "cannot accept connections (out of file descriptors or memory); pausing accepts"
            );
            self.accept_warned_at = Some(now);
            self.accept_refused = 0;
        }
    }

    /// Closes the listening socket so new clients are refused at once, not queued for the
    /// grace period. `shutdown(2)` takes it out of the listening state even while the accept
    /// operation still holds a reference to it; the accept then completes.
    fn close_listener(&mut self) {
        if self.listener < 0 {
            return;
        }
        // SAFETY: the listener is ours; it is shut down and closed once, then forgotten.
        unsafe {
            libc::shutdown(self.listener, libc::SHUT_RDWR);
            libc::close(self.listener);
        }
        self.listener = -1;
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_at.is_some() {
            return;
        }
        self.shutdown_at = Some(self.shard.io.now() + self.cfg.shutdown_grace);
        self.accepting = false;
        self.accept_paused_until = None;
        if self.accept_armed {
            self.ring.push(opcode::AsyncCancel::new(tag(Op::Accept, 0, 0)).build().user_data(tag(Op::Cancel, 0, 0)));
        }
        self.close_listener();
        self.shard.service.on_shutdown(&mut self.shard.io);
    }

    /// An `io_uring_enter` failed: retry the harmless kinds; anything else means the ring is
    /// unusable, and a server that cannot do I/O must not pretend to run (nor spin logging).
    fn enter_failed(&self, e: &std::io::Error) {
        if let EnterError::Fatal { errno, hint } = ring::classify_enter_error(e.raw_os_error().unwrap_or(0)) {
            eprintln!("shardcast: worker {}: io_uring_enter failed ({errno}: {e}): {hint}; exiting", self.shard.io.worker());
            std::process::exit(70);
        }
    }

    /// Runs the loop until shutdown completes.
    pub fn run(mut self) {
        self.arm_accept();
        self.arm_mailbox();
        loop {
            let now = Instant::now();
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
            if let Some(p) = self.accept_paused_until {
                let left = p.saturating_duration_since(now);
                wait = Some(wait.map_or(left, |w| w.min(left)));
            }
            let must_not_sleep = self.mailbox.prepare_sleep();
            let ring = &mut self.ring.ring;
            let res = if must_not_sleep || wait == Some(Duration::ZERO) {
                // Not `submit()`: on a DEFER_TASKRUN ring it may reap nothing (see the rule at
                // `ring::submit_no_sleep`).
                ring::submit_no_sleep(ring, self.taskrun)
            } else if let Some(w) = wait {
                let ts = ring::timespec(w);
                let args = types::SubmitArgs::new().timespec(&ts);
                ring.submitter().submit_with_args(1, &args)
            } else {
                ring.submit_and_wait(1)
            };
            self.mailbox.awake();
            if let Err(e) = res {
                self.enter_failed(&e);
            }
            self.shard.io.set_now(Instant::now());
            self.ring.reap(&mut self.cqes);
            let mut cqes = std::mem::take(&mut self.cqes);
            for &(ud, res, flags) in &cqes {
                self.handle_cqe(ud, res, flags);
            }
            cqes.clear();
            self.cqes = cqes;
            self.drain_mailbox();
            let mut drv = RingDriver { ring: &mut self.ring, multishot: self.multishot };
            self.shard.turn(&mut drv);
            self.arm_mailbox();
            self.arm_accept();
            if let Some(deadline) = self.shutdown_at {
                if self.shard.live() == 0 || Instant::now() >= deadline {
                    break;
                }
            }
        }
        if !self.teardown() {
            // The kernel may still write into receive buffers or read frames: leak the ring
            // and every buffer rather than free memory it can touch.
            std::mem::forget(self);
        }
    }

    /// After the grace: every connection is shut down and closed, every operation still in
    /// flight is cancelled, and completions are reaped until none is left, so the kernel never
    /// touches a receive buffer, a send queue's frame or the eventfd buffer after it is freed.
    /// Returns whether that point was reached.
    fn teardown(&mut self) -> bool {
        self.close_listener();
        // Connections handed to this worker after it stopped: their descriptors are ours.
        while let Some(m) = self.mailbox.take() {
            if let RtMail::Adopt { fd, .. } = m {
                // SAFETY: an adopted descriptor belongs to this worker alone; closed once.
                unsafe { libc::close(fd) };
            }
        }
        let mut drv = RingDriver { ring: &mut self.ring, multishot: self.multishot };
        self.shard.close_all(&mut drv);
        if self.ring.inflight > 0 {
            // One cancel for every request of this ring (kernel 5.19+, like buffer rings).
            self.ring.push(opcode::AsyncCancel2::new(types::CancelBuilder::any()).build().user_data(tag(Op::Cancel, 0, 0)));
        }
        let give_up = Instant::now() + TEARDOWN_WAIT;
        while self.ring.inflight > 0 {
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::error!(
                    worker = self.shard.io.worker(),
                    inflight = self.ring.inflight,
                    "operations still in flight {} ms after cancelling them; leaking their buffers instead of freeing memory the kernel may still use",
                    TEARDOWN_WAIT.as_millis()
                );
                return false;
            }
            let ts = ring::timespec(left);
            let args = types::SubmitArgs::new().timespec(&ts);
            if let Err(e) = self.ring.ring.submitter().submit_with_args(1, &args) {
                if let EnterError::Fatal { .. } = ring::classify_enter_error(e.raw_os_error().unwrap_or(0)) {
                    tracing::error!(worker = self.shard.io.worker(), error = %e, "io_uring_enter failed during teardown");
                    return false;
                }
            }
            self.ring.reap(&mut self.cqes);
            let cqes = std::mem::take(&mut self.cqes);
            for &(ud, res, flags) in &cqes {
                self.handle_cqe(ud, res, flags);
            }
            self.cqes = cqes;
            let mut drv = RingDriver { ring: &mut self.ring, multishot: self.multishot };
            self.shard.close_all(&mut drv);
        }
        true
    }
}
