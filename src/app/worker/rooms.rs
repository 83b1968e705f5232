//! This worker's shard of the room table: for each namespace with a socket here, its members
//! and its rooms; joining and leaving (within [`SocketLimits`]); and selection, which turns a
//! [`Selector`] into the slots of the matching local sockets, each once.
//!
//! Namespace and room names are chosen by clients, so these maps hash with per-map random keys
//! ([`KeyedMap`]); the member sets hold slot numbers this worker chose, so they use Fx.
//!
//! Must never: call user code, send anything, or look at another worker's sockets.

use std::rc::Rc;

use rustc_hash::FxHashSet;

use super::mail::Selector;
use super::{KeyedMap, WorkerCore};
use crate::app::limits::{JoinError, SocketLimits};

/// One namespace on this worker.
#[derive(Default)]
pub(crate) struct NsState {
    pub(crate) members: FxHashSet<u32>,
    pub(crate) rooms: KeyedMap<Rc<str>, FxHashSet<u32>>,
}

/// The namespaces with a socket on this worker.
#[derive(Default)]
pub(crate) struct Rooms {
    pub(crate) nsps: KeyedMap<Rc<str>, NsState>,
}

impl Rooms {
    /// The shared name of `nsp` (one allocation per namespace, not per socket).
    pub(crate) fn intern(&self, nsp: &str) -> Rc<str> {
        self.nsps.get_key_value(nsp).map_or_else(|| Rc::from(nsp), |(k, _)| k.clone())
    }

    pub(crate) fn add_member(&mut self, nsp: &Rc<str>, idx: u32) {
        self.nsps.entry(nsp.clone()).or_default().members.insert(idx);
    }

    pub(crate) fn remove_member(&mut self, nsp: &str, idx: u32) {
        if let Some(ns) = self.nsps.get_mut(nsp) {
            ns.members.remove(&idx);
            if ns.members.is_empty() && ns.rooms.is_empty() {
                self.nsps.remove(nsp);
            }
        }
    }
}

/// Whether a socket already in `count` rooms may join one named `room`.
pub(crate) fn check_join(limits: &SocketLimits, count: usize, room: &str) -> Result<(), JoinError> {
    if room.len() > limits.max_room_name_len {
        return Err(JoinError::NameTooLong { max: limits.max_room_name_len });
    }
    if count >= limits.max_rooms {
        return Err(JoinError::TooManyRooms { max: limits.max_rooms });
    }
    Ok(())
}

impl WorkerCore {
    /// Socket `idx` joins `room`; already being in it is no error.
    pub(crate) fn join(&mut self, idx: u32, room: &str) -> Result<(), JoinError> {
        let s = self.sockets.at_mut(idx);
        if s.rooms.contains(room) {
            return Ok(());
        }
        check_join(&self.limits, s.rooms.len(), room)?;
        let room: Rc<str> = Rc::from(room);
        s.rooms.insert(room.clone());
        let ns = self.rooms.nsps.entry(s.nsp.clone()).or_default();
        let members = ns.rooms.entry(room.clone()).or_default();
        let created = members.is_empty();
        members.insert(idx);
        if created {
            // A cluster adapter that subscribes per room hears of it (never on a broadcast).
            if let Some(c) = &self.cluster {
                c.room_changed(&s.nsp, &room, true);
            }
        }
        Ok(())
    }

    /// Socket `idx` leaves `room` (if it is in it).
    pub(crate) fn leave(&mut self, idx: u32, room: &str) {
        let s = self.sockets.at_mut(idx);
        if !s.rooms.remove(room) {
            return;
        }
        if let Some(ns) = self.rooms.nsps.get_mut(&s.nsp) {
            if let Some(set) = ns.rooms.get_mut(room) {
                set.remove(&idx);
                if set.is_empty() {
                    ns.rooms.remove(room);
                    // A socket's own room was never announced (it is not joined through `join`).
                    if let (Some(c), false) = (&self.cluster, *s.id == *room) {
                        c.room_changed(&s.nsp, room, false);
                    }
                }
            }
        }
    }

    /// The slots of this worker's sockets a selector picks, each once. Sockets that left or
    /// are leaving their namespace are never picked.
    pub(crate) fn select(&mut self, sel: &Selector) -> Vec<u32> {
        let Some(ns) = self.rooms.nsps.get(sel.nsp.as_str()) else { return Vec::new() };
        let stamp = self.sockets.next_stamp();
        let mut out = Vec::new();
        let slots = self.sockets.slots_mut();
        let mut visit = |idx: u32| {
            let Some(s) = slots.get_at_mut(idx) else { return };
            if s.stamp == stamp || !s.connected || s.leaving {
                return;
            }
            s.stamp = stamp;
            if sel.except_rooms.iter().any(|r| s.rooms.contains(r.as_str())) || sel.except_ids.iter().any(|i| **i == *s.id) {
                return;
            }
            out.push(idx);
        };
        if sel.rooms.is_empty() {
            ns.members.iter().for_each(|&i| visit(i));
        } else {
            for r in &sel.rooms {
                if let Some(set) = ns.rooms.get(r.as_str()) {
                    set.iter().for_each(|&i| visit(i));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn room_maps_are_keyed_per_instance() {
        // HashDoS: with an unkeyed hasher (Fx) the same name hashes the same in every map, so
        // a client can precompute names that collide on every worker. Keyed maps differ.
        let a = Rooms::default();
        let b = Rooms::default();
        let ns_a = NsState::default();
        let ns_b = NsState::default();
        let names = ["room", "r1", "r2", "a-much-longer-room-name", ""];
        let differs = |x: &std::hash::RandomState, y: &std::hash::RandomState| names.iter().any(|n| x.hash_one(n) != y.hash_one(n));
        assert!(differs(a.nsps.hasher(), b.nsps.hasher()), "namespace maps share a key");
        assert!(differs(ns_a.rooms.hasher(), ns_b.rooms.hasher()), "room maps share a key");
        // Across threads (one worker per thread), too.
        let other = std::thread::spawn(move || {
            let r = Rooms::default();
            names.map(|n| r.nsps.hasher().hash_one(n))
        })
        .join()
        .unwrap();
        assert_ne!(names.map(|n| a.nsps.hasher().hash_one(n)), other);
    }

    #[test]
    fn joins_past_the_limits_are_refused() {
        let limits = SocketLimits { max_rooms: 2, max_room_name_len: 4, ..SocketLimits::default() };
        assert_eq!(check_join(&limits, 1, "abcd"), Ok(()));
        assert_eq!(check_join(&limits, 2, "a"), Err(JoinError::TooManyRooms { max: 2 }));
        assert_eq!(check_join(&limits, 0, "abcde"), Err(JoinError::NameTooLong { max: 4 }));
    }
}
