//! The cross-worker mailbox: a lock-free queue per worker (`crossbeam`) plus an eventfd that
//! the worker's ring watches, so a worker wakes only when it has mail.
//!
//! Owns: delivery of messages between workers (and from `ServerHandle`s on any thread).
//! Must never: block a sender.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_queue::SegQueue;

/// One worker's inbox. Cloned `Arc`s are handed to every other worker.
pub struct Mailbox<M> {
    queue: SegQueue<M>,
    eventfd: RawFd,
    /// Set by the owner before it sleeps; senders only write the eventfd when it is set.
    sleeping: AtomicBool,
    /// Set by the owner once it reads no more (it exited): what is posted after must be
    /// disposed of by whoever posted it (see `rt::conn::hand_over`).
    stopped: AtomicBool,
}

impl<M> Mailbox<M> {
    pub fn new() -> std::io::Result<Arc<Mailbox<M>>> {
        // SAFETY: plain syscall with constant flags.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Arc::new(Mailbox { queue: SegQueue::new(), eventfd: fd, sleeping: AtomicBool::new(true), stopped: AtomicBool::new(false) }))
    }

    pub fn eventfd(&self) -> RawFd {
        self.eventfd
    }

    /// Posts a message and wakes the owner if it may be asleep.
    pub fn post(&self, m: M) {
        self.queue.push(m);
        if self.sleeping.swap(false, Ordering::AcqRel) {
            self.wake();
        }
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(self.eventfd, (&one as *const u64).cast(), 8) };
    }

    /// The owner reads no more mail: call before its last drain. A sender that finds
    /// [`Mailbox::stopped`] true after its post drains the queue itself (`take` is safe from
    /// any thread), so nothing posted is left unread: a post either precedes this store and is
    /// drained by the owner, or sees it.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Whether the owner has stopped reading (see [`Mailbox::stop`]).
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Messages waiting (a snapshot: other threads may post meanwhile).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Takes one message (owner only).
    pub fn take(&self) -> Option<M> {
        self.queue.pop()
    }

    /// The owner is about to sleep: after this, a post writes the eventfd. Returns whether
    /// mail is already waiting (then it must not sleep).
    pub fn prepare_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        !self.queue.is_empty()
    }

    /// The owner woke up; posts until the next `prepare_sleep` need no eventfd write.
    pub fn awake(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }
}

impl<M> Drop for Mailbox<M> {
    fn drop(&mut self) {
        // SAFETY: closing the eventfd we own.
        unsafe { libc::close(self.eventfd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_wake_only_a_sleeping_owner() {
        let m = Mailbox::<u32>::new().unwrap();
        m.awake();
        m.post(1);
        let mut v = 0u64;
        // SAFETY: reading 8 bytes into a valid u64 from a non-blocking eventfd.
        let n = unsafe { libc::read(m.eventfd(), (&mut v as *mut u64).cast(), 8) };
        assert_eq!(n, -1, "no wake-up while awake");
        assert!(m.prepare_sleep(), "mail is waiting");
        assert_eq!(m.take(), Some(1));
        assert!(!m.prepare_sleep());
        m.post(2);
        // SAFETY: as above.
        let n = unsafe { libc::read(m.eventfd(), (&mut v as *mut u64).cast(), 8) };
        assert_eq!((n, v), (8, 1));
    }
}
