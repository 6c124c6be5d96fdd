//! tansu's storage with two fixes: a fetch from an offset inside a record
//! batch returns that batch, and a fetch does not list the whole partition.
//!
//! tansu 0.6.0's memory storage (`dynostore`) keeps each produced batch under
//! its base offset and answers a fetch from offset `o` with the batches whose
//! base is ≥ `o`. A consumer that resumes from a committed offset in the middle
//! of a batch (ours commit after every applied batch of events, whatever the
//! producer's batching) is silently handed the *next* batch: the rest of the
//! batch it was in is skipped. A processor killed and restarted lost events
//! that way (`tests/processor_crash.rs`). Kafka answers with the batch holding
//! `o` and the client drops the records before `o`; this wrapper makes tansu do
//! the same by remembering where each produced batch begins and fetching from
//! the base of the one holding `o`.
//!
//! The same storage lists every batch object of a partition on each fetch
//! with records to return (and reads the partition's watermark and the
//! producers' state on every fetch): with the processors fetching every
//! 10 ms, `flywheel run` kept the development broker busy for 57 of every 60
//! seconds. The batches produced through this wrapper are kept here too, by
//! partition and base offset (the newest 256 MiB of them by default), and
//! fetches of those are answered from them; a fetch from further back, or any
//! after a deletion of records or topics (Flywheel makes none), goes to the
//! storage.
//!
//! Everything else is passed through unchanged.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tansu_sans_io::create_topics_request::CreatableTopic;
use tansu_sans_io::delete_groups_response::DeletableGroupResult;
use tansu_sans_io::delete_records_request::DeleteRecordsTopic;
use tansu_sans_io::delete_records_response::DeleteRecordsTopicResult;
use tansu_sans_io::describe_cluster_response::DescribeClusterBroker;
use tansu_sans_io::describe_configs_response::DescribeConfigsResult;
use tansu_sans_io::describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic;
use tansu_sans_io::incremental_alter_configs_request::AlterConfigsResource;
use tansu_sans_io::incremental_alter_configs_response::AlterConfigsResourceResponse;
use tansu_sans_io::list_groups_response::ListedGroup;
use tansu_sans_io::record::deflated;
use tansu_sans_io::txn_offset_commit_response::TxnOffsetCommitResponseTopic;
use tansu_sans_io::{ConfigResource, ErrorCode, IsolationLevel, ListOffset, ScramMechanism};
use tansu_storage::{
    BrokerRegistrationRequest, GroupDetail, ListOffsetResponse, MetadataResponse, NamedGroupDetail,
    OffsetCommitRequest, OffsetStage, ProducerIdResponse, Result, ScramCredential, Storage,
    TopicId, Topition, TxnAddPartitionsRequest, TxnAddPartitionsResponse, TxnOffsetCommitRequest,
    UpdateError, Version,
};
use url::Url;
use uuid::Uuid;

/// `S` whose fetches start at the base of the batch holding the offset asked
/// for, answered from the batches produced through it.
#[derive(Clone, Debug)]
pub struct WholeBatchFetch<S> {
    inner: S,
    produced: Arc<Mutex<Produced>>,
}

/// The batches produced through the wrapper.
#[derive(Debug)]
struct Produced {
    partitions: BTreeMap<Topition, Partition>,
    /// The kept batches, oldest first, and their total size.
    kept_order: VecDeque<(Topition, i64)>,
    kept_bytes: u64,
    /// `kept_bytes` at most (`flywheel dev-broker --fetch-cache-mib`):
    /// memory storage keeps every batch too (it has no retention), and a long
    /// `flywheel demo` held each twice. A consumer reading further back is
    /// answered by the storage, slower but the same.
    limit: u64,
    /// Records or a topic were deleted in the storage: fetches go to it.
    stale: bool,
}

/// One partition's produced batches.
#[derive(Debug, Default)]
struct Partition {
    /// Every batch: base offset → last offset. Memory storage lives as long
    /// as this process, and so does this.
    ends: BTreeMap<i64, i64>,
    /// The batches still kept, by base offset, as the storage returns them:
    /// always the newest of `ends`, since the oldest are let go first.
    kept: BTreeMap<i64, deflated::Batch>,
}

/// A batch's size as a fetch counts it: its length field does not count
/// itself or the base offset before it.
fn encoded_size(batch: &deflated::Batch) -> u64 {
    u64::try_from(batch.batch_length).unwrap_or(0) + 12
}

impl Produced {
    fn with_limit(limit: u64) -> Produced {
        Produced {
            partitions: BTreeMap::new(),
            kept_order: VecDeque::new(),
            kept_bytes: 0,
            limit,
            stale: false,
        }
    }

    /// Remembers a batch the storage stored (its base offset set), and lets
    /// the oldest kept ones go past the limit.
    fn keep(&mut self, topition: &Topition, batch: deflated::Batch) {
        let base = batch.base_offset;
        let partition = self.partitions.entry(topition.clone()).or_default();
        partition
            .ends
            .insert(base, base + i64::from(batch.last_offset_delta));
        self.kept_bytes += encoded_size(&batch);
        partition.kept.insert(base, batch);
        self.kept_order.push_back((topition.clone(), base));
        while self.kept_bytes > self.limit {
            let Some((topition, base)) = self.kept_order.pop_front() else {
                break;
            };
            let gone = self
                .partitions
                .get_mut(&topition)
                .and_then(|p| p.kept.remove(&base));
            if let Some(gone) = gone {
                self.kept_bytes -= encoded_size(&gone);
            }
        }
    }

    /// The batches a fetch from `offset` returns: from the one holding
    /// `offset`, until one takes the total past `max_bytes` (at least one, as
    /// Kafka does). `None` when the storage must answer.
    fn fetch(
        &self,
        topition: &Topition,
        offset: i64,
        max_bytes: u32,
    ) -> Option<Vec<deflated::Batch>> {
        if self.stale {
            return None;
        }
        let partition = self.partitions.get(topition)?;
        // The first batch ending at or after `offset`: none means `offset`
        // is past the end, and the answer is empty.
        let Some(first) = partition
            .ends
            .range(self.batch_start(topition, offset)..)
            .find(|(_, end)| **end >= offset)
            .map(|(base, _)| *base)
        else {
            return Some(vec![]);
        };
        // Let go of: the storage still has it.
        if !partition.kept.contains_key(&first) {
            return None;
        }
        let mut left = u64::from(max_bytes);
        let mut out = vec![];
        for batch in partition.kept.range(first..).map(|(_, b)| b) {
            let size = encoded_size(batch);
            out.push(batch.clone());
            if size > left {
                break;
            }
            left -= size;
        }
        Some(out)
    }

    /// Where a storage fetch from `offset` must begin so the batch holding it
    /// comes back: the greatest base ≤ `offset`, else `offset` itself.
    fn batch_start(&self, topition: &Topition, offset: i64) -> i64 {
        self.partitions
            .get(topition)
            .and_then(|p| p.ends.range(..=offset).next_back().map(|(base, _)| *base))
            .unwrap_or(offset)
    }
}

impl<S> WholeBatchFetch<S> {
    /// `inner`, with the newest `kept_bytes` of produced batches kept to
    /// answer fetches from.
    pub fn new(inner: S, kept_bytes: u64) -> Self {
        WholeBatchFetch {
            inner,
            produced: Arc::new(Mutex::new(Produced::with_limit(kept_bytes))),
        }
    }

    fn produced(&self) -> std::sync::MutexGuard<'_, Produced> {
        self.produced.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl<S: Storage> Storage for WholeBatchFetch<S> {
    async fn produce(
        &self,
        transaction_id: Option<&str>,
        topition: &Topition,
        batch: deflated::Batch,
    ) -> Result<i64> {
        let mut kept = batch.clone();
        let base = self.inner.produce(transaction_id, topition, batch).await?;
        kept.base_offset = base;
        self.produced().keep(topition, kept);
        Ok(base)
    }

    async fn fetch(
        &self,
        topition: &'_ Topition,
        offset: i64,
        min_bytes: u32,
        max_bytes: u32,
        isolation: IsolationLevel,
    ) -> Result<Vec<deflated::Batch>> {
        let from = {
            let produced = self.produced();
            if let Some(batches) = produced.fetch(topition, offset, max_bytes) {
                return Ok(batches);
            }
            produced.batch_start(topition, offset)
        };
        let mut batches = self
            .inner
            .fetch(topition, from, min_bytes, max_bytes, isolation)
            .await?;
        // Only the batch holding `offset` is asked for, not the ones before
        // it (the last batch, once `offset` is past the end).
        batches.retain(|b| b.base_offset + i64::from(b.last_offset_delta) >= offset);
        Ok(batches)
    }

    async fn register_broker(&self, broker_registration: BrokerRegistrationRequest) -> Result<()> {
        self.inner.register_broker(broker_registration).await
    }

    async fn create_topic(&self, topic: CreatableTopic, validate_only: bool) -> Result<Uuid> {
        self.inner.create_topic(topic, validate_only).await
    }

    async fn incremental_alter_resource(
        &self,
        resource: AlterConfigsResource,
    ) -> Result<AlterConfigsResourceResponse> {
        self.inner.incremental_alter_resource(resource).await
    }

    async fn delete_records(
        &self,
        topics: &[DeleteRecordsTopic],
    ) -> Result<Vec<DeleteRecordsTopicResult>> {
        self.produced().stale = true;
        self.inner.delete_records(topics).await
    }

    async fn delete_topic(&self, topic: &TopicId) -> Result<ErrorCode> {
        self.produced().stale = true;
        self.inner.delete_topic(topic).await
    }

    async fn brokers(&self) -> Result<Vec<DescribeClusterBroker>> {
        self.inner.brokers().await
    }

    async fn offset_stage(&self, topition: &Topition) -> Result<OffsetStage> {
        self.inner.offset_stage(topition).await
    }

    async fn list_offsets(
        &self,
        isolation_level: IsolationLevel,
        offsets: &[(Topition, ListOffset)],
    ) -> Result<Vec<(Topition, ListOffsetResponse)>> {
        self.inner.list_offsets(isolation_level, offsets).await
    }

    async fn offset_commit(
        &self,
        group_id: &str,
        retention_time_ms: Option<Duration>,
        offsets: &[(Topition, OffsetCommitRequest)],
    ) -> Result<Vec<(Topition, ErrorCode)>> {
        self.inner
            .offset_commit(group_id, retention_time_ms, offsets)
            .await
    }

    async fn offset_fetch(
        &self,
        group_id: Option<&str>,
        topics: &[Topition],
        require_stable: Option<bool>,
    ) -> Result<BTreeMap<Topition, i64>> {
        self.inner
            .offset_fetch(group_id, topics, require_stable)
            .await
    }

    async fn committed_offset_topitions(&self, group_id: &str) -> Result<BTreeMap<Topition, i64>> {
        self.inner.committed_offset_topitions(group_id).await
    }

    async fn metadata(&self, topics: Option<&[TopicId]>) -> Result<MetadataResponse> {
        self.inner.metadata(topics).await
    }

    async fn upsert_user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
        credential: ScramCredential,
    ) -> Result<()> {
        self.inner
            .upsert_user_scram_credential(user, mechanism, credential)
            .await
    }

    async fn delete_user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<()> {
        self.inner
            .delete_user_scram_credential(user, mechanism)
            .await
    }

    async fn user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<Option<ScramCredential>> {
        self.inner.user_scram_credential(user, mechanism).await
    }

    async fn describe_config(
        &self,
        name: &str,
        resource: ConfigResource,
        keys: Option<&[String]>,
    ) -> Result<DescribeConfigsResult> {
        self.inner.describe_config(name, resource, keys).await
    }

    async fn list_groups(&self, states_filter: Option<&[String]>) -> Result<Vec<ListedGroup>> {
        self.inner.list_groups(states_filter).await
    }

    async fn delete_groups(
        &self,
        group_ids: Option<&[String]>,
    ) -> Result<Vec<DeletableGroupResult>> {
        self.inner.delete_groups(group_ids).await
    }

    async fn describe_groups(
        &self,
        group_ids: Option<&[String]>,
        include_authorized_operations: bool,
    ) -> Result<Vec<NamedGroupDetail>> {
        self.inner
            .describe_groups(group_ids, include_authorized_operations)
            .await
    }

    async fn describe_topic_partitions(
        &self,
        topics: Option<&[TopicId]>,
        partition_limit: i32,
        cursor: Option<Topition>,
    ) -> Result<Vec<DescribeTopicPartitionsResponseTopic>> {
        self.inner
            .describe_topic_partitions(topics, partition_limit, cursor)
            .await
    }

    async fn update_group(
        &self,
        group_id: &str,
        detail: GroupDetail,
        version: Option<Version>,
    ) -> Result<Version, UpdateError<GroupDetail>> {
        self.inner.update_group(group_id, detail, version).await
    }

    async fn init_producer(
        &self,
        transaction_id: Option<&str>,
        transaction_timeout_ms: i32,
        producer_id: Option<i64>,
        producer_epoch: Option<i16>,
    ) -> Result<ProducerIdResponse> {
        self.inner
            .init_producer(
                transaction_id,
                transaction_timeout_ms,
                producer_id,
                producer_epoch,
            )
            .await
    }

    async fn txn_add_offsets(
        &self,
        transaction_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        group_id: &str,
    ) -> Result<ErrorCode> {
        self.inner
            .txn_add_offsets(transaction_id, producer_id, producer_epoch, group_id)
            .await
    }

    async fn txn_add_partitions(
        &self,
        partitions: TxnAddPartitionsRequest,
    ) -> Result<TxnAddPartitionsResponse> {
        self.inner.txn_add_partitions(partitions).await
    }

    async fn txn_offset_commit(
        &self,
        offsets: TxnOffsetCommitRequest,
    ) -> Result<Vec<TxnOffsetCommitResponseTopic>> {
        self.inner.txn_offset_commit(offsets).await
    }

    async fn txn_end(
        &self,
        transaction_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        committed: bool,
    ) -> Result<ErrorCode> {
        self.inner
            .txn_end(transaction_id, producer_id, producer_epoch, committed)
            .await
    }

    async fn maintain(&self, now: SystemTime) -> Result<()> {
        self.inner.maintain(now).await
    }

    async fn cluster_id(&self) -> Result<String> {
        self.inner.cluster_id().await
    }

    async fn node(&self) -> Result<i32> {
        self.inner.node().await
    }

    async fn advertised_listener(&self) -> Result<Url> {
        self.inner.advertised_listener().await
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches at offsets 0–4, 5–9 and 10, each 112 bytes as a fetch counts them.
    fn produced() -> (Produced, Topition) {
        let t = Topition::new("t", 0);
        let mut p = Produced::with_limit(u64::MAX);
        for (base, delta) in [(0, 4), (5, 4), (10, 0)] {
            p.keep(&t, batch(base, delta));
        }
        (p, t)
    }

    fn batch(base: i64, last_offset_delta: i32) -> deflated::Batch {
        deflated::Batch {
            base_offset: base,
            last_offset_delta,
            batch_length: 100,
            ..Default::default()
        }
    }

    fn bases(batches: Option<Vec<deflated::Batch>>) -> Option<Vec<i64>> {
        batches.map(|b| b.iter().map(|b| b.base_offset).collect())
    }

    #[test]
    fn a_fetch_starts_at_the_batch_holding_the_offset() {
        let (p, t) = produced();
        assert_eq!(bases(p.fetch(&t, 0, 1 << 20)), Some(vec![0, 5, 10]));
        assert_eq!(bases(p.fetch(&t, 7, 1 << 20)), Some(vec![5, 10]));
        assert_eq!(bases(p.fetch(&t, 10, 1 << 20)), Some(vec![10]));
        assert_eq!(bases(p.fetch(&t, 11, 1 << 20)), Some(vec![]));
        assert_eq!(p.batch_start(&t, 7), 5);
        assert_eq!(p.batch_start(&t, 11), 10);
    }

    #[test]
    fn a_fetch_stops_past_max_bytes_with_at_least_one_batch() {
        let (p, t) = produced();
        assert_eq!(bases(p.fetch(&t, 0, 10)), Some(vec![0]));
        assert_eq!(bases(p.fetch(&t, 0, 112)), Some(vec![0, 5]));
        assert_eq!(bases(p.fetch(&t, 0, 224)), Some(vec![0, 5, 10]));
    }

    #[test]
    fn the_storage_answers_for_other_partitions_and_after_a_deletion() {
        let (mut p, t) = produced();
        assert!(p.fetch(&Topition::new("t", 1), 0, 1 << 20).is_none());
        p.stale = true;
        assert!(p.fetch(&t, 0, 1 << 20).is_none());
    }

    /// Past the limit the oldest batches, of any partition, are let go: a
    /// fetch from one of them goes to the storage, from the base of the
    /// batch holding the offset, which is still known.
    #[test]
    fn the_oldest_batches_are_let_go_past_the_limit_and_the_storage_answers_for_them() {
        let (t0, t1) = (Topition::new("t", 0), Topition::new("t", 1));
        // Room for two 112-byte batches.
        let mut p = Produced::with_limit(224);
        p.keep(&t0, batch(0, 4));
        p.keep(&t1, batch(0, 0));
        assert_eq!(bases(p.fetch(&t0, 2, 1 << 20)), Some(vec![0]));
        p.keep(&t0, batch(5, 4));
        assert_eq!(p.kept_bytes, 224);
        assert!(
            p.fetch(&t0, 2, 1 << 20).is_none(),
            "let go: the storage answers"
        );
        assert_eq!(p.batch_start(&t0, 2), 0);
        assert_eq!(bases(p.fetch(&t0, 5, 1 << 20)), Some(vec![5]));
        assert_eq!(bases(p.fetch(&t1, 0, 1 << 20)), Some(vec![0]));
        p.keep(&t1, batch(1, 0));
        assert!(p.fetch(&t1, 0, 1 << 20).is_none());
        assert_eq!(bases(p.fetch(&t1, 1, 1 << 20)), Some(vec![1]));
        assert_eq!(
            bases(p.fetch(&t0, 10, 1 << 20)),
            Some(vec![]),
            "past the end"
        );
        assert_eq!(p.kept_bytes, 224);
    }
}
