//! Consumer groups: how every processor's consumer joins its group, and how
//! far behind a group is (high watermark − committed offset).
//!
//! ## Why static membership (`group.instance.id`)
//!
//! A worker killed with `kill -9` never sends LeaveGroup. With dynamic
//! membership its restarted successor joins as a *new* member while the group
//! still lists the dead one. On tansu 0.6.0 (`coordinator/group/administrator.rs`)
//! a new dynamic member turns the formed group back to "forming" but keeps the
//! *dead* member as its leader (`Inner<Formed>::join` → `Forming { leader:
//! Some(self.state.leader) }`); only the leader may send the assignment, so
//! every SyncGroup of the newcomer is answered REBALANCE_IN_PROGRESS until the
//! missed-heartbeat sweep drops the dead leader after the *group's* session
//! timeout (the first member's, 45 s by librdkafka's default). Measured with
//! plain librdkafka against tansu 0.6.0: the replacement held its partitions
//! 45.2 s after starting (12.2 s with a 10 s session). The sweep also compares
//! the newcomer's last *heartbeat* with the timeout, and a member that never
//! got an assignment never heartbeats, so a newcomer that joined early is swept
//! together with the dead one and must join again; kills landing inside a join
//! stretch this further (the previous crash test once waited over 120 s), and
//! nothing in our log said the processors were waiting.
//!
//! A static member is recognised by its instance id: the restarted worker *is*
//! the old member (both brokers hand it its previous member id and
//! assignment), so it resumes within seconds (tansu pauses 3 s in join and in
//! sync: measured 6.2 s) without waiting for any timeout. This holds on Apache Kafka
//! (KIP-345) as on tansu; a cooperative assignor or a shorter session alone
//! would not fix tansu's leader bookkeeping. Scale-out is unchanged: each
//! worker has its own `processors.instance_id` (the host name by default), and
//! a worker gone for good hands its partitions over after
//! `processors.session_timeout_ms`. Two live workers with the same id fence
//! each other; the loser stops with [`is_fenced`] telling the operator why.
//!
//! Static membership is not the whole story on tansu 0.6.0: in our chaos runs
//! about one processors restart in five took ~20 s instead of 6–9 s, and once a
//! restarted worker never got a partition of one group back. The processor's
//! progress watch (`sync::apply_loop`) therefore makes a worker that holds no
//! partition, while records wait and nobody commits them, join its groups
//! again after twice `processors.session_timeout_ms`, as a *dynamic* member —
//! a rejoin under the same or a fresh instance id stayed unassigned, because
//! tansu sweeps dead members only when a dynamic member joins or syncs — and
//! reports it. The worker's next restart is static again.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::{KafkaConfig, ProcessorsConfig};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A processor's consumer group: `processors.group_id` + `.` + entity.
pub fn group_name(p: &ProcessorsConfig, entity: &str) -> String {
    format!("{}.{entity}", p.group_id)
}

/// The configuration of `entity`'s processor consumer: static member of its
/// group, offsets committed by the processor itself after applying.
/// `rejoins` > 0 joins as a dynamic member: the static member the broker kept
/// was left without an assignment, and on tansu only a dynamic member's join
/// sweeps the dead members that hold the group in "forming" (see above).
pub fn processor_consumer(
    kafka: &KafkaConfig,
    p: &ProcessorsConfig,
    entity: &str,
    rejoins: u32,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    if rejoins == 0 {
        c.set("group.instance.id", format!("{}.{entity}", p.instance()));
    }
    c.set("bootstrap.servers", &kafka.bootstrap)
        .set("group.id", group_name(p, entity))
        .set(
            "client.id",
            format!("{}-processor-{entity}", kafka.client_id),
        )
        .set("session.timeout.ms", p.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (p.session_timeout_ms / 5).max(100).to_string(),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", p.new_group_start.as_str());
    c
}

/// Whether `e` says another live worker uses this worker's instance id.
pub fn is_fenced(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::FencedInstanceId)
}

/// Whether any member of `group` holds a partition, as the coordinator
/// describes the group. Blocking: call it from a blocking task.
pub fn anyone_holds_partitions(kafka: &KafkaConfig, group: &str) -> Result<bool, KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("client.id", format!("{}-group-probe", kafka.client_id))
        .create()?;
    let groups = consumer.fetch_group_list(Some(group), TIMEOUT)?;
    Ok(groups
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .flat_map(|g| g.members())
        .any(|m| m.assignment().is_none_or(assignment_has_partitions)))
}

/// Whether a consumer-protocol assignment (version i16, then an array of
/// topic string + partition i32 array, then user data) names any partition.
/// Bytes that do not parse count as holding some: never act on what we
/// could not read.
fn assignment_has_partitions(bytes: &[u8]) -> bool {
    fn take<const N: usize>(b: &[u8], at: &mut usize) -> Option<[u8; N]> {
        let v = b.get(*at..*at + N)?.try_into().ok()?;
        *at += N;
        Some(v)
    }
    let parsed = (|| {
        let mut at = 2; // version
        let topics = i32::from_be_bytes(take::<4>(bytes, &mut at)?);
        for _ in 0..topics.max(0) {
            let name_len = i16::from_be_bytes(take::<2>(bytes, &mut at)?);
            at = at.checked_add(usize::try_from(name_len.max(0)).ok()?)?;
            let partitions = i32::from_be_bytes(take::<4>(bytes, &mut at)?);
            if partitions > 0 {
                return Some(true);
            }
        }
        Some(false)
    })();
    parsed.unwrap_or(true)
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
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("group.id", group)
        .set("client.id", format!("{}-lag", kafka.client_id))
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
    let fetched = fetched_high_watermarks(&kafka.bootstrap, physical_topic, &starts)?;
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
    bootstrap: &str,
    topic: &str,
    starts: &[(i32, i64)],
) -> Result<HashMap<i32, i64>, KafkaError> {
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

#[cfg(test)]
mod tests {
    use super::assignment_has_partitions;

    #[test]
    fn assignments_are_read_byte_by_byte() {
        // version 3, one topic "t" with partitions [0, 2], no user data
        let held = [
            0, 3, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 255, 255, 255, 255,
        ];
        assert!(assignment_has_partitions(&held));
        // version 3, no topics
        assert!(!assignment_has_partitions(&[
            0, 3, 0, 0, 0, 0, 255, 255, 255, 255
        ]));
        // one topic with no partitions
        assert!(!assignment_has_partitions(&[
            0, 3, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 0
        ]));
        // truncated or empty: unknown, so counted as held
        assert!(assignment_has_partitions(&[0, 3, 0, 0, 0, 1, 0, 9]));
        assert!(assignment_has_partitions(&[]));
    }
}
