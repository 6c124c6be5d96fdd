//! Quantiles of Prometheus histograms read in-process: the demo's status line
//! and the benchmarks report p50/p99 over an interval from them.

/// Cumulative bucket counts of a histogram vector, summed over its labels:
/// enough to read quantiles, and to subtract an earlier reading to get the
/// quantiles of an interval.
#[derive(Clone, Debug, Default)]
pub struct BucketCounts(Vec<(f64, u64)>);

impl BucketCounts {
    pub fn take(h: &prometheus::HistogramVec) -> BucketCounts {
        Self::take_where(h, |_| true)
    }

    /// Like [`BucketCounts::take`], over the series whose label values pass `keep`.
    pub fn take_where(
        h: &prometheus::HistogramVec,
        keep: impl Fn(&[&str]) -> bool,
    ) -> BucketCounts {
        let mut buckets: Vec<(f64, u64)> = Vec::new();
        for family in prometheus::core::Collector::collect(h) {
            for metric in family.get_metric() {
                let labels: Vec<&str> = metric.get_label().iter().map(|l| l.value()).collect();
                if !keep(&labels) {
                    continue;
                }
                for (i, b) in metric.get_histogram().get_bucket().iter().enumerate() {
                    if buckets.len() <= i {
                        buckets.push((b.upper_bound(), 0));
                    }
                    buckets[i].1 += b.cumulative_count();
                }
            }
        }
        BucketCounts(buckets)
    }

    /// Observations since `earlier`.
    pub fn since(&self, earlier: &BucketCounts) -> BucketCounts {
        BucketCounts(
            self.0
                .iter()
                .enumerate()
                .map(|(i, (b, c))| (*b, c - earlier.0.get(i).map_or(0, |e| e.1)))
                .collect(),
        )
    }

    /// Observations counted in finite buckets.
    pub fn count(&self) -> u64 {
        self.0.last().map_or(0, |b| b.1)
    }

    /// The q-quantile, interpolated linearly inside its bucket as Prometheus'
    /// `histogram_quantile` does. `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut prev = (0.0, 0u64);
        for &(bound, cum) in &self.0 {
            if cum as f64 >= rank {
                let in_bucket = (cum - prev.1) as f64;
                let frac = if in_bucket > 0.0 {
                    (rank - prev.1 as f64) / in_bucket
                } else {
                    1.0
                };
                return Some(prev.0 + (bound - prev.0) * frac);
            }
            prev = (bound, cum);
        }
        Some(prev.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = BucketCounts(vec![(0.01, 50), (0.02, 90), (0.1, 100)]);
        assert!((b.quantile(0.5).unwrap() - 0.01).abs() < 1e-9);
        assert!((b.quantile(0.7).unwrap() - 0.015).abs() < 1e-9);
        assert!((b.quantile(0.99).unwrap() - 0.092).abs() < 1e-9);
        let earlier = BucketCounts(vec![(0.01, 50), (0.02, 50), (0.1, 50)]);
        let d = b.since(&earlier);
        assert_eq!(d.count(), 50);
        assert!((d.quantile(0.5).unwrap() - 0.01625).abs() < 1e-9);
        assert_eq!(BucketCounts::default().quantile(0.5), None);
    }
}
