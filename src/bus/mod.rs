//! Kafka: topic names and creation, the producer, consumer groups, the Avro
//! codec, dead letters.

pub mod avro;
pub mod client;
pub mod dlq;
pub mod group;
pub mod producer;
pub mod scan;
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
    #[error("reading a topic: {0}")]
    Scan(Box<dyn std::error::Error + Send + Sync>),
}

impl BusError {
    /// Whether trying again later can help. A broker away, a record not yet
    /// accepted, a topic not created, and also refused credentials or an
    /// untrusted certificate — the role stays not ready and logs the setting
    /// to fix on every try, so an operator fixing the broker side needs no
    /// restart. Not: a client librdkafka refuses to build (a wrong
    /// `[kafka.librdkafka]` property) or a record that does not fit its schema.
    pub fn is_retryable(&self) -> bool {
        match self {
            BusError::Client { .. } | BusError::Avro(_) => false,
            BusError::Connect(client::ConnectError::Client(_)) => false,
            BusError::Delivery { .. } | BusError::CreateTopic { .. } | BusError::Scan(_) => true,
            BusError::Connect(
                client::ConnectError::Authentication { .. }
                | client::ConnectError::Tls { .. }
                | client::ConnectError::Unreachable { .. },
            ) => true,
        }
    }
}
