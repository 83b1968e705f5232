//! A generational arena: values in reusable slots, named by copyable [`Handle`]s that carry the
//! slot's generation, so a handle to a value that is gone (and whose slot was reused) is
//! recognised as stale instead of reaching the new value.
//!
//! Owns: slot reuse and generations. It is the one slab of the crate: the runtime's
//! connections, the engine's sessions and the Socket.IO layer's sockets live in one.
//!
//! Must never: hand out a value through a stale handle.

/// A slot index and the generation it was filled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle {
    /// The slot.
    pub idx: u32,
    /// The slot's generation when the value was inserted (24 bits are significant).
    pub gen: u32,
}

/// Generations wrap at 24 bits so a handle fits the runtime's completion tags.
pub const GEN_MASK: u32 = 0xff_ffff;

struct Slot<T> {
    gen: u32,
    value: Option<T>,
}

/// Values in reusable slots.
pub struct Arena<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Arena<T> {
    fn default() -> Self {
        Arena { slots: Vec::new(), free: Vec::new(), len: 0 }
    }
}

impl<T> Arena<T> {
    /// Stores `value` in a free slot (or a new one) and returns its handle.
    pub fn insert(&mut self, value: T) -> Handle {
        self.insert_with(|_| value)
    }

    /// Stores the value `make` builds from its own handle.
    pub fn insert_with(&mut self, make: impl FnOnce(Handle) -> T) -> Handle {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { gen: 0, value: None });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[idx as usize];
        slot.gen = slot.gen.wrapping_add(1) & GEN_MASK;
        let h = Handle { idx, gen: slot.gen };
        slot.value = Some(make(h));
        self.len += 1;
        h
    }

    /// The value of a live handle.
    pub fn get(&self, h: Handle) -> Option<&T> {
        self.slots.get(h.idx as usize).filter(|s| s.gen == h.gen & GEN_MASK)?.value.as_ref()
    }

    /// The value of a live handle, mutably.
    pub fn get_mut(&mut self, h: Handle) -> Option<&mut T> {
        self.slots.get_mut(h.idx as usize).filter(|s| s.gen == h.gen & GEN_MASK)?.value.as_mut()
    }

    /// The value in slot `idx`, whatever its generation (for callers that keep the generation
    /// themselves, or hold only live slots).
    pub fn get_at(&self, idx: u32) -> Option<&T> {
        self.slots.get(idx as usize)?.value.as_ref()
    }

    /// The value in slot `idx`, mutably, whatever its generation.
    pub fn get_at_mut(&mut self, idx: u32) -> Option<&mut T> {
        self.slots.get_mut(idx as usize)?.value.as_mut()
    }

    /// The live handle of slot `idx`, if it holds a value.
    pub fn handle_at(&self, idx: u32) -> Option<Handle> {
        self.slots.get(idx as usize).filter(|s| s.value.is_some()).map(|s| Handle { idx, gen: s.gen })
    }

    /// Removes and returns the value of a live handle; its slot is reused later with a new
    /// generation.
    pub fn remove(&mut self, h: Handle) -> Option<T> {
        let slot = self.slots.get_mut(h.idx as usize).filter(|s| s.gen == h.gen & GEN_MASK)?;
        let v = slot.value.take()?;
        self.free.push(h.idx);
        self.len -= 1;
        Some(v)
    }

    /// Live values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no value is live.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every live handle.
    pub fn handles(&self) -> Vec<Handle> {
        self.iter().map(|(h, _)| h).collect()
    }

    /// Every live value with its handle.
    pub fn iter(&self) -> impl Iterator<Item = (Handle, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| s.value.as_ref().map(|v| (Handle { idx: i as u32, gen: s.gen }, v)))
    }

    /// Every live value with its handle, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Handle, &mut T)> {
        self.slots.iter_mut().enumerate().filter_map(|(i, s)| s.value.as_mut().map(|v| (Handle { idx: i as u32, gen: s.gen }, v)))
    }

    /// Removes every value.
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.len);
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(v) = s.value.take() {
                out.push(v);
                self.free.push(i as u32);
            }
        }
        self.len = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_handles_miss_reused_slots() {
        let mut a = Arena::default();
        let h1 = a.insert("one");
        assert_eq!(a.remove(h1), Some("one"));
        let h2 = a.insert("two");
        assert_eq!(h1.idx, h2.idx, "the slot is reused");
        assert_eq!(a.get(h1), None);
        assert_eq!(a.remove(h1), None);
        assert_eq!(a.get(h2), Some(&"two"));
        assert_eq!(a.len(), 1);
        assert_eq!(a.handle_at(h2.idx), Some(h2));
    }

    #[test]
    fn generations_wrap_within_the_tag_width() {
        let mut a = Arena::default();
        let mut h = a.insert(0);
        for i in 0..(GEN_MASK as usize + 5) {
            a.remove(h);
            h = a.insert(i);
            assert!(h.gen <= GEN_MASK);
        }
        assert_eq!(a.len(), 1);
    }
}
