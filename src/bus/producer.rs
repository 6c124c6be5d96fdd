//! The one Kafka producer configuration every Flywheel role uses: idempotent,
//! `acks=all`, so a record acknowledged is durable and never duplicated by
//! producer retries.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use super::BusError;
use crate::config::KafkaConfig;

/// A record to produce. Owned, so many sends can be in flight at once.
#[derive(Clone, Debug)]
pub struct OutRecord {
    pub topic: &'static str,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// Where an acknowledged record landed.
#[derive(Clone, Copy, Debug)]
pub struct Acked {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone)]
pub struct EventProducer {
    inner: FutureProducer,
    bootstrap: String,
    topic_prefix: String,
}

/// How long a role's producer lets records gather before sending a batch.
/// The gateway answers each webhook only after its records are acknowledged,
/// and hundreds of requests in flight fill batches by themselves, so waiting
/// would only add to every answer (measured at 16 concurrent clients: 5,138
/// webhooks/s, p50 2.8 ms with 0 ms; 2,454/s, p50 6.6 ms with 5 ms). The
/// source and the processors enqueue whole batches at once, where a few
/// milliseconds buy fewer, larger requests.
fn linger_ms(role: &str) -> String {
    match role {
        "gateway" => "0",
        _ => "5",
    }
    .to_owned()
}

impl EventProducer {
    pub fn new(kafka: &KafkaConfig, role: &str) -> Result<Self, BusError> {
        let mut config = super::client::client_config(kafka, role);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", kafka.message_timeout_ms.to_string());
        // `[kafka.librdkafka] linger.ms` is the operator's to tune; without it, each role's own.
        if !kafka.librdkafka.contains_key("linger.ms") {
            config.set("linger.ms", linger_ms(role));
        }
        let inner: FutureProducer = config.create().map_err(|source| BusError::Client {
            bootstrap: kafka.bootstrap.clone(),
            source: Box::new(source),
        })?;
        Ok(EventProducer {
            inner,
            bootstrap: kafka.bootstrap.clone(),
            topic_prefix: kafka.topic_prefix.clone(),
        })
    }

    /// Produces one record and resolves once Kafka acknowledged it (or gave up
    /// after `message.timeout.ms`). Waits, rather than fails, while the local
    /// queue is full.
    pub async fn send(&self, record: OutRecord) -> Result<Acked, BusError> {
        self.enqueue(record).await?.await
    }

    /// Hands one record to the producer's queue and returns the wait for its
    /// acknowledgement. Records enqueued one after the other keep that order
    /// per partition (the producer is idempotent), so a caller can enqueue a
    /// whole batch, move on, and collect the acks later.
    pub async fn enqueue(
        &self,
        record: OutRecord,
    ) -> Result<impl std::future::Future<Output = Result<Acked, BusError>> + Send + 'static, BusError>
    {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (k, v) in &record.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let topic = format!("{}{}", self.topic_prefix, record.topic);
        let bootstrap = self.bootstrap.clone();
        let failed = move |topic: String, source: KafkaError| BusError::Delivery {
            topic,
            bootstrap: bootstrap.clone(),
            source: Box::new(source),
        };
        let mut fr = FutureRecord::to(&topic)
            .key(record.key.as_bytes())
            .payload(&record.payload)
            .headers(headers);
        let delivery = loop {
            match self.inner.send_result(fr) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // Backpressure: librdkafka's local queue drains as acks arrive.
                    fr = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((source, _)) => return Err(failed(topic, source)),
            }
        };
        Ok(async move {
            match delivery.await {
                Ok(Ok(d)) => Ok(Acked {
                    partition: d.partition,
                    offset: d.offset,
                }),
                Ok(Err((source, _))) => Err(failed(topic, source)),
                Err(_) => Err(failed(topic, KafkaError::Canceled)),
            }
        })
    }

    /// A fatal error leaves an idempotent producer unusable (e.g. after the
    /// broker lost its state); the owner should replace it.
    pub fn fatal_error(&self) -> Option<String> {
        self.inner.client().fatal_error().map(|(_, reason)| reason)
    }

    /// The cluster's topic names, proving the broker answers.
    pub async fn topic_names(&self, timeout: Duration) -> Result<Vec<String>, BusError> {
        let producer = self.inner.clone();
        let bootstrap = self.bootstrap.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, timeout)
                .map(|m| m.topics().iter().map(|t| t.name().to_owned()).collect())
                .map_err(|source| BusError::Client {
                    bootstrap,
                    source: Box::new(source),
                })
        })
        .await
        .unwrap_or_else(|e| {
            Err(BusError::CreateTopic {
                topic: String::new(),
                reason: e.to_string(),
            })
        })
    }

    /// Waits for every queued record to be delivered, up to `timeout`.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.inner.flush(timeout) {
            tracing::warn!(error = %e, "producer flush did not complete");
        }
    }
}
