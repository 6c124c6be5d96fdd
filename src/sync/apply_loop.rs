//! The loop every processor shares: consume a topic in a consumer group, gather
//! a batch, decode, keep the newest version per key (coalescing), drop versions
//! not newer than the applied ones (version guard), hand the rest to the
//! entity's [`Applier`], dead-letter what it cannot apply, record the applied
//! versions, and only then commit the Kafka offsets. A crash replays the batch;
//! the version guard and idempotent writes make that harmless.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, register_int_counter_vec};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::version_store::{Version, VersionStore, is_newer};
use crate::bus::BusError;
use crate::bus::avro::AvroCodec;
use crate::bus::dlq::DeadLetter;
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
    #[error("state database: {0}")]
    State(#[from] tokio_postgres::Error),
    #[error("shop API: {0}")]
    Shop(#[from] AdminApiError),
    #[error(
        "the shop has no location for warehouse `{warehouse}` (looked for `{location}`); set processors.warehouse_locations"
    )]
    UnknownLocation { warehouse: String, location: String },
    #[error("unexpected shop answer: {0}")]
    ShopAnswer(String),
}

impl SyncError {
    /// Worth restarting for (a server away), as opposed to something an
    /// operator must fix (an unmapped warehouse, an answer the shop should not give).
    pub fn is_retryable(&self) -> bool {
        match self {
            SyncError::Consumer(_) | SyncError::State(_) => true,
            SyncError::Bus(e) => !matches!(e, BusError::Avro(_)),
            SyncError::Shop(e) => e.is_transient(),
            SyncError::UnknownLocation { .. } | SyncError::ShopAnswer(_) => false,
        }
    }
}

/// An event that passed the version guard.
#[derive(Clone, Debug)]
pub struct Pending<E> {
    pub key: String,
    pub version: Version,
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
    DeadLetter {
        class: &'static str,
        reason: String,
    },
}

/// One entity's side of a processor.
pub trait Applier: Send {
    /// For metrics and the version store, e.g. `stock`.
    const ENTITY: &'static str;
    /// The logical topic consumed.
    const TOPIC: &'static str;
    type Event: Clone + Send + Sync;

    /// The key, version and event of a record, or `None` if it is not one.
    fn decode(&self, value: &apache_avro::types::Value) -> Option<(String, Version, Self::Event)>;

    /// Applies a batch (distinct keys, all newer than applied); one outcome
    /// per event, in order. An `Err` stops the processor without committing.
    fn apply(
        &mut self,
        events: &[Pending<Self::Event>],
    ) -> impl Future<Output = Result<Vec<Outcome>, SyncError>> + Send;
}

fn metrics() -> &'static IntCounterVec {
    static M: OnceLock<IntCounterVec> = OnceLock::new();
    M.get_or_init(|| {
        register_int_counter_vec!(
            Opts::new(
                "flywheel_processor_events_total",
                "Events handled by processors: applied, not_applicable, skipped_stale, coalesced, dead_lettered"
            ),
            &["entity", "outcome"]
        )
        .expect("registering processor metrics")
    })
}

/// Runs `applier` until `shutdown`.
pub async fn run<A: Applier>(
    config: &Config,
    mut applier: A,
    shutdown: CancellationToken,
) -> Result<(), SyncError> {
    let p = &config.processors;
    let state_dsn = p
        .state_dsn
        .clone()
        .unwrap_or_else(|| config.erp.dsn.clone());
    let (state, conn) = tokio_postgres::connect(&state_dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let store = VersionStore::open(&state, A::ENTITY).await?;
    ensure_topics(&config.kafka, &[A::TOPIC, DEAD_LETTERS]).await?;
    let physical_topic = config.kafka.topic(A::TOPIC);
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.bootstrap)
        .set("group.id", format!("{}.{}", p.group_id, A::ENTITY))
        .set(
            "client.id",
            format!("{}-processor-{}", config.kafka.client_id, A::ENTITY),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&physical_topic])?;
    let dlq = EventProducer::new(&config.kafka, "processor")?;
    let codec = AvroCodec::for_topic(A::TOPIC).map_err(BusError::from)?;
    let wait = Duration::from_millis(p.batch_wait_ms);
    let m = metrics();
    let count = |outcome: &str, n: u64| m.with_label_values(&[A::ENTITY, outcome]).inc_by(n);
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            msg = consumer.recv() => msg?.detach(),
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + wait;
        while batch.len() < p.batch_max {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(msg) => batch.push(msg?.detach()),
                Err(_) => break,
            }
        }

        let mut letters = Vec::new();
        let mut newest: HashMap<String, Pending<A::Event>> = HashMap::new();
        for msg in &batch {
            let decoded = codec
                .decode(msg.payload().unwrap_or_default())
                .ok()
                .and_then(|v| applier.decode(&v));
            let Some((key, version, event)) = decoded else {
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
        let applied = store.load(&state, &keys).await?;
        let fresh: Vec<Pending<A::Event>> = newest
            .into_values()
            .filter(|e| is_newer(&e.version, applied.get(&e.key)))
            .collect();
        count("skipped_stale", (keys.len() - fresh.len()) as u64);

        let outcomes = if fresh.is_empty() {
            Vec::new()
        } else {
            applier.apply(&fresh).await?
        };
        let mut done = Vec::new();
        for (e, outcome) in fresh.iter().zip(outcomes) {
            match outcome {
                Outcome::Applied => {
                    count("applied", 1);
                    done.push((e.key.clone(), e.version.clone()));
                }
                Outcome::NotApplicable => {
                    count("not_applicable", 1);
                    done.push((e.key.clone(), e.version.clone()));
                }
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
            dlq.send(dead_letter::<A>(msg, class, reason).to_record()?)
                .await?;
        }
        store.store(&state, &done).await?;

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

fn dead_letter<A: Applier>(msg: &OwnedMessage, class: &str, reason: String) -> DeadLetter {
    DeadLetter {
        key: String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
        error_class: class.into(),
        reason,
        stage: format!("processor.{}", A::ENTITY),
        occurred_at_micros: chrono::Utc::now().timestamp_micros(),
        attempts: 1,
        original_topic: Some(A::TOPIC.into()),
        original_partition: Some(msg.partition()),
        original_offset: Some(msg.offset()),
        payload: msg.payload().map(<[u8]>::to_vec),
        ..Default::default()
    }
}
