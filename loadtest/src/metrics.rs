//! What a run measures: delivery counters, per-second throughput, latency histograms (merged
//! from every thread), and CPU time and memory of this process and of the server (`/proc`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;

/// Counters shared by every client task.
pub struct Counters {
    pub start: Instant,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub connected: AtomicU64,
    pub errors: AtomicU64,
    pub closed: AtomicU64,
    /// Deliveries per second since `start`.
    pub per_second: Vec<AtomicU64>,
}

impl Counters {
    pub fn new(seconds: usize) -> Counters {
        Counters {
            start: Instant::now(),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            per_second: (0..seconds + 30).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Nanoseconds since the run started (the clock payload timestamps use).
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn delivered(&self) {
        self.delivered_n(1);
    }

    /// Counts an error; the first one is printed (the rest are only counted).
    pub fn error(&self, e: &dyn std::fmt::Display) {
        if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("first error: {e}");
        }
    }

    /// Counts `n` deliveries at once (one batch of frames from one read).
    pub fn delivered_n(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.received.fetch_add(n, Ordering::Relaxed);
        let s = self.start.elapsed().as_secs() as usize;
        if let Some(c) = self.per_second.get(s) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// A latency histogram in microseconds, 1 µs to 100 s.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

/// CPU time (user + system) in microseconds and resident memory in bytes of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub cpu_us: u64,
    pub rss: u64,
}

/// Samples `/proc/<pid>` (`None` if the process is gone).
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf with a valid name has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(ProcSample { cpu_us: ticks * 1_000_000 / hz, rss: rss_kb * 1024 })
}

/// This process's CPU time in microseconds (finer than /proc ticks).
pub fn own_cpu_us() -> u64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        let t = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
        t(u.ru_utime) + t(u.ru_stime)
    }
}

/// Raises the open-file limit to the hard limit (for many connections).
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        r.rlim_cur
    }
}
