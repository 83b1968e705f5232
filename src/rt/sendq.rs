//! A connection's outgoing queue: shared `Bytes` frames, bounded in bytes, sent with one
//! vectored write per loop turn (corking: every frame queued during the turn goes together).
//!
//! Owns: the frames not yet written, the ones in flight (kept alive until the kernel is done
//! with them), and the iovec array the kernel reads. Must never: copy a frame.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

/// Most frames in one vectored write (IOV_MAX is 1024).
const MAX_IOV: usize = 256;

/// The queue is full: the frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

#[derive(Default)]
pub struct SendQueue {
    queued: VecDeque<Bytes>,
    queued_bytes: usize,
    inflight: Vec<Bytes>,
    iovecs: Vec<libc::iovec>,
}

// SAFETY: the raw pointers in `iovecs` point into the `Bytes` held in `inflight` by the same
// struct; moving the struct to another thread moves both together.
unsafe impl Send for SendQueue {}

impl SendQueue {
    /// Queues a frame unless the queue would pass `limit` bytes.
    pub fn push(&mut self, frame: Bytes, limit: usize) -> Result<(), Overflow> {
        if self.queued_bytes + frame.len() > limit && self.queued_bytes > 0 {
            return Err(Overflow);
        }
        self.queued_bytes += frame.len();
        self.queued.push_back(frame);
        Ok(())
    }

    /// Bytes queued and not yet handed to the kernel.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    pub fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    pub fn in_flight(&self) -> bool {
        !self.inflight.is_empty()
    }

    /// Moves queued frames in flight and returns the iovec array to write, or `None` when a
    /// write is already in flight or nothing is queued.
    pub fn start_send(&mut self) -> Option<(*const libc::iovec, u32)> {
        if self.in_flight() || self.queued.is_empty() {
            return None;
        }
        self.iovecs.clear();
        while self.inflight.len() < MAX_IOV {
            let Some(b) = self.queued.pop_front() else { break };
            self.queued_bytes -= b.len();
            self.iovecs.push(libc::iovec { iov_base: b.as_ptr() as *mut _, iov_len: b.len() });
            self.inflight.push(b);
        }
        Some((self.iovecs.as_ptr(), self.iovecs.len() as u32))
    }

    /// The in-flight write completed with `written` bytes: drops what was sent and puts an
    /// unsent remainder back at the front of the queue.
    pub fn complete(&mut self, mut written: usize) {
        let mut rest = Vec::new();
        for mut b in self.inflight.drain(..) {
            if written >= b.len() {
                written -= b.len();
            } else {
                b.advance(written);
                written = 0;
                rest.push(b);
            }
        }
        for b in rest.into_iter().rev() {
            self.queued_bytes += b.len();
            self.queued.push_front(b);
        }
        self.iovecs.clear();
    }

    /// Takes the first queued frame (TLS encrypts from the queue instead of writing it).
    pub fn pop_front(&mut self) -> Option<Bytes> {
        let b = self.queued.pop_front()?;
        self.queued_bytes -= b.len();
        Some(b)
    }

    /// Puts an unsent remainder back in front of the queue, whatever the limit.
    pub fn push_front(&mut self, frame: Bytes) {
        self.queued_bytes += frame.len();
        self.queued.push_front(frame);
    }

    /// Drops everything (the connection is gone).
    pub fn clear(&mut self) {
        self.queued.clear();
        self.queued_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_writes_requeue_the_rest_in_order() {
        let mut q = SendQueue::default();
        q.push(Bytes::from_static(b"abc"), 100).unwrap();
        q.push(Bytes::from_static(b"defg"), 100).unwrap();
        let (_, n) = q.start_send().unwrap();
        assert_eq!(n, 2);
        assert!(q.start_send().is_none(), "one write in flight at a time");
        q.push(Bytes::from_static(b"h"), 100).unwrap();
        q.complete(5);
        assert_eq!(q.queued_bytes(), 3);
        let (iov, n) = q.start_send().unwrap();
        // SAFETY: `iov` points at `n` iovecs owned by `q`, alive until the next call on `q`.
        let first = unsafe { std::slice::from_raw_parts((*iov).iov_base as *const u8, (*iov).iov_len) };
        assert_eq!((first, n), (&b"fg"[..], 2));
    }

    #[test]
    fn bounded_in_bytes() {
        let mut q = SendQueue::default();
        q.push(Bytes::from(vec![0; 60]), 100).unwrap();
        assert_eq!(q.push(Bytes::from(vec![0; 60]), 100), Err(Overflow));
        // A single frame larger than the limit is accepted into an empty queue.
        let mut q = SendQueue::default();
        assert!(q.push(Bytes::from(vec![0; 200]), 100).is_ok());
    }
}
