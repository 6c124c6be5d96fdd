//! The initial snapshot's database-neutral half: every key of every entity,
//! read through the source's [`ModelQueries`] (already inside the database's
//! consistent snapshot) and produced with the snapshot's position as version.
//! Each database kind opens the snapshot and records where streaming resumes.

use std::time::{Duration, Instant};

use futures::future::try_join_all;
use indicatif::{ProgressBar, ProgressStyle};

use super::entity_model::EntityModels;
use super::model_queries::ModelQueries;
use super::pipeline::{invalid_model_row, now_micros};
use super::position::Position;
use super::source::SourceError;
use super::source_metrics::SourceMetrics;
use crate::bus::producer::{EventProducer, OutRecord};

/// Reads and produces every entity key, each acknowledged by Kafka before
/// this returns; returns the number of events.
pub async fn produce_snapshot(
    queries: &impl ModelQueries,
    models: &EntityModels,
    producer: &EventProducer,
    version: Position,
    batch_keys: usize,
) -> Result<u64, SourceError> {
    let source_ts = now_micros();
    let metrics = SourceMetrics::get();
    let started = Instant::now();
    let mut total = 0u64;

    for (i, entity) in models.entities.iter().enumerate() {
        let keys = models.all_keys(queries, i).await?;
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
            let values = models.read(queries, i, chunk).await?;
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
    tracing::info!(events = total, elapsed_ms = started.elapsed().as_millis() as u64, %version, "snapshot complete");
    Ok(total)
}

/// The ERP's truth for some entities, read inside one consistent snapshot:
/// each key's event as the source would produce it at `version`, the
/// snapshot's stream position. Produced to Kafka, such an event is ordered
/// exactly against the stream: it wins over every change the snapshot saw
/// and loses to every later one.
#[derive(Debug)]
pub struct ErpTruth {
    pub version: Position,
    /// Entity name → one record per key (to its topic).
    pub records: std::collections::BTreeMap<String, Vec<OutRecord>>,
    /// Keys whose model row the connector's schema refused (`invalid_model_row`
    /// dead letters at the source): not compared.
    pub invalid: Vec<(String, String)>,
}

/// Reads every key of the entities `wanted` names (all when empty), or only
/// the Kafka key `only`, inside the snapshot `queries` already stands in.
pub async fn read_truth(
    queries: &impl ModelQueries,
    models: &EntityModels,
    wanted: &[&str],
    only: Option<&str>,
    version: Position,
    batch_keys: usize,
) -> Result<ErpTruth, SourceError> {
    let source_ts = now_micros();
    let mut truth = ErpTruth {
        version,
        records: Default::default(),
        invalid: Vec::new(),
    };
    for (i, entity) in models.entities.iter().enumerate() {
        if !wanted.is_empty() && !wanted.contains(&entity.name.as_str()) {
            continue;
        }
        let keys = match only {
            Some(key) => vec![super::entity_model::EntityKey::from_kafka_key(key)],
            None => models.all_keys(queries, i).await?,
        };
        let records = truth.records.entry(entity.name.clone()).or_default();
        for chunk in keys.chunks(batch_keys.max(1)) {
            for v in models.read(queries, i, chunk).await? {
                match entity.to_record(&v, version, source_ts) {
                    Ok(r) => records.push(r),
                    Err(reason) => truth.invalid.push((v.key.kafka_key(), reason)),
                }
            }
        }
    }
    Ok(truth)
}
