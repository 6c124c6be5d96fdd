//! The initial snapshot: every key of every entity, read inside the snapshot the
//! slot exported, so snapshot and stream meet exactly at the slot's consistent
//! point. Snapshot events carry that LSN as their version.

use std::time::{Duration, Instant};

use futures::future::try_join_all;
use indicatif::{ProgressBar, ProgressStyle};

use super::connect_client;
use crate::bus::producer::EventProducer;
use crate::erp::entity_model::EntityModels;
use crate::erp::pipeline::{invalid_model_row, now_micros};
use crate::erp::position::Position;
use crate::erp::postgres::queries::PgQueries;
use crate::erp::postgres::replication::CreatedSlot;
use crate::erp::source::SourceError;
use crate::erp::source_metrics::SourceMetrics;

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
    let source_ts = now_micros();
    let metrics = SourceMetrics::get();
    let started = Instant::now();
    let mut total = 0u64;

    for (i, entity) in models.entities.iter().enumerate() {
        let keys = models.all_keys(&queries, i).await?;
        tracing::info!(entity = %entity.name, keys = keys.len(), %version, "snapshot started");
        let bar = ProgressBar::new(keys.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>8} [{bar:40}] {pos}/{len} keys ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(entity.name.clone());
        let mut last_log = Instant::now();
        for chunk in keys.chunks(batch_keys) {
            let values = models.read(&queries, i, chunk).await?;
            let mut records = Vec::with_capacity(values.len());
            for v in &values {
                match entity.to_record(v, version, source_ts) {
                    Ok(r) => records.push(r),
                    Err(reason) => {
                        let letter = invalid_model_row(entity, v, version, reason);
                        tracing::warn!(key = %letter.key, reason = %letter.reason, "dead-lettered a snapshot row");
                        metrics
                            .dead_letters
                            .with_label_values(&[&entity.name, &letter.error_class])
                            .inc();
                        records.push(letter.to_record()?);
                    }
                }
            }
            let n = records.len() as u64;
            try_join_all(records.into_iter().map(|r| producer.send(r))).await?;
            metrics
                .snapshot_events
                .with_label_values(&[&entity.name])
                .inc_by(n);
            total += n;
            bar.inc(n);
            if last_log.elapsed() > Duration::from_secs(5) {
                tracing::info!(entity = %entity.name, done = bar.position(), of = keys.len(), "snapshot progress");
                last_log = Instant::now();
            }
        }
        bar.finish_and_clear();
        tracing::info!(entity = %entity.name, events = keys.len(), "snapshot of entity done");
    }
    queries.client().batch_execute("COMMIT").await?;
    tracing::info!(events = total, elapsed_ms = started.elapsed().as_millis() as u64, %version, "snapshot complete");
    Ok(total)
}
