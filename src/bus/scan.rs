//! Reading a whole topic once, from the first record each partition holds to
//! its end, outside any consumer group: what operators' tools (`flywheel dlq`,
//! `flywheel trace`) do.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};

use super::client::client_config;
use crate::config::KafkaConfig;

/// A reader's context: reaching the end of a partition is how it knows it
/// read everything, not an error worth an ERROR line (librdkafka reports it
/// through the error callback).
struct EndIsNotAnError;

impl rdkafka::ClientContext for EndIsNotAnError {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        let end = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !end {
            tracing::error!(error = %error, reason, "Kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndIsNotAnError {}

/// Reads every record of the logical `topic` and keeps what `keep` returns,
/// partition by partition in offset order. A topic that does not exist
/// reads as empty. Blocking: call it from `spawn_blocking`.
pub fn read_topic<T>(
    kafka: &KafkaConfig,
    topic: &str,
    role: &str,
    mut keep: impl FnMut(&BorrowedMessage<'_>) -> Option<T>,
) -> Result<Vec<T>, rdkafka::error::KafkaError> {
    let consumer: BaseConsumer<EndIsNotAnError> = client_config(kafka, role)
        .set("group.id", format!("flywheel-{role}-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context(EndIsNotAnError)?;
    let topic = kafka.topic(topic);
    let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(&topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut at_end = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut last_progress = Instant::now();
    while at_end.len() < partitions.len() && last_progress.elapsed() < Duration::from_secs(10) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                out.extend(keep(&m));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                last_progress = Instant::now();
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(out)
}
