//! The loop every processor shares: consume the partitions of a topic this
//! worker leases (`partition_leases`), gather
//! a batch, decode, keep the newest version per key (coalescing), drop versions
//! not newer than the applied ones (version guard), hand the rest to the
//! entity's [`Applier`], dead-letter what it cannot apply, record the applied
//! versions, and only then commit the Kafka offsets. A crash replays the batch;
//! the version guard and idempotent writes make that harmless.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, register_histogram_vec,
    register_int_counter_vec, register_int_gauge_vec,
};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::Lane;
use super::partition_leases::PartitionLeases;
use super::state::{StateDb, StateError, Version, is_newer};
use crate::bus::BusError;
use crate::bus::avro::AvroCodec;
use crate::bus::dlq::DeadLetter;
use crate::bus::group;
use crate::bus::producer::EventProducer;
use crate::bus::topics::{DEAD_LETTERS, ensure_topics};
use crate::config::Config;
use crate::shop::admin_api::AdminApiError;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("Kafka consumer: {0}")]
    Consumer(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("ERP database: {}", crate::pg::error::db_error_text(.0))]
    ErpPostgres(#[from] tokio_postgres::Error),
    #[error("shop API: {0}")]
    Shop(#[from] AdminApiError),
    #[error("WooCommerce: {0}")]
    Woo(#[from] crate::shop::woocommerce::WooError),
    #[error(
        "the shop has no location for warehouse `{warehouse}` (looked for `{location}`); map it in the shop's warehouse_locations"
    )]
    UnknownLocation { warehouse: String, location: String },
    #[error(
        "warehouses `{first}` and `{second}` both go to the shop's location `{location}`, whose one quantity each would overwrite with its own; map each warehouse to a location of its own in the shop's warehouse_locations"
    )]
    SharedLocation {
        first: String,
        second: String,
        location: String,
    },
    #[error("ERP: {0}")]
    ErpPrivilege(String),
    #[error("ERP database: {}", crate::mysql::error_text(.0))]
    ErpMysql(#[from] mysql_async::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// A platform view that cannot fail (a catalogue already read).
impl From<std::convert::Infallible> for SyncError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl SyncError {
    /// Worth restarting for (a server away), as opposed to something an
    /// operator must fix (an unmapped warehouse, an answer the shop should not give).
    pub fn is_retryable(&self) -> bool {
        match self {
            SyncError::State(e) => e.is_retryable(),
            SyncError::ErpPostgres(e) => crate::pg::error::is_retryable(e),
            SyncError::ErpMysql(e) => crate::mysql::is_retryable(e),
            SyncError::Consumer(_) => true,
            SyncError::Bus(e) => e.is_retryable(),
            SyncError::Shop(e) => e.is_transient(),
            SyncError::Woo(e) => e.is_transient(),
            SyncError::UnknownLocation { .. }
            | SyncError::SharedLocation { .. }
            | SyncError::ErpPrivilege(_)
            | SyncError::Config(_) => false,
        }
    }
}

/// A record as its entity reads it.
#[derive(Clone, Debug)]
pub struct Decoded<E> {
    pub key: String,
    pub version: Version,
    /// When the change happened at its source (ERP commit, shop event), µs
    /// since the Unix epoch: freshness is measured from here.
    pub source_ts_micros: i64,
    pub event: E,
}

/// An event that passed the version guard.
#[derive(Clone, Debug)]
pub struct Pending<E> {
    pub key: String,
    pub version: Version,
    pub source_ts_micros: i64,
    pub event: E,
    pub partition: i32,
    pub offset: i64,
}

/// What became of one event.
#[derive(Clone, Debug)]
pub enum Outcome {
    Applied,
    /// Nothing to do on this side (e.g. a price list the shop does not use).
    NotApplicable,
    /// Nothing to apply, but worth counting under this outcome (e.g. `echo`).
    Observed(&'static str),
    DeadLetter {
        class: &'static str,
        reason: String,
    },
    /// Not applied because the other side kept changing under the write
    /// (normal concurrency): the loop applies it again after the rest of the
    /// batch, with backoff, counted as `contended`.
    Contended,
}

/// One entity's side of a processor.
pub trait Applier: Send {
    /// For metrics and the version store, e.g. `stock`.
    const ENTITY: &'static str;
    /// The logical topic consumed.
    const TOPIC: &'static str;
    type Event: Clone + Send + Sync;

    /// The key, version and event of a record, or `None` if it is not one.
    fn decode(&self, value: &apache_avro::types::Value) -> Option<Decoded<Self::Event>>;

    /// How long until a write could go out without waiting for the shop's
    /// rate budget (zero when it is not short, or the target has none). The
    /// loop gathers events meanwhile, up to `MAX_BUDGET_GATHER`.
    fn ready_in(&self) -> Duration {
        Duration::ZERO
    }

    /// Most distinct keys per batch: the configured `processors.batch_max`
    /// (at most 250, Shopify's limit per call), unless the target writes a
    /// large batch some other way (a bulk operation), where fewer, larger
    /// batches cost less.
    fn batch_max(&self, configured: usize) -> usize {
        configured
    }

    /// Applies a batch (distinct keys, all newer than applied); one outcome
    /// per event, in order. An `Err` stops the processor without committing.
    fn apply(
        &mut self,
        events: &[Pending<Self::Event>],
    ) -> impl Future<Output = Result<Vec<Outcome>, SyncError>> + Send;
}

struct ProcessorMetrics {
    events: IntCounterVec,
    freshness: HistogramVec,
    running: IntGaugeVec,
    assigned: IntGaugeVec,
    stalled: IntGaugeVec,
}

fn metrics() -> &'static ProcessorMetrics {
    static M: OnceLock<ProcessorMetrics> = OnceLock::new();
    const REGISTER: &str = "registering processor metrics";
    M.get_or_init(|| ProcessorMetrics {
        events: register_int_counter_vec!(
            Opts::new(
                "flywheel_processor_events_total",
                "Events handled by processors: applied, not_applicable, skipped_stale, coalesced, dead_lettered, contended (retried)"
            ),
            &["entity", "shop", "outcome"]
        )
        .expect(REGISTER),
        freshness: register_histogram_vec!(
            HistogramOpts::new(
                "flywheel_processor_freshness_seconds",
                "From the change at its source (ERP commit, shop event) to applied on the other side"
            )
            .buckets(vec![
                0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6,
                0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
            &["entity", "shop"]
        )
        .expect(REGISTER),
        running: register_int_gauge_vec!(
            Opts::new(
                "flywheel_processor_running",
                "1 while the entity's processor runs (state database connected, consumer subscribed, shop client built), else 0"
            ),
            &["entity", "shop"]
        )
        .expect(REGISTER),
        assigned: register_int_gauge_vec!(
            Opts::new(
                "flywheel_processor_assigned_partitions",
                "Partitions of its topic this worker's processor leases and applies"
            ),
            &["entity", "shop"]
        )
        .expect(REGISTER),
        stalled: register_int_gauge_vec!(
            Opts::new(
                "flywheel_processor_stalled",
                "1 while the processor's group has records waiting and its committed offsets have not moved for processors.stall_timeout_secs"
            ),
            &["entity", "shop"]
        )
        .expect(REGISTER),
    })
}

/// Whether `lane`'s processor is running (the processors role's readiness).
pub fn is_running(lane: &Lane) -> bool {
    metrics()
        .running
        .with_label_values(&[lane.entity, lane.shop_label()])
        .get()
        == 1
}

/// Whether `lane`'s processor is stalled (see [`watch_progress`]).
pub fn is_stalled(lane: &Lane) -> bool {
    metrics()
        .stalled
        .with_label_values(&[lane.entity, lane.shop_label()])
        .get()
        == 1
}

/// `flywheel_processor_running{entity, shop}` is 1 while this lives.
struct Running(prometheus::IntGauge);

impl Running {
    fn start(lane: &Lane) -> Running {
        let gauge = metrics()
            .running
            .with_label_values(&[lane.entity, lane.shop_label()]);
        gauge.set(1);
        Running(gauge)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.set(0);
    }
}

/// The freshness histogram, for the demo's status line and benchmarks.
pub fn freshness_histogram() -> &'static HistogramVec {
    &metrics().freshness
}

/// Backoff between re-applications of contended events.
const CONTENDED_FIRST_PAUSE: Duration = Duration::from_millis(100);
const CONTENDED_MAX_PAUSE: Duration = Duration::from_secs(5);

/// Most records read into one batch, per distinct key it may hold.
const MESSAGES_PER_KEY: usize = 20;
/// Longest a batch gathers events while the shop's budget refills.
const MAX_BUDGET_GATHER: Duration = Duration::from_secs(2);

/// Runs a processor as a long-lived worker until `shutdown`: `make` builds
/// its applier (connections included), and after a transient failure both are
/// built again and the loop resumes from the committed offsets.
pub async fn supervised<A, Fut>(
    config: &Config,
    lane: Lane,
    shutdown: CancellationToken,
    make: impl Fn() -> Fut,
) -> Result<(), SyncError>
where
    A: Applier,
    Fut: Future<Output = Result<A, SyncError>>,
{
    // One watch for the worker's whole life, across restarts: a processor
    // that keeps restarting without committing is as stuck as one that hangs.
    debug_assert_eq!((lane.entity, lane.topic), (A::ENTITY, A::TOPIC));
    let _watch = AbortOnDrop(tokio::spawn(watch_progress(config.clone(), lane.clone())));
    let role = lane.name();
    crate::supervise::with_restarts(&role, &shutdown, SyncError::is_retryable, || async {
        run(config, &lane, make().await?, shutdown.clone()).await
    })
    .await
}

/// How often a worker checks its partition leases: a partition freed by a
/// dead or stopped worker is applied again within about this long.
const LEASE_CHECK: Duration = Duration::from_secs(1);

/// `flywheel_processor_assigned_partitions{entity}`: what the run holds, 0
/// once it ended.
struct HeldGauge(prometheus::IntGauge);

impl Drop for HeldGauge {
    fn drop(&mut self) {
        self.0.set(0);
    }
}

/// A connection to a PostgreSQL ERP, with the configured TLS.
pub async fn connect_erp_postgres(config: &Config) -> Result<tokio_postgres::Client, SyncError> {
    let pg = config.erp.pg_config()?;
    Ok(crate::pg::tls::connect(&pg, &config.erp.tls()?).await?)
}

/// Runs `applier` until `shutdown` or its first error.
async fn run<A: Applier>(
    config: &Config,
    lane: &Lane,
    mut applier: A,
    shutdown: CancellationToken,
) -> Result<(), SyncError> {
    let p = &config.processors;
    let mut state = StateDb::connect(config).await?;
    ensure_topics(&config.kafka, &[A::TOPIC, DEAD_LETTERS]).await?;
    let physical_topic = config.kafka.topic(A::TOPIC);
    let partitions = {
        let (kafka, topic) = (config.kafka.clone(), physical_topic.clone());
        tokio::task::spawn_blocking(move || group::partition_count(&kafka, &topic))
            .await
            .unwrap_or(Err(rdkafka::error::KafkaError::Canceled))?
    };
    let lane_name = lane.name();
    let group = group::group_name(p, &lane_name);
    // The leases live on a session of their own: they end with this run.
    let mut leases = PartitionLeases::join(
        StateDb::connect(config).await?,
        &group,
        partitions,
        &p.instance(),
    )
    .await?;
    let consumer: StreamConsumer =
        group::processor_consumer(&config.kafka, p, &lane_name).create()?;
    let assign = |held: &std::collections::BTreeSet<i32>| -> Result<(), SyncError> {
        let mut tpl = TopicPartitionList::new();
        for partition in held {
            // No offset: the group's committed one (or `new_group_start`).
            tpl.add_partition(&physical_topic, *partition);
        }
        Ok(consumer.assign(&tpl)?)
    };
    let shop = lane.shop_label();
    let held_gauge = HeldGauge(metrics().assigned.with_label_values(&[A::ENTITY, shop]));
    let mut lease_check = tokio::time::interval(LEASE_CHECK);
    lease_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let dlq = EventProducer::shared(&config.kafka, "processor")?;
    let codec = AvroCodec::for_topic(A::TOPIC).map_err(BusError::from)?;
    let wait = Duration::from_millis(p.batch_wait_ms);
    let m = metrics();
    let count = |outcome: &str, n: u64| {
        m.events
            .with_label_values(&[A::ENTITY, shop, outcome])
            .inc_by(n)
    };
    let freshness = m.freshness.with_label_values(&[A::ENTITY, shop]);
    let _running = Running::start(lane);
    loop {
        // Between batches everything consumed is committed: the moment to
        // take or give back partitions.
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = lease_check.tick() => {
                leases.rebalance(assign).await?;
                held_gauge.0.set(leases.held().len() as i64);
                continue;
            }
            msg = consumer.recv() => msg?.detach(),
        };
        // A batch is up to `batch_max` distinct keys: what has arrived by
        // `batch_wait` after the first (by default nothing is waited for, so a
        // lone change goes out at once) or, when the shop's budget is short,
        // by the time it affords the write — the wait the write would have
        // spent anyway, now spent gathering. While the previous batch was applied
        // or waited for the shop's budget, changes queued up; reading several
        // versions of a key here and keeping the newest is the coalescing
        // (bounded, so memory is too).
        let mut keys: HashSet<Vec<u8>> = HashSet::new();
        keys.insert(first.key().unwrap_or_default().to_vec());
        let mut batch = vec![first];
        let gather_start = tokio::time::Instant::now();
        let budget_wait = applier.ready_in().min(MAX_BUDGET_GATHER);
        let deadline = gather_start + wait.max(budget_wait);
        let batch_max = applier.batch_max(p.batch_max);
        let max_messages = (p.batch_max * MESSAGES_PER_KEY).max(batch_max);
        while keys.len() < batch_max && batch.len() < max_messages {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(msg) => {
                    let msg = msg?.detach();
                    keys.insert(msg.key().unwrap_or_default().to_vec());
                    batch.push(msg);
                }
                Err(_) => break,
            }
        }
        if budget_wait > wait {
            let waited = gather_start
                .elapsed()
                .saturating_sub(wait)
                .min(budget_wait - wait);
            crate::shop::api::record_budget_wait(A::ENTITY, shop, waited);
        }

        let mut letters = Vec::new();
        let mut newest: HashMap<String, Pending<A::Event>> = HashMap::new();
        for msg in &batch {
            let decoded = codec
                .decode(msg.payload().unwrap_or_default())
                .ok()
                .and_then(|v| applier.decode(&v));
            let Some(Decoded {
                key,
                version,
                source_ts_micros,
                event,
            }) = decoded
            else {
                letters.push((
                    msg,
                    "undecodable",
                    format!("not a valid {} record", A::TOPIC),
                ));
                continue;
            };
            let candidate = Pending {
                key: key.clone(),
                version,
                source_ts_micros,
                event,
                partition: msg.partition(),
                offset: msg.offset(),
            };
            match newest.get(&key) {
                Some(prev) if prev.version >= candidate.version => count("coalesced", 1),
                _ => {
                    if newest.insert(key, candidate).is_some() {
                        count("coalesced", 1);
                    }
                }
            }
        }
        let keys: Vec<String> = newest.keys().cloned().collect();
        let applied = state.load_versions(&lane_name, &keys).await?;
        let fresh: Vec<Pending<A::Event>> = newest
            .into_values()
            .filter(|e| is_newer(&e.version, applied.get(&e.key)))
            .collect();
        count("skipped_stale", (keys.len() - fresh.len()) as u64);

        let mut outcomes = if fresh.is_empty() {
            Vec::new()
        } else {
            // A batch waiting for shop budget can take long; on shutdown it is
            // dropped unfinished. Nothing was recorded or committed for it, so
            // the next start replays it, and the writes are idempotent.
            tokio::select! {
                r = applier.apply(&fresh) => r?,
                _ = shutdown.cancelled() => return Ok(()),
            }
        };
        // Contended events go again after the rest of the batch, until they
        // land; the offsets wait for them.
        let mut pause = CONTENDED_FIRST_PAUSE;
        loop {
            let again: Vec<usize> = (0..outcomes.len())
                .filter(|i| matches!(outcomes[*i], Outcome::Contended))
                .collect();
            if again.is_empty() {
                break;
            }
            count("contended", again.len() as u64);
            let events: Vec<Pending<A::Event>> = again.iter().map(|i| fresh[*i].clone()).collect();
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
            pause = (pause * 2).min(CONTENDED_MAX_PAUSE);
            let retried = tokio::select! {
                r = applier.apply(&events) => r?,
                _ = shutdown.cancelled() => return Ok(()),
            };
            for (i, outcome) in again.into_iter().zip(retried) {
                outcomes[i] = outcome;
            }
        }
        let mut done = Vec::new();
        let now_micros = chrono::Utc::now().timestamp_micros();
        for (e, outcome) in fresh.iter().zip(outcomes) {
            match outcome {
                Outcome::Applied => {
                    count("applied", 1);
                    freshness.observe((now_micros - e.source_ts_micros).max(0) as f64 / 1e6);
                    done.push((e.key.clone(), e.version.clone()));
                }
                Outcome::NotApplicable => {
                    count("not_applicable", 1);
                    done.push((e.key.clone(), e.version.clone()));
                }
                Outcome::Observed(what) => {
                    count(what, 1);
                    done.push((e.key.clone(), e.version.clone()));
                }
                // Retried above until it was something else.
                Outcome::Contended => {}
                Outcome::DeadLetter { class, reason } => {
                    if let Some(msg) = batch
                        .iter()
                        .find(|x| x.partition() == e.partition && x.offset() == e.offset)
                    {
                        letters.push((msg, class, reason));
                    }
                }
            }
        }
        for (msg, class, reason) in letters {
            count("dead_lettered", 1);
            let letter = dead_letter::<A>(&lane_name, msg, class, reason);
            // An operator must act on each (fix the cause, then `flywheel dlq
            // redrive`), so each is named where they look first.
            tracing::warn!(
                lane = %lane_name, key = %letter.key, class, reason = %letter.reason,
                partition = msg.partition(), offset = msg.offset(),
                "dead-lettered an event the shop cannot take; see `flywheel dlq list`"
            );
            dlq.send(letter.to_record()?).await?;
        }
        state.store_versions(&lane_name, &done).await?;

        // Applied or dead-lettered: now the offsets may move.
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for msg in &batch {
            let e = next.entry(msg.partition()).or_insert(0);
            *e = (*e).max(msg.offset() + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in next {
            tpl.add_partition_offset(&physical_topic, partition, Offset::Offset(offset))?;
        }
        consumer.commit(&tpl, CommitMode::Sync)?;
    }
}

/// Aborts a task when dropped: the watch ends with its processor.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches one processor until aborted: marks it stalled
/// (`flywheel_processor_stalled`, not ready, a warning once a minute saying
/// why) while its group has records waiting and for
/// `processors.stall_timeout_secs` neither the group's committed offsets moved
/// nor the shop answered one of its requests (a large batch under the shop's
/// rate limit commits rarely but is working). The group's offsets, not this
/// worker's, so a worker whose partitions other workers lease and apply is not
/// stalled, but a group nobody makes progress in is.
async fn watch_progress(config: Config, lane: Lane) {
    let m = metrics();
    let (entity, shop) = (lane.entity, lane.shop_label());
    let (assigned, stalled) = (
        m.assigned.with_label_values(&[entity, shop]),
        m.stalled.with_label_values(&[entity, shop]),
    );
    let limit = config.processors.stall_timeout();
    let every = (limit / 4).clamp(Duration::from_millis(500), Duration::from_secs(15));
    let group = group::group_name(&config.processors, &lane.name());
    let physical = config.kafka.topic(lane.topic);
    let mut last_committed: Option<i64> = None;
    let mut last_answers = crate::shop::admin_api::successful_requests(entity, shop);
    let mut moved_at = tokio::time::Instant::now();
    let mut warned_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(every).await;
        let (kafka, g, t) = (config.kafka.clone(), group.clone(), physical.clone());
        let lags = match tokio::task::spawn_blocking(move || group::group_lag(&kafka, &g, &t)).await
        {
            Ok(Ok(Some(lags))) => lags,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                tracing::debug!(entity, error = %e, "could not read the group's lag");
                continue;
            }
            Err(e) => {
                tracing::debug!(entity, error = %e, "lag task failed");
                continue;
            }
        };
        let waiting: i64 = lags.iter().map(|l| l.lag).sum();
        let committed: i64 = lags.iter().filter_map(|l| l.committed).sum();
        let now = tokio::time::Instant::now();
        let answers = crate::shop::admin_api::successful_requests(entity, shop);
        if waiting == 0 || last_committed != Some(committed) || answers != last_answers {
            moved_at = now;
        }
        last_answers = answers;
        last_committed = Some(committed);
        let still = now - moved_at;
        if still < limit {
            if stalled.get() == 1 {
                tracing::info!(entity, shop, "processor is moving again");
            }
            stalled.set(0);
            warned_at = None;
            continue;
        }
        stalled.set(1);
        if warned_at.is_some_and(|w| now - w < Duration::from_secs(60)) {
            continue;
        }
        warned_at = Some(now);
        let (secs, held) = (still.as_secs(), assigned.get());
        if held == 0 {
            tracing::warn!(
                entity, shop, group = %group, waiting, still_secs = secs,
                "processor stalled: this worker leases no partition while {waiting} records wait and \
                 the group committed nothing for {secs} s; other workers hold the leases and do not \
                 progress, or this worker cannot reach the state database (its errors are logged \
                 above); `flywheel replay` names the workers holding leases"
            );
        } else {
            tracing::warn!(
                entity, shop, group = %group, waiting, held, still_secs = secs,
                "processor stalled: it holds {held} partitions, {waiting} records wait, and for {secs} s \
                 no batch was committed and the shop answered none of its requests; the errors \
                 logged above say what it waits for (the shop's API, the state database)"
            );
        }
    }
}

fn dead_letter<A: Applier>(
    lane: &str,
    msg: &OwnedMessage,
    class: &str,
    reason: String,
) -> DeadLetter {
    DeadLetter {
        key: String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
        error_class: class.into(),
        reason,
        stage: format!("processor.{lane}"),
        occurred_at_micros: chrono::Utc::now().timestamp_micros(),
        attempts: 1,
        original_topic: Some(A::TOPIC.into()),
        original_partition: Some(msg.partition()),
        original_offset: Some(msg.offset()),
        payload: msg.payload().map(<[u8]>::to_vec),
        ..Default::default()
    }
}
