//! `server_stats`, every `stats_interval` (and once at start, as Node): one ordinary thread
//! scrapes the workers' own counters (the `/metrics` scrape, `rt::threads::Scraper`), asks them
//! for their namespaces' socket counts (one mail per worker), and emits the stats to the admin
//! namespace through the `ServerHandle`.
//!
//! The fields are Node's: `serverId`, `hostname`, `pid`, `uptime` (seconds), `clientsCount`
//! (Engine.IO sessions), `pollingClientsCount` (those on long-polling), `aggregatedEvents`, and
//! `namespaces` (`{name, socketsCount}`). `aggregatedEvents` holds, for the interval, what the
//! counters moved by, in one entry per type stamped with the second it was read:
//! `rawConnection` (sessions opened), `rawDisconnection` (sessions closed, `subType` the
//! reason), `packetsIn` and `packetsOut` (Engine.IO message packets), `bytesIn` and `bytesOut`
//! (bytes read from and written to the sockets, where Node counts the packets' data bytes).
//!
//! Must never: run on a worker, or wait longer than a second for one.

use std::collections::HashMap;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::tap::{NamespaceCounts, Tap, WATCHING_ROOM};
use super::AdminUi;
use crate::app::ServerHandle;
use crate::rt::metrics::WorkerMetrics;
use crate::rt::threads::Scraper;

/// How long one scrape may wait for the workers.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) struct StatsThread {
    stop: Sender<()>,
    join: std::thread::JoinHandle<()>,
}

impl StatsThread {
    pub(crate) fn spawn(cfg: &AdminUi, scraper: Scraper, handle: ServerHandle, fixed: Vec<String>, tap: Option<Arc<Tap>>) -> StatsThread {
        let (stop, stopped) = channel::<()>();
        let host = hostname();
        let mut s = Stats {
            server_id: cfg.server_id.clone().unwrap_or_else(|| host.clone()),
            hostname: host,
            admin: cfg.namespace.clone(),
            fixed,
            started: Instant::now(),
            last: HashMap::new(),
        };
        let interval = cfg.stats_interval;
        let join = std::thread::Builder::new()
            .name("shardcast-admin-stats".into())
            .spawn(move || loop {
                s.emit(&scraper, &handle);
                // Development mode in a cluster: the heartbeat that lets the other nodes
                // publish their sockets' events while this node has an admin socket.
                if tap.as_ref().is_some_and(|t| t.watched_here()) {
                    let _ = handle.of(&s.admin).to(WATCHING_ROOM).emit("watching", &[]);
                }
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            })
            .expect("spawn the admin UI stats thread");
        StatsThread { stop, join }
    }

    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.join.join();
    }
}

struct Stats {
    server_id: String,
    hostname: String,
    admin: String,
    /// The namespaces the server was built with (listed even without a socket, as Node lists
    /// every namespace it has).
    fixed: Vec<String>,
    started: Instant,
    /// Each aggregated counter's value at the previous emit.
    last: HashMap<(&'static str, String), u64>,
}

/// The sum over every worker of `name`'s samples whose labels include `label` (any, for `None`).
fn sum(workers: &[WorkerMetrics], name: &str, label: Option<(&str, &str)>) -> u64 {
    workers
        .iter()
        .flat_map(|w| w.samples.iter())
        .filter(|s| s.name == name && label.is_none_or(|(k, v)| s.labels.iter().any(|(lk, lv)| *lk == k && lv == v)))
        .map(|s| s.value)
        .sum()
}

impl Stats {
    /// How much a counter moved since the previous emit.
    fn delta(&mut self, key: (&'static str, String), now: u64) -> u64 {
        let before = self.last.insert(key, now).unwrap_or(0);
        now.saturating_sub(before)
    }

    fn emit(&mut self, scraper: &Scraper, handle: &ServerHandle) {
        let workers = match scraper.scrape(SCRAPE_TIMEOUT) {
            Ok(w) => w,
            Err(e) => return tracing::debug!(error = %e, "admin UI: no stats this time"),
        };
        let counts = handle.admin_namespaces().wait_timeout(SCRAPE_TIMEOUT).unwrap_or_default();
        let stats = self.build(&workers, counts, now_ms());
        let _ = handle.of(&self.admin).emit("server_stats", &[stats]);
    }

    fn build(&mut self, workers: &[WorkerMetrics], counts: NamespaceCounts, now_ms: u64) -> Value {
        let second = now_ms - now_ms % 1000;
        let mut events = Vec::new();
        for (ty, metric) in [
            ("rawConnection", "shardcast_sessions_opened_total"),
            ("packetsIn", "shardcast_packets_received_total"),
            ("packetsOut", "shardcast_packets_sent_total"),
            ("bytesIn", "shardcast_received_bytes_total"),
            ("bytesOut", "shardcast_sent_bytes_total"),
        ] {
            let n = self.delta((ty, String::new()), sum(workers, metric, None));
            if n > 0 {
                events.push(json!({ "timestamp": second, "type": ty, "count": n }));
            }
        }
        let mut reasons: Vec<&str> = workers
            .iter()
            .flat_map(|w| w.samples.iter())
            .filter(|s| s.name == "shardcast_sessions_closed_total")
            .filter_map(|s| s.labels.iter().find(|(k, _)| *k == "reason").map(|(_, v)| v.as_str()))
            .collect();
        reasons.sort_unstable();
        reasons.dedup();
        for reason in reasons {
            let n = self.delta(("rawDisconnection", reason.to_string()), sum(workers, "shardcast_sessions_closed_total", Some(("reason", reason))));
            if n > 0 {
                events.push(json!({ "timestamp": second, "type": "rawDisconnection", "subType": reason, "count": n }));
            }
        }
        let mut namespaces: Vec<(String, usize)> = self.fixed.iter().map(|n| (n.clone(), 0)).collect();
        for (name, n) in counts.0 {
            match namespaces.iter_mut().find(|(k, _)| *k == name) {
                Some((_, m)) => *m = n,
                None => namespaces.push((name, n)),
            }
        }
        let namespaces: Vec<Value> = namespaces.into_iter().map(|(name, n)| json!({ "name": name, "socketsCount": n })).collect();
        json!({
            "serverId": self.server_id,
            "hostname": self.hostname,
            "pid": std::process::id(),
            "uptime": self.started.elapsed().as_secs_f64(),
            "clientsCount": sum(workers, "shardcast_sessions", None),
            "pollingClientsCount": sum(workers, "shardcast_sessions", Some(("transport", "polling"))),
            "aggregatedEvents": events,
            "namespaces": namespaces,
        })
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The host name (Node's `os.hostname()`), as the kernel holds it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::metrics::WorkerMetrics;

    fn worker(n: usize, opened: u64, closed: u64, polling: u64, ws: u64) -> WorkerMetrics {
        let mut m = WorkerMetrics { worker: n, ..Default::default() };
        let w = n.to_string();
        m.counter("shardcast_sessions_opened_total", "", &[], opened);
        m.counter("shardcast_sessions_closed_total", "", &[("reason", "transport close")], closed);
        m.gauge("shardcast_sessions", "", &[("transport", "polling"), ("worker", &w)], polling);
        m.gauge("shardcast_sessions", "", &[("transport", "websocket"), ("worker", &w)], ws);
        m.counter("shardcast_packets_received_total", "", &[], 0);
        m
    }

    #[test]
    fn stats_sum_the_workers_and_aggregate_what_moved_since_the_last_emit() {
        let mut s = Stats {
            server_id: "h".into(),
            hostname: "h".into(),
            admin: "/admin".into(),
            fixed: vec!["/".into(), "/admin".into()],
            started: Instant::now(),
            last: HashMap::new(),
        };
        let first = s.build(&[worker(0, 2, 0, 1, 0), worker(1, 1, 1, 0, 1)], NamespaceCounts(vec![("/admin".into(), 1), ("/dyn".into(), 2)]), 5_500);
        assert_eq!(first["clientsCount"], json!(2));
        assert_eq!(first["pollingClientsCount"], json!(1));
        assert_eq!(
            first["aggregatedEvents"],
            json!([
                {"timestamp": 5000, "type": "rawConnection", "count": 3},
                {"timestamp": 5000, "type": "rawDisconnection", "subType": "transport close", "count": 1},
            ])
        );
        assert_eq!(first["namespaces"], json!([{"name": "/", "socketsCount": 0}, {"name": "/admin", "socketsCount": 1}, {"name": "/dyn", "socketsCount": 2}]));
        let keys: Vec<&String> = first.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["serverId", "hostname", "pid", "uptime", "clientsCount", "pollingClientsCount", "aggregatedEvents", "namespaces"]);
        // Nothing moved: no events.
        let second = s.build(&[worker(0, 2, 0, 1, 0), worker(1, 1, 1, 0, 1)], NamespaceCounts::default(), 7_500);
        assert_eq!(second["aggregatedEvents"], json!([]));
        let third = s.build(&[worker(0, 4, 0, 1, 0), worker(1, 1, 1, 0, 1)], NamespaceCounts::default(), 9_999);
        assert_eq!(third["aggregatedEvents"], json!([{"timestamp": 9000, "type": "rawConnection", "count": 2}]));
    }
}
