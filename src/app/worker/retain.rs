//! This worker's part of connection state recovery (see [`crate::app::recovery`]): the log of
//! the recoverable packets it delivered, in its delivery order, and the sockets that left it
//! for a transport reason, each kept for the recovery window; restoring one of them, for a
//! client that came back here or on another worker (which asks by mail).
//!
//! Bounded: the log holds at most this worker's share of the server's packet and byte caps
//! (the oldest go first) and nothing older than the window; a kept socket holds what it held
//! connected (rooms within `SocketLimits`, its data), for the window.
//!
//! Must never: call user code (a kept socket's data is dropped under the guard by the caller),
//! answer a restore with packets after a gap, or touch another worker's store.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use rustc_hash::FxHashMap;

use super::mail::{Broadcast, Selector};
use super::KeyedMap;
use crate::app::recovery::{parse_offset, Recovery};
use crate::proto::sio::Encoded;
use crate::rt::timer::Fifo;

/// How late the timer may drop expired entries (see [`Store::next_deadline`]).
const EXPIRY_SLACK: std::time::Duration = std::time::Duration::from_secs(1);

/// One kept packet.
struct Entry {
    offset: u64,
    at: Instant,
    bytes: usize,
    packet: Arc<Broadcast>,
}

/// A socket that left, kept for its client to come back.
pub(crate) struct Kept {
    pub(crate) id: String,
    pub(crate) nsp: String,
    pub(crate) rooms: Vec<String>,
    pub(crate) data: Option<Box<dyn Any + Send>>,
    pub(crate) at: Instant,
}

/// What a restore hands to the worker the client came back on.
pub struct Restored {
    pub(crate) id: String,
    pub(crate) pid: String,
    pub(crate) rooms: Vec<String>,
    pub(crate) data: Option<Box<dyn Any + Send>>,
    /// Every kept packet after the client's offset that its rooms select, in order.
    pub(crate) missed: Vec<Encoded>,
}

/// Counters of recovery, for the worker's stats.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Packets kept now, and their bytes.
    pub kept_packets: u64,
    /// Bytes of the packets kept now.
    pub kept_bytes: u64,
    /// Sockets kept now.
    pub kept_sockets: u64,
    /// Packets dropped before the window ended, to stay within the caps.
    pub evicted_packets: u64,
    /// Clients recovered (served by this worker's store).
    pub recovered: u64,
    /// Clients that came to this worker asking to recover and could not (unknown or expired
    /// pid, offset no longer kept).
    pub not_recovered: u64,
}

/// The store.
pub(crate) struct Store {
    pub(crate) shared: Arc<Recovery>,
    max_packets: usize,
    max_bytes: usize,
    log: VecDeque<Entry>,
    /// Offset to its position: `seq - first_seq` indexes `log`.
    seqs: FxHashMap<u64, u64>,
    first_seq: u64,
    bytes: usize,
    /// Kept sockets by pid (a string the client sends back: keyed hashing).
    kept: KeyedMap<String, Kept>,
    kept_due: Fifo<String>,
    pub(crate) stats: RecoveryStats,
}

impl Store {
    pub(crate) fn new(shared: Arc<Recovery>, workers: usize) -> Store {
        let workers = workers.max(1);
        let cfg = shared.cfg;
        Store {
            shared,
            max_packets: (cfg.max_packets / workers).max(1),
            max_bytes: (cfg.max_bytes / workers).max(1),
            log: VecDeque::new(),
            seqs: FxHashMap::default(),
            first_seq: 0,
            bytes: 0,
            kept: KeyedMap::default(),
            kept_due: Fifo::default(),
            stats: RecoveryStats::default(),
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.log.pop_front() {
            self.seqs.remove(&e.offset);
            self.first_seq += 1;
            self.bytes -= e.bytes;
        }
    }

    /// Keeps a delivered packet (it has an offset), dropping the oldest past the caps.
    pub(crate) fn log(&mut self, now: Instant, packet: Arc<Broadcast>, offset: u64) {
        let bytes = packet.packet.packets().map(|p| p.ws_frame().len()).sum();
        gone_quietly(self.expire(now));
        while !self.log.is_empty() && (self.log.len() + 1 > self.max_packets || self.bytes + bytes > self.max_bytes) {
            self.pop_front();
            self.stats.evicted_packets += 1;
        }
        let seq = self.first_seq + self.log.len() as u64;
        self.seqs.insert(offset, seq);
        self.bytes += bytes;
        self.log.push_back(Entry { offset, at: now, bytes, packet });
        self.count();
    }

    fn count(&mut self) {
        self.stats.kept_packets = self.log.len() as u64;
        self.stats.kept_bytes = self.bytes as u64;
        self.stats.kept_sockets = self.kept.len() as u64;
    }

    /// Drops the packets and sockets older than the window; returns the sockets dropped (their
    /// data is user code to drop).
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Kept> {
        let window = self.shared.cfg.window;
        while self.log.front().is_some_and(|e| e.at + window <= now) {
            self.pop_front();
        }
        let mut gone = Vec::new();
        while let Some(pid) = self.kept_due.pop_due(now) {
            // The same pid may have been restored and kept again since: check its own time.
            if self.kept.get(&pid).is_some_and(|k| k.at + window <= now) {
                gone.extend(self.kept.remove(&pid));
            }
        }
        self.count();
        gone
    }

    /// When the store next wants its expired entries dropped: at most once a second
    /// ([`EXPIRY_SLACK`] after the oldest expires), not once per packet — what expired is never
    /// served anyway (a restore expires first, exactly) and appending trims the log too.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let window = self.shared.cfg.window;
        [self.log.front().map(|e| e.at + window), self.kept_due.next()].into_iter().flatten().min().map(|t| t + EXPIRY_SLACK)
    }

    /// Keeps a socket that left; gives back one it replaced (same pid), whose data is user
    /// code to drop.
    pub(crate) fn keep(&mut self, pid: String, k: Kept) -> Option<Kept> {
        self.kept_due.push(k.at + self.shared.cfg.window, pid.clone());
        let old = self.kept.insert(pid, k);
        self.count();
        old
    }

    /// Takes the socket kept under `pid` with every packet after `offset` its rooms select,
    /// if the client may recover: known pid in namespace `nsp`, within the window, offset
    /// still kept. A socket that cannot recover is forgotten; its state is given back to drop.
    pub(crate) fn restore(&mut self, now: Instant, pid: &str, nsp: &str, offset: &str) -> Result<Restored, Option<Kept>> {
        gone_quietly(self.expire(now));
        // Unknown here: the caller asks the other workers, and counts a miss once.
        let Some(k) = self.kept.remove(pid) else { return Err(None) };
        self.count();
        let pos = parse_offset(offset).and_then(|o| self.seqs.get(&o)).map(|seq| (seq - self.first_seq) as usize);
        let Some(pos) = pos.filter(|_| k.nsp == nsp) else { return Err(Some(k)) };
        let missed = self.log.iter().skip(pos + 1).filter(|e| selects(&e.packet.sel, &k)).map(|e| e.packet.packet.clone()).collect();
        self.stats.recovered += 1;
        Ok(Restored { id: k.id, pid: pid.to_string(), rooms: k.rooms, data: k.data, missed })
    }
}

/// Sockets whose data must be dropped under the guard (user values).
fn gone_quietly(gone: Vec<Kept>) {
    if !gone.is_empty() {
        super::guard::drop_quietly(gone);
    }
}

/// Whether a kept packet's selector picks the kept socket (Node's `shouldIncludePacket`).
fn selects(sel: &Selector, k: &Kept) -> bool {
    sel.nsp == k.nsp
        && (sel.rooms.is_empty() || sel.rooms.iter().any(|r| k.rooms.contains(r)))
        && !sel.except_rooms.iter().any(|r| k.rooms.contains(r))
        && !sel.except_ids.contains(&k.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::recovery::RecoveryConfig;
    use crate::engine::SendFlags;
    use crate::proto::sio::encode;
    use std::time::Duration;

    fn store(max_packets: usize) -> Store {
        let cfg = RecoveryConfig { window: Duration::from_secs(10), max_packets, max_bytes: 1 << 20 };
        Store::new(Arc::new(Recovery::new(cfg)), 1)
    }

    fn packet(room: &str, n: u64) -> Arc<Broadcast> {
        let sel = Selector { nsp: "/".into(), rooms: vec![room.into()], ..Default::default() };
        let packet = encode::event_with_offset("/", "m", &[serde_json::json!(n)], Some(&n.to_string()), None, Vec::new());
        Arc::new(Broadcast { sel, packet, flags: SendFlags::default(), ack: None, offset: Some(n) })
    }

    fn kept(at: Instant) -> Kept {
        Kept { id: "s1".into(), nsp: "/".into(), rooms: vec!["s1".into(), "r".into()], data: None, at }
    }

    fn texts(r: &Restored) -> Vec<String> {
        r.missed.iter().map(|e| String::from_utf8(e.packet_text().to_vec()).unwrap()).collect()
    }

    #[test]
    fn a_restore_gets_the_packets_after_its_offset_that_its_rooms_select() {
        let t = Instant::now();
        let mut s = store(100);
        for (room, n) in [("r", 1), ("r", 2), ("other", 3), ("r", 4)] {
            s.log(t, packet(room, n), n);
        }
        s.keep("p".into(), kept(t));
        let r = s.restore(t, "p", "/", "1").ok().expect("recovered");
        assert_eq!(texts(&r), [r#"2["m",2,"2"]"#, r#"2["m",4,"4"]"#]);
        assert!(matches!(s.restore(t, "p", "/", "1"), Err(None)), "restored once");
        assert_eq!(s.stats.recovered, 1);
    }

    #[test]
    fn an_offset_no_longer_kept_or_a_socket_past_the_window_is_not_recovered() {
        let t = Instant::now();
        let mut s = store(2);
        for n in 1..=3 {
            s.log(t, packet("r", n), n);
        }
        assert_eq!((s.stats.kept_packets, s.stats.evicted_packets), (2, 1));
        s.keep("p".into(), kept(t));
        assert!(s.restore(t, "p", "/", "1").is_err(), "offset 1 was evicted: a gap would follow");
        s.keep("q".into(), kept(t));
        let later = t + Duration::from_secs(10);
        assert!(matches!(s.restore(later, "q", "/", "3"), Err(None)), "past the window: forgotten");
        assert_eq!((s.stats.kept_packets, s.stats.kept_sockets), (0, 0), "packets expire with the window too");
        assert_eq!(s.stats.not_recovered, 0, "misses are counted by the worker the client came to");
    }
}
