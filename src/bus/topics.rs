//! The topics Flywheel writes, and their creation.
//!
//! Flywheel creates its topics explicitly (operators want them declared, and
//! brokers such as the test broker do not auto-create). Topics that hold the
//! state of an entity (every record keyed by the entity, the newest version
//! is what counts) are compacted, so a replay from the start still finds the
//! newest version of every key however old; topics of events (raw webhooks,
//! dead letters) keep records by time.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::BusError;
use crate::config::KafkaConfig;

pub const ERP_STOCK: &str = "erp.stock.v1";
pub const ERP_PRICE: &str = "erp.price.v1";
pub const ERP_ORDER_STATUS: &str = "erp.order_status.v1";
pub const SHOP_ORDERS: &str = "shop.orders.v1";
pub const SHOP_INVENTORY: &str = "shop.inventory.v1";
/// The shop's products as they are now: what keeps the SKU → variant mapping current.
pub const SHOP_CATALOG: &str = "shop.catalog.v1";
/// Every verified webhook, byte for byte, with its headers.
pub const SHOP_WEBHOOKS_RAW: &str = "shop.webhooks.raw.v1";
pub const DEAD_LETTERS: &str = "flywheel.dlq.v1";

/// How a topic keeps its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// `cleanup.policy=compact`: the newest record per key, forever.
    Compact,
    /// `cleanup.policy=delete`: every record, for `kafka.event_retention_ms`.
    Delete,
}

/// Raw webhooks and dead letters are events to keep for a while; every other
/// topic (entity topics, whatever an ERP connector declares) is keyed state.
pub fn cleanup_of(logical: &str) -> Cleanup {
    if logical == SHOP_WEBHOOKS_RAW || logical == DEAD_LETTERS {
        Cleanup::Delete
    } else {
        Cleanup::Compact
    }
}

/// The topic configuration Flywheel creates `logical` with.
pub fn topic_config(kafka: &KafkaConfig, logical: &str) -> Vec<(&'static str, String)> {
    match cleanup_of(logical) {
        Cleanup::Compact if kafka.compact_state_topics => vec![
            ("cleanup.policy", "compact".into()),
            (
                "min.compaction.lag.ms",
                kafka.min_compaction_lag_ms.to_string(),
            ),
        ],
        Cleanup::Compact | Cleanup::Delete => vec![
            ("cleanup.policy", "delete".into()),
            ("retention.ms", kafka.event_retention_ms.to_string()),
        ],
    }
}

/// How long the connection check before creating topics (the first thing
/// every role does with Kafka) waits for the cluster.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates each topic that does not exist yet, with the configured partitions,
/// replication factor and cleanup ([`topic_config`]). Existing topics are left
/// as they are, but a state topic that is not compacted is reported (see
/// [`warn_if_not_compacted`]) by a task of its own: that warning needs an admin
/// client and two round trips, which every restart would otherwise wait for.
/// First checks the connection, so a wrong password or certificate is named as
/// such; when every topic exists, that check is all a restart waits for.
pub async fn ensure_topics(kafka: &KafkaConfig, names: &[&str]) -> Result<(), BusError> {
    let existing = create_missing(kafka, names).await?;
    if kafka.compact_state_topics && !existing.is_empty() {
        let kafka = kafka.clone();
        tokio::spawn(async move { warn_if_not_compacted(&kafka, &existing).await });
    }
    Ok(())
}

/// [`ensure_topics`], waiting for the compaction check too: for a command that
/// exits right after, whose operator should still see the warning.
pub async fn ensure_topics_and_check(kafka: &KafkaConfig, names: &[&str]) -> Result<(), BusError> {
    let existing = create_missing(kafka, names).await?;
    if kafka.compact_state_topics {
        warn_if_not_compacted(kafka, &existing).await;
    }
    Ok(())
}

/// Creates the topics of `names` the cluster lacks; returns the physical names
/// of the state topics that existed already (whose cleanup was not ours to set).
async fn create_missing(kafka: &KafkaConfig, names: &[&str]) -> Result<Vec<String>, BusError> {
    let probed = kafka.clone();
    let present = tokio::task::spawn_blocking(move || super::client::probe(&probed, PROBE_TIMEOUT))
        .await
        .unwrap_or(Err(super::client::ConnectError::Client(
            rdkafka::error::KafkaError::Canceled,
        )))?;
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !present.contains(&kafka.topic(n)))
        .collect();
    let created = if missing.is_empty() {
        HashSet::new()
    } else {
        create(kafka, &missing).await?
    };
    // The state topics we did not create: their cleanup was not ours to set.
    Ok(names
        .iter()
        .filter(|n| cleanup_of(n) == Cleanup::Compact)
        .map(|n| kafka.topic(n))
        .filter(|t| !created.contains(t))
        .collect())
}

/// Creates `missing` (logical names); returns the physical names it created
/// (not those another role created meanwhile).
async fn create(kafka: &KafkaConfig, missing: &[&str]) -> Result<HashSet<String>, BusError> {
    let admin = admin_client(kafka)?;
    let physical: Vec<String> = missing.iter().map(|n| kafka.topic(n)).collect();
    let configs: Vec<Vec<(&str, String)>> =
        missing.iter().map(|n| topic_config(kafka, n)).collect();
    let new_topics: Vec<NewTopic> = physical
        .iter()
        .zip(&configs)
        .map(|(n, config)| {
            config.iter().fold(
                NewTopic::new(
                    n,
                    kafka.partitions,
                    TopicReplication::Fixed(kafka.replication_factor),
                ),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let results = admin
        .create_topics(new_topics.iter(), &admin_options())
        .await
        .map_err(|e| BusError::CreateTopic {
            topic: physical.join(","),
            reason: format!("{e} (broker {})", kafka.bootstrap),
        })?;
    let mut created = HashSet::new();
    for result in results {
        match result {
            Ok(topic) => {
                tracing::info!(%topic, partitions = kafka.partitions, "created topic");
                created.insert(topic);
            }
            // Another role created it since the probe.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BusError::CreateTopic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(created)
}

fn admin_client(kafka: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>, BusError> {
    super::client::client_config(kafka, "admin")
        .create()
        .map_err(|source| BusError::Client {
            bootstrap: kafka.bootstrap.clone(),
            source: Box::new(source),
        })
}

fn admin_options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))
}

/// Warns about each existing state topic whose `cleanup.policy` lacks
/// `compact`: a replay from the start would miss every key whose newest
/// version was deleted by time retention. A broker that cannot describe
/// configurations is noted at debug level only.
async fn warn_if_not_compacted(kafka: &KafkaConfig, topics: &[String]) {
    if topics.is_empty() {
        return;
    }
    let admin = match admin_client(kafka) {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(error = %e, "no admin client to check the topics' cleanup policy");
            return;
        }
    };
    let specs: Vec<ResourceSpecifier> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let described = match admin.describe_configs(specs.iter(), &admin_options()).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(error = %e, "could not describe the topics' configuration");
            return;
        }
    };
    for (topic, resource) in topics.iter().zip(described) {
        let Ok(resource) = resource else { continue };
        let value = |key: &str| resource.get(key).and_then(|e| e.value.clone());
        // Absent (tansu lists only what was set): the broker's default, delete.
        let policy = value("cleanup.policy").unwrap_or_else(|| "delete".into());
        if !policy.contains("compact") {
            tracing::warn!(
                topic = %topic, cleanup_policy = %policy,
                retention_ms = value("retention.ms").unwrap_or_default(),
                "state topic is not compacted: a replay from the start reads only what retention \
                 kept, so keys whose newest version is older than retention.ms are missed; set \
                 cleanup.policy=compact on it (or kafka.compact_state_topics = false to silence this)"
            );
        }
    }
}
