//! `flywheel source` on PostgreSQL.
//!
//! Setup (checks, publication, topics, slot + snapshot), then two tasks:
//! - the **reader** owns the replication stream: it decodes pgoutput, turns
//!   each committed transaction into touched trigger rows ([`Capture`]), hands
//!   them to the processor, and reports the confirmed position to PostgreSQL;
//! - the **processor** is the shared [`crate::erp::pipeline::Processor`] on
//!   [`PgQueries`]: it publishes a transaction's end LSN once its events are
//!   acknowledged, and the reader confirms it to the slot.
//!
//! The initial snapshot is the child module `snapshot`: it imports this
//! module's helpers, and this module calls it.

mod snapshot;

use std::sync::Arc;
use std::time::Duration;

use futures::future::try_join_all;
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::PostgresError;
use super::capture::{Capture, Captured};
use super::lsn::Lsn;
use super::pgoutput;
use super::queries::PgQueries;
use super::replication::{Frame, ReplicationConn, ReplicationStream};
use super::slot::{self, SlotState};
use crate::config::Config;
use crate::erp::committed::CommittedTxn;
use crate::erp::connector::Connector;
use crate::erp::entity_model::EntityModels;
use crate::erp::idle_floor::IdleFloor;
use crate::erp::pipeline::{
    ConfirmReports, Processor, Streaming, drain, forward, run_reader_and_processor, source_producer,
};
use crate::erp::position::Position;
use crate::erp::snapshot::ErpTruth;
use crate::erp::source::SourceError;
use crate::erp::source_metrics::{SourceMetrics, register_seconds_since_last_commit};
use crate::pg::error::db_error_text;
use crate::pg::tls::PgTls;
use snapshot::take_snapshot;

/// The ERP's truth for the entities `wanted` names (all when empty), read
/// consistent with one stream position (`erp::snapshot::ErpTruth`).
pub async fn read_truth(
    config: &Config,
    wanted: &[&str],
    only: Option<&str>,
) -> Result<ErpTruth, SourceError> {
    let erp = &config.erp;
    let models = EntityModels::new(&Connector::for_erp(erp)?)?;
    snapshot::read_consistent(
        &erp.pg_config()?,
        &erp.tls()?,
        &models,
        wanted,
        only,
        erp.batch_keys,
    )
    .await
}

pub(crate) async fn connect_client(
    pg: &tokio_postgres::Config,
    tls: &PgTls,
) -> Result<Client, SourceError> {
    Ok(crate::pg::tls::connect(pg, tls)
        .await
        .map_err(PostgresError::from)?)
}

/// Runs the source until `shutdown` is cancelled or an error occurs. On
/// shutdown, transactions already decoded are still produced and confirmed.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), SourceError> {
    let erp = &config.erp;
    let pg = erp.pg_config()?;
    let tls = erp.tls()?;
    let connector = Connector::for_erp(erp)?;
    let models = Arc::new(EntityModels::new(&connector)?);
    SourceMetrics::get().init_entities(models.entities.iter().map(|e| e.name.as_str()));
    // The database's setup and Kafka's (topics, producer) do not depend on
    // each other: a restart waits for the slower, not for both. Resuming also
    // starts the stream on the database's side, so the server decodes while
    // Kafka's side is still being set up (a new slot's snapshot needs Kafka).
    let erp_side = async {
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
        let table_names: Vec<String> = tables.iter().map(|(t, _)| t.clone()).collect();
        slot::ensure_publication(&client, &erp.publication, &table_names).await?;
        let state = slot::inspect_slot(&client, &erp.slot).await?;
        let more_clients =
            try_join_all((1..erp.query_connections).map(|_| connect_client(&pg, &tls))).await?;
        let resume = async {
            match state {
                SlotState::Ready { confirmed_flush } => {
                    tracing::info!(slot = %erp.slot, from = %confirmed_flush, "resuming replication");
                    let stream = ReplicationConn::connect(&pg, &tls)
                        .await?
                        .start_logical(&erp.slot, confirmed_flush, &erp.publication)
                        .await?;
                    Ok::<_, SourceError>(Some((stream, confirmed_flush)))
                }
                SlotState::Missing | SlotState::SnapshotIncomplete => Ok(None),
            }
        };
        let mut query_clients = vec![client];
        query_clients.extend(more_clients);
        let (queries, resumed) = tokio::try_join!(
            async { Ok(PgQueries::prepare(query_clients, &models).await?) },
            resume
        )?;
        Ok::<_, SourceError>((queries, state, resumed))
    };
    let (producer, (queries, state, resumed)) =
        tokio::try_join!(source_producer(config, &models), erp_side)?;
    register_seconds_since_last_commit();

    let (stream, start) = match resumed {
        Some(resumed) => resumed,
        None => {
            if state == SlotState::SnapshotIncomplete {
                tracing::warn!(slot = %erp.slot, "the slot's initial snapshot never completed; dropping the slot and starting over");
                slot::drop_slot(queries.client(), &erp.slot).await?;
            }
            let mut repl = ReplicationConn::connect(&pg, &tls).await?;
            let created = repl.create_slot_exporting_snapshot(&erp.slot).await?;
            tracing::info!(slot = %erp.slot, consistent_point = %created.consistent_point, "created replication slot");
            take_snapshot(&pg, &tls, &models, &producer, &created, erp.batch_keys).await?;
            slot::mark_snapshot_done(queries.client(), &erp.slot, created.consistent_point).await?;
            let stream = repl
                .start_logical(&erp.slot, created.consistent_point, &erp.publication)
                .await?;
            (stream, created.consistent_point)
        }
    };

    let _streaming = Streaming::start();
    let (txn_tx, txn_rx) = mpsc::channel::<CommittedTxn>(4096);
    let (confirmed_tx, confirmed_rx) = watch::channel(Position::from(start));
    let reader = Reader {
        stream,
        models: models.clone(),
        txns: Some(txn_tx),
        confirmed: confirmed_rx,
        status_interval: erp.status_interval(),
        start,
    };
    let processor = Processor {
        queries,
        models,
        producer,
        confirmed: confirmed_tx,
        batch_keys: erp.batch_keys,
        max_batch: erp.max_batch_transactions,
    };
    let side = spawn_side_tasks(&pg, &tls, config, shutdown.clone());
    let result = run_reader_and_processor(
        reader.run(shutdown.clone()),
        processor.run(txn_rx),
        &shutdown,
    )
    .await;
    side.abort();
    result
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

/// A status message is a few bytes to the walsender, so the slot follows
/// Kafka's acknowledgements closely; see [`ConfirmReports`].
const PROMPT_REPORT_GAP: Duration = Duration::from_millis(20);

struct Reader {
    stream: ReplicationStream,
    models: Arc<EntityModels>,
    txns: Option<mpsc::Sender<CommittedTxn>>,
    confirmed: watch::Receiver<Position>,
    status_interval: Duration,
    start: Lsn,
}

impl Reader {
    async fn run(mut self, shutdown: CancellationToken) -> Result<(), SourceError> {
        let mut capture = Capture::new();
        let mut received = self.start;
        // End of the last transaction handed to the processor.
        let mut forwarded = self.start;
        // WAL the server has sent past our transactions: confirmable once what
        // was forwarded before it is acknowledged.
        let mut idle_floor = IdleFloor::default();
        let mut reports = ConfirmReports::new(self.status_interval, PROMPT_REPORT_GAP);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = reports.due() => {
                    let flushed = idle_floor.confirmable(self.confirmed_lsn());
                    self.report(received, flushed, false).await?;
                    reports.reported();
                }
                Ok(()) = self.confirmed.changed() => reports.confirmed_more(),
                frame = self.stream.next_frame() => {
                    match frame? {
                        Frame::Keepalive { wal_end, reply_requested } => {
                            received = received.max(wal_end);
                            if !capture.in_transaction() {
                                idle_floor.sent_up_to(wal_end, forwarded, self.confirmed_lsn());
                            }
                            if reply_requested {
                                let flushed = idle_floor.confirmable(self.confirmed_lsn());
                                self.report(received, flushed, false).await?;
                            }
                        }
                        Frame::XLogData { wal_start, wal_end, data } => {
                            received = received.max(wal_end);
                            let msg = pgoutput::decode(&data)
                                .map_err(|source| PostgresError::Decode { lsn: wal_start, source })?;
                            match capture
                                .apply(&self.models, msg)
                                .map_err(|source| PostgresError::Capture { lsn: wal_start, source })?
                            {
                                Captured::Nothing => {}
                                Captured::Idle => {
                                    idle_floor.sent_up_to(wal_end, forwarded, self.confirmed_lsn());
                                }
                                Captured::Committed(txn) => {
                                    forwarded = Lsn(txn.resume_at.0);
                                    forward(self.txns.as_ref(), txn).await?;
                                }
                            }
                        }
                    }
                }
            }
        }
        // Graceful stop: let the processor finish what was decoded, then report.
        self.txns = None;
        drain(&mut self.confirmed, Position(forwarded.0)).await;
        let flushed = idle_floor.confirmable(self.confirmed_lsn());
        self.report(received, flushed, false).await?;
        tracing::info!(confirmed = %flushed, "source stopped");
        self.stream.close().await?;
        Ok(())
    }

    /// The end of the last transaction whose events were all acknowledged.
    fn confirmed_lsn(&self) -> Lsn {
        Lsn(self.confirmed.borrow().0)
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
