//! The initial snapshot: every key of every entity, read inside the snapshot the
//! slot exported, so snapshot and stream meet exactly at the slot's consistent
//! point. Snapshot events carry that LSN as their version.

use super::connect_client;
use crate::bus::producer::EventProducer;
use crate::erp::entity_model::EntityModels;
use crate::erp::position::Position;
use crate::erp::postgres::queries::PgQueries;
use crate::erp::postgres::replication::CreatedSlot;
use crate::erp::postgres::replication::ReplicationConn;
use crate::erp::snapshot::{ErpTruth, produce_snapshot, read_truth};
use crate::erp::source::SourceError;

/// Reads and produces every entity key; returns the number of events.
pub async fn take_snapshot(
    pg: &tokio_postgres::Config,
    tls: &crate::pg::tls::PgTls,
    models: &EntityModels,
    producer: &EventProducer,
    slot: &CreatedSlot,
    batch_keys: usize,
) -> Result<u64, SourceError> {
    let client = connect_client(pg, tls).await?;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            slot.snapshot_name
        ))
        .await?;
    let queries = PgQueries::prepare(vec![client], models).await?;
    let version = Position::from(slot.consistent_point);
    let total = produce_snapshot(&queries, models, producer, version, batch_keys).await?;
    queries.client().batch_execute("COMMIT").await?;
    Ok(total)
}

/// Reads every key of the entities `wanted` names, consistent with one exact
/// stream position: a temporary slot (gone with its connection) exports the
/// snapshot the read runs in, as the initial snapshot's slot does.
pub async fn read_consistent(
    pg: &tokio_postgres::Config,
    tls: &crate::pg::tls::PgTls,
    models: &EntityModels,
    wanted: &[&str],
    only: Option<&str>,
    batch_keys: usize,
) -> Result<ErpTruth, SourceError> {
    let mut repl = ReplicationConn::connect(pg, tls).await?;
    let slot = format!("flywheel_read_{}_{}", std::process::id(), fastrand::u32(..));
    let created = repl.create_temporary_slot_exporting_snapshot(&slot).await?;
    let client = connect_client(pg, tls).await?;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            created.snapshot_name
        ))
        .await?;
    let queries = PgQueries::prepare(vec![client], models).await?;
    let version = Position::from(created.consistent_point);
    let truth = read_truth(&queries, models, wanted, only, version, batch_keys).await?;
    queries.client().batch_execute("COMMIT").await?;
    repl.close().await?;
    Ok(truth)
}
