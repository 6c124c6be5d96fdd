//! The shared half of every ERP source: from committed transactions to
//! acknowledged events.
//!
//! The [`Processor`] merges the transactions waiting for it (one under light
//! load, many under heavy load), resolves the touched entity keys, re-reads
//! their current values in batches through the database's [`ModelQueries`],
//! produces one event per key with the newest touching transaction's version,
//! waits for Kafka's acknowledgements, and only then publishes the batch's
//! resume position, which the source's reader stores or reports to the
//! database. A crash therefore replays from the last stored position: events
//! may repeat (with the same versions), none are skipped.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::StreamExt;
use futures::future::try_join_all;
use futures::stream::FuturesOrdered;
use tokio::sync::{mpsc, watch};

use super::committed::{CommittedTxn, TriggerRow};
use super::entity_model::{Entity, EntityKey, EntityModels, EntityValue, Unmappable};
use super::model_queries::ModelQueries;
use super::position::Position;
use super::source::SourceError;
use super::source_metrics::SourceMetrics;
use crate::bus::BusError;
use crate::bus::dlq::DeadLetter;
use crate::bus::producer::{EventProducer, OutRecord};
use crate::bus::topics::{DEAD_LETTERS, ensure_topics};
use crate::config::Config;

const STAGE: &str = "erp.source";

/// The dead letter for a model row that does not fit the entity's schema.
pub fn invalid_model_row(
    entity: &Entity,
    value: &EntityValue,
    version: Position,
    reason: String,
) -> DeadLetter {
    DeadLetter {
        key: value.key.kafka_key(),
        error_class: "invalid_model_row".into(),
        reason: format!(
            "entity `{}`: {reason}; fix the connector's model SQL",
            entity.name
        ),
        stage: STAGE.into(),
        occurred_at_micros: now_micros(),
        attempts: 1,
        source_position: Some(version.to_string()),
        context: Some(serde_json::json!({"entity": entity.name, "fields": value.fields})),
        ..Default::default()
    }
}

/// The Kafka half of a source's startup: its topics (each entity's and the
/// dead letters) and its producer. Sources run it beside their database's
/// setup, which does not depend on it, so a restart waits for the slower of
/// the two rather than both.
pub async fn source_producer(
    config: &Config,
    models: &EntityModels,
) -> Result<EventProducer, SourceError> {
    let mut topics: Vec<&str> = models.entities.iter().map(|e| e.topic).collect();
    topics.push(DEAD_LETTERS);
    // The producer gets its id from the broker while the topics are checked.
    let (topics, producer) = tokio::join!(ensure_topics(&config.kafka, &topics), async {
        EventProducer::new(&config.kafka, "source")
    });
    topics?;
    Ok(producer?)
}

pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64
}

/// `flywheel_source_streaming` is 1 while this lives (the source's readiness).
pub struct Streaming;

impl Streaming {
    pub fn start() -> Streaming {
        SourceMetrics::get().streaming.set(1);
        Streaming
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        SourceMetrics::get().streaming.set(0);
    }
}

/// The reader's hand-off of a committed transaction to the processor, counted
/// in the source's metrics. `txns` is `None` once the reader stopped handing off.
pub async fn forward(
    txns: Option<&mpsc::Sender<CommittedTxn>>,
    txn: CommittedTxn,
) -> Result<(), SourceError> {
    let metrics = SourceMetrics::get();
    metrics.transactions.inc();
    if txn.own_write {
        metrics.own_write_transactions.inc();
    }
    metrics.row_changes.inc_by(txn.row_changes);
    metrics.last_commit_unix_micros.set(txn.commit_ts_micros);
    txns.ok_or(SourceError::TaskGone("processor"))?
        .send(txn)
        .await
        .map_err(|_| SourceError::TaskGone("processor"))
}

/// On a graceful stop, after the reader dropped its sender: waits (30 s at
/// most) until the processor confirmed everything up to `forwarded`; what is
/// not confirmed by then replays on restart.
pub async fn drain(confirmed: &mut watch::Receiver<Position>, forwarded: Position) {
    let wait = async {
        while *confirmed.borrow() < forwarded {
            if confirmed.changed().await.is_err() {
                break;
            }
        }
    };
    if tokio::time::timeout(std::time::Duration::from_secs(30), wait)
        .await
        .is_err()
    {
        tracing::warn!(
            "in-flight events were not acknowledged within 30 s; they will replay on restart"
        );
    }
}

/// When a source's reader tells its database how far Kafka has acknowledged
/// (PostgreSQL: the slot's confirmed position; MariaDB: the stored binlog
/// position): soon after the processor confirms more, at most once per
/// `min_gap`, and every `interval` regardless (the server's keepalive, the lag
/// gauges). Reporting only on the interval left up to a whole interval (1 s by
/// default) of acknowledged changes to replay after a crash and that much more
/// WAL held by the slot.
pub struct ConfirmReports {
    tick: tokio::time::Interval,
    min_gap: std::time::Duration,
    last: tokio::time::Instant,
    /// When the report of a newly confirmed position is due.
    prompt: Option<tokio::time::Instant>,
}

impl ConfirmReports {
    pub fn new(interval: std::time::Duration, min_gap: std::time::Duration) -> ConfirmReports {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ConfirmReports {
            tick,
            min_gap,
            last: tokio::time::Instant::now(),
            prompt: None,
        }
    }

    /// The processor confirmed a newer position: report it soon.
    pub fn confirmed_more(&mut self) {
        if self.prompt.is_none() {
            let now = tokio::time::Instant::now();
            self.prompt = Some(now.max(self.last + self.min_gap));
        }
    }

    /// Resolves when a report is due; call [`ConfirmReports::reported`] after
    /// sending it. Cancel-safe.
    pub async fn due(&mut self) {
        match self.prompt {
            Some(at) => tokio::select! {
                _ = self.tick.tick() => {}
                _ = tokio::time::sleep_until(at) => {}
            },
            None => {
                self.tick.tick().await;
            }
        }
    }

    pub fn reported(&mut self) {
        self.last = tokio::time::Instant::now();
        self.prompt = None;
    }
}

/// Runs a source's reader and processor tasks until the reader ends. On
/// shutdown the processor ends first, once it drained what the reader handed
/// it, and the reader then stores or reports the final position; any other
/// end of the processor stops the reader.
pub async fn run_reader_and_processor(
    reader: impl Future<Output = Result<(), SourceError>> + Send + 'static,
    processor: impl Future<Output = Result<(), SourceError>> + Send + 'static,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<(), SourceError> {
    let mut reader = tokio::spawn(reader);
    let mut processor = tokio::spawn(processor);
    let result = tokio::select! {
        r = &mut reader => r.unwrap_or(Err(SourceError::TaskGone("reader"))),
        r = &mut processor => match r.unwrap_or(Err(SourceError::TaskGone("processor"))) {
            Ok(()) if shutdown.is_cancelled() => {
                (&mut reader).await.unwrap_or(Err(SourceError::TaskGone("reader")))
            }
            Ok(()) => {
                reader.abort();
                Err(SourceError::TaskGone("processor"))
            }
            Err(e) => {
                reader.abort();
                Err(e)
            }
        },
    };
    processor.abort();
    result
}

/// Runs on its own task; see the module doc.
pub struct Processor<Q> {
    pub queries: Q,
    pub models: Arc<EntityModels>,
    pub producer: EventProducer,
    /// The resume position of the last batch whose events were all acknowledged.
    pub confirmed: watch::Sender<Position>,
    /// Keys per model query.
    pub batch_keys: usize,
    /// Transactions merged into one batch at most.
    pub max_batch: usize,
}

/// Keys per model query when `n` keys are read at most `max` at a time on
/// `parallel` connections: a read that needs several queries is split into a
/// multiple of `parallel` even parts (2,500 keys, 1,000 at most, 2
/// connections: 4 × 625, not 1,000 + 1,000 + 500 with the last alone).
fn chunk_size(n: usize, max: usize, parallel: usize) -> usize {
    let max = max.max(1);
    let mut parts = n.div_ceil(max);
    if parts > 1 {
        parts = parts.div_ceil(parallel.max(1)) * parallel.max(1);
    }
    n.div_ceil(parts.max(1)).max(1)
}

/// One trigger's distinct changed rows in a batch, each owned by the newest
/// transaction (index into the batch) that touched it.
#[derive(Default)]
struct TriggerRows {
    rows: Vec<TriggerRow>,
    owners: Vec<usize>,
}

/// Keys (and rows without one) of one entity, each with the transaction
/// (index into the batch) whose version it gets.
struct Resolved {
    entity: usize,
    keys: Vec<(usize, EntityKey)>,
    unmappable: Vec<(usize, Unmappable)>,
}

/// A batch's events, read and not yet enqueued: (entity, touch, record).
struct BatchEvents {
    records: Vec<(usize, Touch, OutRecord)>,
    dead_letters: Vec<DeadLetter>,
}

/// The newest transaction that touched a key.
#[derive(Clone, Copy)]
struct Touch {
    version: Position,
    commit_ts_micros: i64,
}

impl<Q: ModelQueries> Processor<Q> {
    /// Batches between intake and confirmation at once: read, or enqueued and
    /// waiting for acks. Positions are confirmed strictly in order.
    const MAX_BATCHES_IN_FLIGHT: usize = 4;
    /// Batches being read at once. The next batch's keys are resolved while
    /// the previous batch's values are read, so the query connections do not
    /// idle through each batch's round trips; events are still enqueued in
    /// batch order.
    const MAX_BATCHES_READING: usize = 2;

    pub async fn run(self, mut txns: mpsc::Receiver<CommittedTxn>) -> Result<(), SourceError> {
        let metrics = SourceMetrics::get();
        let per_txn_triggers = Mutex::new(HashSet::new());
        let (this, per_txn_triggers) = (&self, &per_txn_triggers);
        let mut reading = FuturesOrdered::new();
        let mut in_flight = FuturesOrdered::new();
        // First commit time of each batch taken in, in order: the oldest is
        // how far behind the source is (flywheel_source_replication_lag_seconds).
        let mut oldest: VecDeque<i64> = Default::default();
        let mut open = true;
        while open || !reading.is_empty() || !in_flight.is_empty() {
            let room = reading.len() < Self::MAX_BATCHES_READING
                && reading.len() + in_flight.len() < Self::MAX_BATCHES_IN_FLIGHT;
            tokio::select! {
                biased;
                Some(acked) = in_flight.next(), if !in_flight.is_empty() => {
                    let end: Position = acked?;
                    self.confirmed.send_replace(end);
                    oldest.pop_front();
                    metrics
                        .oldest_unconfirmed_commit_micros
                        .set(oldest.front().copied().unwrap_or(0));
                }
                Some(read) = reading.next(), if !reading.is_empty() => {
                    let (read, end): (BatchEvents, Position) = read?;
                    let acks = self.enqueue(read).await?;
                    in_flight.push_back(async move { acks.await.map(|()| end) });
                }
                first = txns.recv(), if open && room => {
                    let Some(first) = first else {
                        open = false;
                        continue;
                    };
                    let mut batch = vec![first];
                    while batch.len() < self.max_batch {
                        match txns.try_recv() {
                            Ok(t) => batch.push(t),
                            Err(_) => break,
                        }
                    }
                    metrics.batch_transactions.observe(batch.len() as f64);
                    let end = batch.last().map(|t| t.resume_at).unwrap_or_default();
                    oldest.push_back(batch[0].commit_ts_micros);
                    metrics
                        .oldest_unconfirmed_commit_micros
                        .set(oldest.front().copied().unwrap_or(0));
                    reading.push_back(async move {
                        this.read(&batch, per_txn_triggers).await.map(|r| (r, end))
                    });
                }
            }
        }
        Ok(())
    }

    /// Keys of one trigger's changed rows in a batch, each labelled with the
    /// transaction (index into the batch) that owns the row it came from.
    ///
    /// One query for all rows when they belong to one transaction or the
    /// connector's `keys` query returns `input_row`. A query without it is
    /// learned (in `per_txn_triggers`) and from then on asked once per
    /// transaction, which labels keys as correctly, just with more queries.
    async fn resolve_trigger(
        &self,
        trigger: (usize, usize),
        rows: TriggerRows,
        per_txn_triggers: &Mutex<HashSet<(usize, usize)>>,
    ) -> Result<Resolved, SourceError> {
        let models = &*self.models;
        let entity = trigger.0;
        let one_owner = rows.owners.iter().all(|&o| Some(&o) == rows.owners.first());
        let per_txn = per_txn_triggers
            .lock()
            .map(|s| s.contains(&trigger))
            .unwrap_or(true);
        if one_owner || !per_txn {
            let found = models
                .keys_for_rows(&self.queries, trigger, &rows.rows)
                .await?;
            let owner = |r: Option<usize>| match r {
                Some(r) => rows.owners.get(r).copied(),
                None if one_owner => rows.owners.first().copied(),
                None => None,
            };
            if one_owner || found.names_input_rows() {
                return Ok(Resolved {
                    entity,
                    keys: found
                        .keys
                        .into_iter()
                        .filter_map(|(r, k)| Some((owner(r)?, k)))
                        .collect(),
                    unmappable: found
                        .unmappable
                        .into_iter()
                        .filter_map(|(r, u)| Some((owner(r)?, u)))
                        .collect(),
                });
            }
            let e = &models.entities[entity];
            tracing::info!(
                entity = %e.name,
                table = %e.def.triggers[trigger.1].table,
                "the connector's keys query does not return `input_row`; \
                 resolving its keys once per transaction"
            );
            if let Ok(mut s) = per_txn_triggers.lock() {
                s.insert(trigger);
            }
        }
        let mut by_owner: BTreeMap<usize, Vec<TriggerRow>> = BTreeMap::new();
        for (row, &t) in rows.rows.into_iter().zip(&rows.owners) {
            by_owner.entry(t).or_default().push(row);
        }
        let found = try_join_all(by_owner.into_iter().map(|(t, rows)| async move {
            models
                .keys_for_rows(&self.queries, trigger, &rows)
                .await
                .map(|f| (t, f))
        }))
        .await?;
        let mut resolved = Resolved {
            entity,
            keys: Vec::new(),
            unmappable: Vec::new(),
        };
        for (t, f) in found {
            resolved
                .keys
                .extend(f.keys.into_iter().map(|(_, k)| (t, k)));
            resolved
                .unmappable
                .extend(f.unmappable.into_iter().map(|(_, u)| (t, u)));
        }
        Ok(resolved)
    }

    /// Re-reads the batch's entities: its events and dead letters, in order.
    async fn read(
        &self,
        batch: &[CommittedTxn],
        per_txn_triggers: &Mutex<HashSet<(usize, usize)>>,
    ) -> Result<BatchEvents, SourceError> {
        let models = &*self.models;
        // Only transactions whose entities are read need to be visible
        // (Flywheel's own writes and heartbeats carry nothing to read).
        let readable: Vec<&CommittedTxn> = batch.iter().filter(|t| t.has_work()).collect();
        self.queries.wait_visible(&readable).await?;
        // Each key gets the version of the newest transaction that touched
        // *it*, not the batch's: other processors compare versions across
        // entities (a fulfilment's repair asks whether the stock write it
        // sees already counted the shipment's transaction). Each distinct
        // changed row is owned by the newest transaction that touched it, and
        // each trigger's rows go in one query whose `input_row` says which
        // row each key came from (see `resolve_trigger`). The queries run
        // pipelined, on the source's query connections in turn.
        let mut per_trigger: BTreeMap<(usize, usize), TriggerRows> = BTreeMap::new();
        let mut row_index: HashMap<((usize, usize), &TriggerRow), usize> = HashMap::new();
        let mut lookups = Vec::new();
        for (t, txn) in batch.iter().enumerate() {
            for (&trigger, rows) in &txn.touched {
                let tr = per_trigger.entry(trigger).or_default();
                for row in rows {
                    match row_index.get(&(trigger, row)) {
                        Some(&i) => tr.owners[i] = t,
                        None => {
                            row_index.insert((trigger, row), tr.rows.len());
                            tr.rows.push(row.clone());
                            tr.owners.push(t);
                        }
                    }
                }
            }
            for &entity in &txn.truncated {
                lookups.push(
                    async move {
                        let keys = models.all_keys(&self.queries, entity).await?;
                        Ok::<_, SourceError>(Resolved {
                            entity,
                            keys: keys.into_iter().map(|k| (t, k)).collect(),
                            unmappable: Vec::new(),
                        })
                    }
                    .boxed(),
                );
            }
        }
        for (trigger, rows) in per_trigger {
            lookups.push(
                self.resolve_trigger(trigger, rows, per_txn_triggers)
                    .boxed(),
            );
        }
        let resolved = try_join_all(lookups).await?;

        let mut touched: Vec<BTreeMap<EntityKey, Touch>> =
            vec![BTreeMap::new(); models.entities.len()];
        let mut dead: Vec<(Unmappable, &CommittedTxn)> = Vec::new();
        let mut seen_dead = HashSet::new();
        for r in resolved {
            for (t, key) in r.keys {
                let txn = &batch[t];
                let touch = Touch {
                    version: txn.version,
                    commit_ts_micros: txn.commit_ts_micros,
                };
                let e = touched[r.entity].entry(key).or_insert(touch);
                if touch.version > e.version {
                    *e = touch;
                }
            }
            for (t, u) in r.unmappable {
                let txn = &batch[t];
                if seen_dead.insert((u.entity.clone(), u.context.to_string(), txn.version)) {
                    dead.push((u, txn));
                }
            }
        }

        let mut records: Vec<(usize, Touch, OutRecord)> = Vec::new();
        let mut dead_letters: Vec<DeadLetter> = dead
            .into_iter()
            .map(|(u, txn)| DeadLetter {
                key: u.table.clone(),
                error_class: "unmappable_row".into(),
                reason: u.reason,
                stage: STAGE.into(),
                occurred_at_micros: now_micros(),
                attempts: 1,
                source_position: Some(txn.version.to_string()),
                context: Some(
                    serde_json::json!({"entity": u.entity, "table": u.table, "row": u.context}),
                ),
                ..Default::default()
            })
            .collect();
        let mut reads = Vec::new();
        for (entity, keys) in touched.iter().enumerate() {
            let keys: Vec<EntityKey> = keys.keys().cloned().collect();
            let size = chunk_size(keys.len(), self.batch_keys, self.queries.parallelism());
            for chunk in keys.chunks(size) {
                let chunk = chunk.to_vec();
                reads.push(async move {
                    models
                        .read(&self.queries, entity, &chunk)
                        .await
                        .map(|v| (entity, v))
                });
            }
        }
        for (entity, values) in try_join_all(reads).await? {
            let e = &models.entities[entity];
            for value in values {
                let touch = touched[entity][&value.key];
                match e.to_record(&value, touch.version, touch.commit_ts_micros) {
                    Ok(r) => records.push((entity, touch, r)),
                    Err(reason) => {
                        dead_letters.push(invalid_model_row(e, &value, touch.version, reason))
                    }
                }
            }
        }

        Ok(BatchEvents {
            records,
            dead_letters,
        })
    }

    /// Enqueues a batch's events (in order). Returns the wait for all of
    /// their acknowledgements.
    async fn enqueue(
        &self,
        BatchEvents {
            records,
            dead_letters,
        }: BatchEvents,
    ) -> Result<impl Future<Output = Result<(), SourceError>> + Send + 'static, SourceError> {
        let models = &*self.models;
        let metrics = SourceMetrics::get();
        let mut acks = Vec::with_capacity(records.len() + dead_letters.len());
        for (entity, touch, record) in records {
            let ack = self.producer.enqueue(record).await?;
            let name = models.entities[entity].name.clone();
            acks.push(
                async move {
                    ack.await?;
                    metrics.events.with_label_values(&[&name]).inc();
                    let age = (now_micros() - touch.commit_ts_micros).max(0) as f64 / 1e6;
                    metrics
                        .commit_to_ack_seconds
                        .with_label_values(&[&name])
                        .observe(age);
                    Ok::<_, BusError>(())
                }
                .boxed(),
            );
        }
        for d in dead_letters {
            tracing::warn!(key = %d.key, class = %d.error_class, reason = %d.reason, "dead-lettered an ERP change");
            let entity = d
                .context
                .as_ref()
                .and_then(|c| c.get("entity"))
                .and_then(|e| e.as_str())
                .unwrap_or("")
                .to_owned();
            let ack = self.producer.enqueue(d.to_record()?).await?;
            acks.push(
                async move {
                    ack.await?;
                    metrics
                        .dead_letters
                        .with_label_values(&[&entity, &d.error_class])
                        .inc();
                    Ok(())
                }
                .boxed(),
            );
        }
        Ok(async move {
            try_join_all(acks).await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::chunk_size;

    #[test]
    fn large_reads_split_evenly_over_the_connections() {
        assert_eq!(chunk_size(2_500, 1_000, 2), 625);
        assert_eq!(chunk_size(2_000, 1_000, 2), 1_000);
        assert_eq!(chunk_size(2_001, 1_000, 2), 501);
        assert_eq!(chunk_size(5, 1_000, 2), 5, "a small read stays one query");
        assert_eq!(chunk_size(0, 1_000, 2), 1);
        assert_eq!(chunk_size(2_500, 1_000, 1), 834);
        assert_eq!(chunk_size(10, 0, 0), 1);
    }
}
