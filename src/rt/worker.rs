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
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::{cqueue, opcode, types, IoUring};

use super::bufring::BufRing;
use super::bus::Mailbox;
use super::ring::{self, gen_matches, tag, untag, EnterError, Op, RingError, Taskrun};
use super::sendq::{Overflow, SendQueue};

/// A connection's handle: slot index and generation (a reused slot gets a new generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub idx: u32,
    pub gen: u32,
}

/// What the runtime drives: the protocol stack of one worker.
pub trait Service: 'static {
    /// Per-connection protocol state.
    type Conn;
    /// Messages other workers (and `ServerHandle`s) send to this worker.
    type Mail: Send + 'static;

    /// A connection was accepted (or adopted from another worker): its initial state.
    fn on_accept(&mut self, io: &mut Io<Self::Conn, Self::Mail>, id: ConnId) -> Self::Conn;
    /// Bytes arrived. Returns how many were consumed; the rest is kept and offered again, in
    /// front of the next bytes. `data` may be unmasked or otherwise rewritten in place.
    fn on_data(&mut self, io: &mut Io<Self::Conn, Self::Mail>, id: ConnId, data: &mut [u8]) -> usize;
    /// The connection is gone (peer closed, error, or the service closed it).
    fn on_closed(&mut self, io: &mut Io<Self::Conn, Self::Mail>, id: ConnId, state: Self::Conn);
    /// Mail from another worker.
    fn on_mail(&mut self, io: &mut Io<Self::Conn, Self::Mail>, mail: Self::Mail);
    /// Timers: called every pass with the current time.
    fn on_timers(&mut self, io: &mut Io<Self::Conn, Self::Mail>, now: Instant);
    /// The earliest instant `on_timers` has work.
    fn next_deadline(&self) -> Option<Instant>;
    /// End of a loop pass: flush what was batched during it.
    fn on_turn_end(&mut self, io: &mut Io<Self::Conn, Self::Mail>);
    /// The server is shutting down: close sessions politely.
    fn on_shutdown(&mut self, io: &mut Io<Self::Conn, Self::Mail>);
}

/// Mail as the runtime sees it.
pub enum RtMail<M> {
    /// Take over a connection another worker accepted, with the bytes it already read.
    Adopt { fd: RawFd, data: Vec<u8> },
    User(M),
    Shutdown,
}

/// Why a send did not queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The connection is closed or closing.
    Gone,
    /// Its queue would pass `--max-send-buffer`.
    Overflow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    No,
    AfterFlush,
    Now,
}

struct Conn<T> {
    fd: RawFd,
    gen: u32,
    rbuf: Vec<u8>,
    sendq: SendQueue,
    recv_armed: bool,
    cancel_sent: bool,
    closing: Closing,
    shut: bool,
    handoff_to: Option<usize>,
    state: Option<T>,
}

/// The service's view of the worker: connections' state, sends, closes, mail.
pub struct Io<T, M> {
    worker: usize,
    conns: Vec<Option<Conn<T>>>,
    gens: Vec<u32>,
    free: Vec<u32>,
    live: usize,
    dirty: Vec<ConnId>,
    pending: Vec<ConnId>,
    peers: Arc<Vec<Arc<Mailbox<RtMail<M>>>>>,
    max_send_buffer: usize,
    now: Instant,
}

impl<T, M> Io<T, M> {
    pub fn worker(&self) -> usize {
        self.worker
    }

    pub fn workers(&self) -> usize {
        self.peers.len()
    }

    /// The time at the start of this loop pass.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Open connections on this worker.
    pub fn conn_count(&self) -> usize {
        self.live
    }

    fn conn(&mut self, id: ConnId) -> Option<&mut Conn<T>> {
        self.conns.get_mut(id.idx as usize)?.as_mut().filter(|c| c.gen == id.gen)
    }

    /// The protocol state of a live connection.
    pub fn state(&mut self, id: ConnId) -> Option<&mut T> {
        self.conn(id).filter(|c| c.closing == Closing::No && c.handoff_to.is_none())?.state.as_mut()
    }

    /// Queues a frame; it is written at the end of this loop pass with the others.
    pub fn send(&mut self, id: ConnId, frame: Bytes) -> Result<(), SendError> {
        let limit = self.max_send_buffer;
        let c = self.conn(id).filter(|c| c.closing == Closing::No).ok_or(SendError::Gone)?;
        c.sendq.push(frame, limit).map_err(|Overflow| SendError::Overflow)?;
        self.dirty.push(id);
        Ok(())
    }

    /// Bytes queued on a connection and not yet written.
    pub fn queued_bytes(&mut self, id: ConnId) -> usize {
        self.conn(id).map_or(0, |c| c.sendq.queued_bytes())
    }

    /// Closes a connection now (queued frames are dropped). `on_closed` follows.
    pub fn close(&mut self, id: ConnId) {
        if let Some(c) = self.conn(id) {
            c.closing = Closing::Now;
            self.pending.push(id);
        }
    }

    /// Closes a connection once its queued frames are written.
    pub fn close_after_flush(&mut self, id: ConnId) {
        if let Some(c) = self.conn(id) {
            if c.closing == Closing::No {
                c.closing = Closing::AfterFlush;
            }
            self.pending.push(id);
        }
    }

    /// Hands the connection (and the bytes not consumed) to another worker, which will see it
    /// as a new connection whose first bytes are those. No `on_closed` follows.
    pub fn handoff(&mut self, id: ConnId, worker: usize) {
        if let Some(c) = self.conn(id) {
            c.handoff_to = Some(worker);
            c.state = None;
            self.pending.push(id);
        }
    }

    /// Posts mail to a worker (this one included).
    pub fn post(&self, worker: usize, mail: M) {
        self.peers[worker].post(RtMail::User(mail));
    }
}

/// Every worker's mailbox, by worker index.
pub type Peers<M> = Arc<Vec<Arc<Mailbox<RtMail<M>>>>>;

/// Settings of the runtime.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub max_send_buffer: usize,
    pub ring_entries: u32,
    pub buf_count: u16,
    pub buf_size: usize,
    pub shutdown_grace: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            max_send_buffer: 4 << 20,
            ring_entries: 4096,
            buf_count: 1024,
            buf_size: 16 * 1024,
            shutdown_grace: Duration::from_secs(3),
        }
    }
}

const BGID: u16 = 7;
const PROBE_BGID: u16 = 8;

/// How long accepting stops after the process ran out of file descriptors (or memory).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// At most one warning about refused accepts per this interval.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(1);
/// How long the teardown waits for cancelled operations to complete.
const TEARDOWN_WAIT: Duration = Duration::from_secs(1);
/// Test hook: the worker with this index panics in its loop (see `tests/hostile_runtime.rs`).
const TEST_PANIC_ENV: &str = "SHARDCAST_TEST_PANIC_WORKER";


pub struct Worker<S: Service> {
    // Field order matters: the ring is dropped (and the kernel lets go of the buffer ring)
    // before the buffers are freed.
    ring: IoUring,
    bufs: BufRing,
    multishot: bool,
    taskrun: Taskrun,
    /// Operations submitted whose last completion has not been reaped yet: the teardown waits
    /// for this to reach 0 before freeing what they reference.
    inflight: usize,
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
    io: Io<S::Conn, S::Mail>,
    service: S,
    mailbox: Arc<Mailbox<RtMail<S::Mail>>>,
    eventfd_buf: Box<u64>,
    mailbox_armed: bool,
    shutdown_at: Option<Instant>,
    cfg: WorkerConfig,
    cqes: Vec<(u64, i32, u32)>,
}

impl<S: Service> Worker<S> {
    /// Sets up the ring and buffers; must run on the worker's own thread.
    pub fn new(
        index: usize,
        listener: RawFd,
        peers: Peers<S::Mail>,
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
        Ok(Worker {
            ring,
            bufs,
            multishot,
            taskrun,
            inflight: 0,
            listener,
            accept_armed: false,
            accepting: true,
            accept_paused_until: None,
            accept_refused: 0,
            accept_warned_at: None,
            test_panic: std::env::var(TEST_PANIC_ENV).ok().and_then(|v| v.parse::<usize>().ok()) == Some(index),
            io: Io {
                worker: index,
                conns: Vec::new(),
                gens: Vec::new(),
                free: Vec::new(),
                live: 0,
                dirty: Vec::new(),
                pending: Vec::new(),
                peers,
                max_send_buffer: cfg.max_send_buffer,
                now: Instant::now(),
            },
            service,
            mailbox,
            eventfd_buf: Box::new(0),
            mailbox_armed: false,
            shutdown_at: None,
            cfg,
            cqes: Vec::with_capacity(1024),
        })
    }

    fn push(&mut self, e: io_uring::squeue::Entry) {
        // SAFETY: every entry built by this worker references memory that outlives the
        // operation: provided buffers (owned by `bufs`), the eventfd buffer (boxed in self),
        // and send iovecs/frames kept in the connection's `SendQueue` until completion.
        unsafe {
            while self.ring.submission().push(&e).is_err() {
                let _ = self.ring.submit();
            }
        }
        self.inflight += 1;
    }

    fn arm_accept(&mut self) {
        if let Some(until) = self.accept_paused_until {
            if Instant::now() < until {
                return;
            }
            self.accept_paused_until = None;
        }
        if self.accepting && !self.accept_armed && self.listener >= 0 {
            self.push(opcode::AcceptMulti::new(types::Fd(self.listener)).flags(libc::SOCK_CLOEXEC).build().user_data(tag(Op::Accept, 0, 0)));
            self.accept_armed = true;
        }
    }

    fn arm_mailbox(&mut self) {
        if !self.mailbox_armed {
            let ptr = (&mut *self.eventfd_buf as *mut u64).cast::<u8>();
            self.push(opcode::Read::new(types::Fd(self.mailbox.eventfd()), ptr, 8).build().user_data(tag(Op::Mailbox, 0, 0)));
            self.mailbox_armed = true;
        }
    }

    fn arm_recv(&mut self, id: ConnId) {
        let multishot = self.multishot;
        let Some(c) = self.io.conn(id) else { return };
        if c.recv_armed || c.closing != Closing::No || c.handoff_to.is_some() {
            return;
        }
        c.recv_armed = true;
        let fd = c.fd;
        let e = if multishot {
            opcode::RecvMulti::new(types::Fd(fd), BGID).build()
        } else {
            opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), 0)
                .buf_group(BGID)
                .build()
                .flags(io_uring::squeue::Flags::BUFFER_SELECT)
        };
        self.push(e.user_data(tag(Op::Recv, id.idx, id.gen)));
    }

    fn insert(&mut self, fd: RawFd) -> ConnId {
        let idx = match self.io.free.pop() {
            Some(i) => i,
            None => {
                self.io.conns.push(None);
                self.io.gens.push(0);
                (self.io.conns.len() - 1) as u32
            }
        };
        let gen = (self.io.gens[idx as usize].wrapping_add(1)) & 0xff_ffff;
        self.io.gens[idx as usize] = gen;
        self.io.conns[idx as usize] = Some(Conn {
            fd,
            gen,
            rbuf: Vec::new(),
            sendq: SendQueue::default(),
            recv_armed: false,
            cancel_sent: false,
            closing: Closing::No,
            shut: false,
            handoff_to: None,
            state: None,
        });
        self.io.live += 1;
        ConnId { idx, gen }
    }

    fn open(&mut self, fd: RawFd, initial: Vec<u8>) {
        super::listener::set_nodelay(fd);
        let id = self.insert(fd);
        let state = self.service.on_accept(&mut self.io, id);
        if let Some(c) = self.io.conn(id) {
            c.state = Some(state);
        }
        if !initial.is_empty() {
            let mut data = initial;
            let used = self.service.on_data(&mut self.io, id, &mut data);
            if let Some(c) = self.io.conn(id) {
                data.drain(..used.min(data.len()));
                c.rbuf = data;
            }
        }
        self.arm_recv(id);
    }

    fn deliver(&mut self, id: ConnId, bid: u16, len: usize) {
        // SAFETY: `bid` came from this completion of our buffer group and is recycled below
        // before any other completion is looked at.
        let data = unsafe { self.bufs.buffer(bid, len) };
        let Some(c) = self.io.conn(id) else {
            self.bufs.recycle(bid);
            return;
        };
        if c.closing != Closing::No {
            self.bufs.recycle(bid);
            return;
        }
        if c.handoff_to.is_some() || !c.rbuf.is_empty() {
            c.rbuf.extend_from_slice(data);
            self.bufs.recycle(bid);
            if c.handoff_to.is_some() {
                return;
            }
            // Nothing else writes `rbuf` while the service runs, so the rest simply goes back.
            let mut buf = std::mem::take(&mut c.rbuf);
            let used = self.service.on_data(&mut self.io, id, &mut buf);
            if let Some(c) = self.io.conn(id) {
                buf.drain(..used.min(buf.len()));
                // An idle connection holds no buffer.
                c.rbuf = if buf.is_empty() { Vec::new() } else { buf };
            }
            return;
        }
        // Fast path: process straight from the kernel's buffer, keep only a partial tail.
        let used = self.service.on_data(&mut self.io, id, data);
        if used < len {
            if let Some(c) = self.io.conn(id) {
                c.rbuf.extend_from_slice(&data[used..]);
            }
        }
        self.bufs.recycle(bid);
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
                        self.open(res, Vec::new());
                    }
                } else if matches!(
                    -res,
                    libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
                ) {
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
                let current = self.io.conns.get(idx as usize).and_then(|c| c.as_ref()).is_some_and(|c| gen_matches(c.gen, gen));
                if !current {
                    if let Some(b) = bid {
                        self.bufs.recycle(b);
                    }
                    return;
                }
                if !cqueue::more(flags) {
                    if let Some(c) = self.io.conn(id) {
                        c.recv_armed = false;
                    }
                }
                if res > 0 {
                    let b = bid.expect("a successful buffer-select receive names its buffer");
                    self.deliver(id, b, res as usize);
                } else if res == -libc::ENOBUFS {
                    tracing::debug!("receive buffers exhausted; re-arming");
                } else if res == 0 || res != -libc::ECANCELED {
                    // End of stream or an error: the connection is over.
                    if let Some(b) = bid {
                        self.bufs.recycle(b);
                    }
                    if let Some(c) = self.io.conn(id) {
                        if c.handoff_to.is_none() {
                            c.closing = Closing::Now;
                        }
                    }
                }
                self.io.pending.push(id);
            }
            Some(Op::Send) => {
                let id = ConnId { idx, gen };
                if let Some(c) = self.io.conn(id) {
                    if res >= 0 {
                        c.sendq.complete(res as usize);
                        self.io.dirty.push(id);
                    } else {
                        c.sendq.complete(0);
                        c.sendq.clear();
                        c.closing = Closing::Now;
                    }
                    self.io.pending.push(id);
                }
            }
            Some(Op::Cancel) | None => {}
        }
    }

    /// Applies closes and hand-offs whose conditions are met.
    fn settle(&mut self) {
        while let Some(id) = self.io.pending.pop() {
            let Some(c) = self.io.conn(id) else { continue };
            if c.closing == Closing::AfterFlush && !c.sendq.has_queued() && !c.sendq.in_flight() {
                c.closing = Closing::Now;
            }
            let busy = c.recv_armed || c.sendq.in_flight();
            if let Some(target) = c.handoff_to {
                if c.recv_armed && !c.cancel_sent {
                    c.cancel_sent = true;
                    let ud = tag(Op::Recv, id.idx, id.gen);
                    self.push(opcode::AsyncCancel::new(ud).build().user_data(tag(Op::Cancel, 0, 0)));
                }
                if !busy {
                    let c = self.io.conns[id.idx as usize].take().expect("checked above");
                    self.io.free.push(id.idx);
                    self.io.live -= 1;
                    self.io.peers[target].post(RtMail::Adopt { fd: c.fd, data: c.rbuf });
                }
                continue;
            }
            if c.closing != Closing::Now {
                if !c.recv_armed {
                    self.arm_recv(id);
                }
                continue;
            }
            if let Some(state) = c.state.take() {
                self.service.on_closed(&mut self.io, id, state);
            }
            let Some(c) = self.io.conn(id) else { continue };
            c.sendq.clear();
            if !c.shut {
                c.shut = true;
                // SAFETY: shutting down our own socket; pending operations then complete.
                unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
            }
            if !busy {
                let c = self.io.conns[id.idx as usize].take().expect("checked above");
                // SAFETY: no operation on this descriptor is in flight any more.
                unsafe { libc::close(c.fd) };
                self.io.free.push(id.idx);
                self.io.live -= 1;
            }
        }
    }

    fn flush_sends(&mut self) {
        let mut dirty = std::mem::take(&mut self.io.dirty);
        for id in dirty.drain(..) {
            let Some(c) = self.io.conn(id) else { continue };
            if c.closing == Closing::Now {
                continue;
            }
            let fd = c.fd;
            if let Some((iov, n)) = c.sendq.start_send() {
                self.push(opcode::Writev::new(types::Fd(fd), iov, n).build().user_data(tag(Op::Send, id.idx, id.gen)));
            }
        }
        self.io.dirty = dirty;
    }

    fn drain_mailbox(&mut self) {
        while let Some(m) = self.mailbox.take() {
            match m {
                RtMail::Adopt { fd, data } => self.open(fd, data),
                RtMail::User(m) => self.service.on_mail(&mut self.io, m),
                RtMail::Shutdown => self.begin_shutdown(),
            }
        }
    }

    /// The process is out of descriptors (`EMFILE`/`ENFILE`) or kernel memory: stop accepting
    /// for [`ACCEPT_PAUSE`] instead of retrying at once (each retry fails the same way, and a
    /// multishot accept re-armed at once spins a core and floods the log). The pending
    /// connections wait in the listen backlog; one warning per [`ACCEPT_WARN_EVERY`] counts them.
    fn pause_accepting(&mut self, errno: i32) {
        self.accept_refused += 1;
        if self.accept_paused_until.is_some() {
            return;
        }
        let now = Instant::now();
        self.accept_paused_until = Some(now + ACCEPT_PAUSE);
        if self.accept_armed {
            self.push(
                opcode::AsyncCancel::new(tag(Op::Accept, 0, 0))
                    .build()
                    .user_data(tag(Op::Cancel, 0, 0)),
            );
        }
        if self
            .accept_warned_at
            .is_none_or(|t| now.duration_since(t) >= ACCEPT_WARN_EVERY)
        {
            tracing::warn!(
                worker = self.io.worker,
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
    /// grace period. `shutdown(2)` takes it out of the listening state even while the
    /// accept operation still holds a reference to it; the accept then completes.
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
        self.shutdown_at = Some(self.io.now + self.cfg.shutdown_grace);
        self.accepting = false;
        self.accept_paused_until = None;
        if self.accept_armed {
            self.push(
                opcode::AsyncCancel::new(tag(Op::Accept, 0, 0))
                    .build()
                    .user_data(tag(Op::Cancel, 0, 0)),
            );
        }
        self.close_listener();
        self.service.on_shutdown(&mut self.io);
    }

    /// An `io_uring_enter` failed: retry the harmless kinds; anything else means the ring is
    /// unusable, and a server that cannot do I/O must not pretend to run (nor spin logging).
    fn enter_failed(&self, e: &std::io::Error) {
        if let EnterError::Fatal { errno, hint } =
            ring::classify_enter_error(e.raw_os_error().unwrap_or(0))
        {
            eprintln!(
                "shardcast: worker {}: io_uring_enter failed ({errno}: {e}): {hint}; exiting",
                self.io.worker
            );
            std::process::exit(70);
        }
    }

    /// Takes the pass's completions into `self.cqes`, counting finished operations.
    fn reap(&mut self) {
        self.cqes.clear();
        for c in self.ring.completion() {
            if !cqueue::more(c.flags()) {
                self.inflight = self.inflight.saturating_sub(1);
            }
            self.cqes.push((c.user_data(), c.result(), c.flags()));
        }
    }

    /// After the loop: cancel every operation still in flight, shut the sockets down, and reap
    /// until none is left, so no receive buffer, send queue or eventfd buffer is freed while
    /// the kernel may still write or read it. Returns false if some did not finish in time.
    fn drain_inflight(&mut self) -> bool {
        if self.inflight > 0 {
            // One cancel for every request of this ring (kernel 5.19+, like buffer rings).
            self.push(
                opcode::AsyncCancel2::new(types::CancelBuilder::any())
                    .build()
                    .user_data(tag(Op::Cancel, 0, 0)),
            );
        }
        for c in self.io.conns.iter().flatten() {
            // SAFETY: our own socket, still open; pending receives and sends then complete.
            unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
        }
        let deadline = Instant::now() + TEARDOWN_WAIT;
        while self.inflight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let ts = ring::timespec(left);
            let args = types::SubmitArgs::new().timespec(&ts);
            if let Err(e) = self.ring.submitter().submit_with_args(1, &args) {
                if let EnterError::Fatal { .. } =
                    ring::classify_enter_error(e.raw_os_error().unwrap_or(0))
                {
                    tracing::error!(worker = self.io.worker, error = %e, "io_uring_enter failed during teardown");
                    break;
                }
            }
            // Buffers of late receives need no recycling: the whole buffer ring goes next.
            self.reap();
        }
        self.inflight == 0
    }


    /// Runs the loop until shutdown completes.
    pub fn run(mut self) {
        self.arm_accept();
        self.arm_mailbox();
        loop {
            let now = Instant::now();
            if self.test_panic {
                panic!("{TEST_PANIC_ENV}={}: a runtime panic on purpose", self.io.worker);
            }
            let mut wait = self.service.next_deadline().map(|d| d.saturating_duration_since(now));
            if let Some(s) = self.shutdown_at {
                let left = s.saturating_duration_since(now).min(Duration::from_millis(20));
                wait = Some(wait.map_or(left, |w| w.min(left)));
            }
            if let Some(p) = self.accept_paused_until {
                let left = p.saturating_duration_since(now);
                wait = Some(wait.map_or(left, |w| w.min(left)));
            }
            let must_not_sleep = self.mailbox.prepare_sleep();
            let res = if must_not_sleep || wait == Some(Duration::ZERO) {
                // Not `submit()`: on a DEFER_TASKRUN ring it may reap nothing (see the rule
                // at `ring::submit_no_sleep`).
                ring::submit_no_sleep(&self.ring, self.taskrun)
            } else if let Some(w) = wait {
                let ts = ring::timespec(w);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            } else {
                self.ring.submit_and_wait(1)
            };
            self.mailbox.awake();
            if let Err(e) = res {
                self.enter_failed(&e);
            }
            self.io.now = Instant::now();
            self.reap();
            let mut cqes = std::mem::take(&mut self.cqes);
            for &(ud, res, flags) in &cqes {
                self.handle_cqe(ud, res, flags);
            }
            cqes.clear();
            self.cqes = cqes;
            self.drain_mailbox();
            let now = self.io.now;
            self.service.on_timers(&mut self.io, now);
            self.service.on_turn_end(&mut self.io);
            self.settle();
            self.flush_sends();
            self.arm_mailbox();
            self.arm_accept();
            if let Some(deadline) = self.shutdown_at {
                if self.io.live == 0 || Instant::now() >= deadline {
                    break;
                }
            }
        }
        self.close_listener();
        let drained = self.drain_inflight();
        // Whatever is left past the grace period is closed hard.
        for c in self.io.conns.iter_mut().flatten() {
            // SAFETY: the loop is over; these descriptors are ours and closed once (operations
            // still in flight hold their own reference to the socket, not the number).
            unsafe { libc::close(c.fd) };
        }
        if !drained {
            tracing::error!(
                worker = self.io.worker,
                inflight = self.inflight,
                "operations still in flight {} ms after cancelling them; leaking their buffers instead of freeing memory the kernel may still use",
                TEARDOWN_WAIT.as_millis()
            );
            std::mem::forget(self);
            return;
        }
        // Nothing references the buffers any more: the connections (with their send queues),
        // then the ring and the buffer ring, are freed in field order.
        self.io.conns.clear();
    }
}
