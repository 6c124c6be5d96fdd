//! `flywheel source` on MariaDB/MySQL.
//!
//! Setup (checks, Flywheel's tables, topics, then the stored position or an
//! initial snapshot), then two tasks, as on PostgreSQL:
//! - the **reader** owns the binlog stream (it registers as a replica with
//!   `erp.server_id`): it turns each committed transaction into touched
//!   trigger rows ([`Capture`]), hands them to the processor, and stores the
//!   confirmed position in Flywheel's state table;
//! - the **processor** is the shared [`crate::erp::pipeline::Processor`] on
//!   [`MyQueries`]: it publishes a transaction's position once its events are
//!   acknowledged.
//!
//! A position is stored only after every event up to it was acknowledged, so
//! a restart (also after kill -9) replays from there: events may repeat with
//! the same versions, none are skipped.

use std::sync::Arc;
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures::future::try_join_all;
use futures::{FutureExt, StreamExt};
use mysql_async::binlog::events::Event;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::MysqlError;
use super::binlog_pos::BinlogPos;
use super::capture::{Capture, CaptureError, Captured};
use super::queries::MyQueries;
use super::setup;
use crate::bus::producer::EventProducer;
use crate::config::Config;
use crate::erp::committed::CommittedTxn;
use crate::erp::connector::Connector;
use crate::erp::entity_model::EntityModels;
use crate::erp::idle_floor::IdleFloor;
use crate::erp::pipeline::{
    ConfirmReports, Processor, Streaming, drain, forward, run_reader_and_processor, source_producer,
};
use crate::erp::position::Position;
use crate::erp::snapshot::{ErpTruth, produce_snapshot};
use crate::erp::source::SourceError;
use crate::erp::source_metrics::{SourceMetrics, register_seconds_since_last_commit};

/// Runs the source until `shutdown` is cancelled or an error occurs. On
/// shutdown, transactions already read are still produced and confirmed.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), SourceError> {
    let erp = &config.erp;
    let opts = erp.mysql_opts()?;
    let erp_db = opts.db_name().unwrap_or_default().to_owned();
    let state_db = erp.state_database.clone();
    let connector = Connector::for_erp(erp)?;
    let models = Arc::new(EntityModels::with_default_schema(&connector, &erp_db)?);
    SourceMetrics::get().init_entities(models.entities.iter().map(|e| e.name.as_str()));

    // The database's setup and Kafka's (topics, producer) do not depend on
    // each other: a restart waits for the slower, not for both.
    let erp_side = async {
        let mut state = Conn::new(opts.clone()).await?;
        let tables: Vec<String> = connector
            .entities
            .values()
            .flat_map(|e| e.triggers.iter().map(|t| t.qualified_table_in(&erp_db)))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let known_columns = setup::check_prerequisites(&mut state, erp, &tables).await?;
        setup::ensure_state_tables(&mut state, &state_db).await?;
        Ok::<_, SourceError>((state, known_columns))
    };
    let (producer, (mut state, known_columns)) =
        tokio::try_join!(source_producer(config, &models), erp_side)?;
    register_seconds_since_last_commit();

    let start = match setup::stored_position(&mut state, &state_db, &erp.slot).await? {
        Some(at) => {
            setup::check_position_present(&mut state, &state_db, &erp.slot, &at).await?;
            tracing::info!(from = %at, "resuming the binlog stream");
            at
        }
        None => {
            let at = take_snapshot(&opts, &models, &producer, erp.batch_keys).await?;
            setup::store_position(&mut state, &state_db, &erp.slot, &at).await?;
            at
        }
    };
    let start_position = start
        .position()
        .ok_or_else(|| setup_error(format!("binlog file name without a number: {}", start.file)))?;

    let stream = open_stream(&opts, erp.server_id, &start, erp.heartbeat_interval()).await?;
    let _streaming = Streaming::start();
    let (txn_tx, txn_rx) = mpsc::channel::<CommittedTxn>(4096);
    let (confirmed_tx, confirmed_rx) = watch::channel(start_position);
    let reader = Reader {
        stream,
        capture: Capture::new(start.clone(), &state_db, known_columns),
        models: models.clone(),
        txns: Some(txn_tx),
        confirmed: confirmed_rx,
        state,
        state_db,
        name: erp.slot.clone(),
        base_name: start.base_name().to_owned(),
        stored: start_position,
        status_interval: erp.status_interval(),
        silence_limit: erp
            .heartbeat_interval()
            .map_or(Duration::from_secs(90), |h| {
                (h * 3).max(Duration::from_secs(5))
            }),
    };
    let processor = Processor {
        queries: MyQueries::prepare_on(
            try_join_all((0..erp.query_connections).map(|_| Conn::new(opts.clone()))).await?,
            &models,
        )
        .await?,
        models,
        producer,
        confirmed: confirmed_tx,
        batch_keys: erp.batch_keys,
        max_batch: erp.max_batch_transactions,
    };
    run_reader_and_processor(
        reader.run(shutdown.clone()),
        processor.run(txn_rx),
        &shutdown,
    )
    .await
}

fn setup_error(problem: String) -> SourceError {
    SourceError::Mysql(MysqlError::Setup(setup::SetupError::Misconfigured {
        problem,
        fix: "give the server's binlog files numbered names (log_bin = <base name>)".into(),
    }))
}

/// Reads every key inside one consistent snapshot and returns the binlog
/// position it stands at, where streaming resumes.
async fn take_snapshot(
    opts: &Opts,
    models: &EntityModels,
    producer: &EventProducer,
    batch_keys: usize,
) -> Result<BinlogPos, SourceError> {
    let (conn, at, version) = open_snapshot(opts).await?;
    let queries = MyQueries::prepare(conn, models).await?;
    produce_snapshot(&queries, models, producer, version, batch_keys).await?;
    queries.execute("COMMIT").await?;
    Ok(at)
}

/// The ERP's truth for the entities `wanted` names (all when empty), read
/// consistent with one binlog position (see `open_snapshot`).
pub async fn read_truth(
    config: &Config,
    wanted: &[&str],
    only: Option<&str>,
) -> Result<ErpTruth, SourceError> {
    let erp = &config.erp;
    let opts = erp.mysql_opts()?;
    let erp_db = opts.db_name().unwrap_or_default().to_owned();
    let models = EntityModels::with_default_schema(&Connector::for_erp(erp)?, &erp_db)?;
    let (conn, _, version) = open_snapshot(&opts).await?;
    let queries = MyQueries::prepare(conn, &models).await?;
    let truth =
        crate::erp::snapshot::read_truth(&queries, &models, wanted, only, version, erp.batch_keys)
            .await?;
    queries.execute("COMMIT").await?;
    Ok(truth)
}

/// Opens a consistent snapshot and returns the binlog position it stands at
/// (and as a version). MariaDB reports that position for the snapshot itself
/// (`binlog_snapshot_file/position`), so no lock is taken; MySQL lacks it,
/// and there the position is read under a brief `FLUSH TABLES WITH READ
/// LOCK` (which needs the RELOAD privilege).
async fn open_snapshot(opts: &Opts) -> Result<(Conn, BinlogPos, Position), SourceError> {
    let mut conn = Conn::new(opts.clone()).await?;
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await?;
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        .await?;
    let status: Vec<(String, String)> = conn
        .query("SHOW SESSION STATUS LIKE 'binlog_snapshot_%'")
        .await?;
    let get = |name: &str| {
        status
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let at = match (get("Binlog_snapshot_file"), get("Binlog_snapshot_position")) {
        (Some(file), Some(pos)) if !file.is_empty() => {
            BinlogPos::new(file, pos.parse().unwrap_or_default())
        }
        _ => {
            conn.query_drop("ROLLBACK").await?;
            conn.query_drop("FLUSH TABLES WITH READ LOCK").await?;
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                .await?;
            let master: Option<mysql_async::Row> = conn.query_first("SHOW MASTER STATUS").await?;
            conn.query_drop("UNLOCK TABLES").await?;
            let Some(mut row) = master else {
                return Err(setup_error("SHOW MASTER STATUS returned nothing".into()));
            };
            BinlogPos::new(
                row.take::<String, _>(0).unwrap_or_default(),
                row.take::<u64, _>(1).unwrap_or_default(),
            )
        }
    };
    let version = at
        .position()
        .ok_or_else(|| setup_error(format!("binlog file name without a number: {}", at.file)))?;
    tracing::info!(at = %at, "snapshot opened");
    Ok((conn, at, version))
}

/// Registers as a replica and requests the binlog from `from`. Heartbeats
/// come every `heartbeat` while the server has nothing to send, so silence
/// means a dead connection.
async fn open_stream(
    opts: &Opts,
    server_id: u32,
    from: &BinlogPos,
    heartbeat: Option<Duration>,
) -> Result<BinlogStream, SourceError> {
    let mut conn = Conn::new(opts.clone()).await?;
    let period = heartbeat.unwrap_or(Duration::from_secs(30));
    conn.query_drop(format!(
        "SET @master_heartbeat_period = {}",
        period.as_nanos()
    ))
    .await?;
    let request = BinlogStreamRequest::new(server_id)
        .with_filename(from.file.as_bytes())
        .with_pos(from.pos);
    conn.get_binlog_stream(request).await.map_err(|source| {
        SourceError::Mysql(MysqlError::Stream {
            at: from.clone(),
            source,
        })
    })
}

/// A caught panic's message.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the decoder panicked".into())
}

/// Storing the position is a write (and a `SHOW BINARY LOGS`) on the ERP's
/// server, so it follows acknowledgements at most ten times a second; see
/// [`ConfirmReports`].
const PROMPT_STORE_GAP: Duration = Duration::from_millis(100);

struct Reader {
    stream: BinlogStream,
    capture: Capture,
    models: Arc<EntityModels>,
    txns: Option<mpsc::Sender<CommittedTxn>>,
    confirmed: watch::Receiver<Position>,
    /// Connection for storing the position and reading the server's binlog size.
    state: Conn,
    state_db: String,
    name: String,
    base_name: String,
    stored: Position,
    status_interval: Duration,
    silence_limit: Duration,
}

impl Reader {
    async fn run(mut self, shutdown: CancellationToken) -> Result<(), SourceError> {
        let mut forwarded = self.stored;
        // Positions after which only transactions without work came: storable
        // once what was forwarded before them is acknowledged.
        let mut idle_floor = IdleFloor::default();
        let mut reports = ConfirmReports::new(self.status_interval, PROMPT_STORE_GAP);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = reports.due() => {
                    let target = idle_floor.confirmable(self.confirmed_position());
                    self.store(target).await?;
                    reports.reported();
                }
                Ok(()) = self.confirmed.changed() => reports.confirmed_more(),
                // mysql_common's event reader can panic on a malformed packet
                // (an event longer than its packet: found by fuzz/binlog.rs);
                // such bytes are a final, positioned error, never a crash.
                next = tokio::time::timeout(
                    self.silence_limit,
                    AssertUnwindSafe(self.stream.next()).catch_unwind(),
                ) => {
                    let at = self.capture.position().clone();
                    let next = match next {
                        Ok(Err(panic)) => {
                            return Err(MysqlError::Capture {
                                at,
                                source: CaptureError::Malformed(panic_text(&panic)),
                            }
                            .into());
                        }
                        Ok(Ok(next)) => Ok(next),
                        Err(elapsed) => Err(elapsed),
                    };
                    let event: Event = match next {
                        Err(_) => {
                            return Err(MysqlError::Silent {
                                at,
                                silent_secs: self.silence_limit.as_secs(),
                            }
                            .into());
                        }
                        Ok(None) => {
                            return Err(MysqlError::Stream {
                                at,
                                source: mysql_async::Error::Driver(
                                    mysql_async::DriverError::ConnectionClosed,
                                ),
                            }
                            .into());
                        }
                        Ok(Some(Err(source))) => {
                            return Err(MysqlError::Stream { at, source }.into());
                        }
                        Ok(Some(Ok(event))) => event,
                    };
                    let (capture, models) = (&mut self.capture, &self.models);
                    let captured = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        capture.apply(models, &event)
                    }))
                    .unwrap_or_else(|panic| Err(CaptureError::Malformed(panic_text(&panic))))
                    .map_err(|source| MysqlError::Capture { at, source })?;
                    tracing::trace!(
                        event_type = ?event.header().event_type(),
                        at = %self.capture.position(),
                        captured = captured.kind(),
                        "binlog event"
                    );
                    match captured {
                        Captured::Nothing | Captured::Bookkeeping => {}
                        Captured::Idle => {
                            if !self.capture.in_transaction()
                                && let Some(p) = self.capture.position().position()
                            {
                                idle_floor.sent_up_to(p, forwarded, self.confirmed_position());
                            }
                        }
                        Captured::Committed(txn) => {
                            forwarded = txn.resume_at;
                            forward(self.txns.as_ref(), txn).await?;
                        }
                    }
                }
            }
        }
        // Graceful stop: let the processor finish what was read, then store.
        self.txns = None;
        drain(&mut self.confirmed, forwarded).await;
        let target = idle_floor.confirmable(self.confirmed_position());
        self.store(target).await?;
        tracing::info!(confirmed = %BinlogPos::from_position(&self.base_name, self.stored), "source stopped");
        Ok(())
    }

    fn confirmed_position(&self) -> Position {
        *self.confirmed.borrow()
    }

    /// Stores `target` if it moved, and updates the lag gauges.
    async fn store(&mut self, target: Position) -> Result<(), SourceError> {
        let metrics = SourceMetrics::get();
        if target > self.stored {
            let at = BinlogPos::from_position(&self.base_name, target);
            setup::store_position(&mut self.state, &self.state_db, &self.name, &at).await?;
            self.stored = target;
        }
        metrics.confirmed_flush_lsn.set(self.stored.0 as i64);
        if let Ok(logs) = setup::binary_logs(&mut self.state).await {
            let at = BinlogPos::from_position(&self.base_name, self.stored);
            metrics
                .replication_lag_bytes
                .set(setup::bytes_after(&logs, &at) as i64);
        }
        Ok(())
    }
}
