//! The epoll backend: readiness instead of completions, for where io_uring is refused (Docker's
//! and containerd's default seccomp profiles, gVisor, `kernel.io_uring_disabled`, old kernels).
//! One epoll instance per worker, watching its own `SO_REUSEPORT` listener, its mailbox's
//! eventfd and its connections; it turns readiness into the same calls the io_uring backend
//! makes ([`Sink::accepted`], [`Sink::received`], [`Sink::recv_ended`], [`Sink::sent`]), so the
//! shard above cannot tell them apart.
//!
//! - A receive "armed" by the shard means interest in `EPOLLIN`; each pass reads up to
//!   [`READS_PER_PASS`] buffers from a ready socket into the worker's one receive buffer and
//!   lends it to the shard (like a provided buffer: an idle connection holds no buffer).
//! - A write is the shard's iovec array sent at once with one `sendmsg` (`MSG_NOSIGNAL`): the
//!   same shared frames the io_uring backend hands to `Writev`. What it wrote, a partial count
//!   included, is reported as the write's completion at the start of the next pass (never from
//!   inside the shard's flush); the send queue puts the rest back. A write that meets
//!   `EAGAIN` (or follows a partial one: the socket buffer is known full) waits for
//!   `EPOLLOUT` and is retried then, with the same iovecs, which the send queue keeps alive
//!   until the completion.
//! - Cancelling a receive drops the interest and reports `ECANCELED` next pass, as a cancelled
//!   io_uring receive does.
//!
//! Level-triggered, on purpose: the shard pauses and resumes reading (a parked poll, a
//! hand-off, a closing connection), and with level triggering the interest mask simply *is*
//! what the shard wants now: bytes left unread (a paused connection, or one that had its
//! [`READS_PER_PASS`] share this pass) are reported again by the next `epoll_wait` without any
//! "drained until EAGAIN" bookkeeping or a ready list of our own, and one busy client cannot
//! starve the others. The price, an `epoll_ctl` when the interest changes, is paid on pauses
//! and full socket buffers only. A socket with no interest left is removed from the set, so a
//! connection handed to another worker is in exactly one epoll set.
//!
//! Owns: the epoll descriptor, the per-descriptor interest table, the receive buffer, and the
//! completions waiting for the next dispatch. Must never: keep an iovec pointer after the
//! write's completion is reported, or report a completion from inside a [`Driver`] call.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use super::{Backend, Sink};
use crate::rt::conn::{ConnId, Driver};

/// `epoll_event.u64` of the listener and of the mailbox's eventfd; a connection's is its fd.
const LISTENER: u64 = u64::MAX;
const MAILBOX: u64 = u64::MAX - 1;
/// At most this many connections are accepted per pass (the rest wait in the backlog, still
/// readable: level-triggered).
const ACCEPTS_PER_PASS: usize = 64;
/// At most this many reads from one ready socket per pass.
pub const READS_PER_PASS: usize = 4;
/// Events taken by one `epoll_wait`.
const EVENTS: usize = 1024;

#[derive(Clone, Copy)]
struct Slot {
    id: ConnId,
    /// The shard armed a receive.
    recv: bool,
    /// A write not yet completed: the shard's iovec array and its length.
    write: Option<(*const libc::iovec, u32)>,
    /// False after `EAGAIN` or a partial write, until `EPOLLOUT`.
    blocked: bool,
    /// The events registered with epoll (0: not in the set).
    registered: u32,
}

impl Default for Slot {
    fn default() -> Self {
        // A handle no connection has (generations are 24 bits wide).
        Slot { id: ConnId { idx: u32::MAX, gen: u32::MAX }, recv: false, write: None, blocked: false, registered: 0 }
    }
}

enum Done {
    RecvEnded(ConnId, Option<i32>),
    Sent(ConnId, i32),
}

/// One worker's epoll instance and what it watches.
pub struct EpollBackend {
    epfd: RawFd,
    /// By descriptor number (descriptors are small integers, bounded by the fd limit).
    slots: Vec<Slot>,
    /// Connection slot index to descriptor, for `cancel_recv`, which names only the handle.
    fds: Vec<RawFd>,
    listener: RawFd,
    accepting: bool,
    mailbox: RawFd,
    events: Vec<libc::epoll_event>,
    ready: usize,
    rbuf: Vec<u8>,
    done: VecDeque<Done>,
    /// `sendmsg` and `epoll_ctl` calls since the start (the loop's submissions-per-pass
    /// histogram).
    syscalls: std::cell::Cell<u64>,
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl EpollBackend {
    /// A new epoll instance; sockets are read through one buffer of `buf_size` bytes.
    pub fn new(buf_size: usize) -> io::Result<EpollBackend> {
        // SAFETY: plain syscall with a constant flag.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EpollBackend {
            epfd,
            slots: Vec::new(),
            fds: Vec::new(),
            listener: -1,
            accepting: false,
            mailbox: -1,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
            ready: 0,
            rbuf: vec![0; buf_size.max(4096)],
            done: VecDeque::new(),
            syscalls: std::cell::Cell::new(0),
        })
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        self.syscalls.set(self.syscalls.get() + 1);
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: `ev` is a valid event for the duration of the call; `fd` is ours.
        if unsafe { libc::epoll_ctl(self.epfd, op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn slot(&mut self, fd: RawFd) -> &mut Slot {
        let i = fd as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, Slot::default());
        }
        &mut self.slots[i]
    }

    /// Brings the epoll registration of `fd` in line with what its slot wants.
    fn update(&mut self, fd: RawFd) {
        let s = *self.slot(fd);
        let mut want = 0u32;
        if s.recv {
            want |= libc::EPOLLIN as u32;
        }
        if s.write.is_some() && s.blocked {
            want |= libc::EPOLLOUT as u32;
        }
        if want == s.registered {
            return;
        }
        let res = match (s.registered, want) {
            (0, w) => self.ctl(libc::EPOLL_CTL_ADD, fd, w, fd as u64),
            (_, 0) => self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0),
            (_, w) => self.ctl(libc::EPOLL_CTL_MOD, fd, w, fd as u64),
        };
        match res {
            Ok(()) => self.slot(fd).registered = want,
            Err(e) => {
                // ENOMEM/ENOSPC (`max_user_watches`): the operations cannot wait for
                // readiness; end them so the shard closes the connection.
                tracing::warn!(error = %e, "epoll_ctl failed; closing the connection");
                let s = *self.slot(fd);
                let (id, recv, write) = (s.id, s.recv, s.write);
                self.slot(fd).recv = false;
                self.slot(fd).write = None;
                if recv {
                    self.done.push_back(Done::RecvEnded(id, Some(e.raw_os_error().unwrap_or(libc::ENOMEM))));
                }
                if write.is_some() {
                    self.done.push_back(Done::Sent(id, -e.raw_os_error().unwrap_or(libc::ENOMEM)));
                }
                if s.registered != 0 {
                    let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
                    self.slot(fd).registered = 0;
                }
            }
        }
    }

    /// Sends the pending write of `fd` once; reports it unless the socket is full.
    fn try_write(&mut self, fd: RawFd) {
        let s = *self.slot(fd);
        let Some((iov, n)) = s.write else { return };
        self.syscalls.set(self.syscalls.get() + 1);
        // SAFETY: a zeroed msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov as *mut libc::iovec;
        msg.msg_iovlen = n as _;
        let r = loop {
            // SAFETY: `iov` points at `n` iovecs over frames the connection's send queue keeps
            // alive until this write's completion is dispatched; MSG_NOSIGNAL: a closed peer is
            // EPIPE, not a signal.
            let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
            if r < 0 && errno() == libc::EINTR {
                continue;
            }
            break r;
        };
        if r < 0 {
            let e = errno();
            if e == libc::EAGAIN || e == libc::EWOULDBLOCK {
                self.slot(fd).blocked = true;
            } else {
                self.slot(fd).write = None;
                self.done.push_back(Done::Sent(s.id, -e));
            }
        } else {
            // SAFETY: as above, the `n` iovecs are alive and readable.
            let total: usize = (0..n as usize).map(|i| unsafe { (*iov.add(i)).iov_len }).sum();
            let slot = self.slot(fd);
            slot.write = None;
            // A partial write: the socket buffer is full, so the next one waits for EPOLLOUT
            // instead of meeting EAGAIN first.
            slot.blocked = (r as usize) < total;
            self.done.push_back(Done::Sent(s.id, r as i32));
        }
        self.update(fd);
    }

    /// Up to [`READS_PER_PASS`] reads from a socket whose receive is armed.
    fn read(&mut self, sink: &mut impl Sink, fd: RawFd) {
        for _ in 0..READS_PER_PASS {
            let s = *self.slot(fd);
            if !s.recv {
                return;
            }
            // SAFETY: reading into our own buffer of `rbuf.len()` bytes.
            let r = unsafe { libc::recv(fd, self.rbuf.as_mut_ptr().cast(), self.rbuf.len(), 0) };
            if r > 0 {
                let n = r as usize;
                sink.received(s.id, &mut self.rbuf[..n]);
                if n < self.rbuf.len() {
                    return; // drained (or nearly): the next pass sees what comes next
                }
                continue;
            }
            let error = if r == 0 { 0 } else { errno() };
            if error == libc::EAGAIN || error == libc::EWOULDBLOCK || error == libc::EINTR {
                return;
            }
            self.slot(fd).recv = false;
            self.update(fd);
            sink.recv_ended(s.id, Some(error));
            return;
        }
    }

    fn accept(&mut self, sink: &mut impl Sink) {
        for _ in 0..ACCEPTS_PER_PASS {
            if !self.accepting {
                return;
            }
            // SAFETY: accept4 with no address out-parameters on our listening socket.
            let fd = unsafe { libc::accept4(self.listener, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) };
            if fd >= 0 {
                sink.accepted(self, fd);
                continue;
            }
            match errno() {
                libc::EAGAIN | libc::EINTR => return,
                // The client gave up before we accepted it; take the next.
                libc::ECONNABORTED | libc::EPROTO => continue,
                e => {
                    sink.accept_failed(e);
                    return;
                }
            }
        }
    }
}

impl Driver for EpollBackend {
    fn peer_addr(&mut self, fd: RawFd) -> Option<std::net::SocketAddr> {
        crate::rt::conn::peer_addr_of(fd)
    }

    fn arm_recv(&mut self, id: ConnId, fd: RawFd) {
        let i = id.idx as usize;
        if self.fds.len() <= i {
            self.fds.resize(i + 1, -1);
        }
        self.fds[i] = fd;
        let s = self.slot(fd);
        if s.id != id {
            // A descriptor new to this worker (accepted, or adopted from another worker).
            *s = Slot { id, ..Slot::default() };
        }
        s.recv = true;
        self.update(fd);
    }

    fn cancel_recv(&mut self, id: ConnId) {
        let Some(&fd) = self.fds.get(id.idx as usize) else { return };
        if fd < 0 || (fd as usize) >= self.slots.len() {
            return;
        }
        let s = self.slot(fd);
        if s.id != id || !s.recv {
            return;
        }
        s.recv = false;
        self.update(fd);
        self.done.push_back(Done::RecvEnded(id, Some(libc::ECANCELED)));
    }

    fn write(&mut self, id: ConnId, fd: RawFd, iov: *const libc::iovec, n: u32) {
        let s = self.slot(fd);
        if s.id != id {
            *s = Slot { id, ..Slot::default() };
        }
        debug_assert!(s.write.is_none(), "one write in flight per connection");
        s.write = Some((iov, n));
        if s.blocked {
            self.update(fd);
        } else {
            self.try_write(fd);
        }
    }

    fn shutdown(&mut self, fd: RawFd) {
        // SAFETY: shutting down our own socket: an armed receive then reads the end of the
        // stream, a waiting write fails with EPIPE (both level-triggered, so they are seen).
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        // A write parked on EPOLLOUT is now writable (and fails): retry it at once.
        if (fd as usize) < self.slots.len() && self.slots[fd as usize].write.is_some() {
            self.try_write(fd);
        }
    }

    fn shutdown_write(&mut self, fd: RawFd) {
        // SAFETY: shutting down the sending side of our own socket; receives go on.
        unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    }

    fn close(&mut self, fd: RawFd) {
        if (fd as usize) < self.slots.len() {
            let s = self.slots[fd as usize];
            if s.registered != 0 {
                let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
            }
            self.slots[fd as usize] = Slot::default();
        }
        // SAFETY: no operation on this descriptor is outstanding; it is closed once.
        unsafe { libc::close(fd) };
    }
}

impl Backend for EpollBackend {
    fn set_accepting(&mut self, listener: RawFd, on: bool) {
        if on == self.accepting && (listener == self.listener || !on) {
            return;
        }
        if on {
            // SAFETY: fcntl on our own listening socket: accept4 must return EAGAIN, not
            // block, once the backlog is empty.
            unsafe {
                let fl = libc::fcntl(listener, libc::F_GETFL);
                libc::fcntl(listener, libc::F_SETFL, fl | libc::O_NONBLOCK);
            }
            match self.ctl(libc::EPOLL_CTL_ADD, listener, libc::EPOLLIN as u32, LISTENER) {
                Ok(()) => {
                    self.listener = listener;
                    self.accepting = true;
                }
                Err(e) => tracing::warn!(error = %e, "cannot watch the listening socket; not accepting"),
            }
        } else {
            let _ = self.ctl(libc::EPOLL_CTL_DEL, self.listener, 0, 0);
            self.accepting = false;
        }
    }

    fn arm_mailbox(&mut self, eventfd: RawFd) {
        if self.mailbox != eventfd && self.ctl(libc::EPOLL_CTL_ADD, eventfd, libc::EPOLLIN as u32, MAILBOX).is_ok() {
            self.mailbox = eventfd;
        }
    }

    fn wait(&mut self, wait: Option<Duration>) -> Result<(), String> {
        // Completions waiting for dispatch: do not sleep.
        let wait = if self.done.is_empty() { wait } else { Some(Duration::ZERO) };
        // Milliseconds, rounded up: a deadline 300 µs away must not become a busy loop.
        let timeout = wait.map_or(-1, |w| w.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32);
        // SAFETY: `events` has room for `events.len()` entries.
        let n = unsafe { libc::epoll_wait(self.epfd, self.events.as_mut_ptr(), self.events.len() as i32, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            self.ready = 0;
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(());
            }
            return Err(format!("epoll_wait failed: {e}"));
        }
        self.ready = n as usize;
        Ok(())
    }

    fn dispatch(&mut self, sink: &mut impl Sink) {
        // Writes and cancels carried out during the last pass.
        while let Some(d) = self.done.pop_front() {
            match d {
                Done::RecvEnded(id, e) => sink.recv_ended(id, e),
                Done::Sent(id, res) => sink.sent(id, res),
            }
        }
        for i in 0..std::mem::take(&mut self.ready) {
            let (bits, data) = (self.events[i].events, self.events[i].u64);
            match data {
                LISTENER => self.accept(sink),
                MAILBOX => {
                    let mut v = 0u64;
                    // SAFETY: reading 8 bytes into a valid u64 from the non-blocking eventfd
                    // resets it; the loop drains the mailbox every pass.
                    unsafe { libc::read(self.mailbox, (&mut v as *mut u64).cast(), 8) };
                }
                fd => {
                    let fd = fd as RawFd;
                    let out = libc::EPOLLOUT as u32 | libc::EPOLLERR as u32 | libc::EPOLLHUP as u32;
                    if bits & out != 0 && self.slots[fd as usize].write.is_some() {
                        self.slots[fd as usize].blocked = false;
                        self.try_write(fd);
                    }
                    self.read(sink, fd);
                }
            }
        }
        // What the writes above completed.
        while let Some(d) = self.done.pop_front() {
            match d {
                Done::RecvEnded(id, e) => sink.recv_ended(id, e),
                Done::Sent(id, res) => sink.sent(id, res),
            }
        }
    }

    fn cancel_all(&mut self) {
        for fd in 0..self.slots.len() {
            let s = self.slots[fd];
            if s.recv {
                self.done.push_back(Done::RecvEnded(s.id, Some(libc::ECANCELED)));
            }
            if s.write.is_some() {
                self.done.push_back(Done::Sent(s.id, -libc::ECANCELED));
            }
            self.slots[fd].recv = false;
            self.slots[fd].write = None;
            self.update(fd as RawFd);
        }
    }

    fn submitted(&self) -> u64 {
        self.syscalls.get()
    }

    fn outstanding(&self) -> usize {
        self.done.len() + self.slots.iter().map(|s| s.recv as usize + s.write.is_some() as usize).sum::<usize>()
    }
}

impl Drop for EpollBackend {
    fn drop(&mut self) {
        // SAFETY: closing the epoll descriptor we own; the sockets it watched are not closed.
        unsafe { libc::close(self.epfd) };
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use super::*;

    #[derive(Debug, PartialEq)]
    enum Ev {
        Received(ConnId, Vec<u8>),
        RecvEnded(ConnId, Option<i32>),
        Sent(ConnId, i32),
    }

    #[derive(Default)]
    struct Record(Vec<Ev>);

    impl Sink for Record {
        fn accepted(&mut self, _drv: &mut impl Driver, fd: RawFd) {
            // SAFETY: closing a descriptor we were just given.
            unsafe { libc::close(fd) };
        }
        fn accept_failed(&mut self, errno: i32) {
            panic!("accept failed: {errno}");
        }
        fn received(&mut self, id: ConnId, data: &mut [u8]) {
            self.0.push(Ev::Received(id, data.to_vec()));
        }
        fn recv_ended(&mut self, id: ConnId, error: Option<i32>) {
            self.0.push(Ev::RecvEnded(id, error));
        }
        fn sent(&mut self, id: ConnId, res: i32) {
            self.0.push(Ev::Sent(id, res));
        }
    }

    const ID: ConnId = ConnId { idx: 3, gen: 1 };

    /// A loopback connection: (server side, non-blocking with a small send buffer; client).
    fn pair(rcvbuf: usize) -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        socket2::SockRef::from(&server).set_send_buffer_size(4096).unwrap();
        socket2::SockRef::from(&client).set_recv_buffer_size(rcvbuf).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (server, client)
    }

    fn pass(b: &mut EpollBackend, wait: Duration) -> Vec<Ev> {
        b.wait(Some(wait)).unwrap();
        let mut r = Record::default();
        b.dispatch(&mut r);
        r.0
    }

    fn iovecs(data: &[u8], chunks: usize) -> Vec<libc::iovec> {
        data.chunks(data.len().div_ceil(chunks)).map(|c| libc::iovec { iov_base: c.as_ptr() as *mut _, iov_len: c.len() }).collect()
    }

    /// Writes all of `data` through the backend as the shard would (re-issuing the rest after
    /// each partial completion) while a reader thread drains the client; returns the number of
    /// partial completions seen and what the client read.
    fn write_all(b: &mut EpollBackend, fd: RawFd, client: TcpStream, data: &[u8]) -> (usize, Vec<u8>) {
        let total = data.len();
        let mut client = client;
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 65536];
            while got.len() < total {
                let n = client.read(&mut buf).unwrap();
                assert!(n > 0, "the server closed early");
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        let (mut off, mut partials) = (0, 0);
        while off < total {
            let iov = iovecs(&data[off..], 3);
            b.write(ID, fd, iov.as_ptr(), iov.len() as u32);
            let written = loop {
                let evs = pass(b, Duration::from_secs(5));
                if let Some(Ev::Sent(id, n)) = evs.into_iter().find(|e| matches!(e, Ev::Sent(..))) {
                    assert_eq!(id, ID);
                    break n;
                }
            };
            assert!(written > 0, "a write completed with {written}");
            if (written as usize) < total - off {
                partials += 1;
            }
            off += written as usize;
        }
        assert_eq!(b.outstanding(), 0);
        (partials, reader.join().unwrap())
    }

    #[test]
    fn partial_writes_complete_with_their_count_and_the_rest_follows_in_order() {
        let (server, client) = pair(16384);
        let mut b = EpollBackend::new(65536).unwrap();
        let data: Vec<u8> = (0..256 << 10).map(|i: u32| (i % 251) as u8).collect();
        let (partials, got) = write_all(&mut b, server.as_raw_fd(), client, &data);
        assert!(partials > 0, "256 KiB through small socket buffers must be written in parts");
        assert!(got == data, "bytes arrive complete and in order");
    }

    #[test]
    fn a_write_meeting_eagain_waits_for_epollout_without_completing() {
        let (server, mut client) = pair(4096);
        let fd = server.as_raw_fd();
        // Fill the socket (and the peer's receive buffer) until the kernel says EAGAIN, and
        // still says it after what was in flight has landed.
        let chunk = [7u8; 4096];
        let mut filled = 0;
        loop {
            let before = filled;
            loop {
                // SAFETY: sending from a valid buffer on our own non-blocking socket.
                let r = unsafe { libc::send(fd, chunk.as_ptr().cast(), chunk.len(), libc::MSG_NOSIGNAL) };
                if r < 0 {
                    assert_eq!(errno(), libc::EAGAIN);
                    break;
                }
                filled += r as usize;
            }
            if filled == before {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut b = EpollBackend::new(65536).unwrap();
        let frame = b"after the wall".to_vec();
        let iov = iovecs(&frame, 1);
        b.write(ID, fd, iov.as_ptr(), 1);
        assert_eq!(pass(&mut b, Duration::from_millis(50)), vec![], "EAGAIN is not a completion");
        assert_eq!(b.outstanding(), 1, "the write waits");
        assert_eq!(b.slots[fd as usize].registered, libc::EPOLLOUT as u32, "for EPOLLOUT");
        // The peer reads: the socket becomes writable and the same iovecs go out.
        let mut sink = vec![0u8; filled];
        client.read_exact(&mut sink).unwrap();
        let evs = pass(&mut b, Duration::from_secs(5));
        assert_eq!(evs, vec![Ev::Sent(ID, frame.len() as i32)]);
        let mut tail = vec![0u8; frame.len()];
        client.read_exact(&mut tail).unwrap();
        assert_eq!(tail, frame);
        assert_eq!(b.slots[fd as usize].registered, 0, "no interest left: out of the set");
    }

    #[test]
    fn receives_cancel_resume_and_end_at_shutdown_and_at_the_peers_close() {
        let (server, mut client) = pair(65536);
        let fd = server.as_raw_fd();
        let mut b = EpollBackend::new(65536).unwrap();
        b.arm_recv(ID, fd);
        client.write_all(b"hello").unwrap();
        assert_eq!(pass(&mut b, Duration::from_secs(5)), vec![Ev::Received(ID, b"hello".to_vec())]);
        // Cancelled: ECANCELED next pass, and nothing is read meanwhile (level-triggered
        // interest is gone, so the bytes wait in the kernel).
        b.cancel_recv(ID);
        client.write_all(b"kept").unwrap();
        assert_eq!(pass(&mut b, Duration::from_millis(50)), vec![Ev::RecvEnded(ID, Some(libc::ECANCELED))]);
        assert_eq!(pass(&mut b, Duration::from_millis(50)), vec![]);
        // Re-armed: what arrived meanwhile is read.
        b.arm_recv(ID, fd);
        assert_eq!(pass(&mut b, Duration::from_secs(5)), vec![Ev::Received(ID, b"kept".to_vec())]);
        // The peer closes: end of stream.
        drop(client);
        assert_eq!(pass(&mut b, Duration::from_secs(5)), vec![Ev::RecvEnded(ID, Some(0))]);
        assert_eq!(b.outstanding(), 0);

        // Our own shutdown ends an armed receive too.
        let (server, _client) = pair(65536);
        let fd = server.as_raw_fd();
        b.arm_recv(ID, fd);
        b.shutdown(fd);
        assert_eq!(pass(&mut b, Duration::from_secs(5)), vec![Ev::RecvEnded(ID, Some(0))]);
    }

    #[test]
    fn cancel_all_ends_every_outstanding_operation() {
        let (server, _client) = pair(65536);
        let fd = server.as_raw_fd();
        let mut b = EpollBackend::new(65536).unwrap();
        b.arm_recv(ID, fd);
        assert_eq!(b.outstanding(), 1);
        b.cancel_all();
        assert_eq!(pass(&mut b, Duration::ZERO), vec![Ev::RecvEnded(ID, Some(libc::ECANCELED))]);
        assert_eq!(b.outstanding(), 0);
    }
}
