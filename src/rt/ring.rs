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
    #[error("io_uring is not available (ENOSYS): the kernel is too old (5.19 or later is needed) or was built without it")]
    NotSupported,
    #[error(
        "io_uring is disabled or blocked (EPERM): check `sysctl kernel.io_uring_disabled` (must be 0, or 1 with this user in `kernel.io_uring_group`) and the container's seccomp profile (Docker's default blocks io_uring: run with a profile that allows io_uring_setup/io_uring_enter/io_uring_register)"
    )]
    Blocked,
    #[error("provided buffer rings are not supported (kernel 5.19 or later is needed): {0}")]
    NoBufRing(io::Error),
    #[error("io_uring setup failed: {0}")]
    Other(io::Error),
    /// The ring was created but `io_uring_enter` fails: found by a no-op submitted at start,
    /// before the server says it is listening.
    #[error("io_uring_enter fails ({errno}: {error}): {hint}")]
    Enter { errno: &'static str, error: io::Error, hint: &'static str },
}

/// How the kernel runs a ring's completion work; decides how a pass that must not sleep
/// enters the kernel (see [`submit_no_sleep`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taskrun {
    /// `SINGLE_ISSUER | DEFER_TASKRUN`: completions are deferred until an enter with
    /// `IORING_ENTER_GETEVENTS`.
    Defer,
    /// `COOP_TASKRUN`, or no flags: completions are run on any return from the kernel.
    Eager,
}

/// Creates a ring of `entries` submission slots: `SINGLE_ISSUER | DEFER_TASKRUN` (6.1+),
/// falling back to `COOP_TASKRUN` (5.19+), then to no flags. Never SQPOLL (it burns a core).
/// Must be called on the thread that will use the ring.
pub fn create(entries: u32) -> Result<IoUring, RingError> {
    create_with_taskrun(entries).map(|(r, _)| r)
}

/// [`create`], also telling which task-run mode the kernel accepted.
pub fn create_with_taskrun(entries: u32) -> Result<(IoUring, Taskrun), RingError> {
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
    for (i, setup) in attempts.into_iter().enumerate() {
        let mut b = IoUring::builder();
        b.setup_cqsize(entries * 8);
        setup(&mut b);
        match b.build(entries) {
            Ok(r) => return Ok((r, if i == 0 { Taskrun::Defer } else { Taskrun::Eager })),
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

/// What to do about an `io_uring_enter` error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnterError {
    /// Harmless: a timed wait ran out, a signal arrived, or the kernel is momentarily short
    /// (completion queue full, no memory for a request right now). Go round the loop again.
    Retry,
    /// The ring cannot be used: the errno's name and what it most likely means.
    Fatal { errno: &'static str, hint: &'static str },
}

/// Classifies the errno of a failed `io_uring_enter` (pure: no syscalls).
pub fn classify_enter_error(errno: i32) -> EnterError {
    let fatal = |errno, hint| EnterError::Fatal { errno, hint };
    match errno {
        libc::ETIME | libc::EINTR | libc::EAGAIN | libc::EBUSY => EnterError::Retry,
        libc::EPERM => fatal("EPERM", "io_uring_enter is blocked: a seccomp profile or security module allows io_uring_setup but not io_uring_enter; allow io_uring_enter (and io_uring_register) for this process"),
        libc::EACCES => fatal("EACCES", "io_uring_enter is denied by a security module (SELinux/AppArmor) or seccomp profile; allow io_uring for this process"),
        libc::ENOSYS => fatal("ENOSYS", "io_uring_enter is not available: a seccomp profile filters it out (io_uring_setup worked); allow io_uring_enter for this process"),
        libc::EEXIST => fatal("EEXIST", "the ring was entered from a thread other than its owner (SINGLE_ISSUER / DEFER_TASKRUN): a runtime bug"),
        libc::EBADF | libc::EFAULT | libc::EINVAL | libc::EOPNOTSUPP => fatal("EBADF/EFAULT/EINVAL/EOPNOTSUPP", "the kernel rejected the ring or its arguments: a runtime bug or an unsupported kernel"),
        libc::EOWNERDEAD => fatal("EOWNERDEAD", "the ring's kernel thread died"),
        libc::ENOMEM => fatal("ENOMEM", "the kernel is out of memory for the ring"),
        _ => fatal("unexpected errno", "io_uring_enter failed in an unexpected way"),
    }
}

/// One no-op submitted and waited for: proves `io_uring_enter` works before the server says
/// it is listening (a seccomp profile may allow `io_uring_setup` and block `io_uring_enter`).
pub fn check_enter(ring: &mut IoUring) -> Result<(), RingError> {
    let ud = u64::MAX - 2;
    // SAFETY: a no-op references no memory.
    unsafe { ring.submission().push(&opcode::Nop::new().build().user_data(ud)) }
        .map_err(|_| RingError::Other(io::Error::other("a fresh ring has no free submission slot")))?;
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => break,
            Err(e) => match classify_enter_error(e.raw_os_error().unwrap_or(0)) {
                EnterError::Retry => continue,
                EnterError::Fatal { errno, hint } => return Err(RingError::Enter { errno, error: e, hint }),
            },
        }
    }
    let mut seen = false;
    for cqe in ring.completion() {
        seen |= cqe.user_data() == ud;
    }
    if seen {
        Ok(())
    } else {
        Err(RingError::Other(io::Error::other("io_uring_enter returned without completing a no-op")))
    }
}

/// `IORING_ENTER_GETEVENTS` (the `io-uring` crate keeps its `sys` module private).
const IORING_ENTER_GETEVENTS: u32 = 1;

/// Submits what is queued and reaps what has completed, without sleeping.
///
/// The rule: with `DEFER_TASKRUN` the kernel runs a ring's completion work (the task work
/// that turns a ready socket into a CQE) only inside an `io_uring_enter` that carries
/// `IORING_ENTER_GETEVENTS`. `IoUring::submit()` (= `submit_and_wait(0)`) sets that flag only
/// when the kernel advertises `IORING_SQ_TASKRUN`, which it does only for rings set up with
/// `TASKRUN_FLAG`; so on our `DEFER_TASKRUN` ring a plain `submit()` may leave finished
/// receives and sends unreaped for as long as the loop keeps finding mail. Every pass that
/// must not sleep therefore comes here, which enters with `GETEVENTS` and `min_complete = 0`
/// on such rings: the kernel runs the deferred work and returns at once.
pub fn submit_no_sleep(ring: &IoUring, taskrun: Taskrun) -> io::Result<usize> {
    match taskrun {
        Taskrun::Eager => ring.submit(),
        Taskrun::Defer => {
            // The submission queue's tail was published when the last `submission()` handle
            // was dropped (every push goes through one).
            // SAFETY: no `submission()` handle is alive while `ring` is borrowed shared.
            let to_submit = unsafe { ring.submission_shared().len() } as u32;
            // SAFETY: `to_submit` is the number of published entries; no argument pointer is
            // passed (a null signal mask), with the flag the kernel documents for reaping.
            unsafe { ring.submitter().enter::<libc::sigset_t>(to_submit, 0, IORING_ENTER_GETEVENTS, None) }
        }
    }
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

    #[test]
    fn enter_errors_by_kind() {
        for e in [libc::ETIME, libc::EINTR, libc::EAGAIN, libc::EBUSY] {
            assert_eq!(classify_enter_error(e), EnterError::Retry, "errno {e}");
        }
        for (e, name) in [(libc::EPERM, "EPERM"), (libc::EACCES, "EACCES"), (libc::ENOSYS, "ENOSYS")] {
            match classify_enter_error(e) {
                EnterError::Fatal { errno, hint } => {
                    assert_eq!(errno, name);
                    assert!(hint.contains("seccomp"), "{hint}");
                }
                EnterError::Retry => panic!("{name} must be fatal"),
            }
        }
        for e in [libc::EBADF, libc::EFAULT, libc::EINVAL, libc::EEXIST, libc::ENOMEM, libc::EOWNERDEAD, 9999] {
            assert!(matches!(classify_enter_error(e), EnterError::Fatal { .. }), "errno {e}");
        }
    }

    #[test]
    fn check_enter_passes_on_a_working_ring() {
        let (mut ring, _) = create_with_taskrun(8).unwrap();
        check_enter(&mut ring).unwrap();
        assert_eq!(ring.completion().len(), 0, "the no-op's completion was reaped");
    }

    /// A receive armed on a socketpair completes through deferred task work when the peer
    /// writes; the non-sleeping pass must make its completion visible.
    fn recv_completion_after(pass: impl Fn(&IoUring) -> io::Result<usize>) -> Option<bool> {
        let (ring, taskrun) = create_with_taskrun(8).unwrap();
        if taskrun != Taskrun::Defer {
            return None; // kernel older than 6.1: nothing is deferred
        }
        let mut fds = [0 as RawFd; 2];
        assert_eq!(
            // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr(),) },
            0
        );
        let mut buf = [0u8; 8];
        let e = opcode::Recv::new(types::Fd(fds[0]), buf.as_mut_ptr(), 8).build().user_data(42);
        // SAFETY: `buf` outlives the operation: it completes (or the ring is dropped, which
        // cancels it) before this function returns.
        unsafe { ring.submission_shared().push(&e).unwrap() };
        ring.submit().unwrap();
        assert_eq!(ring.completion_shared_len(), 0, "nothing to receive yet");
        // SAFETY: writing one byte from a valid static buffer to a socket we own.
        assert_eq!(unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) }, 1);
        pass(&ring).unwrap();
        let seen = ring.completion_shared_len() == 1;
        drop(ring);
        // SAFETY: closing the two descriptors we created, after the ring is gone.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        Some(seen)
    }

    trait CqLen {
        fn completion_shared_len(&self) -> usize;
    }
    impl CqLen for IoUring {
        fn completion_shared_len(&self) -> usize {
            // SAFETY: no other completion queue handle is alive in these tests.
            unsafe { self.completion_shared().len() }
        }
    }

    #[test]
    fn non_sleeping_pass_reaps_deferred_completions() {
        let Some(seen) = recv_completion_after(|r| submit_no_sleep(r, Taskrun::Defer)) else {
            eprintln!("DEFER_TASKRUN not supported by this kernel; nothing to check");
            return;
        };
        assert!(seen, "submit_no_sleep must run deferred task work (GETEVENTS)");
        // Why the rule exists: a plain submit() leaves the completion unreaped on this kernel.
        let plain = recv_completion_after(|r| r.submit()).unwrap();
        eprintln!("plain submit() reaped the deferred completion: {plain}");
    }
}
