//! `flywheel source`: the ERP source.
//!
//! Setup (checks, publication, topics, slot + snapshot), then two tasks:
//! - the **reader** owns the replication stream: it decodes pgoutput, turns
//!   each committed transaction into touched trigger rows ([`Capture`]), hands
//!   them to the processor, and reports the confirmed position to PostgreSQL;
//! - the **processor** merges the transactions waiting for it (one under light
//!   load, many under heavy load), resolves the touched entity keys, re-reads
//!   their current values in batches, produces one event per key with the commit
//!   LSN as version, waits for Kafka's acknowledgements, and only then moves the
//!   confirmed position to the end of the last transaction.
//!
//! A crash therefore replays from the last confirmed position: events may repeat
//! (with the same versions), none are skipped.
//!
//! The initial snapshot is the child module `snapshot`: it imports this
//! module's shared error and helpers, and this module calls it.

mod snapshot;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::StreamExt;
use futures::future::try_join_all;
use futures::stream::FuturesOrdered;
use std::future::Future;
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::capture::{Capture, CaptureError, Captured, CommittedTxn};
use super::lsn::Lsn;
use super::pgoutput::{self, DecodeError};
use super::replication::{Frame, ReplicationConn, ReplicationError, ReplicationStream};
use super::slot::{self, SetupError, SlotState};
use crate::bus::BusError;
use crate::bus::dlq::DeadLetter;
use crate::bus::producer::{EventProducer, OutRecord};
use crate::bus::topics::{DEAD_LETTERS, ensure_topics};
use crate::config::{Config, ConfigError};
use crate::erp::connector::{Connector, ConnectorError};
use crate::erp::entity_model::{
    Entity, EntityKey, EntityModels, EntityValue, ModelError, PreparedModels, Unmappable,
};
use crate::erp::source_metrics::{SourceMetrics, register_seconds_since_last_commit};
use crate::pg::error::{self as pg_error, db_error_text};
use crate::pg::tls::PgTls;
use snapshot::take_snapshot;

const STAGE: &str = "erp.source";

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    #[error("connector model: {0}")]
    Model(#[from] ModelError),
    #[error("ERP database setup: {0}")]
    Setup(#[from] SetupError),
    #[error("ERP database: {}", db_error_text(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("replication stream: {0}")]
    Replication(#[from] ReplicationError),
    #[error("malformed pgoutput message at LSN {lsn}: {source}")]
    Decode { lsn: Lsn, source: DecodeError },
    #[error("unexpected pgoutput message at LSN {lsn}: {source}")]
    Capture { lsn: Lsn, source: CaptureError },
    #[error("Kafka: {0}")]
    Bus(#[from] BusError),
    #[error("the {0} task stopped unexpectedly")]
    TaskGone(&'static str),
}

/// The dead letter for a model row that does not fit the entity's schema.
pub(crate) fn invalid_model_row(
    entity: &Entity,
    value: &EntityValue,
    version: Lsn,
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

impl SourceError {
    /// Whether trying again later can help (a server away, a slot briefly in
    /// use), as opposed to something an operator must fix first.
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Config(_) | SourceError::Connector(_) => false,
            SourceError::Model(ModelError::Invalid { .. }) => false,
            SourceError::Model(ModelError::Query { source, .. }) => pg_error::is_retryable(source),
            SourceError::Setup(SetupError::Misconfigured { .. }) => false,
            // A slot held by a walsender that has not noticed its client died
            // is released by `wal_sender_timeout`; a failed check query is a
            // server away, or gives its reason on the next try.
            SourceError::Setup(SetupError::SlotBusy { .. } | SetupError::Query(_)) => true,
            SourceError::Db(e) => pg_error::is_retryable(e),
            SourceError::Replication(e) => match e {
                ReplicationError::Auth(_) | ReplicationError::Tls { .. } => false,
                ReplicationError::Connect { .. }
                | ReplicationError::Io(_)
                | ReplicationError::Closed
                // Server errors on the replication connection are mostly its
                // shutdown or a slot in use; a lasting one repeats with its text.
                | ReplicationError::Server { .. }
                | ReplicationError::Protocol(_) => true,
            },
            // The same bytes would arrive again: a decoder bug, not a hiccup.
            SourceError::Decode { .. } | SourceError::Capture { .. } => false,
            SourceError::Bus(e) => e.is_retryable(),
            // A task gone is a symptom; its own error was reported first.
            SourceError::TaskGone(_) => true,
        }
    }
}

/// Runs the source as a long-lived worker (see [`crate::supervise`]): transient
/// failures restart it from the slot's confirmed position.
pub async fn run_with_retries(
    config: &Config,
    shutdown: CancellationToken,
) -> Result<(), SourceError> {
    crate::supervise::with_restarts("source", &shutdown, SourceError::is_retryable, || {
        run(config, shutdown.clone())
    })
    .await
}

pub(crate) async fn connect_client(
    pg: &tokio_postgres::Config,
    tls: &PgTls,
) -> Result<Client, SourceError> {
    Ok(crate::pg::tls::connect(pg, tls).await?)
}

pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64
}

/// Runs the source until `shutdown` is cancelled or an error occurs. On
/// shutdown, transactions already decoded are still produced and confirmed.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), SourceError> {
    let erp = &config.erp;
    let pg = erp.pg_config()?;
    let tls = erp.tls()?;
    let connector = Connector::load(erp.connector.as_deref())?;
    let models = Arc::new(EntityModels::new(&connector)?);
    SourceMetrics::get().init_entities(models.entities.iter().map(|e| e.name.as_str()));
    let client = connect_client(&pg, &tls).await?;

    let tables: Vec<(String, Vec<String>)> = connector
        .trigger_tables()
        .into_iter()
        .map(|t| {
            let mut cols: Vec<String> = connector
                .entities
                .values()
                .flat_map(|e| e.triggers.iter())
                .filter(|tr| tr.qualified_table() == t)
                .flat_map(|tr| tr.columns.clone())
                .collect();
            cols.sort();
            cols.dedup();
            (t, cols)
        })
        .collect();
    slot::check_prerequisites(&client, &tables).await?;
    let prepared = models.prepare(&client).await?;
    let table_names: Vec<String> = tables.iter().map(|(t, _)| t.clone()).collect();
    slot::ensure_publication(&client, &erp.publication, &table_names).await?;

    let mut topics: Vec<&str> = models.entities.iter().map(|e| e.topic).collect();
    topics.push(DEAD_LETTERS);
    ensure_topics(&config.kafka, &topics).await?;
    let producer = EventProducer::new(&config.kafka, "source")?;
    register_seconds_since_last_commit();

    let mut state = slot::inspect_slot(&client, &erp.slot).await?;
    if state == SlotState::SnapshotIncomplete {
        tracing::warn!(slot = %erp.slot, "the slot's initial snapshot never completed; dropping the slot and starting over");
        slot::drop_slot(&client, &erp.slot).await?;
        state = SlotState::Missing;
    }
    let (stream, start) = match state {
        SlotState::Missing => {
            let mut repl = ReplicationConn::connect(&pg, &tls).await?;
            let created = repl.create_slot_exporting_snapshot(&erp.slot).await?;
            tracing::info!(slot = %erp.slot, consistent_point = %created.consistent_point, "created replication slot");
            take_snapshot(&pg, &tls, &models, &producer, &created, erp.batch_keys).await?;
            slot::mark_snapshot_done(&client, &erp.slot, created.consistent_point).await?;
            let stream = repl
                .start_logical(&erp.slot, created.consistent_point, &erp.publication)
                .await?;
            (stream, created.consistent_point)
        }
        SlotState::Ready { confirmed_flush } => {
            tracing::info!(slot = %erp.slot, from = %confirmed_flush, "resuming replication");
            let stream = ReplicationConn::connect(&pg, &tls)
                .await?
                .start_logical(&erp.slot, confirmed_flush, &erp.publication)
                .await?;
            (stream, confirmed_flush)
        }
        SlotState::SnapshotIncomplete => unreachable!("handled above"),
    };

    let _streaming = Streaming::start();
    let (txn_tx, txn_rx) = mpsc::channel::<CommittedTxn>(4096);
    let (confirmed_tx, confirmed_rx) = watch::channel(start);
    let reader = Reader {
        stream,
        models: models.clone(),
        txns: Some(txn_tx),
        confirmed: confirmed_rx,
        status_interval: erp.status_interval(),
        start,
    };
    let processor = Processor {
        client,
        prepared,
        models,
        producer,
        confirmed: confirmed_tx,
        batch_keys: erp.batch_keys,
        max_batch: erp.max_batch_transactions,
    };
    let side = spawn_side_tasks(&pg, &tls, config, shutdown.clone());
    let mut reader = tokio::spawn(reader.run(shutdown.clone()));
    let mut processor = tokio::spawn(processor.run(txn_rx));
    let result = tokio::select! {
        r = &mut reader => {
            // The reader ends first on shutdown (after the processor drained) or on error.
            r.unwrap_or(Err(SourceError::TaskGone("reader")))
        }
        r = &mut processor => match r.unwrap_or(Err(SourceError::TaskGone("processor"))) {
            // On shutdown the processor ends once it drained what the reader
            // handed it; the reader then reports the final position.
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
    side.abort();
    result
}

/// `flywheel_source_streaming` is 1 while this lives (the source's readiness).
struct Streaming;

impl Streaming {
    fn start() -> Streaming {
        SourceMetrics::get().streaming.set(1);
        Streaming
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        SourceMetrics::get().streaming.set(0);
    }
}

/// Heartbeat and lag polling on their own connection.
fn spawn_side_tasks(
    pg: &tokio_postgres::Config,
    tls: &PgTls,
    config: &Config,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let pg = pg.clone();
    let tls = tls.clone();
    let slot_name = config.erp.slot.clone();
    let heartbeat = config.erp.heartbeat_interval();
    let lag_every = config.erp.status_interval();
    tokio::spawn(async move {
        let client = match connect_client(&pg, &tls).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat/lag connection failed; running without them");
                return;
            }
        };
        let mut lag_tick = tokio::time::interval(lag_every);
        let mut beat_tick = tokio::time::interval(heartbeat.unwrap_or(Duration::from_secs(3600)));
        let mut heartbeat_warned = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = lag_tick.tick() => {
                    if let Ok(Some(lag)) = slot::slot_lag_bytes(&client, &slot_name).await {
                        SourceMetrics::get().replication_lag_bytes.set(lag);
                    }
                }
                _ = beat_tick.tick(), if heartbeat.is_some() => {
                    if let Err(e) = slot::emit_heartbeat(&client).await
                        && !heartbeat_warned
                    {
                        heartbeat_warned = true;
                        tracing::warn!(error = %db_error_text(&e), "heartbeat failed; the slot still advances on server keepalives");
                    }
                }
            }
        }
    })
}

struct Reader {
    stream: ReplicationStream,
    models: Arc<EntityModels>,
    txns: Option<mpsc::Sender<CommittedTxn>>,
    confirmed: watch::Receiver<Lsn>,
    status_interval: Duration,
    start: Lsn,
}

impl Reader {
    async fn run(mut self, shutdown: CancellationToken) -> Result<(), SourceError> {
        let metrics = SourceMetrics::get();
        let mut capture = Capture::new();
        let mut received = self.start;
        // End of the last transaction handed to the processor.
        let mut forwarded = self.start;
        // A position the server said it has sent everything up to, recorded while
        // nothing was in flight: confirmable without waiting for Kafka.
        let mut idle_floor = Lsn(0);
        let mut tick = tokio::time::interval(self.status_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let flushed = (*self.confirmed.borrow()).max(idle_floor);
                    self.report(received, flushed, false).await?;
                }
                frame = self.stream.next_frame() => {
                    let all_acked = *self.confirmed.borrow() >= forwarded;
                    match frame? {
                        Frame::Keepalive { wal_end, reply_requested } => {
                            received = received.max(wal_end);
                            if all_acked && !capture.in_transaction() {
                                idle_floor = idle_floor.max(wal_end);
                            }
                            if reply_requested {
                                let flushed = (*self.confirmed.borrow()).max(idle_floor);
                                self.report(received, flushed, false).await?;
                            }
                        }
                        Frame::XLogData { wal_start, wal_end, data } => {
                            received = received.max(wal_end);
                            let msg = pgoutput::decode(&data)
                                .map_err(|source| SourceError::Decode { lsn: wal_start, source })?;
                            match capture
                                .apply(&self.models, msg)
                                .map_err(|source| SourceError::Capture { lsn: wal_start, source })?
                            {
                                Captured::Nothing => {}
                                Captured::Idle => {
                                    if all_acked {
                                        idle_floor = idle_floor.max(wal_end);
                                    }
                                }
                                Captured::Committed(txn) => {
                                    metrics.transactions.inc();
                                    if txn.own_write {
                                        metrics.own_write_transactions.inc();
                                    }
                                    metrics.row_changes.inc_by(txn.row_changes);
                                    metrics.last_commit_unix_micros.set(txn.commit_ts_micros);
                                    forwarded = txn.end_lsn;
                                    let tx = self.txns.as_ref().ok_or(SourceError::TaskGone("processor"))?;
                                    tx.send(txn)
                                        .await
                                        .map_err(|_| SourceError::TaskGone("processor"))?;
                                }
                            }
                        }
                    }
                }
            }
        }
        // Graceful stop: let the processor finish what was decoded, then report.
        self.txns = None;
        let wait = async {
            while *self.confirmed.borrow() < forwarded {
                if self.confirmed.changed().await.is_err() {
                    break;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .is_err()
        {
            tracing::warn!(
                "in-flight events were not acknowledged within 30 s; they will replay on restart"
            );
        }
        let flushed = (*self.confirmed.borrow()).max(idle_floor);
        self.report(received, flushed, false).await?;
        tracing::info!(confirmed = %flushed, "source stopped");
        self.stream.close().await?;
        Ok(())
    }

    async fn report(
        &mut self,
        received: Lsn,
        flushed: Lsn,
        reply: bool,
    ) -> Result<(), SourceError> {
        SourceMetrics::get()
            .confirmed_flush_lsn
            .set(flushed.0 as i64);
        self.stream
            .send_status(received.max(flushed), flushed, reply)
            .await?;
        Ok(())
    }
}

struct Processor {
    client: Client,
    prepared: PreparedModels,
    models: Arc<EntityModels>,
    producer: EventProducer,
    confirmed: watch::Sender<Lsn>,
    batch_keys: usize,
    max_batch: usize,
}

/// The newest transaction that touched a key.
#[derive(Clone, Copy)]
struct Touch {
    version: Lsn,
    commit_ts_micros: i64,
}

impl Processor {
    /// Batches waiting for acks at once: the next batch is re-read while the
    /// previous one is in flight, and positions are confirmed strictly in order.
    const MAX_BATCHES_IN_FLIGHT: usize = 4;

    async fn run(self, mut txns: mpsc::Receiver<CommittedTxn>) -> Result<(), SourceError> {
        let metrics = SourceMetrics::get();
        let mut in_flight = FuturesOrdered::new();
        // First commit time of each batch in flight, in order: the oldest is
        // how far behind the source is (flywheel_source_replication_lag_seconds).
        let mut oldest: std::collections::VecDeque<i64> = Default::default();
        let mut open = true;
        while open || !in_flight.is_empty() {
            tokio::select! {
                biased;
                Some(acked) = in_flight.next(), if !in_flight.is_empty() => {
                    let end: Lsn = acked?;
                    self.confirmed.send_replace(end);
                    oldest.pop_front();
                    metrics
                        .oldest_unconfirmed_commit_micros
                        .set(oldest.front().copied().unwrap_or(0));
                }
                first = txns.recv(), if open && in_flight.len() < Self::MAX_BATCHES_IN_FLIGHT => {
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
                    let end = batch.last().map(|t| t.end_lsn).unwrap_or_default();
                    oldest.push_back(batch[0].commit_ts_micros);
                    metrics
                        .oldest_unconfirmed_commit_micros
                        .set(oldest.front().copied().unwrap_or(0));
                    let acks = self.process(&batch).await?;
                    in_flight.push_back(async move { acks.await.map(|()| end) });
                }
            }
        }
        Ok(())
    }

    /// Re-reads the batch's entities and enqueues their events (in order).
    /// Returns the wait for all of the batch's acknowledgements.
    async fn process(
        &self,
        batch: &[CommittedTxn],
    ) -> Result<impl Future<Output = Result<(), SourceError>> + Send + 'static, SourceError> {
        let models = &*self.models;
        // Only transactions whose entities are read need to be visible
        // (Flywheel's own writes and heartbeats carry nothing to read).
        let xids: Vec<u32> = batch
            .iter()
            .filter(|t| !t.touched.is_empty() || !t.truncated.is_empty())
            .map(|t| t.xid)
            .collect();
        super::visibility::wait_until_visible(&self.client, &xids).await?;
        // Resolve keys per transaction (so each key gets the LSN of the newest
        // transaction that touched it); the queries run pipelined on one connection.
        let mut lookups = Vec::new();
        for (t, txn) in batch.iter().enumerate() {
            for (&trigger, rows) in &txn.touched {
                let rows: Vec<_> = rows.iter().cloned().collect();
                lookups.push(
                    async move {
                        models
                            .keys_for_rows(&self.client, &self.prepared, trigger, &rows)
                            .await
                            .map(|r| (t, trigger.0, r))
                    }
                    .boxed(),
                );
            }
            for &entity in &txn.truncated {
                lookups.push(
                    async move {
                        models
                            .all_keys(&self.client, &self.prepared, entity)
                            .await
                            .map(|keys| (t, entity, (keys, Vec::new())))
                    }
                    .boxed(),
                );
            }
        }
        let resolved = try_join_all(lookups).await?;

        let mut touched: Vec<BTreeMap<EntityKey, Touch>> =
            vec![BTreeMap::new(); models.entities.len()];
        let mut dead: Vec<(Unmappable, &CommittedTxn)> = Vec::new();
        let mut seen_dead = HashSet::new();
        for (t, entity, (keys, unmappable)) in resolved {
            let txn = &batch[t];
            let touch = Touch {
                version: txn.commit_lsn,
                commit_ts_micros: txn.commit_ts_micros,
            };
            for key in keys {
                let e = touched[entity].entry(key).or_insert(touch);
                if touch.version > e.version {
                    *e = touch;
                }
            }
            for u in unmappable {
                if seen_dead.insert((u.entity.clone(), u.context.to_string(), txn.commit_lsn)) {
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
                source_position: Some(txn.commit_lsn.to_string()),
                context: Some(
                    serde_json::json!({"entity": u.entity, "table": u.table, "row": u.context}),
                ),
                ..Default::default()
            })
            .collect();
        let mut reads = Vec::new();
        for (entity, keys) in touched.iter().enumerate() {
            let keys: Vec<EntityKey> = keys.keys().cloned().collect();
            for chunk in keys.chunks(self.batch_keys) {
                let chunk = chunk.to_vec();
                reads.push(async move {
                    models
                        .read(&self.client, &self.prepared, entity, &chunk)
                        .await
                        .map(|v| (entity, v))
                });
            }
        }
        for (entity, values) in try_join_all(reads).await? {
            let e = &models.entities[entity];
            for value in values {
                let touch = touched[entity][&value.key];
                match e.to_record(&value, touch.version.into(), touch.commit_ts_micros) {
                    Ok(r) => records.push((entity, touch, r)),
                    Err(reason) => {
                        dead_letters.push(invalid_model_row(e, &value, touch.version, reason))
                    }
                }
            }
        }

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
    use super::*;

    #[test]
    fn a_malformed_message_names_its_lsn() {
        let source = pgoutput::decode(&bytes::Bytes::from_static(b"Z")).unwrap_err();
        let e = SourceError::Decode {
            lsn: Lsn(0x16_B374_D848),
            source,
        };
        let text = e.to_string();
        assert!(text.contains("at LSN 16/B374D848"), "{text}");
        assert!(text.contains("unknown message type 'Z'"), "{text}");
        assert!(!e.is_retryable());
    }

    #[test]
    fn operator_problems_are_final_and_outages_are_retried() {
        let misconfigured = SourceError::Setup(SetupError::Misconfigured {
            problem: "p".into(),
            fix: "f".into(),
        });
        assert!(!misconfigured.is_retryable());
        let busy = SourceError::Setup(SetupError::SlotBusy {
            problem: "p".into(),
            fix: "f".into(),
        });
        assert!(busy.is_retryable());
        assert!(SourceError::Replication(ReplicationError::Closed).is_retryable());
        assert!(!SourceError::Replication(ReplicationError::Auth("no".into())).is_retryable());
        let schema = SourceError::Model(ModelError::Invalid {
            entity: "stock".into(),
            reason: "r".into(),
        });
        assert!(!schema.is_retryable());
    }
}
