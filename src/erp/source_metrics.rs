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
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
                ]),
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
