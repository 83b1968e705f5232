//! What a worker reports when it is scraped: named samples (counters and gauges) and two
//! histograms of its loop, in plain integers.
//!
//! Counting must not slow the hot path, so nothing here is shared: every counter is a plain
//! integer owned by one worker (in [`super::Io`], the engine's session table, the Socket.IO
//! layer), incremented without atomics. A scrape posts [`super::RtMail::Metrics`] to every
//! worker; each answers at its next pass with a [`WorkerMetrics`] snapshot, and the scraper
//! sums them ([`super::threads::Scraper`]). Gauges that would need a write per packet to keep
//! up to date (bytes queued for sending, sessions by transport) are computed by walking the
//! worker's tables when it answers, once per scrape.
//!
//! Must never: be written by two threads, or be touched per packet with more than a plain
//! integer increment.

/// Whether a sample only goes up, or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (its name ends in `_total`).
    Counter,
    /// A current value.
    Gauge,
}

/// One value of one metric, with its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The metric's name, `shardcast_` first.
    pub name: &'static str,
    /// One line saying what it counts.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// Label names and values (a per-worker sample carries `worker`; samples with the same
    /// name and labels from several workers are summed).
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: u64,
}

/// Most buckets a [`Histogram`] has (the last counts what is above every bound).
pub const MAX_BUCKETS: usize = 16;

/// Counts of observations in fixed buckets, their sum and their number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations in each bucket (not cumulative): `counts[i]` holds values `<= bounds[i]`
    /// and above `bounds[i - 1]`; `counts[bounds.len()]` the values above every bound.
    pub counts: [u64; MAX_BUCKETS],
    /// Sum of the observed values.
    pub sum: u64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Counts `v` against `bounds` (ascending, at most `MAX_BUCKETS - 1` of them).
    pub fn record(&mut self, bounds: &[u64], v: u64) {
        let i = bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    /// Adds another histogram with the same bounds.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// `(bound, observations <= bound)` for every bound, cumulative as Prometheus wants.
    pub fn cumulative<'a>(&'a self, bounds: &'a [u64]) -> impl Iterator<Item = (u64, u64)> + 'a {
        bounds.iter().enumerate().scan(0u64, move |acc, (i, &b)| {
            *acc += self.counts[i];
            Some((b, *acc))
        })
    }
}

/// Bucket bounds of the loop pass time, in nanoseconds (1 µs to 100 ms).
pub const PASS_NANOS: [u64; 14] =
    [1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000, 100_000_000];

/// Bucket bounds of the ring submissions per loop pass.
pub const SUBMISSIONS: [u64; 12] = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// The loop's own counters, kept by the backend (the io_uring worker) in [`super::Io`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopStats {
    /// Time from the end of a pass's wait to the end of its work, in nanoseconds
    /// ([`PASS_NANOS`]).
    pub pass_nanos: Histogram,
    /// Submission queue entries pushed per pass ([`SUBMISSIONS`]).
    pub submissions: Histogram,
}

/// What one worker reported.
#[derive(Debug, Clone, Default)]
pub struct WorkerMetrics {
    /// The worker's index.
    pub worker: usize,
    /// Counters and gauges from the runtime, the engine and the layer above.
    pub samples: Vec<Sample>,
    /// The loop's histograms.
    pub loop_stats: LoopStats,
    /// Messages waiting in the worker's mailbox, read by the scraper before it asked.
    pub mailbox_depth: usize,
}

impl WorkerMetrics {
    /// Adds a counter sample.
    pub fn counter(&mut self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)], value: u64) {
        self.push(name, help, Kind::Counter, labels, value);
    }

    /// Adds a gauge sample.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)], value: u64) {
        self.push(name, help, Kind::Gauge, labels, value);
    }

    fn push(&mut self, name: &'static str, help: &'static str, kind: Kind, labels: &[(&'static str, &str)], value: u64) {
        let labels = labels.iter().map(|&(k, v)| (k, v.to_string())).collect();
        self.samples.push(Sample { name, help, kind, labels, value });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_inclusive_and_cumulative() {
        let bounds = [1, 10, 100];
        let mut h = Histogram::default();
        for v in [0, 1, 2, 10, 11, 100, 5000] {
            h.record(&bounds, v);
        }
        assert_eq!(&h.counts[..4], &[2, 2, 2, 1]);
        assert_eq!(h.cumulative(&bounds).collect::<Vec<_>>(), vec![(1, 2), (10, 4), (100, 6)]);
        assert_eq!((h.count, h.sum), (7, 5124));
        let mut m = h;
        m.merge(&h);
        assert_eq!((m.count, m.counts[3]), (14, 2));
    }
}
