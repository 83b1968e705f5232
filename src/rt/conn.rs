//! The connection table of one worker and the rules every backend shares: what happens when a
//! connection is accepted or adopted, when bytes arrive, when a write completes, when the
//! service closes, pauses or hands over a connection, and what a peer may make it hold.
//!
//! A backend (the io_uring loop in [`super::worker`], the in-memory harness in [`super::sim`])
//! turns its completions into calls on [`Shard`] and carries out what the shard asks of it
//! through [`Driver`]; nothing here knows which backend runs.
//!
//! TLS (`WorkerConfig::tls`) sits here, under the service and over every backend: a TLS
//! connection's received bytes are decrypted ([`super::tls::TlsConn`]) before the service sees
//! them, its send queue holds the service's plaintext frames, and at the end of each pass they
//! are encrypted into one ciphertext buffer that the backend writes. The service never knows
//! whether a connection is encrypted.
//!
//! Bounded by construction: a connection holds at most `max_read_buffer` unconsumed bytes (it
//! is closed beyond that), reading stops while the service has paused it, and the worker's
//! unconsumed bytes together stay under `read_budget`: past it the largest holders are shed
//! (the service answers them, then they are closed). Every shed is counted in [`Stats`].
//!
//! Must never: parse protocol bytes, read the clock, or keep a connection's memory after it
//! is gone.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::arena::{Arena, Handle};
use super::bus::Mailbox;
use super::memory::MemoryGuard;
use super::metrics::{LoopStats, WorkerMetrics};
use super::sendq::{Overflow, SendQueue};
use super::timer::Deadlines;
use super::tls::TlsConn;
use super::worker::WorkerConfig;

/// A connection's handle: slot index and generation (a reused slot gets a new generation).
pub type ConnId = Handle;

/// What the runtime drives: the protocol stack of one worker.
pub trait Service: 'static {
    /// Per-connection protocol state.
    type Conn;
    /// Messages other workers (and `ServerHandle`s) send to this worker.
    type Mail: Send + 'static;

    /// A connection was accepted from the listener: its initial state.
    fn on_accept(&mut self, io: &mut Io<Self::Conn, Self::Mail>, id: ConnId) -> Self::Conn;
    /// A connection another worker accepted was handed over: its initial state. Its first
    /// bytes (already read by the other worker) follow through `on_data`.
    fn on_adopt(&mut self, io: &mut Io<Self::Conn, Self::Mail>, id: ConnId) -> Self::Conn;
    /// Bytes arrived. Returns how many were consumed; the rest is kept and offered again, in
    /// front of the next bytes. `data` may be unmasked or otherwise rewritten in place.
    fn on_data(&mut self, io: &mut Io<Self::Conn, Self::Mail>, id: ConnId, data: &mut [u8]) -> usize;
    /// The connection is gone (peer closed, error, or the service closed it).
    fn on_closed(&mut self, io: &mut Io<Self::Conn, Self::Mail>, id: ConnId, state: Self::Conn);
    /// The worker is over its budget and this connection holds the most: queue the protocol's
    /// answer (e.g. HTTP 503, WebSocket close 1013). The runtime closes it after the answer.
    fn on_shed(&mut self, io: &mut Io<Self::Conn, Self::Mail>, id: ConnId);
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
    /// A scrape: add the service's counters and gauges to `out` (the runtime's are already
    /// there). Called at most once per scrape, so walking the service's tables is fine.
    fn metrics(&self, _io: &Io<Self::Conn, Self::Mail>, _out: &mut WorkerMetrics) {}
}

/// Drops the mail left in a worker's mailbox once it stops reading it: a connection handed over
/// to it is closed, and whoever waits for an answer to other mail learns none will come (the
/// mail's drop tells them, see `app::pending`).
pub(crate) fn drop_unread<M>(mailbox: &Mailbox<RtMail<M>>) {
    mailbox.stop();
    while let Some(m) = mailbox.take() {
        if let RtMail::Adopt { fd, .. } = m {
            // SAFETY: the descriptor was handed to this worker, which never adopted it: it is
            // ours to close, once.
            unsafe { libc::close(fd) };
        }
    }
}

/// Hands a connection (or other mail) to another worker; if that worker has already stopped
/// reading its mail (a worker exits on its own once it has no connections during a shutdown),
/// the mail is dropped here, its descriptor closed, instead of waiting unread.
pub(crate) fn hand_over<M>(mailbox: &Mailbox<RtMail<M>>, m: RtMail<M>) {
    mailbox.post(m);
    if mailbox.stopped() {
        drop_unread(mailbox);
    }
}

/// Mail as the runtime sees it.
pub enum RtMail<M> {
    /// Take over a connection another worker accepted, with the bytes it already read.
    Adopt {
        /// The connection's descriptor.
        fd: RawFd,
        /// Bytes read and not consumed by the other worker (plaintext, for TLS).
        data: Vec<u8>,
        /// Its TLS session, for a TLS connection.
        tls: Option<Box<TlsConn>>,
    },
    /// Mail for the service.
    User(M),
    /// Stop accepting, close sessions politely, exit.
    Shutdown,
    /// A scrape: answer on `reply` with this worker's counters (see [`super::metrics`]).
    Metrics {
        /// Messages that were waiting in this mailbox when the scrape was posted.
        depth: usize,
        /// Where to answer.
        reply: std::sync::mpsc::Sender<WorkerMetrics>,
    },
}

/// Why a send did not queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The connection is closed or closing.
    Gone,
    /// Its queue would pass `--max-send-buffer`.
    Overflow,
}

/// What a backend does for the shard. Each call is one operation on the backend's I/O.
pub trait Driver {
    /// Start receiving on `fd`; completions come back as [`Shard::received`] and
    /// [`Shard::recv_ended`].
    fn arm_recv(&mut self, id: ConnId, fd: RawFd);
    /// Stop the receive armed on `id`; it ends with [`Shard::recv_ended`].
    fn cancel_recv(&mut self, id: ConnId);
    /// Write the `n` iovecs at `iov` (kept alive by the connection's send queue until
    /// [`Shard::sent`] is called for it).
    fn write(&mut self, id: ConnId, fd: RawFd, iov: *const libc::iovec, n: u32);
    /// Shut the socket down both ways: operations in flight on it complete.
    fn shutdown(&mut self, fd: RawFd);
    /// Shut down the sending side only (`SHUT_WR`): the peer sees the end of the stream after
    /// everything written; receives go on (a lingering close drains them).
    fn shutdown_write(&mut self, fd: RawFd);
    /// Close the descriptor; no operation on it is in flight.
    fn close(&mut self, fd: RawFd);
    /// The address of the peer of socket `fd`.
    fn peer_addr(&mut self, fd: RawFd) -> Option<SocketAddr>;
}

/// The peer address of a connected socket (`getpeername(2)`).
pub fn peer_addr_of(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: getpeername writes at most `len` bytes into the storage socket2 hands us, and
    // sets `len` to what it wrote; `fd` is a socket this worker owns (an error is returned
    // otherwise, never undefined behaviour).
    let (_, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| if libc::getpeername(fd, storage.cast(), len) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) })
    }
    .ok()?;
    addr.as_socket()
}

/// Counters of what the worker refused or cut, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Connections closed for holding more than `max_read_buffer` unconsumed bytes.
    pub read_overflow: u64,
    /// Connections shed because the worker's unconsumed bytes passed `read_budget`.
    pub shed_read_budget: u64,
    /// Connections shed because the process passed `--max-memory`.
    pub shed_memory: u64,
    /// Connections closed because their peer did not read their last frames within the
    /// close grace.
    pub close_grace_expired: u64,
    /// TLS connections closed for not completing their handshake within
    /// [`super::tls::HANDSHAKE_TIMEOUT`].
    pub tls_handshake_timeout: u64,
    /// TLS connections closed (after an alert) for sending bad TLS.
    pub tls_failed: u64,
}

/// Traffic counters of one worker: plain integers, read only when it is scraped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// Connections accepted from the listener (adopted ones are not counted again).
    pub accepted: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
}

/// At most one log line about cuts and sheds per this interval, per worker.
const STATS_LOG_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    No,
    AfterFlush,
    /// The last frames are written and the sending side is shut down; what the peer still
    /// sends is read and discarded (at most [`DRAIN_MAX`] bytes, for at most [`DRAIN_TIME`])
    /// until it closes, so its unread bytes do not make the kernel answer with a reset that
    /// destroys the answer in flight (the lingering close of nginx and hyper).
    Draining,
    Now,
}

/// A lingering close reads and discards at most this many bytes...
pub const DRAIN_MAX: usize = 1 << 20;
/// ...for at most this long (or what is left of the close grace, if less).
pub const DRAIN_TIME: Duration = Duration::from_secs(2);

struct Conn<T> {
    fd: RawFd,
    rbuf: Vec<u8>,
    /// Bytes the service holds for this connection beyond `rbuf` (e.g. a decompressed message
    /// in progress), charged to the worker's read budget.
    charged: usize,
    sendq: SendQueue,
    recv_armed: bool,
    cancel_sent: bool,
    /// The service asked for no more input until it resumes the connection.
    paused: bool,
    closing: Closing,
    shut: bool,
    /// Bytes a lingering close may still discard.
    drain_left: usize,
    handoff_to: Option<usize>,
    state: Option<T>,
    /// The peer's address, read once when the connection arrives.
    peer: Option<SocketAddr>,
    /// The TLS session of an encrypted connection (`sendq` then holds plaintext).
    tls: Option<Box<TlsConn>>,
}

impl<T> Conn<T> {
    fn new(fd: RawFd, peer: Option<SocketAddr>) -> Self {
        Conn {
            peer,
            fd,
            rbuf: Vec::new(),
            charged: 0,
            sendq: SendQueue::default(),
            recv_armed: false,
            cancel_sent: false,
            paused: false,
            closing: Closing::No,
            shut: false,
            drain_left: 0,
            handoff_to: None,
            state: None,
            tls: None,
        }
    }

    /// A write is in flight (plaintext, or ciphertext for TLS).
    fn writing(&self) -> bool {
        self.sendq.in_flight() || self.tls.as_ref().is_some_and(|t| t.wire.in_flight())
    }

    /// Nothing is left to write: no frame queued or in flight, no TLS record waiting.
    fn out_idle(&self) -> bool {
        !self.sendq.has_queued() && !self.sendq.in_flight() && self.tls.as_ref().is_none_or(|t| t.idle())
    }

    /// Bytes queued and not yet written (for TLS: plaintext and ciphertext).
    fn queued_bytes(&self) -> usize {
        self.sendq.queued_bytes() + self.tls.as_ref().map_or(0, |t| t.wire.queued_bytes())
    }

    /// Whether the service can be given input.
    fn open(&self) -> bool {
        self.closing == Closing::No && self.handoff_to.is_none()
    }
}

/// Every worker's mailbox, by worker index.
pub type Peers<M> = Arc<Vec<Arc<Mailbox<RtMail<M>>>>>;

/// One worker's mailbox, for any thread: what user code holds to answer later (a deferred
/// ack, a connect decision). Posting never blocks; mail posted after the worker exited is
/// never read and is dropped with the mailbox.
pub struct Remote<M> {
    mailbox: Arc<Mailbox<RtMail<M>>>,
}

impl<M> Clone for Remote<M> {
    fn clone(&self) -> Self {
        Remote { mailbox: self.mailbox.clone() }
    }
}

impl<M> Remote<M> {
    /// Posts mail to the worker (wakes it if it sleeps).
    pub fn post(&self, mail: M) {
        self.mailbox.post(RtMail::User(mail));
    }
}

/// The service's view of the worker: connections' state, sends, closes, pauses, mail.
pub struct Io<T, M> {
    worker: usize,
    conns: Arena<Conn<T>>,
    dirty: Vec<ConnId>,
    pending: Vec<ConnId>,
    resumed: Vec<ConnId>,
    peers: Peers<M>,
    cfg: WorkerConfig,
    now: Instant,
    /// Unconsumed bytes held in read buffers, and bytes the service charged, over every
    /// connection.
    read_held: usize,
    /// Connections of the whole process (accepted and not yet closed, wherever they are).
    conns_total: Arc<AtomicUsize>,
    /// Connections counted in `conns_total` that this worker owns (checked against the table).
    counted: usize,
    stats: Stats,
    traffic: Traffic,
    /// The backend's loop counters (pass time, submissions), kept here so a scrape finds them.
    pub(super) loop_stats: LoopStats,
    memory: MemoryGuard,
    /// Connections closing after their queued frames: one deadline each, past which they are
    /// closed whether or not the peer read them.
    close_due: Deadlines,
}

impl<T, M> Io<T, M> {
    /// A worker's view with no connections. `conns_total` is shared by every worker.
    pub fn new(worker: usize, peers: Peers<M>, cfg: WorkerConfig, conns_total: Arc<AtomicUsize>, memory: MemoryGuard, now: Instant) -> Self {
        Io {
            worker,
            conns: Arena::default(),
            dirty: Vec::new(),
            pending: Vec::new(),
            resumed: Vec::new(),
            peers,
            cfg,
            now,
            read_held: 0,
            conns_total,
            counted: 0,
            stats: Stats::default(),
            traffic: Traffic::default(),
            loop_stats: LoopStats::default(),
            memory,
            close_due: Deadlines::default(),
        }
    }

    /// This worker's index.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// How many workers the server runs.
    pub fn workers(&self) -> usize {
        self.peers.len()
    }

    /// The time at the start of this loop pass.
    pub fn now(&self) -> Instant {
        self.now
    }

    pub(super) fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    /// Open connections on this worker.
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// Connections of the whole process.
    pub fn total_conns(&self) -> usize {
        self.conns_total.load(Ordering::Relaxed)
    }

    /// Whether the process is over `--max-memory`: new connections should be refused.
    pub fn overloaded(&mut self) -> bool {
        let now = self.now;
        self.memory.overloaded(now)
    }

    /// When the memory guard wants to sample next (while the process is overloaded).
    pub fn memory_next_check(&self) -> Option<Instant> {
        self.memory.next_check()
    }

    /// Bytes the service holds for a connection's input beyond its read buffer (a message in
    /// progress): they count against the worker's read budget like unconsumed bytes.
    pub fn set_charged(&mut self, id: ConnId, bytes: usize) {
        let Some(c) = self.conns.get_mut(id) else { return };
        self.read_held = self.read_held - c.charged + bytes;
        c.charged = bytes;
    }

    /// Unconsumed bytes held in this worker's read buffers, and bytes charged by the service.
    pub fn read_held(&self) -> usize {
        self.read_held
    }

    /// What this worker refused or cut so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Connections accepted, bytes received and written so far.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// The protocol state of every open connection (for a scrape's gauges).
    pub fn states(&self) -> impl Iterator<Item = &T> {
        self.conns.iter().filter(|(_, c)| c.open()).filter_map(|(_, c)| c.state.as_ref())
    }

    /// The live connection in slot `idx` (timers keyed by slot find their connection here).
    pub fn conn_at(&self, idx: u32) -> Option<ConnId> {
        self.conns.handle_at(idx)
    }

    fn conn(&mut self, id: ConnId) -> Option<&mut Conn<T>> {
        self.conns.get_mut(id)
    }

    /// The protocol state of a live connection.
    pub fn state(&mut self, id: ConnId) -> Option<&mut T> {
        self.conn(id).filter(|c| c.open())?.state.as_mut()
    }

    /// Queues a frame; it is written at the end of this loop pass with the others.
    pub fn send(&mut self, id: ConnId, frame: Bytes) -> Result<(), SendError> {
        let limit = self.cfg.max_send_buffer;
        let c = self.conns.get_mut(id).filter(|c| c.closing == Closing::No).ok_or(SendError::Gone)?;
        c.sendq.push(frame, limit).map_err(|Overflow| SendError::Overflow)?;
        self.dirty.push(id);
        Ok(())
    }

    /// Bytes queued on a connection and not yet written.
    pub fn queued_bytes(&mut self, id: ConnId) -> usize {
        self.conn(id).map_or(0, |c| c.queued_bytes())
    }

    /// Closes a connection now (queued frames are dropped). `on_closed` follows.
    pub fn close(&mut self, id: ConnId) {
        if let Some(c) = self.conn(id) {
            c.closing = Closing::Now;
            self.pending.push(id);
        }
    }

    /// Closes a connection once its queued frames are written. Nothing more is read from it.
    /// A peer that does not read its last frames is closed anyway after `close_grace`.
    pub fn close_after_flush(&mut self, id: ConnId) {
        let at = self.now + self.cfg.close_grace;
        if let Some(c) = self.conn(id) {
            if c.closing == Closing::No {
                c.closing = Closing::AfterFlush;
                self.close_due.set(id.idx, at);
            }
            self.pending.push(id);
        }
    }

    /// Stops reading from a connection until [`Io::resume_reading`]: what arrives meanwhile
    /// stays in the kernel (TCP flow control pushes back on the peer).
    pub fn pause_reading(&mut self, id: ConnId) {
        if let Some(c) = self.conn(id) {
            c.paused = true;
            self.pending.push(id);
        }
    }

    /// Reading resumes: bytes kept from before are offered to the service again this pass.
    pub fn resume_reading(&mut self, id: ConnId) {
        if let Some(c) = self.conn(id) {
            if c.paused {
                c.paused = false;
                self.resumed.push(id);
                self.pending.push(id);
            }
        }
    }

    /// Hands the connection (and the bytes not consumed) to another worker, once what is
    /// queued on it is written; the other worker adopts it with those bytes first. No
    /// `on_closed` follows.
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

    /// The address of the connection's peer (the kernel's view: a proxy's address when a
    /// proxy connects for the client).
    pub fn peer_addr(&self, id: ConnId) -> Option<SocketAddr> {
        self.conns.get(id).and_then(|c| c.peer)
    }

    /// This worker's mailbox, for a thread that will post to it later.
    pub fn remote(&self) -> Remote<M> {
        Remote { mailbox: self.peers[self.worker].clone() }
    }

    /// The connection holding the most bytes (read buffer and send queue), if any.
    pub fn largest_holder(&self) -> Option<(ConnId, usize)> {
        self.conns
            .iter()
            .filter(|(_, c)| c.closing != Closing::Now)
            .map(|(id, c)| (id, c.rbuf.capacity() + c.charged + c.queued_bytes()))
            .max_by_key(|&(_, n)| n)
    }

    fn set_rbuf(&mut self, id: ConnId, buf: Vec<u8>) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        // What a buffer holds is its capacity: that is what counts against the budget. An idle
        // connection holds no buffer, and a small tail does not keep a large one.
        let mut buf = buf;
        if buf.is_empty() {
            buf = Vec::new();
        } else if buf.capacity() > 2 * buf.len() + (16 << 10) {
            buf.shrink_to_fit();
        }
        self.read_held = self.read_held - c.rbuf.capacity() + buf.capacity();
        c.rbuf = buf;
    }

    fn take_rbuf(&mut self, id: ConnId) -> Vec<u8> {
        let Some(c) = self.conns.get_mut(id) else {
            return Vec::new();
        };
        self.read_held -= c.rbuf.capacity();
        std::mem::take(&mut c.rbuf)
    }
}

/// One worker's connections and the service that speaks their protocol.
pub struct Shard<S: Service> {
    /// The connections, as the service sees them.
    pub io: Io<S::Conn, S::Mail>,
    /// The protocol stack.
    pub service: S,
    /// What the last log line about cuts and sheds covered, and when it was written.
    logged: Stats,
    logged_at: Option<Instant>,
    /// Decrypted input of one receive (TLS), reused.
    plain: Vec<u8>,
}

impl<S: Service> Shard<S> {
    /// A shard with no connections.
    pub fn new(io: Io<S::Conn, S::Mail>, service: S) -> Self {
        Shard { io, service, logged: Stats::default(), logged_at: None, plain: Vec::new() }
    }

    fn insert(&mut self, drv: &mut impl Driver, fd: RawFd) -> ConnId {
        self.io.counted += 1;
        let peer = drv.peer_addr(fd);
        self.io.conns.insert(Conn::new(fd, peer))
    }

    /// A connection was accepted from the listener.
    pub fn accept(&mut self, drv: &mut impl Driver, fd: RawFd) -> ConnId {
        self.io.conns_total.fetch_add(1, Ordering::Relaxed);
        self.io.traffic.accepted += 1;
        let id = self.insert(drv, fd);
        if let Some(tls) = self.io.cfg.tls.clone() {
            match tls.accept() {
                Ok(t) => {
                    let due = self.io.now + super::tls::HANDSHAKE_TIMEOUT;
                    self.io.close_due.set(id.idx, due);
                    if let Some(c) = self.io.conn(id) {
                        c.tls = Some(t);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a TLS session; closing the connection");
                    self.io.close(id);
                }
            }
        }
        let state = self.service.on_accept(&mut self.io, id);
        if let Some(c) = self.io.conn(id) {
            c.state = Some(state);
        }
        self.arm(drv, id);
        id
    }

    /// A connection handed over by another worker, with the bytes it had read. It was
    /// counted when it was accepted, and stays counted.
    pub fn adopt(&mut self, drv: &mut impl Driver, fd: RawFd, data: Vec<u8>, tls: Option<Box<TlsConn>>) -> ConnId {
        let id = self.insert(drv, fd);
        if let Some(c) = self.io.conn(id) {
            c.tls = tls;
        }
        let state = self.service.on_adopt(&mut self.io, id);
        if let Some(c) = self.io.conn(id) {
            c.state = Some(state);
        }
        if !data.is_empty() {
            self.io.set_rbuf(id, data);
            self.offer_kept(id);
        }
        self.arm(drv, id);
        id
    }

    fn arm(&mut self, drv: &mut impl Driver, id: ConnId) {
        let Some(c) = self.io.conn(id) else { return };
        if c.recv_armed || !c.open() || c.paused {
            return;
        }
        c.recv_armed = true;
        c.cancel_sent = false;
        drv.arm_recv(id, c.fd);
    }

    /// Offers the kept bytes of `id` to the service (after a resume, or an adoption).
    fn offer_kept(&mut self, id: ConnId) {
        if !self.io.conn(id).is_some_and(|c| c.open() && !c.paused && !c.rbuf.is_empty()) {
            return;
        }
        let mut buf = self.io.take_rbuf(id);
        let used = self.service.on_data(&mut self.io, id, &mut buf);
        buf.drain(..used.min(buf.len()));
        self.io.set_rbuf(id, buf);
    }

    /// Bytes arrived on `id` (borrowed from the backend's buffer, rewritable in place).
    pub fn received(&mut self, id: ConnId, data: &mut [u8]) {
        // Bytes as they came off the wire (ciphertext under TLS).
        self.io.traffic.bytes_in += data.len() as u64;
        let Some(c) = self.io.conn(id) else { return };
        if c.closing == Closing::Draining {
            // A lingering close: discarded, bounded.
            c.drain_left = c.drain_left.saturating_sub(data.len());
            if c.drain_left == 0 {
                self.io.close(id);
            }
            return;
        }
        if c.closing == Closing::AfterFlush && c.tls.as_ref().is_some_and(|t| !t.handshaken && !t.failed) {
            // An answer queued before the handshake ended (a 503 at accept) needs the
            // handshake finished to be sent: its input is still read, the plaintext dropped.
            self.received_tls(id, data);
            return;
        }
        if c.closing != Closing::No {
            return;
        }
        if c.tls.is_some() {
            self.received_tls(id, data);
        } else {
            self.received_plain(id, data);
        }
    }

    /// Ciphertext arrived on a TLS connection: decrypted, the plaintext goes to the service;
    /// handshake records rustls answers are written at the end of the pass. Bad TLS gets the
    /// alert rustls queued, then the connection closes.
    fn received_tls(&mut self, id: ConnId, data: &[u8]) {
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        let Some(c) = self.io.conns.get_mut(id) else { return };
        let Some(t) = c.tls.as_mut() else { return };
        let got = t.decrypt(data, &mut plain);
        if got.handshake_done {
            t.handshaken = true;
            if c.closing == Closing::No {
                self.io.close_due.clear(id.idx);
            }
        }
        if got.error.is_some() {
            // What the service queued cannot follow a fatal alert.
            c.sendq.clear();
        }
        self.io.dirty.push(id);
        if let Some(e) = &got.error {
            tracing::debug!(worker = self.io.worker, error = %e, "bad TLS from a peer; alert sent, closing");
            self.io.stats.tls_failed += 1;
            self.io.set_rbuf(id, Vec::new());
            self.io.close_after_flush(id);
        } else if got.handshake_done {
            // Settled again: a closing connection stops reading now.
            self.io.pending.push(id);
        }
        if got.error.is_none() && !plain.is_empty() {
            self.received_plain(id, &mut plain);
        }
        if plain.capacity() > 64 << 10 {
            plain = Vec::new();
        }
        self.plain = plain;
    }

    /// Plaintext arrived (as read, or decrypted).
    fn received_plain(&mut self, id: ConnId, data: &mut [u8]) {
        let max = self.io.cfg.max_read_buffer;
        let Some(c) = self.io.conn(id) else { return };
        if c.closing != Closing::No {
            return;
        }
        if c.handoff_to.is_some() || c.paused || !c.rbuf.is_empty() {
            if c.rbuf.len() + data.len() > max {
                self.io.stats.read_overflow += 1;
                self.io.close(id);
                return;
            }
            let mut buf = self.io.take_rbuf(id);
            buf.extend_from_slice(data);
            self.io.set_rbuf(id, buf);
            self.offer_kept(id);
        } else {
            // Fast path: process straight from the backend's buffer, keep only a partial tail.
            let used = self.service.on_data(&mut self.io, id, data);
            if used < data.len() {
                if data.len() - used > max {
                    self.io.stats.read_overflow += 1;
                    self.io.close(id);
                    return;
                }
                let mut buf = self.io.take_rbuf(id);
                buf.extend_from_slice(&data[used..]);
                self.io.set_rbuf(id, buf);
            }
        }
        self.enforce_read_budget();
    }

    /// Past the worker's read budget, the largest holders are shed until it is met again.
    fn enforce_read_budget(&mut self) {
        while self.io.read_held > self.io.cfg.read_budget {
            let Some((victim, _)) = self.io.largest_holder() else {
                break;
            };
            self.io.stats.shed_read_budget += 1;
            self.shed(victim);
        }
    }

    /// Over `--max-memory`: the largest holders (read buffer and send queue) are shed, a few
    /// per check.
    fn shed_for_memory(&mut self, now: Instant) {
        let n = self.io.memory.check(now);
        let mut shed = 0;
        for _ in 0..n {
            match self.io.largest_holder() {
                Some((victim, held)) if held > 0 => {
                    self.shed(victim);
                    shed += 1;
                }
                _ => break,
            }
        }
        self.io.stats.shed_memory += shed as u64;
    }

    /// Sheds one connection: the service answers it, then it closes; its read buffer is
    /// released at once.
    pub fn shed(&mut self, id: ConnId) {
        // What it has queued and not yet handed to the kernel goes first: its answer must not
        // wait behind (or be refused by) a full queue.
        if let Some(c) = self.io.conn(id) {
            c.sendq.clear();
        }
        self.service.on_shed(&mut self.io, id);
        self.io.set_rbuf(id, Vec::new());
        self.io.set_charged(id, 0);
        self.io.close_after_flush(id);
        if let Some(c) = self.io.conn(id) {
            c.handoff_to = None;
        }
    }

    /// The earliest instant [`Shard::turn`] has work: the service's next deadline, or a
    /// closing connection's grace.
    pub fn next_deadline(&self) -> Option<Instant> {
        let log = (self.io.stats != self.logged).then(|| self.logged_at.map_or(self.io.now, |t| t + STATS_LOG_EVERY));
        [self.service.next_deadline(), self.io.close_due.next(), log].into_iter().flatten().min()
    }

    /// Cuts and sheds since the last line, in one line at most once per interval.
    fn log_stats(&mut self, now: Instant) {
        if self.io.stats == self.logged || self.logged_at.is_some_and(|t| now < t + STATS_LOG_EVERY) {
            return;
        }
        let (s, l) = (self.io.stats, self.logged);
        tracing::warn!(
            worker = self.io.worker,
            read_overflow = s.read_overflow - l.read_overflow,
            shed_read_budget = s.shed_read_budget - l.shed_read_budget,
            shed_memory = s.shed_memory - l.shed_memory,
            close_grace_expired = s.close_grace_expired - l.close_grace_expired,
            tls_handshake_timeout = s.tls_handshake_timeout - l.tls_handshake_timeout,
            tls_failed = s.tls_failed - l.tls_failed,
            "connections cut or shed since the last report"
        );
        self.logged = s;
        self.logged_at = Some(now);
    }

    /// The receive on `id` ended: `error` is `None` for a clean end of its multishot run (it
    /// is re-armed), `Some(0)` for end of stream, `Some(errno)` otherwise (`ECANCELED` after
    /// a cancel, `ENOBUFS` when the backend ran out of receive buffers: both re-armed).
    pub fn recv_ended(&mut self, id: ConnId, error: Option<i32>) {
        let Some(c) = self.io.conn(id) else { return };
        c.recv_armed = false;
        match error {
            None => {}
            Some(e) if e == libc::ECANCELED || e == libc::ENOBUFS || e == libc::EAGAIN || e == libc::EINTR => {}
            // End of stream or an error: the connection is over (a hand-off in progress still
            // moves it; the new owner sees the end).
            Some(_) if c.handoff_to.is_none() => c.closing = Closing::Now,
            Some(_) => {}
        }
        self.io.pending.push(id);
    }

    /// The write on `id` completed: `res` bytes written, or `-errno`.
    pub fn sent(&mut self, id: ConnId, res: i32) {
        if res > 0 {
            self.io.traffic.bytes_out += res as u64;
        }
        let Some(c) = self.io.conn(id) else { return };
        let q = match c.tls.as_mut() {
            Some(t) => &mut t.wire,
            None => &mut c.sendq,
        };
        if res >= 0 {
            q.complete(res as usize);
            self.io.dirty.push(id);
        } else {
            q.complete(0);
            q.clear();
            c.sendq.clear();
            c.closing = Closing::Now;
        }
        self.io.pending.push(id);
    }

    /// Mail from another worker or a handle.
    pub fn mail(&mut self, drv: &mut impl Driver, m: RtMail<S::Mail>) -> bool {
        match m {
            RtMail::Adopt { fd, data, tls } => {
                self.adopt(drv, fd, data, tls);
            }
            RtMail::User(m) => self.service.on_mail(&mut self.io, m),
            RtMail::Shutdown => return true,
            RtMail::Metrics { depth, reply } => {
                let _ = reply.send(self.metrics(depth));
            }
        }
        false
    }

    /// This worker's counters and gauges: the runtime's, then the service's.
    pub fn metrics(&self, mailbox_depth: usize) -> WorkerMetrics {
        let io = &self.io;
        let w = io.worker.to_string();
        let worker = [("worker", w.as_str())];
        let mut m = WorkerMetrics { worker: io.worker, loop_stats: io.loop_stats, mailbox_depth, ..Default::default() };
        m.gauge("shardcast_tcp_connections", "TCP connections this worker owns (every protocol, closing ones included).", &worker, io.conns.len() as u64);
        m.counter("shardcast_accepted_total", "TCP connections accepted.", &[], io.traffic.accepted);
        m.counter("shardcast_received_bytes_total", "Bytes received from clients.", &[], io.traffic.bytes_in);
        m.counter("shardcast_sent_bytes_total", "Bytes written to clients.", &[], io.traffic.bytes_out);
        let queued: usize = io.conns.iter().map(|(_, c)| c.sendq.queued_bytes()).sum();
        m.gauge("shardcast_send_queue_bytes", "Bytes queued for clients and not yet written.", &worker, queued as u64);
        m.gauge("shardcast_read_held_bytes", "Unconsumed input held for clients (counts against the read budget).", &worker, io.read_held as u64);
        let s = io.stats;
        for (reason, n) in
            [("read_overflow", s.read_overflow), ("read_budget", s.shed_read_budget), ("memory", s.shed_memory), ("close_grace", s.close_grace_expired)]
        {
            m.counter("shardcast_cuts_total", "Connections cut or shed by the runtime, by reason.", &[("reason", reason)], n);
        }
        self.service.metrics(io, &mut m);
        m
    }

    /// Runs due timers, ends the service's turn, applies closes, pauses and hand-offs, and
    /// writes every connection's queued frames.
    pub fn turn(&mut self, drv: &mut impl Driver) {
        let now = self.io.now;
        self.shed_for_memory(now);
        while let Some(idx) = self.io.close_due.pop_due(now) {
            if let Some(id) = self.io.conn_at(idx) {
                // A lingering close that ran out of time is the normal end of one; a peer that
                // did not read its last frames in time is a cut.
                match self.io.conn(id) {
                    Some(c) if c.closing == Closing::No && c.tls.as_ref().is_some_and(|t| !t.handshaken) => {
                        self.io.stats.tls_handshake_timeout += 1;
                    }
                    Some(c) if c.closing != Closing::Draining => self.io.stats.close_grace_expired += 1,
                    _ => {}
                }
                self.io.close(id);
            }
        }
        self.service.on_timers(&mut self.io, now);
        self.service.on_turn_end(&mut self.io);
        // Resumed connections get their kept bytes; the service may pause them again.
        while !self.io.resumed.is_empty() {
            for id in std::mem::take(&mut self.io.resumed) {
                self.offer_kept(id);
            }
            self.service.on_turn_end(&mut self.io);
        }
        self.settle(drv);
        self.flush(drv);
        self.log_stats(now);
        #[cfg(debug_assertions)]
        self.check_counts();
    }

    /// Applies closes and hand-offs whose conditions are met, pauses and re-arms.
    fn settle(&mut self, drv: &mut impl Driver) {
        while let Some(id) = self.io.pending.pop() {
            let Some(c) = self.io.conn(id) else { continue };
            if c.closing == Closing::AfterFlush && c.out_idle() {
                // A TLS connection says goodbye with a close_notify alert first.
                if c.tls.as_mut().is_some_and(|t| t.notify_close()) {
                    self.io.dirty.push(id);
                    continue;
                }
                self.start_draining(drv, id);
                continue;
            }
            if let Some(target) = c.handoff_to {
                // Written first: a response queued before the hand-off goes out in order.
                let busy = c.recv_armed || !c.out_idle();
                if c.recv_armed && !c.cancel_sent {
                    c.cancel_sent = true;
                    drv.cancel_recv(id);
                }
                if !busy {
                    self.io.close_due.clear(id.idx);
                    let data = self.io.take_rbuf(id);
                    self.io.set_charged(id, 0);
                    let c = self.io.conns.remove(id).expect("checked above");
                    self.io.counted -= 1;
                    hand_over(&self.io.peers[target], RtMail::Adopt { fd: c.fd, data, tls: c.tls });
                }
                continue;
            }
            if c.closing == Closing::No {
                if c.paused {
                    if c.recv_armed && !c.cancel_sent {
                        c.cancel_sent = true;
                        drv.cancel_recv(id);
                    }
                } else {
                    self.arm(drv, id);
                }
                continue;
            }
            if c.closing == Closing::Draining {
                // Re-armed after a cancel, a run's end or a lack of buffers.
                self.arm_draining(drv, id);
                continue;
            }
            if c.closing == Closing::AfterFlush {
                // Nothing more is read while the answer drains (but a TLS handshake in
                // progress must finish for the answer to be sent).
                if c.tls.as_ref().is_some_and(|t| !t.handshaken && !t.failed) {
                    self.arm_draining(drv, id);
                    continue;
                }
                if c.recv_armed && !c.cancel_sent {
                    c.cancel_sent = true;
                    drv.cancel_recv(id);
                }
                continue;
            }
            if let Some(state) = c.state.take() {
                self.service.on_closed(&mut self.io, id, state);
            }
            self.io.set_rbuf(id, Vec::new());
            self.io.set_charged(id, 0);
            let Some(c) = self.io.conn(id) else { continue };
            c.sendq.clear();
            if let Some(t) = c.tls.as_mut() {
                t.wire.clear();
            }
            if !c.shut {
                c.shut = true;
                drv.shutdown(c.fd);
            }
            if !c.recv_armed && !c.writing() {
                self.io.close_due.clear(id.idx);
                let c = self.io.conns.remove(id).expect("checked above");
                drv.close(c.fd);
                self.io.counted -= 1;
                self.io.conns_total.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Arms a receive on a closing connection (its input is discarded or, during a TLS
    /// handshake, only decrypted).
    fn arm_draining(&mut self, drv: &mut impl Driver, id: ConnId) {
        let Some(c) = self.io.conn(id) else { return };
        if !c.recv_armed {
            c.recv_armed = true;
            c.cancel_sent = false;
            drv.arm_recv(id, c.fd);
        }
    }

    /// The last frames of `id` are written: the service forgets it, its sending side is shut
    /// down, and what the peer still sends is discarded until it closes (bounded by
    /// [`DRAIN_MAX`] and [`DRAIN_TIME`]).
    fn start_draining(&mut self, drv: &mut impl Driver, id: ConnId) {
        let Some(c) = self.io.conn(id) else { return };
        c.closing = Closing::Draining;
        c.drain_left = DRAIN_MAX;
        let state = c.state.take();
        let fd = c.fd;
        if let Some(state) = state {
            self.service.on_closed(&mut self.io, id, state);
        }
        self.io.set_rbuf(id, Vec::new());
        self.io.set_charged(id, 0);
        drv.shutdown_write(fd);
        let due = self.io.now + DRAIN_TIME;
        if self.io.close_due.get(id.idx).is_none_or(|t| t > due) {
            self.io.close_due.set(id.idx, due);
        }
        // Armed now, or (a cancel in flight) once it ends.
        self.io.pending.push(id);
    }

    fn flush(&mut self, drv: &mut impl Driver) {
        let mut dirty = std::mem::take(&mut self.io.dirty);
        for id in dirty.drain(..) {
            let Some(c) = self.io.conn(id) else { continue };
            if c.closing == Closing::Now {
                continue;
            }
            let fd = c.fd;
            let q = match c.tls.as_mut() {
                Some(t) => {
                    // One write at a time: encrypt once the last ciphertext is written.
                    if !t.wire.in_flight() && !t.wire.has_queued() {
                        t.encrypt(&mut c.sendq);
                    }
                    &mut t.wire
                }
                None => &mut c.sendq,
            };
            if let Some((iov, n)) = q.start_send() {
                drv.write(id, fd, iov, n);
            }
        }
        self.io.dirty = dirty;
    }

    /// Closes every connection at once (the end of the shutdown grace): queued frames are
    /// dropped, sockets are shut down so operations in flight complete. The backend keeps
    /// reaping completions until [`Shard::in_flight`] is zero before it frees anything.
    pub fn close_all(&mut self, drv: &mut impl Driver) {
        for id in self.io.conns.handles() {
            if let Some(c) = self.io.conn(id) {
                c.closing = Closing::Now;
                c.handoff_to = None;
            }
            self.io.pending.push(id);
        }
        self.settle(drv);
    }

    /// Operations of connections still in flight (receives and writes).
    pub fn in_flight(&self) -> usize {
        self.io.conns.iter().map(|(_, c)| c.recv_armed as usize + c.writing() as usize).sum()
    }

    /// Connections this worker owns.
    pub fn live(&self) -> usize {
        self.io.conns.len()
    }

    /// Debug builds: the connections counted for this worker are exactly those in its table,
    /// and the read-buffer total matches the buffers.
    #[cfg(debug_assertions)]
    fn check_counts(&self) {
        debug_assert_eq!(self.io.counted, self.io.conns.len(), "connection count drifted from the table");
        debug_assert_eq!(self.io.read_held, self.io.conns.iter().map(|(_, c)| c.rbuf.capacity() + c.charged).sum::<usize>(), "read_held drifted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe whose write end stands for a handed-over connection: (read end, write end).
    fn pipe() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) }, 0);
        (fds[0], fds[1])
    }

    /// Whether the write end of the pipe whose read end is `r` has been closed (EOF).
    fn writer_closed(r: RawFd) -> bool {
        let mut b = [0u8; 1];
        // SAFETY: reading at most one byte into a valid buffer from our own pipe.
        let n = unsafe { libc::read(r, b.as_mut_ptr().cast(), 1) };
        n == 0
    }

    fn adopt(fd: RawFd) -> RtMail<()> {
        RtMail::Adopt { fd, data: Vec::new(), tls: None }
    }

    #[test]
    fn a_connection_handed_to_a_worker_that_stopped_reading_is_closed_not_leaked() {
        let mailbox = Mailbox::<RtMail<()>>::new().unwrap();
        // Handed over while the worker reads: it waits for the worker; the worker's last
        // drain closes it if it never adopted it.
        let (r1, w1) = pipe();
        hand_over(&mailbox, adopt(w1));
        assert!(!writer_closed(r1), "still the worker's to adopt");
        drop_unread(&mailbox);
        assert!(writer_closed(r1), "closed by the worker's last drain");
        // Handed over after that drain: closed at once by the sender.
        let (r2, w2) = pipe();
        hand_over(&mailbox, adopt(w2));
        assert!(writer_closed(r2), "closed by the sender");
        assert!(mailbox.is_empty());
        // SAFETY: closing the read ends we opened above, once.
        unsafe {
            libc::close(r1);
            libc::close(r2);
        }
    }
}
