//! The io_uring backend: one ring per worker, multishot accept on its `SO_REUSEPORT`
//! listener, multishot (or single-shot) buffer-select receives from a provided-buffer ring,
//! one `Writev` per connection per pass, the mailbox eventfd read through the ring.
//!
//! Hand-written on `io-uring` on purpose: a general async runtime would add a waker, a task
//! and a future per connection, cross-thread wake-ups and an extra copy from its own buffers;
//! here a completion goes straight to the protocol code with a borrowed buffer.
//!
//! Owns: the ring, the receive buffers, the user-data tags. Must never: decide anything about
//! connections (the shard does), or free memory the kernel may still touch.

use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{cqueue, opcode, types, IoUring};

use super::{Backend, Sink};
use crate::rt::bufring::BufRing;
use crate::rt::conn::{ConnId, Driver};
use crate::rt::ring::{self, tag, untag, EnterError, Op, RingError, Taskrun};
use crate::rt::worker::WorkerConfig;

const BGID: u16 = 7;
const PROBE_BGID: u16 = 8;

/// The ring and the count of operations submitted whose last completion is not reaped yet:
/// the teardown waits for it to reach 0 before freeing anything they reference.
struct Uring {
    ring: IoUring,
    inflight: usize,
    /// Entries pushed since the start (the loop's submissions-per-pass histogram).
    pushed: u64,
}

impl Uring {
    /// Pushes one entry, submitting first when the queue is full.
    fn push(&mut self, e: io_uring::squeue::Entry) {
        // SAFETY: every entry built by this backend references memory that outlives the
        // operation: provided buffers (owned by `bufs`), the eventfd buffer (boxed in the
        // backend), and send iovecs/frames kept in the connection's `SendQueue` until its
        // completion; the teardown reaps every operation before any of them is freed.
        unsafe {
            while self.ring.submission().push(&e).is_err() {
                let _ = self.ring.submit();
            }
        }
        self.inflight += 1;
        self.pushed += 1;
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

/// One worker's ring, receive buffers and armed accept/mailbox reads.
pub struct UringBackend {
    // Field order matters: the ring is dropped (and the kernel lets go of the buffer ring)
    // before the buffers are freed.
    ring: Uring,
    bufs: BufRing,
    multishot: bool,
    taskrun: Taskrun,
    accept_armed: bool,
    accept_cancel_sent: bool,
    eventfd_buf: Box<u64>,
    mailbox_armed: bool,
    cqes: Vec<(u64, i32, u32)>,
}

impl UringBackend {
    /// Sets up the ring and buffers; must run on the worker's own thread.
    pub fn new(worker: usize, cfg: &WorkerConfig) -> Result<UringBackend, RingError> {
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
        tracing::debug!(worker, multishot, "worker ring ready");
        Ok(UringBackend {
            ring: Uring { ring, inflight: 0, pushed: 0 },
            bufs,
            multishot,
            taskrun,
            accept_armed: false,
            accept_cancel_sent: false,
            eventfd_buf: Box::new(0),
            mailbox_armed: false,
            cqes: Vec::with_capacity(1024),
        })
    }

    fn handle_cqe(&mut self, sink: &mut impl Sink, ud: u64, res: i32, flags: u32) {
        let (op, idx, gen) = untag(ud);
        match op {
            Some(Op::Accept) => {
                if !cqueue::more(flags) {
                    self.accept_armed = false;
                    self.accept_cancel_sent = false;
                }
                if res >= 0 {
                    sink.accepted(self, res);
                } else {
                    sink.accept_failed(-res);
                }
            }
            Some(Op::Mailbox) => self.mailbox_armed = false,
            Some(Op::Recv) => {
                let bid = cqueue::buffer_select(flags);
                let id = ConnId { idx, gen };
                if res > 0 {
                    let b = bid.expect("a successful buffer-select receive names its buffer");
                    // SAFETY: `b` came from this completion of our buffer group and is recycled
                    // below, before any other completion is looked at.
                    let data = unsafe { self.bufs.buffer(b, res as usize) };
                    sink.received(id, data);
                    self.bufs.recycle(b);
                } else if let Some(b) = bid {
                    self.bufs.recycle(b);
                }
                if res <= 0 || !cqueue::more(flags) {
                    let error = if res > 0 { None } else { Some(-res) };
                    if res == -libc::ENOBUFS {
                        tracing::debug!("receive buffers exhausted; re-arming");
                    }
                    sink.recv_ended(id, error);
                }
            }
            Some(Op::Send) => sink.sent(ConnId { idx, gen }, res),
            Some(Op::Cancel) | None => {}
        }
    }
}

impl Driver for UringBackend {
    fn peer_addr(&mut self, fd: RawFd) -> Option<std::net::SocketAddr> {
        crate::rt::conn::peer_addr_of(fd)
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

impl Backend for UringBackend {
    fn set_accepting(&mut self, listener: RawFd, on: bool) {
        if on && !self.accept_armed {
            self.ring.push(opcode::AcceptMulti::new(types::Fd(listener)).flags(libc::SOCK_CLOEXEC).build().user_data(tag(Op::Accept, 0, 0)));
            self.accept_armed = true;
        } else if !on && self.accept_armed && !self.accept_cancel_sent {
            self.ring.push(opcode::AsyncCancel::new(tag(Op::Accept, 0, 0)).build().user_data(tag(Op::Cancel, 0, 0)));
            self.accept_cancel_sent = true;
        }
    }

    fn arm_mailbox(&mut self, eventfd: RawFd) {
        if !self.mailbox_armed {
            let ptr = (&mut *self.eventfd_buf as *mut u64).cast::<u8>();
            self.ring.push(opcode::Read::new(types::Fd(eventfd), ptr, 8).build().user_data(tag(Op::Mailbox, 0, 0)));
            self.mailbox_armed = true;
        }
    }

    fn wait(&mut self, wait: Option<Duration>) -> Result<(), String> {
        let ring = &mut self.ring.ring;
        let res = match wait {
            // Not `submit()`: on a DEFER_TASKRUN ring it may reap nothing (see the rule at
            // `ring::submit_no_sleep`).
            Some(Duration::ZERO) => ring::submit_no_sleep(ring, self.taskrun),
            Some(w) => {
                let ts = ring::timespec(w);
                let args = types::SubmitArgs::new().timespec(&ts);
                ring.submitter().submit_with_args(1, &args)
            }
            None => ring.submit_and_wait(1),
        };
        match res {
            Ok(_) => Ok(()),
            // An `io_uring_enter` failed: retry the harmless kinds; anything else means the ring
            // is unusable.
            Err(e) => match ring::classify_enter_error(e.raw_os_error().unwrap_or(0)) {
                EnterError::Retry => Ok(()),
                EnterError::Fatal { errno, hint } => Err(format!("io_uring_enter failed ({errno}: {e}): {hint}")),
            },
        }
    }

    fn dispatch(&mut self, sink: &mut impl Sink) {
        let mut cqes = std::mem::take(&mut self.cqes);
        self.ring.reap(&mut cqes);
        for &(ud, res, flags) in &cqes {
            self.handle_cqe(sink, ud, res, flags);
        }
        cqes.clear();
        self.cqes = cqes;
    }

    fn cancel_all(&mut self) {
        if self.ring.inflight > 0 {
            // One cancel for every request of this ring (kernel 5.19+, like buffer rings).
            self.ring.push(opcode::AsyncCancel2::new(types::CancelBuilder::any()).build().user_data(tag(Op::Cancel, 0, 0)));
        }
    }

    fn submitted(&self) -> u64 {
        self.ring.pushed
    }

    fn outstanding(&self) -> usize {
        self.ring.inflight
    }
}
