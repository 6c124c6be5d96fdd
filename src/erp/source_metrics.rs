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
    pub own_write_transactions: IntCounter,
    pub row_changes: IntCounter,
    pub replication_lag_bytes: IntGauge,
    /// 1 while the source streams changes from its slot (snapshot done).
    pub streaming: IntGauge,
    pub confirmed_flush_lsn: IntGauge,
    pub last_commit_unix_micros: IntGauge,
    /// Commit time of the oldest transaction being processed and not yet
    /// confirmed (0 when everything captured is confirmed).
    pub oldest_unconfirmed_commit_micros: IntGauge,
    pub commit_to_ack_seconds: HistogramVec,
    pub batch_transactions: Histogram,
    /// Snapshots that did not yet show a delivered transaction as committed
    /// (`erp::visibility`): how often reading at once would have read stale.
    pub visibility_waits: IntCounter,
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
            own_write_transactions: register_int_counter!(
                "flywheel_source_own_write_transactions_total",
                "ERP transactions written by Flywheel itself (its replication origin), not captured"
            )
            .expect(REGISTER),
            visibility_waits: register_int_counter!(
                "flywheel_source_visibility_waits_total",
                "Times a transaction from the replication stream was not yet visible to queries, so the source waited before reading its entities"
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
            streaming: register_int_gauge!(
                "flywheel_source_streaming",
                "1 while the source streams changes from its replication slot (initial snapshot done), else 0"
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
            oldest_unconfirmed_commit_micros: IntGauge::new(
                "flywheel_source_oldest_unconfirmed_commit_micros",
                "Commit time of the oldest transaction in flight (not registered; read by the lag collector)"
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

impl SourceMetrics {
    /// Exports every entity's series at 0 from the start, so a rate or an
    /// alert sees them before the first change.
    pub fn init_entities<'a>(&self, entities: impl IntoIterator<Item = &'a str>) {
        for entity in entities {
            self.events.with_label_values(&[entity]);
            self.snapshot_events.with_label_values(&[entity]);
            for class in DEAD_LETTER_CLASSES {
                self.dead_letters.with_label_values(&[entity, class]);
            }
        }
    }
}

/// The source's dead-letter classes (the `error_class` label).
pub const DEAD_LETTER_CLASSES: [&str; 2] = ["invalid_model_row", "unmappable_row"];

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
            lag_desc: prometheus::core::Desc::new(
                LAG_SECONDS.into(),
                LAG_SECONDS_HELP.into(),
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

const LAG_SECONDS: &str = "flywheel_source_replication_lag_seconds";
const LAG_SECONDS_HELP: &str =
    "Age of the oldest captured ERP transaction not yet confirmed (0 when caught up)";

struct SinceLastCommit {
    desc: prometheus::core::Desc,
    lag_desc: prometheus::core::Desc,
}

impl prometheus::core::Collector for SinceLastCommit {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc, &self.lag_desc]
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
        let oldest = SourceMetrics::get().oldest_unconfirmed_commit_micros.get();
        let lag = prometheus::Gauge::with_opts(Opts::new(LAG_SECONDS, LAG_SECONDS_HELP))
            .expect("valid gauge");
        lag.set(if oldest == 0 {
            0.0
        } else {
            ((now - oldest).max(0)) as f64 / 1e6
        });
        let mut families = prometheus::core::Collector::collect(&gauge);
        families.extend(prometheus::core::Collector::collect(&lag));
        families
    }
}
