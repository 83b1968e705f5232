//! This worker's part of connection state recovery (see [`crate::app::recovery`]): the log of
//! the recoverable packets it delivered, in its delivery order, and the sockets that left it
//! for a transport reason, each kept for the recovery window; restoring one of them, for a
//! client that came back here or on another worker (which asks by mail).
//!
//! Bounded: the log holds at most this worker's share of the server's packet and byte caps
//! (the oldest go first) and nothing older than the window. The kept sockets, for the window,
//! are at most this worker's share of the server's socket cap, and their ids and room names at
//! most its share of the byte cap (a budget of their own beside the log's, so neither starves
//! the other): past either the oldest is forgotten, counted. A kept socket's data is the
//! application's value and is not measured.
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
    /// Bytes of the kept sockets' ids and room names.
    pub kept_socket_bytes: u64,
    /// Kept sockets forgotten before the window ended, to stay within the caps.
    pub evicted_sockets: u64,
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
    max_sockets: usize,
    log: VecDeque<Entry>,
    /// Offset to its position: `seq - first_seq` indexes `log`.
    seqs: FxHashMap<u64, u64>,
    first_seq: u64,
    bytes: usize,
    /// Kept sockets by pid (a string the client sends back: keyed hashing).
    kept: KeyedMap<String, Kept>,
    /// When each kept socket expires, oldest first. An entry whose socket was restored (or
    /// kept again) stays until it comes due or is compacted away in [`Store::keep`].
    kept_due: Fifo<String>,
    kept_bytes: usize,
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
            max_sockets: (cfg.max_sockets / workers).max(1),
            log: VecDeque::new(),
            seqs: FxHashMap::default(),
            first_seq: 0,
            bytes: 0,
            kept: KeyedMap::default(),
            kept_due: Fifo::default(),
            kept_bytes: 0,
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
        self.stats.kept_socket_bytes = self.kept_bytes as u64;
    }

    /// Forgets the kept socket under `pid`, returning it.
    fn forget(&mut self, pid: &str) -> Option<Kept> {
        let k = self.kept.remove(pid)?;
        self.kept_bytes -= k.bytes();
        Some(k)
    }

    /// Whether a `kept_due` entry is the live deadline of the socket kept under `pid`.
    fn is_live(&self, due: Instant, pid: &str) -> bool {
        self.kept.get(pid).is_some_and(|k| k.at + self.shared.cfg.window == due)
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
                gone.extend(self.forget(&pid));
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

    /// Keeps a socket that left, forgetting the oldest kept ones past the caps; gives back the
    /// sockets it replaced (same pid) or forgot, whose data is user code to drop.
    pub(crate) fn keep(&mut self, pid: String, k: Kept) -> Vec<Kept> {
        let mut gone: Vec<Kept> = self.forget(&pid).into_iter().collect();
        let bytes = k.bytes();
        while !self.kept.is_empty() && (self.kept.len() + 1 > self.max_sockets || self.kept_bytes + bytes > self.max_bytes) {
            let Some((due, old)) = self.kept_due.pop_front() else { break };
            if self.is_live(due, &old) {
                gone.extend(self.forget(&old));
                self.stats.evicted_sockets += 1;
            }
        }
        // Entries of restored sockets wait for their deadline: compact them away once they
        // outnumber the live ones, so the queue stays within twice the kept sockets.
        if self.kept_due.len() > 2 * (self.kept.len() + 1) {
            let (kept, window) = (&self.kept, self.shared.cfg.window);
            self.kept_due.retain(|due, pid| kept.get(pid).is_some_and(|k| k.at + window == due));
        }
        self.kept_due.push(k.at + self.shared.cfg.window, pid.clone());
        self.kept_bytes += bytes;
        self.kept.insert(pid, k);
        self.count();
        gone
    }

    /// Takes the socket kept under `pid` with every packet after `offset` its rooms select,
    /// if the client may recover: known pid in namespace `nsp`, within the window, offset
    /// still kept. A socket that cannot recover is forgotten; its state is given back to drop.
    pub(crate) fn restore(&mut self, now: Instant, pid: &str, nsp: &str, offset: &str) -> Result<Restored, Option<Kept>> {
        gone_quietly(self.expire(now));
        // Unknown here: the caller asks the other workers, and counts a miss once.
        let Some(k) = self.forget(pid) else { return Err(None) };
        self.count();
        let pos = parse_offset(offset).and_then(|o| self.seqs.get(&o)).map(|seq| (seq - self.first_seq) as usize);
        let Some(pos) = pos.filter(|_| k.nsp == nsp) else { return Err(Some(k)) };
        let missed = self.log.iter().skip(pos + 1).filter(|e| selects(&e.packet.sel, &k)).map(|e| e.packet.packet.clone()).collect();
        self.stats.recovered += 1;
        Ok(Restored { id: k.id, pid: pid.to_string(), rooms: k.rooms, data: k.data, missed })
    }
}

impl Kept {
    /// What this socket is charged against the byte cap: its id and room names (the pid is
    /// one more id), with a small fixed cost per room for the string it lives in.
    fn bytes(&self) -> usize {
        const PER_STRING: usize = 24;
        2 * self.id.len() + self.nsp.len() + self.rooms.iter().map(|r| r.len() + PER_STRING).sum::<usize>() + 3 * PER_STRING
    }
}

/// Sockets whose data must be dropped under the guard (user values).
pub(crate) fn gone_quietly(gone: Vec<Kept>) {
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
        let cfg = RecoveryConfig { window: Duration::from_secs(10), max_packets, max_bytes: 1 << 20, max_sockets: 3 };
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

    #[test]
    fn kept_sockets_stay_within_the_socket_and_byte_caps_the_oldest_forgotten_first() {
        let t = Instant::now();
        let mut s = store(10);
        let kept_as = |id: &str, rooms: usize, at: Instant| Kept {
            id: id.into(),
            nsp: "/".into(),
            rooms: (0..rooms).map(|i| format!("{id}-room-{i}")).collect(),
            data: None,
            at,
        };
        // The socket cap (3 per worker here): a fourth forgets the oldest.
        for (i, pid) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let gone = s.keep(pid.into(), kept_as(pid, 1, t + Duration::from_millis(i as u64)));
            assert_eq!(gone.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), if pid == "d" { vec!["a"] } else { vec![] });
        }
        assert_eq!((s.stats.kept_sockets, s.stats.evicted_sockets), (3, 1));
        assert!(matches!(s.restore(t, "a", "/", "0"), Err(None)), "the oldest was forgotten");
        // A restored socket's deadline entry does not count as one to evict.
        assert!(s.restore(t, "b", "/", "0").is_err(), "no offset kept: not recovered, forgotten");
        s.keep("e".into(), kept_as("e", 1, t + Duration::from_millis(5)));
        assert_eq!((s.stats.kept_sockets, s.stats.evicted_sockets), (3, 1), "c, d, e: nothing evicted");
        // The byte cap (1 MiB per worker here): a socket with rooms worth most of it forgets
        // the others (the socket cap first forgets c), and the bytes come back when it goes.
        let big = kept_as("big", 15_000, t + Duration::from_millis(6));
        assert!(big.bytes() > (1 << 20) / 2);
        let gone = s.keep("big".into(), big);
        assert_eq!(gone.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), ["c"]);
        let gone = s.keep("big2".into(), kept_as("big2", 15_000, t + Duration::from_millis(7)));
        assert_eq!(gone.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), ["d", "e", "big"]);
        assert_eq!(s.stats.evicted_sockets, 5);
        assert_eq!(s.stats.kept_sockets, 1);
        assert!(s.stats.kept_socket_bytes <= 1 << 20);
        let _ = s.restore(t, "big2", "/", "0");
        assert_eq!((s.stats.kept_sockets, s.stats.kept_socket_bytes), (0, 0));
    }

    #[test]
    fn the_deadline_queue_stays_within_twice_the_kept_sockets_however_often_clients_cycle() {
        let t = Instant::now();
        let mut s = store(10);
        for i in 0..10_000u64 {
            s.keep("p".into(), kept(t + Duration::from_micros(i)));
            let _ = s.restore(t, "p", "/", "0");
        }
        assert!(s.kept_due.len() <= 4, "{}", s.kept_due.len());
    }
}
