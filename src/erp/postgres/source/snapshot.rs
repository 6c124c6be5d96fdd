//! The initial snapshot: every key of every entity, read inside the snapshot the
//! slot exported, so snapshot and stream meet exactly at the slot's consistent
//! point. Snapshot events carry that LSN as their version.

use super::connect_client;
use crate::bus::producer::EventProducer;
use crate::erp::entity_model::EntityModels;
use crate::erp::position::Position;
use crate::erp::postgres::queries::PgQueries;
use crate::erp::postgres::replication::CreatedSlot;
use crate::erp::snapshot::produce_snapshot;
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
    let queries = PgQueries::prepare(client, models).await?;
    let version = Position::from(slot.consistent_point);
    let total = produce_snapshot(&queries, models, producer, version, batch_keys).await?;
    queries.client().batch_execute("COMMIT").await?;
    Ok(total)
}
