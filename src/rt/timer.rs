//! Per-worker timers.
//!
//! [`Deadlines`]: at most one deadline per key (a session, a connection), updated in place in
//! an indexed binary heap — O(log n) set, clear and pop, and memory bounded by the number of
//! keys however often a deadline moves. This is the timer every peer-driven deadline uses: a
//! packet moves its owner's deadline, it never adds an entry.
//!
//! [`Fifo`]: a queue for deadlines that all share one delay and are pushed once per owner
//! (never per packet), so they arrive in order and a FIFO is a priority queue.
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

    /// Removes and returns the earliest entry, due or not (eviction before the deadline).
    pub fn pop_front(&mut self) -> Option<(Instant, K)> {
        self.q.pop_front()
    }

    /// Keeps only the entries `keep` accepts (dropping those whose owner went away early).
    pub fn retain(&mut self, mut keep: impl FnMut(Instant, &K) -> bool) {
        self.q.retain(|(t, k)| keep(*t, k));
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}

/// One deadline per key, keys being small integers (slot indices), in an indexed min-heap.
#[derive(Debug, Default)]
pub struct Deadlines {
    heap: Vec<(Instant, u32)>,
    /// Position in `heap` of each key, `NONE` when it has no deadline.
    pos: Vec<u32>,
}

const NONE: u32 = u32::MAX;

impl Deadlines {
    /// Sets (or moves) the deadline of `key`.
    pub fn set(&mut self, key: u32, at: Instant) {
        let k = key as usize;
        if k >= self.pos.len() {
            self.pos.resize(k + 1, NONE);
        }
        match self.pos[k] {
            NONE => {
                self.heap.push((at, key));
                self.pos[k] = (self.heap.len() - 1) as u32;
                self.up(self.heap.len() - 1);
            }
            p => {
                let p = p as usize;
                let old = self.heap[p].0;
                self.heap[p].0 = at;
                if at < old {
                    self.up(p);
                } else {
                    self.down(p);
                }
            }
        }
    }

    /// Removes the deadline of `key`, if any.
    pub fn clear(&mut self, key: u32) {
        let Some(&p) = self.pos.get(key as usize) else {
            return;
        };
        if p == NONE {
            return;
        }
        self.remove_at(p as usize);
    }

    /// The deadline of `key`.
    pub fn get(&self, key: u32) -> Option<Instant> {
        match self.pos.get(key as usize) {
            Some(&p) if p != NONE => Some(self.heap[p as usize].0),
            _ => None,
        }
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.heap.first().map(|e| e.0)
    }

    /// Removes and returns a key whose deadline is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<u32> {
        let &(at, key) = self.heap.first()?;
        if at > now {
            return None;
        }
        self.remove_at(0);
        Some(key)
    }

    /// Keys with a deadline.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no deadline is set.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    fn remove_at(&mut self, p: usize) {
        let last = self.heap.len() - 1;
        self.swap(p, last);
        let (_, key) = self.heap.pop().expect("not empty");
        self.pos[key as usize] = NONE;
        if p < self.heap.len() {
            self.down(p);
            self.up(p);
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].1 as usize] = a as u32;
        self.pos[self.heap[b].1 as usize] = b as u32;
    }

    fn up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i].0 >= self.heap[parent].0 {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut m = i;
            if l < self.heap.len() && self.heap[l].0 < self.heap[m].0 {
                m = l;
            }
            if r < self.heap.len() && self.heap[r].0 < self.heap[m].0 {
                m = r;
            }
            if m == i {
                break;
            }
            self.swap(i, m);
            i = m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn a_moved_deadline_is_one_entry() {
        let t = Instant::now();
        let mut d = Deadlines::default();
        for i in 0..10_000u64 {
            d.set(7, t + Duration::from_millis(i));
        }
        assert_eq!(d.len(), 1);
        assert_eq!(d.pop_due(t + Duration::from_secs(5)), None);
        assert_eq!(d.pop_due(t + Duration::from_secs(10)), Some(7));
        assert!(d.is_empty());
    }

    proptest! {
        /// Against a model: after any sequence of sets and clears, keys pop in deadline order
        /// and each key at most once.
        #[test]
        fn pops_in_order_like_a_model(ops in proptest::collection::vec((0u32..40, 0u64..1000, any::<bool>()), 0..300)) {
            let t = Instant::now();
            let mut d = Deadlines::default();
            let mut model = std::collections::BTreeMap::new();
            for (k, ms, clear) in ops {
                if clear {
                    d.clear(k);
                    model.remove(&k);
                } else {
                    d.set(k, t + Duration::from_millis(ms));
                    model.insert(k, ms);
                }
                prop_assert_eq!(d.len(), model.len());
                prop_assert_eq!(d.get(k), model.get(&k).map(|ms| t + Duration::from_millis(*ms)));
            }
            let mut last = 0;
            while let Some(k) = d.pop_due(t + Duration::from_secs(10)) {
                let ms = model.remove(&k).expect("popped once");
                prop_assert!(ms >= last);
                last = ms;
            }
            prop_assert!(model.is_empty());
        }
    }

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
