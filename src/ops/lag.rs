//! How far behind the pipeline is: each processor group's lag per topic and
//! partition (high watermark − committed offset), and the source slot's lag.
//! `flywheel lag` prints it; the processors role exports the consumer lag as
//! `flywheel_consumer_lag_records` (refreshed every 15 s).

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{IntGaugeVec, Opts, register_int_gauge_vec};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One partition of one group's topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// `None`: the group never committed here (it would start at
    /// `processors.new_group_start`; lag is counted from the low watermark).
    pub committed: Option<i64>,
    pub high_watermark: i64,
    pub lag: i64,
}

/// The lag of every processor group on its topic. Topics that do not exist
/// yet are left out.
pub fn consumer_lag(config: &Config) -> Result<Vec<PartitionLag>, KafkaError> {
    let mut out = Vec::new();
    for (entity, topic) in crate::sync::CONSUMED {
        let group = format!("{}.{entity}", config.processors.group_id);
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.kafka.bootstrap)
            .set("group.id", &group)
            .set("client.id", format!("{}-lag", config.kafka.client_id))
            .set("enable.auto.commit", "false")
            .create()?;
        let physical = config.kafka.topic(topic);
        let metadata = consumer.fetch_metadata(Some(&physical), TIMEOUT)?;
        let Some(t) = metadata.topics().first().filter(|t| t.error().is_none()) else {
            continue;
        };
        let mut tpl = TopicPartitionList::new();
        for p in t.partitions() {
            tpl.add_partition(&physical, p.id());
        }
        let committed = consumer.committed_offsets(tpl, TIMEOUT)?;
        // (partition, low watermark, listed high, committed)
        let mut rows = Vec::new();
        for e in committed.elements() {
            let (low, listed_high) =
                consumer.fetch_watermarks(&physical, e.partition(), TIMEOUT)?;
            let committed = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            rows.push((e.partition(), low, listed_high, committed));
        }
        let starts: Vec<(i32, i64)> = rows
            .iter()
            .map(|(p, low, _, c)| (*p, c.unwrap_or(*low)))
            .collect();
        let fetched = fetched_high_watermarks(&config.kafka.bootstrap, &physical, &starts)?;
        for (partition, low, listed_high, committed) in rows {
            let high = listed_high.max(fetched.get(&partition).copied().unwrap_or(-1));
            out.push(PartitionLag {
                group: group.clone(),
                topic: physical.clone(),
                partition,
                committed,
                high_watermark: high,
                lag: (high - committed.unwrap_or(low)).max(0),
            });
        }
    }
    out.sort_by(|a, b| (&a.group, a.partition).cmp(&(&b.group, b.partition)));
    Ok(out)
}

/// The high watermark of each partition as a Fetch response reports it. Some
/// brokers (tansu 0.6) answer ListOffsets(latest) with a wrong value (1 for a
/// partition holding 26 records written in one batch), so the lag reader also
/// fetches from `starts` (partition, offset) and reads the watermarks that
/// came back. One probe per topic; nothing is committed (it is in no group).
fn fetched_high_watermarks(
    bootstrap: &str,
    topic: &str,
    starts: &[(i32, i64)],
) -> Result<std::collections::HashMap<i32, i64>, KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "flywheel-lag-probe")
        .set("enable.auto.commit", "false")
        .set("max.partition.fetch.bytes", "65536")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for (partition, from) in starts {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*from))?;
    }
    consumer.assign(&tpl)?;
    let topic_c = std::ffi::CString::new(topic).map_err(|_| {
        KafkaError::ClientCreation(format!("topic name {topic:?} contains a NUL byte"))
    })?;
    let cached_high = |partition: i32| {
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: the client pointer is valid while `consumer` lives (it does,
        // for this call); the topic is a NUL-terminated string that outlives
        // the call; librdkafka only writes the two i64 out-parameters. rdkafka
        // 0.39 has no safe wrapper for this cached (Fetch-reported) watermark.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                consumer.client().native_ptr(),
                topic_c.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
            .then_some(high)
    };
    // The first Fetch response of a partition sets its watermark, with or
    // without records.
    let mut found = std::collections::HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while found.len() < starts.len() && std::time::Instant::now() < deadline {
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(50)) {
            return Err(e);
        }
        for (partition, _) in starts {
            if let Some(high) = cached_high(*partition) {
                found.insert(*partition, high);
            }
        }
    }
    Ok(found)
}

/// The source slot: (active, bytes of WAL not yet confirmed), if it exists.
pub async fn slot_lag(config: &Config) -> anyhow::Result<Option<(bool, i64)>> {
    let client = crate::pg_tls::connect(&config.erp.pg_config()?, &config.erp.tls()?).await?;
    let row = client
        .query_opt(
            "SELECT active, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.erp.slot],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

fn gauge() -> &'static IntGaugeVec {
    static G: OnceLock<IntGaugeVec> = OnceLock::new();
    G.get_or_init(|| {
        register_int_gauge_vec!(
            Opts::new(
                "flywheel_consumer_lag_records",
                "Records in a processor group's topic partition not yet committed (high watermark − committed offset)"
            ),
            &["group", "topic", "partition"]
        )
        .expect("registering the consumer lag gauge")
    })
}

/// Refreshes `flywheel_consumer_lag_records` every `every` until `shutdown`.
pub async fn export(config: Config, every: Duration, shutdown: CancellationToken) {
    loop {
        let c = config.clone();
        match tokio::task::spawn_blocking(move || consumer_lag(&c)).await {
            Ok(Ok(lags)) => {
                for l in lags {
                    gauge()
                        .with_label_values(&[&l.group, &l.topic, &l.partition.to_string()])
                        .set(l.lag);
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "could not measure consumer lag"),
            Err(e) => tracing::debug!(error = %e, "consumer lag task failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
