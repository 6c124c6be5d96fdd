//! The one Kafka producer configuration every Flywheel role uses: idempotent,
//! `acks=all`, so a record acknowledged is durable and never duplicated by
//! producer retries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use rdkafka::ClientConfig;
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
    /// Shared bytes: the gateway's raw record is the request body itself,
    /// not a copy of it (17 KB per real Shopify order).
    pub payload: bytes::Bytes,
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
    inner: Arc<FutureProducer>,
    bootstrap: String,
    topic_prefix: String,
}

fn producer_config(kafka: &KafkaConfig, role: &str) -> ClientConfig {
    let mut config = super::client::client_config(kafka, role);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", kafka.message_timeout_ms.to_string());
    // `[kafka.librdkafka] linger.ms` is the operator's to tune; without it, each role's own.
    if !kafka.librdkafka.contains_key("linger.ms") {
        config.set("linger.ms", linger_ms(role));
    }
    config
}

fn create(kafka: &KafkaConfig, config: &ClientConfig) -> Result<FutureProducer, BusError> {
    config.create().map_err(|source| BusError::Client {
        bootstrap: kafka.bootstrap.clone(),
        source: Box::new(source),
    })
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

/// The producers [`EventProducer::shared`] handed out and someone still
/// holds, by their whole client configuration.
type SharedProducers = HashMap<Vec<(String, String)>, Weak<FutureProducer>>;

impl EventProducer {
    /// A producer of its own, for a role whose delivery is its hot path
    /// (the source, the gateway).
    pub fn new(kafka: &KafkaConfig, role: &str) -> Result<Self, BusError> {
        let config = producer_config(kafka, role);
        let inner = Arc::new(create(kafka, &config)?);
        Self::warm_up(&inner);
        Ok(Self::with(kafka, inner))
    }

    /// A producer shared by everyone in the process asking for the same
    /// configuration while any of them holds it: each librdkafka client
    /// brings its own threads and buffers, and a worker's processor lanes
    /// (one per entity and shop) only produce the odd dead letter. A
    /// producer left unusable by a fatal error is not handed out again.
    pub fn shared(kafka: &KafkaConfig, role: &str) -> Result<Self, BusError> {
        static SHARED: OnceLock<Mutex<SharedProducers>> = OnceLock::new();
        let config = producer_config(kafka, role);
        let key: Vec<(String, String)> = config
            .config_map()
            .keys()
            .map(|&k| (k.to_owned(), config.get(k).unwrap_or_default().to_owned()))
            .collect();
        let mut shared = SHARED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        shared.retain(|_, p| p.strong_count() > 0);
        if let Some(inner) = shared.get(&key).and_then(Weak::upgrade)
            && inner.client().fatal_error().is_none()
        {
            return Ok(Self::with(kafka, inner));
        }
        let inner = Arc::new(create(kafka, &config)?);
        Self::warm_up(&inner);
        shared.insert(key, Arc::downgrade(&inner));
        Ok(Self::with(kafka, inner))
    }

    /// librdkafka's idempotent producer asks for its producer id when a
    /// metadata response arrives or on a 500 ms timer, and only from a
    /// broker it is connected to; a new client's first answer comes from the
    /// bootstrap connection, which it then drops for the broker that answer
    /// names. A new producer's first record therefore waited 0.5–1 s (seen
    /// with `debug=eos`: "No brokers available for Idempotent producer",
    /// twice). Two metadata requests, the second answered by the named
    /// broker, get the id within milliseconds; errors are left to the first
    /// send to report.
    fn warm_up(inner: &Arc<FutureProducer>) {
        let inner = Arc::downgrade(inner);
        let spawned = std::thread::Builder::new()
            .name("producer-warm-up".into())
            .spawn(move || {
                for _ in 0..2 {
                    let Some(p) = inner.upgrade() else { return };
                    if p.client()
                        .fetch_metadata(None, Duration::from_secs(5))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "no thread to warm the producer up; its first send waits for its id");
        }
    }

    fn with(kafka: &KafkaConfig, inner: Arc<FutureProducer>) -> Self {
        EventProducer {
            inner,
            bootstrap: kafka.bootstrap.clone(),
            topic_prefix: kafka.topic_prefix.clone(),
        }
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
            .payload(record.payload.as_ref())
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
        let producer = Arc::clone(&self.inner);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(bootstrap: &str) -> KafkaConfig {
        KafkaConfig {
            // Nothing listens there: creating a client does not connect.
            bootstrap: bootstrap.into(),
            ..Default::default()
        }
    }

    #[test]
    fn shared_producers_are_one_client_per_configuration() {
        let a = EventProducer::shared(&kafka("127.0.0.1:1"), "processor").expect("client");
        let b = EventProducer::shared(&kafka("127.0.0.1:1"), "processor").expect("client");
        assert!(
            Arc::ptr_eq(&a.inner, &b.inner),
            "same configuration, one client"
        );
        let other_role = EventProducer::shared(&kafka("127.0.0.1:1"), "gateway").expect("client");
        assert!(
            !Arc::ptr_eq(&a.inner, &other_role.inner),
            "linger.ms differs"
        );
        let other_broker =
            EventProducer::shared(&kafka("127.0.0.1:2"), "processor").expect("client");
        assert!(!Arc::ptr_eq(&a.inner, &other_broker.inner));
        let own = EventProducer::new(&kafka("127.0.0.1:1"), "processor").expect("client");
        assert!(!Arc::ptr_eq(&a.inner, &own.inner), "`new` is never shared");
    }
}
