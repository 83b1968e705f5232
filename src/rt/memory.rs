//! The process memory guard behind `--max-memory`: every worker samples the process's resident
//! memory at most every [`CHECK_EVERY`] of its clock; past the limit the process is overloaded
//! (new connections are refused with the protocol's answer) and each worker sheds its largest
//! holders, a few per check, until resident memory is back under 90% of the limit. Crossing
//! the limit either way is logged once; sheds are counted in the worker's `Stats`, logged
//! with its other cuts once per interval.
//!
//! Must never: shed without a limit set, or log per event.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a worker samples resident memory.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Connections a worker sheds per check while over the limit.
pub const SHED_PER_CHECK: usize = 8;

/// Reads the process's resident memory in bytes.
pub type Probe = Arc<dyn Fn() -> usize + Send + Sync>;

/// Resident memory from `/proc/self/statm` (0 when it cannot be read).
pub fn resident_bytes() -> usize {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else { return 0 };
    let pages: usize = s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(4096) as usize
}

/// One worker's view of the process memory limit.
#[derive(Clone)]
pub struct MemoryGuard {
    limit: Option<usize>,
    probe: Probe,
    /// Shared by every worker: the process is over its limit.
    overloaded: Arc<AtomicBool>,
    next_check: Option<Instant>,
}

impl MemoryGuard {
    /// A guard for `limit` bytes of resident memory (none: never overloaded), read by `probe`,
    /// sharing `overloaded` with the other workers.
    pub fn new(limit: Option<usize>, probe: Probe, overloaded: Arc<AtomicBool>) -> Self {
        MemoryGuard { limit, probe, overloaded, next_check: None }
    }

    /// No limit.
    pub fn unlimited() -> Self {
        Self::new(None, Arc::new(resident_bytes), Arc::new(AtomicBool::new(false)))
    }

    /// Whether the process is over its limit (re-sampled when the last sample is stale).
    pub fn overloaded(&mut self, now: Instant) -> bool {
        if self.limit.is_some() && self.next_check.is_none_or(|t| now >= t) {
            self.sample(now);
        }
        self.overloaded.load(Ordering::Relaxed)
    }

    /// Samples when due; returns how many connections this worker should shed now.
    pub fn check(&mut self, now: Instant) -> usize {
        if self.limit.is_none() || self.next_check.is_some_and(|t| now < t) {
            return 0;
        }
        if self.sample(now) {
            SHED_PER_CHECK
        } else {
            0
        }
    }

    fn sample(&mut self, now: Instant) -> bool {
        let Some(limit) = self.limit else { return false };
        self.next_check = Some(now + CHECK_EVERY);
        let rss = (self.probe)();
        let was = self.overloaded.load(Ordering::Relaxed);
        let over = if was { rss > limit / 10 * 9 } else { rss > limit };
        if over != was {
            self.overloaded.store(over, Ordering::Relaxed);
            if over {
                tracing::warn!(rss, limit, "over --max-memory: refusing new connections and shedding the largest holders");
            } else {
                tracing::info!(rss, limit, "back under --max-memory: accepting again");
            }
        }
        over
    }

    /// The next instant this guard wants to sample (so an idle worker still checks).
    pub fn next_check(&self) -> Option<Instant> {
        if self.overloaded.load(Ordering::Relaxed) {
            self.next_check
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn overload_has_hysteresis_and_samples_at_most_every_interval() {
        let rss = Arc::new(AtomicUsize::new(50));
        let r = rss.clone();
        let mut g = MemoryGuard::new(Some(100), Arc::new(move || r.load(Ordering::Relaxed)), Arc::new(AtomicBool::new(false)));
        let t = Instant::now();
        assert_eq!(g.check(t), 0);
        rss.store(150, Ordering::Relaxed);
        assert_eq!(g.check(t + Duration::from_millis(100)), 0, "not sampled again within the interval");
        assert_eq!(g.check(t + CHECK_EVERY), SHED_PER_CHECK);
        assert!(g.overloaded(t + CHECK_EVERY));
        rss.store(95, Ordering::Relaxed);
        assert_eq!(g.check(t + CHECK_EVERY * 2), SHED_PER_CHECK, "still over 90% of the limit");
        rss.store(80, Ordering::Relaxed);
        assert_eq!(g.check(t + CHECK_EVERY * 3), 0);
        assert!(!g.overloaded(t + CHECK_EVERY * 3));
    }

    #[test]
    fn reads_this_process() {
        assert!(resident_bytes() > 1 << 20);
    }
}
