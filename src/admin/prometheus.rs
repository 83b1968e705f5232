//! The Prometheus text exposition format (version 0.0.4) of a scrape: every worker's samples,
//! summed where their labels are the same, each metric with its `# HELP` and `# TYPE` lines,
//! then the per-worker mailbox depth and the loop histograms; with a cluster adapter, its
//! counters ([`render_cluster`]).
//!
//! Must never: ask the workers anything (it formats what [`crate::rt::threads::Scraper`]
//! returned).

use std::fmt::Write;

use crate::app::adapter::ClusterStats;
use crate::rt::metrics::{Histogram, Kind, Sample, WorkerMetrics, PASS_NANOS, SUBMISSIONS};

/// The `Content-Type` of the format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family: its help, type, and label sets with their summed values, in the order
/// they were first seen.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    values: Vec<(Vec<(&'static str, String)>, u64)>,
}

/// Renders a scrape. Samples of the same name and labels from several workers are summed
/// (counters without a `worker` label are process totals).
pub fn render(workers: &[WorkerMetrics]) -> String {
    let mut families: Vec<Family> = Vec::new();
    for s in workers.iter().flat_map(|w| w.samples.iter()) {
        add(&mut families, s);
    }
    let mut out = String::with_capacity(8192);
    for f in &families {
        header(&mut out, f.name, f.help, if f.kind == Kind::Counter { "counter" } else { "gauge" });
        for (labels, v) in &f.values {
            line(&mut out, f.name, labels, None, &v.to_string());
        }
    }
    header(&mut out, "shardcast_mailbox_depth", "Messages waiting in a worker's mailbox (from other workers and handles) when it was scraped.", "gauge");
    for w in workers {
        line(&mut out, "shardcast_mailbox_depth", &[("worker", w.worker.to_string())], None, &w.mailbox_depth.to_string());
    }
    header(&mut out, "shardcast_loop_pass_seconds", "Time a worker's loop pass took, from the end of its wait to the end of its work.", "histogram");
    for w in workers {
        histogram(&mut out, "shardcast_loop_pass_seconds", w.worker, &w.loop_stats.pass_nanos, &PASS_NANOS, seconds);
    }
    header(
        &mut out,
        "shardcast_ring_submissions_per_pass",
        "io_uring submission queue entries a worker queued per loop pass (sent with one io_uring_enter).",
        "histogram",
    );
    for w in workers {
        histogram(&mut out, "shardcast_ring_submissions_per_pass", w.worker, &w.loop_stats.submissions, &SUBMISSIONS, |v| v.to_string());
    }
    out
}

/// Appends the cluster adapter's counters (`--redis`) as `shardcast_cluster_*`.
pub fn render_cluster(out: &mut String, s: &ClusterStats) {
    let counters: [(&str, &str, u64); 5] = [
        ("shardcast_cluster_published_total", "Messages this node published to the other nodes of its cluster.", s.published),
        (
            "shardcast_cluster_not_delivered_total",
            "Messages for the other nodes that did not reach them: the adapter's queue was full, the backend unreachable, or it refused them.",
            s.not_delivered,
        ),
        ("shardcast_cluster_received_total", "Messages from other nodes (or emitters) handed to the workers.", s.received),
        (
            "shardcast_cluster_inbound_dropped_total",
            "Messages from other nodes dropped because the workers had a full queue of them not handled yet.",
            s.inbound_dropped,
        ),
        ("shardcast_cluster_outages_total", "Times the cluster backend (Redis) was lost.", s.outages),
    ];
    for (name, help, v) in counters {
        header(out, name, help, "counter");
        line(out, name, &[], None, &v.to_string());
    }
    header(out, "shardcast_cluster_connected", "1 while the cluster adapter is connected and subscribed, 0 otherwise.", "gauge");
    line(out, "shardcast_cluster_connected", &[], None, if s.connected { "1" } else { "0" });
}

fn add(families: &mut Vec<Family>, s: &Sample) {
    let i = match families.iter().position(|f| f.name == s.name) {
        Some(i) => i,
        None => {
            families.push(Family { name: s.name, help: s.help, kind: s.kind, values: Vec::new() });
            families.len() - 1
        }
    };
    let f = &mut families[i];
    match f.values.iter_mut().find(|(l, _)| *l == s.labels) {
        Some((_, v)) => *v += s.value,
        None => f.values.push((s.labels.clone(), s.value)),
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn line(out: &mut String, name: &str, labels: &[(&'static str, String)], le: Option<&str>, value: &str) {
    out.push_str(name);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        for (k, v) in labels.iter().map(|(k, v)| (*k, v.as_str())).chain(le.map(|le| ("le", le))) {
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "{k}=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

fn histogram(out: &mut String, name: &str, worker: usize, h: &Histogram, bounds: &[u64], fmt: impl Fn(u64) -> String) {
    let labels = [("worker", worker.to_string())];
    let bucket = format!("{name}_bucket");
    for (b, n) in h.cumulative(bounds) {
        line(out, &bucket, &labels, Some(&fmt(b)), &n.to_string());
    }
    line(out, &bucket, &labels, Some("+Inf"), &h.count.to_string());
    line(out, &format!("{name}_sum"), &labels, None, &fmt(h.sum));
    line(out, &format!("{name}_count"), &labels, None, &h.count.to_string());
}

/// Nanoseconds as seconds, exactly (no float rounding): `1500` is `0.0000015`.
fn seconds(nanos: u64) -> String {
    let (s, frac) = (nanos / 1_000_000_000, nanos % 1_000_000_000);
    if frac == 0 {
        return s.to_string();
    }
    let frac = format!("{frac:09}");
    format!("{s}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(i: usize, deliveries: u64) -> WorkerMetrics {
        let mut w = WorkerMetrics { worker: i, mailbox_depth: i, ..Default::default() };
        let ws = i.to_string();
        w.gauge("shardcast_sockets", "Sockets.", &[("worker", &ws)], 3);
        w.counter("shardcast_deliveries_total", "Deliveries.", &[], deliveries);
        w.counter("shardcast_dropped_total", "Drops \\ by \"reason\".", &[("reason", "volatile")], 1);
        w.loop_stats.pass_nanos.record(&PASS_NANOS, 1_500);
        w
    }

    #[test]
    fn totals_are_summed_and_per_worker_gauges_kept() {
        let text = render(&[worker(0, 5), worker(1, 7)]);
        assert!(
            text.contains("# HELP shardcast_deliveries_total Deliveries.\n# TYPE shardcast_deliveries_total counter\nshardcast_deliveries_total 12\n"),
            "{text}"
        );
        assert!(text.contains("shardcast_sockets{worker=\"0\"} 3\nshardcast_sockets{worker=\"1\"} 3\n"), "{text}");
        assert!(text.contains("# HELP shardcast_dropped_total Drops \\\\ by \"reason\".\n"), "{text}");
        assert!(text.contains("shardcast_dropped_total{reason=\"volatile\"} 2\n"), "{text}");
        assert!(text.contains("shardcast_mailbox_depth{worker=\"1\"} 1\n"), "{text}");
        assert!(text.contains("shardcast_loop_pass_seconds_bucket{worker=\"0\",le=\"0.000001\"} 0\n"), "{text}");
        assert!(text.contains("shardcast_loop_pass_seconds_bucket{worker=\"0\",le=\"0.000005\"} 1\n"), "{text}");
        assert!(text.contains("shardcast_loop_pass_seconds_bucket{worker=\"0\",le=\"+Inf\"} 1\n"), "{text}");
        assert!(text.contains("shardcast_loop_pass_seconds_sum{worker=\"0\"} 0.0000015\n"), "{text}");
        // Each family's HELP and TYPE appear once.
        assert_eq!(text.matches("# TYPE shardcast_sockets gauge").count(), 1);
        assert_eq!(text.matches("# TYPE shardcast_loop_pass_seconds histogram").count(), 1);
    }

    #[test]
    fn cluster_counters() {
        let mut out = String::new();
        render_cluster(&mut out, &ClusterStats { published: 5, not_delivered: 3, received: 2, inbound_dropped: 1, outages: 4, connected: true });
        for want in [
            "# TYPE shardcast_cluster_not_delivered_total counter\nshardcast_cluster_not_delivered_total 3\n",
            "shardcast_cluster_published_total 5\n",
            "shardcast_cluster_received_total 2\n",
            "shardcast_cluster_inbound_dropped_total 1\n",
            "shardcast_cluster_outages_total 4\n",
            "# TYPE shardcast_cluster_connected gauge\nshardcast_cluster_connected 1\n",
        ] {
            assert!(out.contains(want), "{want} not in {out}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        line(&mut out, "m", &[("namespace", "/a\"b\\c\nd".to_string())], None, "1");
        assert_eq!(out, "m{namespace=\"/a\\\"b\\\\c\\nd\"} 1\n");
        assert_eq!(seconds(2_000_000_000), "2");
        assert_eq!(seconds(100_000_000), "0.1");
    }
}
