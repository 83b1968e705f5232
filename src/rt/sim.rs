//! The deterministic in-memory backend: the same [`Shard`]s the io_uring loop drives, with
//! in-memory clients instead of sockets and a clock the test moves, in the style of
//! quinn-proto's test pair. Heartbeats, upgrades, hand-offs between workers, slow consumers
//! and hostile peers are tested here in microseconds, without sleeps and without a ring.
//!
//! A client is a pair of byte streams: what it wrote and the server has not read yet (the
//! kernel's receive buffer, not counted as server memory), and what the server wrote that the
//! test has not read. A client's receive window can be closed to make the server's writes
//! block, as a peer that stops reading does.
//!
//! Owns: simulated sockets and time. Must never: be used by the production server.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bus::Mailbox;
use super::conn::{ConnId, Driver, Io, Peers, RtMail, Service, Shard};
use super::memory::MemoryGuard;
use super::worker::WorkerConfig;

/// A simulated client, by index.
pub type ClientId = usize;

const FD_BASE: RawFd = 1 << 20;
/// Receives are handed over in pieces of at most this many bytes, like provided buffers.
const RECV_CHUNK: usize = 16 * 1024;

#[derive(Default)]
struct Client {
    worker: usize,
    conn: Option<ConnId>,
    to_server: VecDeque<u8>,
    from_server: Vec<u8>,
    /// Bytes the client still accepts before the server's writes block.
    window: usize,
    recv_armed: bool,
    /// A write that did not fit the window: (connection, bytes).
    blocked: Option<(ConnId, Vec<u8>)>,
    eof: bool,
    eof_delivered: bool,
    shut_by_server: bool,
    /// The server shut down its sending side (a lingering close): the client, having read
    /// everything, closes its side once the server has read what it sent.
    write_shut_by_server: bool,
    closed_by_server: bool,
    /// The address the server sees for this client.
    addr: Option<std::net::SocketAddr>,
}

enum Completion {
    RecvEnded(ConnId, Option<i32>),
    Sent(ConnId, i32),
}

struct SimDriver<'a> {
    worker: usize,
    clients: &'a mut Vec<Client>,
    done: &'a mut Vec<(usize, Completion)>,
}

impl SimDriver<'_> {
    fn client(&mut self, fd: RawFd) -> &mut Client {
        &mut self.clients[(fd - FD_BASE) as usize]
    }

    fn by_conn(&mut self, id: ConnId) -> Option<&mut Client> {
        let w = self.worker;
        self.clients.iter_mut().find(|c| c.worker == w && c.conn == Some(id) && !c.closed_by_server)
    }
}

impl Driver for SimDriver<'_> {
    fn peer_addr(&mut self, fd: RawFd) -> Option<std::net::SocketAddr> {
        self.client(fd).addr
    }

    fn arm_recv(&mut self, id: ConnId, fd: RawFd) {
        let w = self.worker;
        let c = self.client(fd);
        c.worker = w;
        c.conn = Some(id);
        c.recv_armed = true;
    }

    fn cancel_recv(&mut self, id: ConnId) {
        let w = self.worker;
        if let Some(c) = self.by_conn(id) {
            if c.recv_armed {
                c.recv_armed = false;
                self.done.push((w, Completion::RecvEnded(id, Some(libc::ECANCELED))));
            }
        }
    }

    fn write(&mut self, id: ConnId, fd: RawFd, iov: *const libc::iovec, n: u32) {
        let mut bytes = Vec::new();
        for i in 0..n as usize {
            // SAFETY: the shard passes `n` iovecs that its send queue keeps alive until `sent`
            // is called for this connection; they are read here, before that.
            let v = unsafe { &*iov.add(i) };
            // SAFETY: each iovec points at `iov_len` bytes of a frame the send queue holds.
            bytes.extend_from_slice(unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) });
        }
        let w = self.worker;
        let c = self.client(fd);
        c.worker = w;
        c.conn = Some(id);
        if c.shut_by_server {
            self.done.push((w, Completion::Sent(id, -libc::EPIPE)));
            return;
        }
        let take = bytes.len().min(c.window);
        if take == 0 && !bytes.is_empty() {
            c.blocked = Some((id, bytes));
            return;
        }
        c.window -= take;
        c.from_server.extend_from_slice(&bytes[..take]);
        self.done.push((w, Completion::Sent(id, take as i32)));
    }

    fn shutdown(&mut self, fd: RawFd) {
        let w = self.worker;
        let c = self.client(fd);
        c.shut_by_server = true;
        let conn = c.conn;
        let armed = std::mem::take(&mut c.recv_armed);
        let blocked = c.blocked.take();
        if let (true, Some(id)) = (armed, conn) {
            self.done.push((w, Completion::RecvEnded(id, Some(0))));
        }
        if let Some((id, _)) = blocked {
            self.done.push((w, Completion::Sent(id, -libc::EPIPE)));
        }
    }

    fn shutdown_write(&mut self, fd: RawFd) {
        self.client(fd).write_shut_by_server = true;
    }

    fn close(&mut self, fd: RawFd) {
        let c = self.client(fd);
        c.closed_by_server = true;
        c.shut_by_server = true;
    }
}

/// Several workers' shards, their clients, and the clock.
pub struct Sim<S: Service> {
    now: Instant,
    shards: Vec<Shard<S>>,
    mailboxes: Peers<S::Mail>,
    conns_total: Arc<AtomicUsize>,
    clients: Vec<Client>,
    done: Vec<(usize, Completion)>,
    resident: Arc<AtomicUsize>,
}

impl<S: Service> Sim<S> {
    /// `workers` shards, worker `i` running `make(i)`.
    pub fn new(workers: usize, cfg: WorkerConfig, mut make: impl FnMut(usize) -> S) -> Self {
        let mailboxes: Peers<S::Mail> = Arc::new((0..workers).map(|_| Mailbox::new().expect("an eventfd")).collect());
        let conns_total = Arc::new(AtomicUsize::new(0));
        let now = Instant::now();
        let resident = Arc::new(AtomicUsize::new(0));
        let r = resident.clone();
        let memory = MemoryGuard::new(cfg.max_memory, Arc::new(move || r.load(Ordering::Relaxed)), Arc::default());
        let shards = (0..workers).map(|i| Shard::new(Io::new(i, mailboxes.clone(), cfg.clone(), conns_total.clone(), memory.clone(), now), make(i))).collect();
        Sim { now, shards, mailboxes, conns_total, clients: Vec::new(), done: Vec::new(), resident }
    }

    /// The simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Worker `w`'s shard (its service and connection table).
    pub fn shard(&mut self, w: usize) -> &mut Shard<S> {
        &mut self.shards[w]
    }

    /// What the memory guard reads as the process's resident memory from now on.
    pub fn set_resident(&mut self, bytes: usize) {
        self.resident.store(bytes, Ordering::Relaxed);
    }

    /// Connections of the whole simulated process.
    pub fn total_conns(&self) -> usize {
        self.conns_total.load(Ordering::Relaxed)
    }

    /// A client connects; the kernel gives the connection to worker `w`.
    pub fn connect(&mut self, w: usize) -> ClientId {
        let port = 10_000 + self.clients.len() as u16;
        self.connect_from(w, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// A client connects from `addr`; the kernel gives the connection to worker `w`.
    pub fn connect_from(&mut self, w: usize, addr: std::net::SocketAddr) -> ClientId {
        let c = self.clients.len();
        self.clients.push(Client { worker: w, window: usize::MAX, addr: Some(addr), ..Client::default() });
        let mut drv = SimDriver { worker: w, clients: &mut self.clients, done: &mut self.done };
        let id = self.shards[w].accept(&mut drv, FD_BASE + c as RawFd);
        self.clients[c].conn = Some(id);
        self.run();
        c
    }

    /// The client writes `bytes`.
    pub fn write(&mut self, c: ClientId, bytes: &[u8]) {
        self.clients[c].to_server.extend(bytes);
        self.run();
    }

    /// What the server wrote to the client since the last read.
    pub fn read(&mut self, c: ClientId) -> Vec<u8> {
        std::mem::take(&mut self.clients[c].from_server)
    }

    /// Bytes the client wrote that the server has not read (they sit in the kernel).
    pub fn unread_by_server(&self, c: ClientId) -> usize {
        self.clients[c].to_server.len()
    }

    /// The client accepts at most `bytes` more (0: it stops reading); `usize::MAX` reads
    /// everything.
    pub fn set_window(&mut self, c: ClientId, bytes: usize) {
        let cl = &mut self.clients[c];
        cl.window = bytes;
        if let Some((id, mut b)) = cl.blocked.take() {
            let take = b.len().min(cl.window);
            if take == 0 {
                cl.blocked = Some((id, b));
            } else {
                cl.window -= take;
                cl.from_server.extend(b.drain(..take));
                let w = cl.worker;
                self.done.push((w, Completion::Sent(id, take as i32)));
            }
        }
        self.run();
    }

    /// The client closes its side.
    pub fn close(&mut self, c: ClientId) {
        self.clients[c].eof = true;
        self.run();
    }

    /// Whether the server closed the connection (its descriptor is gone).
    pub fn closed_by_server(&self, c: ClientId) -> bool {
        self.clients[c].closed_by_server
    }

    /// Whether the server shut the connection down (it may not be closed yet).
    pub fn shut_by_server(&self, c: ClientId) -> bool {
        self.clients[c].shut_by_server
    }

    /// The worker serving the client now.
    pub fn worker_of(&self, c: ClientId) -> usize {
        self.clients[c].worker
    }

    /// Moves the clock and runs what falls due.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.run();
    }

    /// Every worker begins its shutdown.
    pub fn shutdown(&mut self) {
        for m in self.mailboxes.iter() {
            m.post(RtMail::Shutdown);
        }
        self.run();
    }

    /// Posts mail to worker `w`'s service.
    pub fn post(&mut self, w: usize, mail: S::Mail) {
        self.mailboxes[w].post(RtMail::User(mail));
        self.run();
    }

    /// Runs every worker's passes until nothing moves.
    pub fn run(&mut self) {
        for _pass in 0..100_000 {
            let mut moved = false;
            for w in 0..self.shards.len() {
                moved |= self.pass(w);
            }
            if !moved && self.done.is_empty() {
                return;
            }
        }
        panic!("the simulation does not settle (a livelock in the service or the runtime)");
    }

    fn pass(&mut self, w: usize) -> bool {
        let mut moved = false;
        let shard = &mut self.shards[w];
        shard.io.set_now(self.now);
        // Completions.
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.done).into_iter().partition(|(cw, _)| *cw == w);
        self.done = rest;
        for (_, c) in mine {
            moved = true;
            match c {
                Completion::RecvEnded(id, e) => shard.recv_ended(id, e),
                Completion::Sent(id, n) => shard.sent(id, n),
            }
        }
        // Receives.
        for i in 0..self.clients.len() {
            let cl = &mut self.clients[i];
            if cl.worker != w || !cl.recv_armed || cl.closed_by_server {
                continue;
            }
            let Some(id) = cl.conn else { continue };
            if !cl.to_server.is_empty() {
                let n = cl.to_server.len().min(RECV_CHUNK);
                let mut chunk: Vec<u8> = cl.to_server.drain(..n).collect();
                moved = true;
                shard.received(id, &mut chunk);
            } else if (cl.eof || cl.write_shut_by_server) && !cl.eof_delivered {
                cl.eof_delivered = true;
                cl.recv_armed = false;
                moved = true;
                shard.recv_ended(id, Some(0));
            }
        }
        // Mail.
        let mut drv = SimDriver { worker: w, clients: &mut self.clients, done: &mut self.done };
        while let Some(m) = self.mailboxes[w].take() {
            moved = true;
            match m {
                RtMail::Adopt { fd, data, tls } => {
                    let id = shard.adopt(&mut drv, fd, data, tls);
                    let c = drv.client(fd);
                    c.worker = w;
                    c.conn = Some(id);
                }
                m => {
                    if shard.mail(&mut drv, m) {
                        shard.service.on_shutdown(&mut shard.io);
                    }
                }
            }
        }
        shard.turn(&mut drv);
        moved
    }
}
