//! `flywheel replay`: moves a stopped consumer group's committed offsets back
//! (or to any position), so its processor re-reads and re-applies from there.
//! Safe because every processor is version-guarded and idempotent: what was
//! already applied is skipped as stale.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{Config, KafkaConfig};
use crate::sync::state::{StateDb, StateError};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Where to move the group's offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Earliest,
    /// The same offset on every partition (clamped to what the partition holds).
    Offset(i64),
    /// The first record at or after this time (ms since the Unix epoch).
    TimeMillis(i64),
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "group `{group}` has {members} live member(s) applying its partitions ({clients}); stop its processors first, then replay"
    )]
    GroupActive {
        group: String,
        members: usize,
        clients: String,
    },
    #[error("topic `{0}` does not exist")]
    NoTopic(String),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("could not see which workers lease the group's partitions: {0}")]
    State(#[from] StateError),
}

/// One partition's move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub partition: i32,
    pub before: Option<i64>,
    pub after: i64,
}

/// Refuses while workers lease partitions of `group` in the state database:
/// they would commit over the moved offsets.
pub async fn ensure_no_workers(config: &Config, group: &str) -> Result<(), ReplayError> {
    let holders = StateDb::connect(config).await?.holders(group).await?;
    if holders.is_empty() {
        return Ok(());
    }
    Err(ReplayError::GroupActive {
        group: group.to_owned(),
        members: holders.len(),
        clients: holders
            .iter()
            .map(|h| {
                format!(
                    "{} at {}, session {}{}",
                    h.name,
                    h.client_addr.as_deref().unwrap_or("local socket"),
                    h.session,
                    if h.partitions.is_empty() {
                        String::new()
                    } else {
                        format!(", partitions {:?}", h.partitions)
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// Moves group `group`'s offsets on `topic` (logical name) to `target`, or
/// only computes the moves with `dry_run`. Refuses while the group has members.
pub fn replay(
    kafka: &KafkaConfig,
    group: &str,
    topic: &str,
    target: Target,
    dry_run: bool,
) -> Result<Vec<Move>, ReplayError> {
    let consumer: BaseConsumer = crate::bus::client::client_config(kafka, "replay")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let groups = consumer.fetch_group_list(Some(group), TIMEOUT)?;
    if let Some(g) = groups.groups().iter().find(|g| g.name() == group)
        && !g.members().is_empty()
    {
        return Err(ReplayError::GroupActive {
            group: group.to_owned(),
            members: g.members().len(),
            clients: g
                .members()
                .iter()
                .map(|m| format!("{}@{}", m.client_id(), m.client_host()))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let physical = kafka.topic(topic);
    let metadata = consumer.fetch_metadata(Some(&physical), TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| ReplayError::NoTopic(physical.clone()))?
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut all = TopicPartitionList::new();
    for p in &partitions {
        all.add_partition(&physical, *p);
    }
    let committed = consumer.committed_offsets(all, TIMEOUT)?;
    let by_time = match target {
        Target::TimeMillis(ms) => {
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                tpl.add_partition_offset(&physical, *p, Offset::Offset(ms))?;
            }
            Some(consumer.offsets_for_times(tpl, TIMEOUT)?)
        }
        _ => None,
    };
    let mut moves = Vec::new();
    let mut commit = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(&physical, p, TIMEOUT)?;
        let after = match target {
            Target::Earliest => low,
            Target::Offset(n) => n.max(low),
            Target::TimeMillis(_) => match by_time
                .as_ref()
                .and_then(|t| t.find_partition(&physical, p))
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => o,
                // No record at or after that time: nothing to replay here.
                _ => high.max(low),
            },
        };
        let before = committed
            .find_partition(&physical, p)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        commit.add_partition_offset(&physical, p, Offset::Offset(after))?;
        moves.push(Move {
            partition: p,
            before,
            after,
        });
    }
    if !dry_run {
        consumer.commit(&commit, CommitMode::Sync)?;
    }
    Ok(moves)
}

/// `1h`, `30m`, `45s`, `2d` → a duration.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("5w"), None);
        assert_eq!(parse_duration("10"), None);
    }
}
