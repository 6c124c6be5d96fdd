//! The ERP source's Prometheus metrics, registered in the default registry that
//! `/metrics` serves.

use std::sync::OnceLock;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge,
};

/// Registration fails only on a duplicate name, which is a programming error.
const REGISTER: &str = "registering a source metric";

/// Fine at the low end, where a healthy pipeline lives, so p50/p99 read well.
pub const COMMIT_TO_ACK_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0,
];

pub struct SourceMetrics {
    pub events: IntCounterVec,
    pub snapshot_events: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub transactions: IntCounter,
    pub row_changes: IntCounter,
    pub replication_lag_bytes: IntGauge,
    pub confirmed_flush_lsn: IntGauge,
    pub last_commit_unix_micros: IntGauge,
    pub commit_to_ack_seconds: HistogramVec,
    pub batch_transactions: Histogram,
}

impl SourceMetrics {
    pub fn get() -> &'static SourceMetrics {
        static M: OnceLock<SourceMetrics> = OnceLock::new();
        M.get_or_init(|| SourceMetrics {
            events: register_int_counter_vec!(
                Opts::new(
                    "flywheel_source_events_total",
                    "Entity events produced to Kafka and acknowledged, by entity"
                ),
                &["entity"]
            )
            .expect(REGISTER),
            snapshot_events: register_int_counter_vec!(
                Opts::new(
                    "flywheel_source_snapshot_events_total",
                    "Entity events produced by the initial snapshot, by entity"
                ),
                &["entity"]
            )
            .expect(REGISTER),
            dead_letters: register_int_counter_vec!(
                Opts::new(
                    "flywheel_source_dead_letters_total",
                    "ERP changes sent to the dead-letter topic, by entity and error class"
                ),
                &["entity", "error_class"]
            )
            .expect(REGISTER),
            transactions: register_int_counter!(
                "flywheel_source_transactions_total",
                "Committed ERP transactions decoded from the replication stream"
            )
            .expect(REGISTER),
            row_changes: register_int_counter!(
                "flywheel_source_row_changes_total",
                "Row changes (insert, update, delete, truncate) decoded"
            )
            .expect(REGISTER),
            replication_lag_bytes: register_int_gauge!(
                "flywheel_source_replication_lag_bytes",
                "Server WAL position minus the slot's confirmed flush position"
            )
            .expect(REGISTER),
            confirmed_flush_lsn: register_int_gauge!(
                "flywheel_source_confirmed_flush_lsn",
                "The position Flywheel last confirmed to PostgreSQL (as a number)"
            )
            .expect(REGISTER),
            last_commit_unix_micros: register_int_gauge!(
                "flywheel_source_last_commit_timestamp_micros",
                "Commit time of the last captured ERP transaction (Unix microseconds); \
                     seconds since = time() - this / 1e6"
            )
            .expect(REGISTER),
            commit_to_ack_seconds: register_histogram_vec!(
                HistogramOpts::new(
                    "flywheel_source_commit_to_ack_seconds",
                    "ERP commit to Kafka acknowledgement of the entity event"
                )
                .buckets(COMMIT_TO_ACK_BUCKETS.to_vec()),
                &["entity"]
            )
            .expect(REGISTER),
            batch_transactions: register_histogram!(
                HistogramOpts::new(
                    "flywheel_source_batch_transactions",
                    "Transactions merged into one re-read batch"
                )
                .buckets(vec![1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0])
            )
            .expect(REGISTER),
        })
    }
}

/// Seconds since the last captured commit, as a gauge computed at scrape time.
pub fn register_seconds_since_last_commit() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let collector = SinceLastCommit {
            desc: prometheus::core::Desc::new(
                "flywheel_source_seconds_since_last_commit".into(),
                "Seconds since the commit time of the last captured ERP transaction".into(),
                vec![],
                Default::default(),
            )
            .expect("valid descriptor"),
        };
        if let Err(e) = prometheus::register(Box::new(collector)) {
            tracing::warn!(error = %e, "could not register seconds-since-last-commit");
        }
    });
}

struct SinceLastCommit {
    desc: prometheus::core::Desc,
}

impl prometheus::core::Collector for SinceLastCommit {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let last = SourceMetrics::get().last_commit_unix_micros.get();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as i64;
        let value = if last == 0 {
            f64::NAN
        } else {
            (now - last) as f64 / 1e6
        };
        let gauge = prometheus::Gauge::with_opts(Opts::new(
            "flywheel_source_seconds_since_last_commit",
            "Seconds since the commit time of the last captured ERP transaction",
        ))
        .expect("valid gauge");
        gauge.set(value);
        prometheus::core::Collector::collect(&gauge)
    }
}

/// Cumulative bucket counts of a histogram vector, summed over its labels:
/// enough to read quantiles, and to subtract an earlier reading to get the
/// quantiles of an interval.
#[derive(Clone, Debug, Default)]
pub struct BucketCounts(Vec<(f64, u64)>);

impl BucketCounts {
    pub fn take(h: &prometheus::HistogramVec) -> BucketCounts {
        let mut buckets: Vec<(f64, u64)> = Vec::new();
        for family in prometheus::core::Collector::collect(h) {
            for metric in family.get_metric() {
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
