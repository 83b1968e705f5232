//! Waiting for SIGINT or SIGTERM from a library user's program, whatever threads it runs.
//!
//! The binary blocks both signals before starting any thread and `sigwait`s for them; a
//! library user may already run threads of their own (where the signals are not blocked, so
//! the kernel could deliver them there and kill the process). So here a handler is installed
//! for the duration of the wait instead: it writes the signal number to a pipe (`write` is
//! async-signal-safe) and the waiting thread reads it. The previous dispositions are restored
//! afterwards. With a SIGHUP callback (TLS on: reload the certificate), SIGHUP is caught too
//! and runs the callback on the waiting thread, and the wait goes on.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

/// The write end of the pipe the handler writes to (-1 when nobody waits).
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
/// One waiter at a time (the pipe and the dispositions are process-wide).
static WAITING: Mutex<()> = Mutex::new(());

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE_WRITE.load(Ordering::Acquire);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; `b` lives for the call. A failed write (a full
        // pipe after many signals) loses nothing: one byte already wakes the waiter.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

/// SIGINT and SIGTERM caught from [`Termination::catch`] until this is dropped (the previous
/// dispositions then come back). Catch before announcing that the program serves, so a
/// signal sent right after the announcement is never met by the default action.
pub struct Termination {
    read_fd: libc::c_int,
    write_fd: libc::c_int,
    old: [libc::sigaction; 3],
    /// How many of [`SIGNALS`] are caught: 2, or 3 with SIGHUP.
    caught: usize,
    _one: std::sync::MutexGuard<'static, ()>,
}

/// SIGINT and SIGTERM, then SIGHUP (caught only with [`Termination::catch_with_hup`]).
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

impl Termination {
    /// Starts catching SIGINT and SIGTERM (one `Termination` at a time in a process: a second
    /// waits for the first to be dropped).
    pub fn catch() -> std::io::Result<Termination> {
        Self::catch_with_hup(false)
    }

    /// Like [`catch`](Self::catch); with `hup`, SIGHUP is caught too (for
    /// [`wait_or_hup`](Self::wait_or_hup)).
    pub fn catch_with_hup(hup: bool) -> std::io::Result<Termination> {
        let caught = if hup { 3 } else { 2 };
        let one = WAITING.lock().unwrap_or_else(|e| e.into_inner());
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let [read_fd, write_fd] = fds;
        PIPE_WRITE.store(write_fd, Ordering::Release);
        // SAFETY: zeroed `sigaction`s are valid values; filled by sigaction below.
        let mut old: [libc::sigaction; 3] = unsafe { std::mem::zeroed() };
        for (sig, old) in SIGNALS[..caught].iter().zip(old.iter_mut()) {
            // SAFETY: `action` is zero-initialised then filled; `old` receives the previous
            // disposition, restored on drop; `on_signal` only calls async-signal-safe functions.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(*sig, &action, old);
            }
        }
        Ok(Termination { read_fd, write_fd, old, caught, _one: one })
    }

    /// Blocks the calling thread until SIGINT or SIGTERM arrives (or arrived since
    /// [`catch`](Self::catch)); returns which.
    pub fn wait(self) -> std::io::Result<i32> {
        self.wait_or_hup(None)
    }

    /// Like [`wait`](Self::wait); each SIGHUP meanwhile (caught with
    /// [`catch_with_hup`](Self::catch_with_hup)) calls `on_hup` on this thread, and the wait
    /// goes on.
    pub fn wait_or_hup(self, mut on_hup: Option<&mut dyn FnMut()>) -> std::io::Result<i32> {
        let mut b = 0u8;
        loop {
            // SAFETY: reads one byte into `b` from the pipe this value owns.
            let n = unsafe { libc::read(self.read_fd, (&mut b as *mut u8).cast(), 1) };
            if n == 1 {
                if i32::from(b) == libc::SIGHUP {
                    if let Some(f) = on_hup.as_mut() {
                        f();
                    }
                    continue;
                }
                return Ok(i32::from(b));
            }
            let e = std::io::Error::last_os_error();
            if n < 0 && e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
    }
}

impl Drop for Termination {
    fn drop(&mut self) {
        for (sig, old) in SIGNALS[..self.caught].iter().zip(self.old.iter()) {
            // SAFETY: restores the disposition saved by `catch`.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
        PIPE_WRITE.store(-1, Ordering::Release);
        // SAFETY: both descriptors were opened by `catch` and nothing else uses them now.
        unsafe {
            libc::close(self.read_fd);
            libc::close(self.write_fd);
        }
    }
}

/// Blocks the calling thread until the process receives SIGINT or SIGTERM; returns which.
/// A signal that arrives before this call is met by its previous disposition: use
/// [`Termination::catch`] before announcing that the program serves.
pub fn wait_for_termination() -> std::io::Result<i32> {
    Termination::catch()?.wait()
}

/// Like [`wait_for_termination`]; with `on_hup`, each SIGHUP meanwhile calls it (on this
/// thread, not in the signal handler).
pub fn wait_for_termination_or_hup(on_hup: Option<&mut dyn FnMut()>) -> std::io::Result<i32> {
    Termination::catch_with_hup(on_hup.is_some())?.wait_or_hup(on_hup)
}

#[cfg(test)]
mod tests {
    /// The handler address installed for `sig` (`SIG_DFL`, `SIG_IGN` or a function).
    fn disposition(sig: libc::c_int) -> libc::sighandler_t {
        // SAFETY: queries the disposition into a zeroed struct.
        unsafe {
            let mut cur: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, std::ptr::null(), &mut cur);
            cur.sa_sigaction
        }
    }

    #[test]
    fn sigterm_wakes_the_waiter_and_the_previous_disposition_comes_back() {
        // What the test runner inherited (SIG_DFL, or SIG_IGN for SIGHUP under `nohup`) is
        // what must come back after each wait.
        let (term_before, hup_before) = (disposition(libc::SIGTERM), disposition(libc::SIGHUP));
        let handled = |sig| {
            let now = disposition(sig);
            now != libc::SIG_DFL && now != libc::SIG_IGN
        };
        let waiter = std::thread::spawn(super::wait_for_termination);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !handled(libc::SIGTERM) {
            assert!(std::time::Instant::now() < deadline, "the handler was never installed");
            std::thread::yield_now();
        }
        // SAFETY: signals this process; the handler installed above catches it.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        assert_eq!(waiter.join().unwrap().unwrap(), libc::SIGTERM);
        assert_eq!(disposition(libc::SIGTERM), term_before);

        // With a SIGHUP callback (in the same test: the two waits must not overlap, each
        // signals the whole process): SIGHUP runs it and the wait goes on until SIGTERM.
        let hups = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hups.clone();
        let waiter = std::thread::spawn(move || {
            let mut on_hup = || {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            };
            super::wait_for_termination_or_hup(Some(&mut on_hup))
        });
        while !(handled(libc::SIGHUP) && handled(libc::SIGTERM)) {
            assert!(std::time::Instant::now() < deadline + std::time::Duration::from_secs(5), "the handlers were never installed");
            std::thread::yield_now();
        }
        // SAFETY: signals this process; the handler installed above catches it.
        unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
        while hups.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline + std::time::Duration::from_secs(10), "SIGHUP never ran the callback");
            std::thread::yield_now();
        }
        assert!(!waiter.is_finished(), "SIGHUP does not end the wait");
        // SAFETY: as above.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        assert_eq!(waiter.join().unwrap().unwrap(), libc::SIGTERM);
        assert_eq!(hups.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(disposition(libc::SIGHUP), hup_before);
        assert_eq!(disposition(libc::SIGTERM), term_before);
    }
}
