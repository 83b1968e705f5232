//! Reports: the final table, JSON for machines, an SVG with the latency percentile plot
//! (HDR-style, log scales) and the throughput over time, and side-by-side comparison.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl From<&Histogram<u64>> for Latency {
    fn from(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// (percentile, latency µs) points for the plot.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0].iter().map(|&p| (p, h.value_at_percentile(p))).collect()
}

/// The server's cost in a run (from `/proc`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerCost {
    pub cpu_us: u64,
    pub cpu_us_per_delivery: f64,
    pub rss_before: u64,
    pub rss_after: u64,
    pub rss_per_connection: f64,
    pub cpu_us_per_connect: Option<f64>,
    /// Server CPU while idle connections were held (percent of one core).
    pub hold_cpu_percent: Option<f64>,
    /// The server's RSS fell during the run (memory it freed outweighed what the connections
    /// hold), so `rss_per_connection` is 0 rather than a meaningless negative figure.
    #[serde(default)]
    pub rss_fell: bool,
}

impl ServerCost {
    pub fn new(cpu_us: u64, rss_before: u64, rss_after: u64, deliveries: u64, connections: usize) -> ServerCost {
        ServerCost {
            cpu_us,
            cpu_us_per_delivery: cpu_us as f64 / deliveries.max(1) as f64,
            rss_before,
            rss_after,
            rss_per_connection: rss_after.saturating_sub(rss_before) as f64 / connections.max(1) as f64,
            cpu_us_per_connect: None,
            hold_cpu_percent: None,
            rss_fell: rss_after < rss_before,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub label: String,
    pub target: String,
    pub transport: String,
    pub params: serde_json::Value,
    pub expected: u64,
    pub received: u64,
    pub loss: f64,
    /// Deliveries (or round trips, cycles, connections) per second.
    pub rate: f64,
    pub latency_us: Latency,
    pub percentiles: Vec<(f64, u64)>,
    /// Deliveries per second over the run.
    pub throughput: Vec<u64>,
    pub loadgen_cpu_us: u64,
    pub loadgen_cpu_us_per_delivery: f64,
    pub server: Option<ServerCost>,
    pub errors: u64,
    pub closed: u64,
    pub extra: Option<serde_json::Value>,
    pub unix_time: u64,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        scenario: &str,
        c: &super::Common,
        params: serde_json::Value,
        expected: u64,
        received: u64,
        rate: f64,
        latencies: &Histogram<u64>,
        throughput: Vec<u64>,
        loadgen_cpu_us: u64,
        server: Option<ServerCost>,
        errors: u64,
        closed: u64,
        extra: Option<serde_json::Value>,
    ) -> Report {
        Report {
            scenario: scenario.into(),
            label: c.label.clone(),
            target: c.target.to_string(),
            transport: format!("{:?}", c.transport).to_lowercase(),
            params,
            expected,
            received,
            loss: if expected == 0 { 0.0 } else { 1.0 - received.min(expected) as f64 / expected as f64 },
            rate,
            latency_us: Latency::from(latencies),
            percentiles: percentile_curve(latencies),
            throughput,
            loadgen_cpu_us,
            loadgen_cpu_us_per_delivery: loadgen_cpu_us as f64 / received.max(1) as f64,
            server,
            errors,
            closed,
            extra,
            unix_time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        }
    }

    pub fn print(&self) {
        let l = &self.latency_us;
        println!("scenario      {} {} ({})", self.scenario, self.params, self.transport);
        if !self.label.is_empty() {
            println!("label         {}", self.label);
        }
        println!("expected      {}", self.expected);
        println!("received      {}  (loss {:.4}%)", self.received, self.loss * 100.0);
        println!("rate          {:.0}/s", self.rate);
        println!("latency µs    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}", l.p50, l.p90, l.p99, l.p999, l.max);
        println!("loadgen CPU   {:.2} µs per delivery ({} µs total)", self.loadgen_cpu_us_per_delivery, self.loadgen_cpu_us);
        if let Some(s) = &self.server {
            println!("server CPU    {:.2} µs per delivery ({} µs total)", s.cpu_us_per_delivery, s.cpu_us);
            if s.rss_fell {
                println!(
                    "server RSS    {} → {} bytes (fell: the server freed more than the connections hold, so no per-connection figure; run longer or with more connections)",
                    s.rss_before, s.rss_after
                );
            } else {
                println!("server RSS    {} → {} bytes ({:.0} bytes per connection)", s.rss_before, s.rss_after, s.rss_per_connection);
            }
            if let Some(c) = s.cpu_us_per_connect {
                println!("server CPU    {c:.1} µs per connect");
            }
            if let Some(h) = s.hold_cpu_percent {
                println!("server CPU    {h:.1}% of a core while holding");
            }
        }
        println!("errors        {}  closed {}", self.errors, self.closed);
        if let Some(x) = &self.extra {
            println!("details       {x}");
        }
    }
}

/// An SVG with the latency percentile plot and the throughput over time.
pub fn svg(r: &Report) -> String {
    let (w, h, pad) = (900.0, 320.0, 50.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="20" font-size="14">{} {} — {} ({})</text>
"#,
        2.0 * h + 40.0,
        r.scenario,
        r.label,
        r.params,
        r.transport
    );
    // Latency by percentile: x = log10(1/(1-p)), y = log10(latency).
    let pts: Vec<(f64, f64)> = r.percentiles.iter().map(|&(p, v)| ((1.0 / (1.0 - (p / 100.0).min(0.99999))).log10(), (v.max(1) as f64).log10())).collect();
    let ymax = pts.iter().map(|p| p.1).fold(1.0_f64, f64::max).ceil();
    let xmax = 5.0;
    let px = |x: f64| pad + x / xmax * (w - 2.0 * pad);
    let py = |y: f64, top: f64| top + h - pad - y / ymax * (h - 2.0 * pad);
    s.push_str(&format!("<text x=\"{pad}\" y=\"45\">latency (µs, log) by percentile</text>\n"));
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"].iter().enumerate() {
        s.push_str(&format!("<text x=\"{:.0}\" y=\"{:.0}\" fill=\"#555\">{label}</text>\n", px(i as f64) - 10.0, 30.0 + h - pad + 15.0));
    }
    for d in 0..=(ymax as i32) {
        s.push_str(&format!("<text x=\"5\" y=\"{:.0}\" fill=\"#555\">1e{d}</text>\n", py(d as f64, 30.0) + 4.0));
        s.push_str(&format!("<line x1=\"{pad}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>\n", w - pad, py(d as f64, 30.0), py(d as f64, 30.0)));
    }
    let line: Vec<String> = pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y, 30.0))).collect();
    s.push_str(&format!("<polyline fill=\"none\" stroke=\"#c33\" stroke-width=\"2\" points=\"{}\"/>\n", line.join(" ")));
    // Throughput over time.
    let top = h + 30.0;
    let tmax = r.throughput.iter().copied().max().unwrap_or(1).max(1) as f64;
    let n = r.throughput.len().max(2) as f64;
    s.push_str(&format!("<text x=\"{pad}\" y=\"{:.0}\">deliveries per second over time (max {tmax:.0})</text>\n", top + 15.0));
    let line: Vec<String> = r
        .throughput
        .iter()
        .enumerate()
        .map(|(i, &v)| format!("{:.1},{:.1}", pad + i as f64 / (n - 1.0) * (w - 2.0 * pad), top + h - pad - v as f64 / tmax * (h - 2.0 * pad)))
        .collect();
    s.push_str(&format!("<polyline fill=\"none\" stroke=\"#36c\" stroke-width=\"2\" points=\"{}\"/>\n", line.join(" ")));
    s.push_str("</svg>\n");
    s
}

/// Why two reports cannot be compared: a different scenario (fanout against conns, say) or
/// transport makes every ratio meaningless. Different parameters only earn a warning.
pub fn comparable(ra: &Report, rb: &Report) -> Result<(), String> {
    if ra.scenario != rb.scenario {
        return Err(format!("the reports are of different scenarios ({} and {}); compare runs of the same scenario", ra.scenario, rb.scenario));
    }
    if ra.transport != rb.transport {
        return Err(format!("the reports use different transports ({} and {})", ra.transport, rb.transport));
    }
    Ok(())
}

/// Prints two reports side by side with b/a ratios; refuses reports that are not
/// [`comparable`].
pub fn compare(a: &str, b: &str) -> Result<(), String> {
    let load = |p: &str| -> Result<Report, String> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("{p} is not a report: {e}"))
    };
    let (ra, rb) = (load(a)?, load(b)?);
    comparable(&ra, &rb)?;
    if ra.params != rb.params {
        eprintln!("warning: the runs' parameters differ ({} and {})", ra.params, rb.params);
    }
    let row = |name: &str, x: f64, y: f64| {
        let ratio = if x == 0.0 { f64::NAN } else { y / x };
        println!("{name:<28} {x:>14.2} {y:>14.2} {ratio:>8.2}×");
    };
    println!("{:<28} {:>14} {:>14} {:>9}", "", if ra.label.is_empty() { "a" } else { &ra.label }, if rb.label.is_empty() { "b" } else { &rb.label }, "b/a");
    row("rate /s", ra.rate, rb.rate);
    row("loss %", ra.loss * 100.0, rb.loss * 100.0);
    row("p50 µs", ra.latency_us.p50 as f64, rb.latency_us.p50 as f64);
    row("p99 µs", ra.latency_us.p99 as f64, rb.latency_us.p99 as f64);
    row("p99.9 µs", ra.latency_us.p999 as f64, rb.latency_us.p999 as f64);
    row("max µs", ra.latency_us.max as f64, rb.latency_us.max as f64);
    if let (Some(sa), Some(sb)) = (&ra.server, &rb.server) {
        row("server CPU µs/delivery", sa.cpu_us_per_delivery, sb.cpu_us_per_delivery);
        row("server RSS bytes/conn", sa.rss_per_connection, sb.rss_per_connection);
    }
    row("loadgen CPU µs/delivery", ra.loadgen_cpu_us_per_delivery, rb.loadgen_cpu_us_per_delivery);
    Ok(())
}
