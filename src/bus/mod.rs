//! Kafka: topic names and creation, the producer, consumer groups, the Avro
//! codec, dead letters.

pub mod avro;
pub mod client;
pub mod dlq;
pub mod group;
pub mod producer;
pub mod topics;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("Kafka client for {bootstrap} could not be created: {source}")]
    Client {
        bootstrap: String,
        source: Box<rdkafka::error::KafkaError>,
    },
    #[error(
        "Kafka did not accept a record for `{topic}`: {source} (is the broker at {bootstrap} up and the topic created?)"
    )]
    Delivery {
        topic: String,
        bootstrap: String,
        source: Box<rdkafka::error::KafkaError>,
    },
    #[error("creating topic `{topic}` failed: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error(transparent)]
    Avro(#[from] avro::AvroError),
    #[error(transparent)]
    Connect(#[from] client::ConnectError),
}
