//! Topic creation against the development broker: what is missing is created
//! with Flywheel's settings, what exists is left as it is, and a restart
//! (every topic present) succeeds on the probe's metadata alone.

use std::time::Duration;

use flywheel::bus::client::probe;
use flywheel::bus::topics::{DEAD_LETTERS, ERP_STOCK, ensure_topics};
use flywheel::config::KafkaConfig;
use flywheel::local_infra::LocalBroker;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

const T: Duration = Duration::from_secs(30);

async fn probed(kafka: &KafkaConfig) -> std::collections::HashSet<String> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || probe(&kafka, T))
        .await
        .expect("the probe task")
        .expect("the broker answers")
}

/// Partitions of `topic`, from a fresh metadata request.
async fn partitions(kafka: &KafkaConfig, topic: String) -> usize {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = flywheel::bus::client::client_config(&kafka, "test-metadata")
            .create()
            .expect("a consumer");
        let metadata = consumer.fetch_metadata(Some(&topic), T).expect("metadata");
        metadata.topics()[0].partitions().len()
    })
    .await
    .expect("the metadata task")
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_topics_are_created_existing_ones_left_as_they_are() {
    let broker = LocalBroker::start()
        .await
        .unwrap_or_else(|e| panic!("the development broker did not start: {e}"));
    let kafka = KafkaConfig {
        bootstrap: broker.bootstrap(),
        topic_prefix: "ensure_topics.".into(),
        partitions: 3,
        ..Default::default()
    };
    let (stock, dlq) = (kafka.topic(ERP_STOCK), kafka.topic(DEAD_LETTERS));
    let before = probed(&kafka).await;
    assert!(
        !before.contains(&stock) && !before.contains(&dlq),
        "{before:?}"
    );

    // An operator created the stock topic beforehand, with 2 partitions.
    let admin: AdminClient<DefaultClientContext> =
        flywheel::bus::client::client_config(&kafka, "test-admin")
            .create()
            .expect("an admin client");
    let created = admin
        .create_topics(
            [&NewTopic::new(&stock, 2, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create_topics");
    assert!(created[0].is_ok(), "{created:?}");

    ensure_topics(&kafka, &[ERP_STOCK, DEAD_LETTERS])
        .await
        .expect("ensure_topics");
    let after = probed(&kafka).await;
    assert!(after.contains(&stock) && after.contains(&dlq), "{after:?}");
    assert_eq!(partitions(&kafka, stock.clone()).await, 2, "left as it was");
    assert_eq!(
        partitions(&kafka, dlq.clone()).await,
        3,
        "created with kafka.partitions"
    );

    // A restart: everything exists, nothing is created, nothing fails.
    ensure_topics(&kafka, &[ERP_STOCK, DEAD_LETTERS])
        .await
        .expect("ensure_topics with every topic present");
    assert_eq!(partitions(&kafka, stock).await, 2);
    assert_eq!(partitions(&kafka, dlq).await, 3);
}
