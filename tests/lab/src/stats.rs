//! The emulator's punctuality and throughput figures, kept lock-free so the threads that
//! send answers can record every one without slowing down: a log-linear histogram of
//! send lateness (for percentiles) and a timeline of answers per 100 ms (for the peak
//! rate).

use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two: values are kept to within 1/8 (12.5%) of their size,
/// plenty for lateness percentiles.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets for values up to 2^64: the first `SUB` hold 0..SUB exactly.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros(); // ≥ SUB_BITS
    let shift = msb - SUB_BITS;
    let sub = (v >> shift) & (SUB - 1);
    ((shift as u64 + 1) * SUB + sub) as usize
}

/// The largest value that lands in bucket `b` (percentiles report this upper edge, so
/// they never understate).
fn bucket_high(b: usize) -> u64 {
    let b = b as u64;
    if b < SUB {
        return b;
    }
    let shift = b / SUB - 1;
    let sub = b % SUB;
    let low = (SUB + sub) << shift;
    low.saturating_add((1u64 << shift) - 1)
}

/// A concurrent histogram of non-negative values (nanoseconds here).
#[derive(Debug)]
pub struct Histogram {
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

/// What a histogram holds at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Histogram {
    pub fn record(&self, v: u64) {
        self.counts[bucket_of(v)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
    }

    /// How many values were at least `v`, give or take the bucket `v` falls in (values
    /// down to 1/8 below `v` may count).
    pub fn count_at_least(&self, v: u64) -> u64 {
        self.counts[bucket_of(v)..]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// The smallest value (its bucket's upper edge) with at least a share `p` (0..=1) of
    /// the values at or below it; 0 when empty.
    pub fn quantile(&self, p: f64) -> u64 {
        quantile_of(&load_all(&self.counts), self.max.load(Ordering::Relaxed), p)
    }

    pub fn summary(&self) -> Summary {
        let counts = load_all(&self.counts);
        let count: u64 = counts.iter().sum();
        let max = self.max.load(Ordering::Relaxed);
        let q = |p: f64| quantile_of(&counts, max, p);
        Summary {
            count,
            mean: if count == 0 {
                0.0
            } else {
                self.sum.load(Ordering::Relaxed) as f64 / count as f64
            },
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max,
        }
    }
}

/// A snapshot of counters that other threads may still be adding to.
fn load_all(counters: &[AtomicU64]) -> Vec<u64> {
    counters.iter().map(|c| c.load(Ordering::Relaxed)).collect()
}

fn quantile_of(counts: &[u64], max: u64, p: f64) -> u64 {
    let count: u64 = counts.iter().sum();
    if count == 0 {
        return 0;
    }
    let rank = ((p.clamp(0.0, 1.0) * count as f64).ceil() as u64).clamp(1, count);
    let mut seen = 0;
    for (b, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return bucket_high(b).min(max);
        }
    }
    max
}

/// Events counted per fixed-width bin since a start instant; events past the last bin
/// count in it, so nothing is lost on a long run.
#[derive(Debug)]
pub struct Timeline {
    bin_ns: u64,
    bins: Vec<AtomicU64>,
}

impl Timeline {
    pub fn new(bin_ns: u64, bins: usize) -> Self {
        Timeline {
            bin_ns: bin_ns.max(1),
            bins: (0..bins.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn record(&self, at_ns: u64) {
        let i = ((at_ns / self.bin_ns) as usize).min(self.bins.len() - 1);
        self.bins[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The highest rate (events per second) over any window of `window_bins` consecutive
    /// bins.
    pub fn peak_per_s(&self, window_bins: usize) -> f64 {
        let v = load_all(&self.bins);
        let w = window_bins.clamp(1, v.len());
        let mut sum: u64 = v[..w].iter().sum();
        let mut best = sum;
        for i in w..v.len() {
            sum = sum + v[i] - v[i - w];
            best = best.max(sum);
        }
        best as f64 * 1e9 / (w as u64 * self.bin_ns) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_and_bound_it_within_an_eighth() {
        let mut prev = 0;
        for v in (0..5000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b < BUCKETS, "{v}");
            assert!(b >= prev || v > 5000, "buckets are monotonic");
            prev = b;
            let hi = bucket_high(b);
            assert!(hi >= v, "{v} above its bucket's edge {hi}");
            assert!(hi - v <= v / 8, "{v}: edge {hi} too far");
        }
    }

    #[test]
    fn percentiles_of_a_known_set() {
        let h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000); // 1 µs .. 1 ms
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((s.mean - 500_500.0).abs() < 1e-6);
        assert_eq!(s.max, 1_000_000);
        let near = |got: u64, want: u64| got >= want && got <= want + want / 8;
        assert!(near(s.p50, 500_000), "{s:?}");
        assert!(near(s.p99, 990_000), "{s:?}");
        assert!(s.p999 <= s.max && near(s.p999, 999_000), "{s:?}");
        // Exactly: 1 value is >= 1 ms and 101 are >= 900 us; within a bucket, those down
        // to 1/8 below may count too.
        assert!((1..=126).contains(&h.count_at_least(1_000_000)));
        assert!((101..=213).contains(&h.count_at_least(900_000)));
        assert_eq!(h.count_at_least(0), 1000);
        assert_eq!(Histogram::default().summary().p99, 0);
        assert!(near(h.quantile(0.95), 950_000), "{}", h.quantile(0.95));
        assert_eq!(h.quantile(1.0), 1_000_000);
        assert!(near(h.quantile(0.0), 1000), "{}", h.quantile(0.0));
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }

    #[test]
    fn timeline_peak_over_a_window() {
        let t = Timeline::new(100_000_000, 50); // 100 ms bins, 5 s
        for i in 0..10 {
            t.record(1_000_000_000 + i); // 10 events in the bin at 1.0 s
        }
        t.record(1_150_000_000);
        t.record(60_000_000_000); // past the end: counted in the last bin
        assert!((t.peak_per_s(1) - 100.0).abs() < 1e-9);
        assert!((t.peak_per_s(10) - 11.0).abs() < 1e-9);
    }
}
