//! Consumer groups: how every processor's consumer is configured, and how far
//! behind a group is (high watermark − committed offset).
//!
//! Processor consumers do not join their group: the partitions a worker
//! applies are leased in the state database (`sync::partition_leases`, which
//! says why) and assigned by hand. The group id names where their offsets are
//! committed, read by `flywheel lag` and moved by `flywheel replay`.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::client::client_config;

use crate::config::{KafkaConfig, ProcessorsConfig};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A processor's consumer group: `processors.group_id` + `.` + its lane's
/// name (`sync::Lane::name`: the entity, and the shop where it writes to one).
pub fn group_name(p: &ProcessorsConfig, lane: &str) -> String {
    format!("{}.{lane}", p.group_id)
}

/// The configuration of `lane`'s processor consumer: partitions assigned by
/// the processor from its leases, offsets committed to the group by the
/// processor itself after applying; a partition the group never committed
/// starts at `processors.new_group_start`.
pub fn processor_consumer(kafka: &KafkaConfig, p: &ProcessorsConfig, lane: &str) -> ClientConfig {
    let mut c = client_config(kafka, &format!("processor-{lane}"));
    c.set("group.id", group_name(p, lane))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", p.new_group_start.as_str())
        .set("fetch.wait.max.ms", kafka.fetch_wait_max_ms.to_string());
    // librdkafka prefetches up to 64 MB per consumer by default, and a worker
    // runs a consumer per (entity, shop): on a backlog (a first sync, a
    // replay) each held its topic's records, and the worker's memory grew
    // with the number of shops. A batch is at most a few MB; the operator
    // may still choose otherwise in `[kafka.librdkafka]`.
    if !kafka.librdkafka.contains_key(PREFETCH_KBYTES) {
        c.set(PREFETCH_KBYTES, PROCESSOR_PREFETCH_KBYTES.to_string());
    }
    c
}

const PREFETCH_KBYTES: &str = "queued.max.messages.kbytes";
/// What a processor consumer prefetches (librdkafka's default: 65,536).
const PROCESSOR_PREFETCH_KBYTES: u32 = 4096;

/// How many partitions `physical_topic` has (0 when it does not exist).
/// Blocking: call it from a blocking task.
pub fn partition_count(kafka: &KafkaConfig, physical_topic: &str) -> Result<i32, KafkaError> {
    let consumer: BaseConsumer = client_config(kafka, "metadata").create()?;
    let metadata = consumer.fetch_metadata(Some(physical_topic), TIMEOUT)?;
    Ok(metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map_or(0, |t| {
            i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)
        }))
}

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

/// The lag of `group` on `physical_topic`, per partition; `None` when the
/// topic does not exist yet. Blocking: call it from a blocking task.
pub fn group_lag(
    kafka: &KafkaConfig,
    group: &str,
    physical_topic: &str,
) -> Result<Option<Vec<PartitionLag>>, KafkaError> {
    let consumer: BaseConsumer = client_config(kafka, "lag")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(physical_topic), TIMEOUT)?;
    let Some(t) = metadata.topics().first().filter(|t| t.error().is_none()) else {
        return Ok(None);
    };
    let mut tpl = TopicPartitionList::new();
    for p in t.partitions() {
        tpl.add_partition(physical_topic, p.id());
    }
    let committed = consumer.committed_offsets(tpl, TIMEOUT)?;
    // (partition, low watermark, listed high, committed)
    let mut rows = Vec::new();
    for e in committed.elements() {
        let (low, listed_high) =
            consumer.fetch_watermarks(physical_topic, e.partition(), TIMEOUT)?;
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
    let fetched = fetched_high_watermarks(kafka, physical_topic, &starts)?;
    let mut out = Vec::with_capacity(rows.len());
    for (partition, low, listed_high, committed) in rows {
        let high = listed_high.max(fetched.get(&partition).copied().unwrap_or(-1));
        out.push(PartitionLag {
            group: group.to_owned(),
            topic: physical_topic.to_owned(),
            partition,
            committed,
            high_watermark: high,
            lag: (high - committed.unwrap_or(low)).max(0),
        });
    }
    out.sort_by_key(|l| l.partition);
    Ok(Some(out))
}

/// The high watermark of each partition as a Fetch response reports it. Some
/// brokers (tansu 0.6) answer ListOffsets(latest) with a wrong value (1 for a
/// partition holding 26 records written in one batch), so the lag reader also
/// fetches from `starts` (partition, offset) and reads the watermarks that
/// came back. One probe per topic; nothing is committed (it is in no group).
fn fetched_high_watermarks(
    kafka: &KafkaConfig,
    topic: &str,
    starts: &[(i32, i64)],
) -> Result<HashMap<i32, i64>, KafkaError> {
    let consumer: BaseConsumer = client_config(kafka, "lag-probe")
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
    let mut found = HashMap::new();
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
