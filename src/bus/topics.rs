//! The topics Flywheel writes, and their creation.
//!
//! Flywheel creates its topics explicitly (operators want them declared, and
//! brokers such as the test broker do not auto-create).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::BusError;
use crate::config::KafkaConfig;

pub const ERP_STOCK: &str = "erp.stock.v1";
pub const ERP_PRICE: &str = "erp.price.v1";
pub const ERP_ORDER_STATUS: &str = "erp.order_status.v1";
pub const DEAD_LETTERS: &str = "flywheel.dlq.v1";

/// Creates each topic that does not exist yet, with the configured partitions
/// and replication factor. Existing topics are left as they are.
pub async fn ensure_topics(kafka: &KafkaConfig, names: &[&str]) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("client.id", format!("{}-admin", kafka.client_id))
        .create()
        .map_err(|source| BusError::Client {
            bootstrap: kafka.bootstrap.clone(),
            source: Box::new(source),
        })?;
    let physical: Vec<String> = names.iter().map(|n| kafka.topic(n)).collect();
    let new_topics: Vec<NewTopic> = physical
        .iter()
        .map(|n| {
            NewTopic::new(
                n,
                kafka.partitions,
                TopicReplication::Fixed(kafka.replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(new_topics.iter(), &opts)
        .await
        .map_err(|e| BusError::CreateTopic {
            topic: physical.join(","),
            reason: format!("{e} (broker {})", kafka.bootstrap),
        })?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, partitions = kafka.partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BusError::CreateTopic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}
