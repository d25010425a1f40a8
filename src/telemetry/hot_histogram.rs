//! Fixed-bucket histograms of durations for the metrics recorded on every statement: a record is
//! two relaxed atomic additions (a bucket and the sum), where the exporter's histogram handle
//! stored every sample in a shared list (about 170 instructions a record, most of a transaction's
//! metrics work). Rendered at each scrape in Prometheus's text format, as the exporter would.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A histogram with the upper bounds `bounds` (seconds, ascending) and a last bucket above them.
pub struct DurationHistogram<const N: usize> {
    bounds: &'static [f64; N],
    /// Samples per bucket, not cumulative; index N counts those above every bound.
    buckets: [AtomicU64; N],
    above: AtomicU64,
    sum_nanos: AtomicU64,
}

impl<const N: usize> DurationHistogram<N> {
    /// An empty histogram over `bounds`.
    pub const fn new(bounds: &'static [f64; N]) -> DurationHistogram<N> {
        DurationHistogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            above: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Counts one sample.
    pub fn record(&self, value: Duration) {
        let secs = value.as_secs_f64();
        let slot = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .and_then(|i| self.buckets.get(i))
            .unwrap_or(&self.above);
        slot.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Samples recorded so far (the `_count` line; also what a counter of the same events reads).
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .chain(std::iter::once(&self.above))
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    /// Appends the `_bucket`, `_sum` and `_count` lines of this histogram to `out`, with `labels`
    /// (`key="value"` pairs joined by commas, or empty) on each. The count is the buckets' total,
    /// so it always equals the `+Inf` bucket, however records race with the scrape.
    pub fn render(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.above.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static BOUNDS: [f64; 3] = [0.001, 0.01, 1.0];

    #[test]
    fn samples_land_in_the_first_bucket_that_holds_them() {
        let h = DurationHistogram::new(&BOUNDS);
        for ms in [0, 1, 5, 10, 500, 2000] {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 6);
        let mut text = String::new();
        h.render("x_seconds", "route=\"single\"", &mut text);
        assert_eq!(
            text,
            "x_seconds_bucket{route=\"single\",le=\"0.001\"} 2\n\
             x_seconds_bucket{route=\"single\",le=\"0.01\"} 4\n\
             x_seconds_bucket{route=\"single\",le=\"1\"} 5\n\
             x_seconds_bucket{route=\"single\",le=\"+Inf\"} 6\n\
             x_seconds_sum{route=\"single\"} 2.516\n\
             x_seconds_count{route=\"single\"} 6\n"
        );
    }

    #[test]
    fn without_labels_only_le_is_given() {
        let h = DurationHistogram::new(&BOUNDS);
        h.record(Duration::ZERO);
        let mut text = String::new();
        h.render("w", "", &mut text);
        assert!(text.starts_with("w_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.ends_with("w_sum 0\nw_count 1\n"), "{text}");
    }
}
