//! `flywheel dlq list | show | redrive`: the dead-letter topic for operators.
//! A dead letter from a processor carries the original record; once its cause
//! is fixed (the SKU exists in the shop, the mapping is corrected), redrive
//! produces that record again to its original topic, where the processor
//! applies it like any other (version-guarded: a newer change already applied
//! wins).

use rdkafka::message::Message;

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

/// Every dead letter in the topic, oldest first per partition.
pub fn read_all(kafka: &KafkaConfig) -> Result<Vec<Parked>, DlqError> {
    let codec = AvroCodec::for_topic(DEAD_LETTERS).map_err(BusError::from)?;
    let mut out = crate::bus::scan::read_topic(kafka, DEAD_LETTERS, "dlq", |m| {
        let letter = codec
            .decode(m.payload().unwrap_or_default())
            .ok()
            .and_then(|v| DeadLetter::from_value(&v))?;
        Some(Parked {
            partition: m.partition(),
            offset: m.offset(),
            letter,
        })
    })?;
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
        let topic = crate::sync::consumed_topics()
            .find(|t| *t == topic)
            .ok_or_else(|| not(format!("its topic {topic} is not one a processor consumes")))?;
        let payload = l
            .payload
            .clone()
            .ok_or_else(|| not("it holds no original record".into()))?;
        records.push(OutRecord {
            topic,
            key: l.key.clone(),
            payload: payload.into(),
            headers: vec![("flywheel.redriven_from", p.id())],
        });
    }
    let producer = EventProducer::new(kafka, "dlq-redrive")?;
    for r in records {
        producer.send(r).await?;
    }
    Ok(())
}
