//! A provided buffer ring (io_uring "pbuf ring", kernel 5.19+): a pool of receive buffers the
//! kernel picks from, so an idle connection holds no receive buffer at all.
//!
//! Owns: the ring memory shared with the kernel, the buffers, and giving buffers back.
//! Must never: hand out a buffer the kernel may still write (a buffer is only ours between
//! its completion and [`BufRing::recycle`]).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

use super::ring::RingError;

pub struct BufRing {
    ring: *mut BufRingEntry,
    ring_layout: Layout,
    bufs: *mut u8,
    bufs_layout: Layout,
    entries: u16,
    buf_size: usize,
    tail: u16,
    pub bgid: u16,
}

impl BufRing {
    /// Registers `entries` (a power of two) buffers of `buf_size` bytes as group `bgid`.
    pub fn new(ring: &IoUring, entries: u16, buf_size: usize, bgid: u16) -> Result<BufRing, RingError> {
        assert!(entries.is_power_of_two());
        let ring_layout = Layout::from_size_align(entries as usize * std::mem::size_of::<BufRingEntry>(), 4096).expect("valid layout");
        let bufs_layout = Layout::from_size_align(entries as usize * buf_size, 64).expect("valid layout");
        // SAFETY: both layouts have non-zero size; the pointers are checked for null below.
        let (r, b) = unsafe { (alloc_zeroed(ring_layout) as *mut BufRingEntry, alloc_zeroed(bufs_layout)) };
        assert!(!r.is_null() && !b.is_null(), "out of memory for the buffer ring");
        let mut me = BufRing { ring: r, ring_layout, bufs: b, bufs_layout, entries, buf_size, tail: 0, bgid };
        // SAFETY: `r` is page aligned, zeroed and lives until `Drop` unregisters it.
        unsafe { ring.submitter().register_buf_ring_with_flags(r as u64, entries, bgid, 0) }.map_err(RingError::NoBufRing)?;
        for bid in 0..entries {
            me.push(bid);
        }
        me.publish();
        Ok(me)
    }

    fn push(&mut self, bid: u16) {
        let idx = (self.tail & (self.entries - 1)) as usize;
        // SAFETY: `idx < entries`, inside the ring allocation; the kernel only reads entries
        // between its head and the published tail, and this slot is past the published tail.
        let e = unsafe { &mut *self.ring.add(idx) };
        // SAFETY: `bid < entries`, so the buffer lies inside the buffer allocation.
        e.set_addr(unsafe { self.bufs.add(bid as usize * self.buf_size) } as u64);
        e.set_len(self.buf_size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's reserved field of our ring; the
        // kernel reads it concurrently, hence the atomic release store.
        unsafe {
            let tail = BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The first `len` bytes of buffer `bid`, which a completion just handed to us.
    ///
    /// # Safety
    /// `bid` must come from a completion of this group and not have been recycled since, and no
    /// other reference to the same buffer may be alive.
    pub unsafe fn buffer(&mut self, bid: u16, len: usize) -> &mut [u8] {
        debug_assert!(bid < self.entries && len <= self.buf_size);
        // SAFETY: per the caller's contract the buffer is ours and in bounds.
        unsafe { std::slice::from_raw_parts_mut(self.bufs.add(bid as usize * self.buf_size), len) }
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    pub fn buf_size(&self) -> usize {
        self.buf_size
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the ring is torn down with the worker; both allocations were made in `new`
        // with these layouts. (Unregistering first is not needed: the IoUring is dropped
        // before or with us and no operation is in flight when the worker exits.)
        unsafe {
            dealloc(self.ring as *mut u8, self.ring_layout);
            dealloc(self.bufs, self.bufs_layout);
        }
    }
}
