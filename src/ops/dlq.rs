//! `flywheel dlq list | show | redrive`: the dead-letter topic for operators.
//! A dead letter from a processor carries the original record; once its cause
//! is fixed (the SKU exists in the shop, the mapping is corrected), redrive
//! produces that record again to its original topic, where the processor
//! applies it like any other (version-guarded: a newer change already applied
//! wins).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::bus::client::client_config;

use crate::bus::BusError;
use crate::bus::avro::AvroCodec;
use crate::bus::dlq::DeadLetter;
use crate::bus::producer::{EventProducer, OutRecord};
use crate::bus::topics::DEAD_LETTERS;
use crate::config::KafkaConfig;

/// A dead letter and where it sits in the dead-letter topic.
#[derive(Clone, Debug)]
pub struct Parked {
    pub partition: i32,
    pub offset: i64,
    pub letter: DeadLetter,
}

impl Parked {
    /// `partition:offset`, how operators name a dead letter.
    pub fn id(&self) -> String {
        format!("{}:{}", self.partition, self.offset)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("no dead letter {0} (see `flywheel dlq list`)")]
    NotFound(String),
    #[error("dead letter {id} cannot be redriven: {why}")]
    NotRedrivable { id: String, why: String },
}

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

/// Every dead letter in the topic, oldest first per partition.
pub fn read_all(kafka: &KafkaConfig) -> Result<Vec<Parked>, DlqError> {
    let consumer: BaseConsumer<EndIsNotAnError> = client_config(kafka, "dlq")
        .set("group.id", "flywheel-dlq-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context(EndIsNotAnError)?;
    let topic = kafka.topic(DEAD_LETTERS);
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
    let codec = AvroCodec::for_topic(DEAD_LETTERS).map_err(BusError::from)?;
    let mut at_end: HashSet<i32> = HashSet::new();
    let mut out = Vec::new();
    let mut last_progress = Instant::now();
    while at_end.len() < partitions.len() && last_progress.elapsed() < Duration::from_secs(10) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                let letter = codec
                    .decode(m.payload().unwrap_or_default())
                    .ok()
                    .and_then(|v| DeadLetter::from_value(&v));
                if let Some(letter) = letter {
                    out.push(Parked {
                        partition: m.partition(),
                        offset: m.offset(),
                        letter,
                    });
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                last_progress = Instant::now();
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    out.sort_by_key(|p| (p.partition, p.offset));
    Ok(out)
}

/// Finds the dead letters named `partition:offset`.
pub fn select(all: &[Parked], ids: &[String]) -> Result<Vec<Parked>, DlqError> {
    ids.iter()
        .map(|id| {
            all.iter()
                .find(|p| &p.id() == id)
                .cloned()
                .ok_or_else(|| DlqError::NotFound(id.clone()))
        })
        .collect()
}

/// Produces each letter's original record to its original topic again.
pub async fn redrive(kafka: &KafkaConfig, letters: &[Parked]) -> Result<(), DlqError> {
    let mut records = Vec::new();
    for p in letters {
        let l = &p.letter;
        let not = |why: String| DlqError::NotRedrivable { id: p.id(), why };
        let topic = l.original_topic.as_deref().ok_or_else(|| {
            not(format!(
                "it came from {} (no record: fix the source row; its next change is captured)",
                l.stage
            ))
        })?;
        // Only topics a processor consumes; the static name is the producer's.
        let topic = crate::sync::CONSUMED
            .iter()
            .map(|(_, t)| *t)
            .find(|t| *t == topic)
            .ok_or_else(|| not(format!("its topic {topic} is not one a processor consumes")))?;
        let payload = l
            .payload
            .clone()
            .ok_or_else(|| not("it holds no original record".into()))?;
        records.push(OutRecord {
            topic,
            key: l.key.clone(),
            payload,
            headers: vec![("flywheel.redriven_from", p.id())],
        });
    }
    let producer = EventProducer::new(kafka, "dlq-redrive")?;
    for r in records {
        producer.send(r).await?;
    }
    Ok(())
}
