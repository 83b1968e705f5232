//! io_uring setup: the ring with the flags a single-threaded event loop wants, fallbacks for
//! older kernels, a clear error when io_uring cannot be used at all, and the feature probe.
//!
//! Owns: ring creation and the user-data tags that say which operation a completion belongs
//! to. Must never: know about connections' protocols.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

/// Why the runtime cannot start, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error(
        "io_uring is not available (ENOSYS): the kernel is too old (5.19 or later is needed) or was built without it"
    )]
    NotSupported,
    #[error(
        "io_uring is disabled or blocked (EPERM): check `sysctl kernel.io_uring_disabled` (must be 0, or 1 with this user in `kernel.io_uring_group`) and the container's seccomp profile (Docker's default blocks io_uring: run with a profile that allows io_uring_setup/io_uring_enter/io_uring_register)"
    )]
    Blocked,
    #[error("provided buffer rings are not supported (kernel 5.19 or later is needed): {0}")]
    NoBufRing(io::Error),
    #[error("io_uring setup failed: {0}")]
    Other(io::Error),
}

/// Creates a ring of `entries` submission slots: `SINGLE_ISSUER | DEFER_TASKRUN` (6.1+),
/// falling back to `COOP_TASKRUN` (5.19+), then to no flags. Never SQPOLL (it burns a core).
/// Must be called on the thread that will use the ring.
pub fn create(entries: u32) -> Result<IoUring, RingError> {
    let attempts: [fn(&mut io_uring::Builder); 3] = [
        |b| {
            b.setup_single_issuer().setup_defer_taskrun();
        },
        |b| {
            b.setup_coop_taskrun();
        },
        |_| {},
    ];
    let mut last = None;
    for setup in attempts {
        let mut b = IoUring::builder();
        b.setup_cqsize(entries * 8);
        setup(&mut b);
        match b.build(entries) {
            Ok(r) => return Ok(r),
            Err(e) => match e.raw_os_error() {
                Some(libc::ENOSYS) => return Err(RingError::NotSupported),
                Some(libc::EPERM) | Some(libc::EACCES) => return Err(RingError::Blocked),
                Some(libc::EINVAL) => last = Some(e),
                _ => return Err(RingError::Other(e)),
            },
        }
    }
    Err(RingError::Other(last.unwrap_or_else(|| io::Error::other("no setup flags accepted"))))
}

/// What an in-flight operation is; packed into the completion's user data with a slot index
/// and a generation so completions for a recycled slot are recognised as stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Mailbox = 4,
    Cancel = 5,
}

pub fn tag(op: Op, idx: u32, gen: u32) -> u64 {
    (op as u64) << 56 | ((gen as u64) & 0xff_ffff) << 32 | idx as u64
}

pub fn untag(ud: u64) -> (Option<Op>, u32, u32) {
    let op = match (ud >> 56) as u8 {
        1 => Some(Op::Accept),
        2 => Some(Op::Recv),
        3 => Some(Op::Send),
        4 => Some(Op::Mailbox),
        5 => Some(Op::Cancel),
        _ => None,
    };
    (op, ud as u32, ((ud >> 32) & 0xff_ffff) as u32)
}

/// Generations are 24 bits wide in the tag.
pub fn gen_matches(stored: u32, tagged: u32) -> bool {
    stored & 0xff_ffff == tagged
}

/// Whether multishot recv works here (kernel 6.0+): arms one on a socketpair and sees whether
/// it stays armed after delivering data.
pub fn probe_multishot_recv(ring: &mut IoUring, bgid: u16) -> bool {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return false;
    }
    let ud = u64::MAX - 1;
    let entry = opcode::RecvMulti::new(types::Fd(fds[0]), bgid).build().user_data(ud);
    // SAFETY: the entry references no memory of ours (the kernel picks a provided buffer).
    let pushed = unsafe { ring.submission().push(&entry).is_ok() };
    let mut ok = false;
    if pushed {
        // SAFETY: writing one byte from a valid static buffer to a socket we own.
        unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
        if ring.submit_and_wait(1).is_ok() {
            // The probe's buffer group is thrown away afterwards, so the buffer it used is not
            // given back.
            for cqe in ring.completion() {
                if cqe.user_data() == ud {
                    ok = cqe.result() == 1 && io_uring::cqueue::more(cqe.flags());
                }
            }
        }
    }
    // SAFETY: closing the two descriptors we created; this ends the probe's recv.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    // Reap the terminating completion of the probe.
    let _ = ring.submit_and_wait(0);
    for _ in ring.completion() {}
    ok
}

/// The `timespec` for a wait of `d`.
pub fn timespec(d: std::time::Duration) -> types::Timespec {
    types::Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_roundtrip() {
        let t = tag(Op::Send, 123456, 0x1234567);
        assert_eq!(untag(t), (Some(Op::Send), 123456, 0x234567));
        assert!(gen_matches(0x1234567, 0x234567));
    }
}
