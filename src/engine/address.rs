//! Per-address connection limits, shared by every worker of a server: how many connections
//! one client address may hold open, and how fast it may open new ones (a token bucket).
//!
//! The table has a fixed number of slots, each an atomic counter and an atomic token bucket,
//! indexed by a randomly keyed hash of the address: no map grows with the addresses seen, workers
//! never lock, and a client cannot aim its addresses at another's slot. Two addresses that
//! share a slot share its limits (1 in 65,536 per pair): the table may refuse too early, never
//! too late.
//!
//! An address is an IPv4 address, or an IPv6 address's /64 network ([`limit_key`]): a host is
//! routinely given a whole /64 and can pick any of its 2^64 addresses for each connection, so
//! a full IPv6 address would be no limit at all. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
//! as a dual-stack listener sees IPv4 clients) counts as its IPv4 address.
//!
//! Must never: block, allocate per address, or count a connection twice.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

const SLOTS: usize = 1 << 16;

/// Per-address limits ([`super::EngineConfig::address_limits`]).
#[derive(Debug, Clone)]
pub struct AddressLimits {
    /// Connections one address may hold open at once (`None`: no limit).
    pub max_connections: Option<u32>,
    /// New connections one address may open per second, with a burst of as many (`None`: no
    /// limit).
    pub rate_per_sec: Option<u32>,
    table: Arc<Table>,
}

impl AddressLimits {
    /// Limits with their table (made once per server, shared by its workers).
    pub fn new(max_connections: Option<u32>, rate_per_sec: Option<u32>) -> AddressLimits {
        AddressLimits { max_connections, rate_per_sec, table: Arc::new(Table::new()) }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address holds its most connections.
    TooMany,
    /// The address opens connections too fast.
    TooFast,
}

struct Slot {
    conns: AtomicU32,
    /// Milli-tokens in the high 32 bits, the last refill (ms since the table's start) in the
    /// low 32.
    bucket: AtomicU64,
}

struct Table {
    slots: Box<[Slot]>,
    hasher: std::collections::hash_map::RandomState,
    start: Instant,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AddressTable")
    }
}

/// The state of a bucket no connection touched yet: full.
const FRESH: u64 = u64::MAX;

impl Table {
    fn new() -> Table {
        let slots = (0..SLOTS).map(|_| Slot { conns: AtomicU32::new(0), bucket: AtomicU64::new(FRESH) }).collect();
        Table { slots, hasher: Default::default(), start: Instant::now() }
    }

    fn slot(&self, ip: IpAddr) -> &Slot {
        &self.slots[self.hasher.hash_one(limit_key(ip)) as usize % SLOTS]
    }
}

/// What the limits count by: an IPv4 address as it is, an IPv6 address by its /64 network
/// (the rest zeroed), an IPv4-mapped IPv6 address as its IPv4 address.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

impl AddressLimits {
    /// A new connection from `ip` at `now`: counted and `Ok`, or refused (and not counted).
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let slot = self.table.slot(ip);
        if let Some(rate) = self.rate_per_sec {
            let ms = now.saturating_duration_since(self.table.start).as_millis() as u32;
            let cap = u64::from(rate) * 1000;
            let taken = slot.bucket.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                let (tokens, last) = if b == FRESH { (cap, ms) } else { (b >> 32, b as u32) };
                // One token per 1000/rate ms: `rate` milli-tokens per ms.
                let refill = u64::from(ms.wrapping_sub(last)) * u64::from(rate);
                let tokens = (tokens + refill).min(cap);
                (tokens >= 1000).then(|| (tokens - 1000) << 32 | u64::from(ms))
            });
            if taken.is_err() {
                return Err(Refusal::TooFast);
            }
        }
        if let Some(max) = self.max_connections {
            if slot.conns.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_err() {
                return Err(Refusal::TooMany);
            }
        } else {
            slot.conns.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// A connection `admit` counted is gone.
    pub fn release(&self, ip: IpAddr) {
        let _ = self.table.slot(ip).conns.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_and_rates_per_address() {
        let t = Instant::now();
        let l = AddressLimits::new(Some(2), None);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert_eq!(l.admit(a, t), Ok(()));
        assert_eq!(l.admit(a, t), Ok(()));
        assert_eq!(l.admit(a, t), Err(Refusal::TooMany));
        assert_eq!(l.admit(b, t), Ok(()), "another address has its own count");
        l.release(a);
        assert_eq!(l.admit(a, t), Ok(()));

        let r = AddressLimits::new(None, Some(2));
        // Times are read in whole milliseconds since the table was made: start after it.
        let t = Instant::now();
        assert_eq!(r.admit(a, t), Ok(()));
        assert_eq!(r.admit(a, t), Ok(()), "a burst of 2");
        assert_eq!(r.admit(a, t), Err(Refusal::TooFast));
        assert_eq!(r.admit(a, t + Duration::from_millis(499)), Err(Refusal::TooFast));
        assert_eq!(r.admit(a, t + Duration::from_millis(500)), Ok(()), "one token per 500 ms");
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(limit_key(ip("10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(limit_key(ip("::1")), ip("::"));

        let t = Instant::now();
        let l = AddressLimits::new(Some(2), None);
        // Two connections from one /64, whatever the interface identifiers: the third is refused.
        assert_eq!(l.admit(ip("2001:db8:1:2::1"), t), Ok(()));
        assert_eq!(l.admit(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), t), Ok(()));
        assert_eq!(l.admit(ip("2001:db8:1:2:1234::5"), t), Err(Refusal::TooMany));
        assert_eq!(l.admit(ip("2001:db8:1:3::1"), t), Ok(()), "the next /64 has its own count");
        l.release(ip("2001:db8:1:2:9::9"));
        assert_eq!(l.admit(ip("2001:db8:1:2::7"), t), Ok(()), "a release anywhere in the /64 frees its count");
        // A mapped IPv4 address and the IPv4 address share one count.
        assert_eq!(l.admit(ip("192.0.2.7"), t), Ok(()));
        assert_eq!(l.admit(ip("::ffff:192.0.2.7"), t), Ok(()));
        assert_eq!(l.admit(ip("192.0.2.7"), t), Err(Refusal::TooMany));

        let r = AddressLimits::new(None, Some(1));
        let t = Instant::now();
        assert_eq!(r.admit(ip("2001:db8::1"), t), Ok(()));
        assert_eq!(r.admit(ip("2001:db8::2"), t), Err(Refusal::TooFast), "the rate is the /64's, not each address's");
    }
}
