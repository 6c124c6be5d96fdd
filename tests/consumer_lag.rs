//! `flywheel lag` and the consumer lag it reads: a processor group that has
//! not consumed lags by everything in its topic; once the processor has
//! applied and committed, its lag is zero.

mod common;

use std::time::Duration;

use common::{TestEnv, shop_stock, small, wait_for};

const T: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread")]
async fn lag_counts_what_a_group_has_not_committed() {
    let env = TestEnv::new("consumer_lag", small()).await;
    let source = env.start_streaming().await;
    let sim = common::start_shop(20).await;
    let config = common::processor_config(&env, &sim, "consumer_lag-processors");
    // The snapshot's 20 SKUs × 3 warehouses, none consumed yet.
    let mut stock = env.reader("erp.stock.v1");
    let produced = stock.read_until(T, |r| r.len() >= 60).await.len() as i64;
    assert_eq!(common::stock_lag(&config), produced);

    let (ok, text) = common::flywheel_cli(&config, &["lag"]).await;
    assert!(ok, "flywheel lag failed: {text}");
    let stock_rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("consumer_lag-processors.stock.demo "))
        .collect();
    assert_eq!(stock_rows.len(), 3, "one row per partition:\n{text}");
    let printed: i64 = stock_rows
        .iter()
        .map(|l| l.split_whitespace().last().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(printed, produced, "{text}");
    assert!(text.contains("slot consumer_lag: active"), "{text}");

    let processor = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::stock_to_shop::run(&c, &c.shops[0].clone(), t).await
    });
    wait_for("the stock group to catch up", T, || async {
        !shop_stock(&sim).await.is_empty() && common::stock_lag(&config) == 0
    })
    .await;
    processor.stop().await;
    source.stop().await;
}

/// A group that committed an offset inside a batch the producer sent as one
/// (every processor commits after each applied batch of events, wherever that
/// falls) resumes at that offset: the rest of the batch is delivered, not
/// skipped. tansu 0.6.0 alone skips it (`dev_broker::whole_batch_fetch`).
#[tokio::test(flavor = "multi_thread")]
async fn a_group_resuming_inside_a_produced_batch_gets_the_rest_of_it() {
    resume_inside_a_batch(common::shared().await.broker.bootstrap()).await;
}

/// The same from a batch the development broker no longer keeps for fetches
/// (`flywheel dev-broker --fetch-cache-mib 0`): its storage answers, from the
/// start of the batch holding the offset.
#[tokio::test(flavor = "multi_thread")]
async fn a_group_resuming_inside_a_batch_the_broker_let_go_of_gets_the_rest_of_it() {
    let broker = flywheel::local_infra::LocalBroker::start_with_fetch_cache(0)
        .await
        .expect("a development broker keeping no batches");
    resume_inside_a_batch(broker.bootstrap()).await;
}

/// Ten records produced as one batch; a group that committed offset 4 gets
/// 4 to 9.
async fn resume_inside_a_batch(bootstrap: String) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{Offset, TopicPartitionList};

    let kafka = flywheel::config::KafkaConfig {
        bootstrap,
        topic_prefix: "mid_batch_resume.".into(),
        partitions: 1,
        ..Default::default()
    };
    flywheel::bus::topics::ensure_topics(&kafka, &["t"])
        .await
        .expect("creating the topic");
    let topic = kafka.topic("t");
    // Ten records sent together and lingered on: one batch.
    let producer: FutureProducer = flywheel::bus::client::client_config(&kafka, "test-producer")
        .set("linger.ms", "500")
        .create()
        .expect("a producer");
    let sends = (0..10).map(|i| {
        let (producer, topic) = (producer.clone(), topic.clone());
        async move {
            let payload = format!("record {i}");
            producer
                .send(
                    FutureRecord::to(&topic)
                        .partition(0)
                        .key("k")
                        .payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .expect("produced")
        }
    });
    let delivered = futures::future::join_all(sends).await;
    assert_eq!(delivered.iter().map(|d| d.offset).max(), Some(9));

    let consumer = |name: &str| -> BaseConsumer {
        let c: BaseConsumer = flywheel::bus::client::client_config(&kafka, name)
            .set("group.id", "mid_batch_resume")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("a consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, 0);
        c.assign(&tpl).expect("assigning");
        c
    };
    let mut at = TopicPartitionList::new();
    at.add_partition_offset(&topic, 0, Offset::Offset(4))
        .expect("an offset");
    consumer("first")
        .commit(&at, CommitMode::Sync)
        .expect("committing offset 4");

    let resumed = consumer("resumed");
    let mut offsets = Vec::new();
    let deadline = std::time::Instant::now() + T;
    while offsets.len() < 6 && std::time::Instant::now() < deadline {
        if let Some(m) = resumed.poll(Duration::from_millis(200)) {
            offsets.push(m.expect("a record").offset());
        }
    }
    assert_eq!(offsets, vec![4, 5, 6, 7, 8, 9], "records after the commit");
}
