//! Deadline queues for the per-worker timers.
//!
//! Every timer of one kind has the same delay (all sessions share one ping interval, one ping
//! timeout, one upgrade timeout), so deadlines arrive in order and a FIFO is a priority queue:
//! O(1) push and pop. Stale entries (the session moved on) are skipped by the owner, which
//! re-checks its own state when an entry fires.
//!
//! Must never: read the clock itself.

use std::collections::VecDeque;
use std::time::Instant;

#[derive(Debug)]
pub struct Fifo<K> {
    q: VecDeque<(Instant, K)>,
}

impl<K> Default for Fifo<K> {
    fn default() -> Self {
        Fifo { q: VecDeque::new() }
    }
}

impl<K> Fifo<K> {
    /// Adds a deadline. Deadlines of one queue are expected in order; one that is earlier than
    /// the last is inserted in place (rare: only if the delay changed).
    pub fn push(&mut self, at: Instant, key: K) {
        if self.q.back().is_none_or(|(t, _)| *t <= at) {
            self.q.push_back((at, key));
        } else {
            let pos = self.q.partition_point(|(t, _)| *t <= at);
            self.q.insert(pos, (at, key));
        }
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.q.front().map(|(t, _)| *t)
    }

    /// Removes and returns one entry due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        if self.q.front().is_some_and(|(t, _)| *t <= now) {
            self.q.pop_front().map(|(_, k)| k)
        } else {
            None
        }
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fifo_pops_in_deadline_order() {
        let t = Instant::now();
        let mut f = Fifo::default();
        f.push(t + Duration::from_millis(10), 1);
        f.push(t + Duration::from_millis(20), 2);
        f.push(t + Duration::from_millis(15), 3);
        assert_eq!(f.next(), Some(t + Duration::from_millis(10)));
        assert_eq!(f.pop_due(t + Duration::from_millis(16)), Some(1));
        assert_eq!(f.pop_due(t + Duration::from_millis(16)), Some(3));
        assert_eq!(f.pop_due(t + Duration::from_millis(16)), None);
        assert_eq!(f.len(), 1);
    }
}
