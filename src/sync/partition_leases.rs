//! Which partitions of its topic a processor applies: leases held as
//! session-level locks in the state database (PostgreSQL advisory locks,
//! MariaDB/MySQL `GET_LOCK`; see `sync::state`), instead of an assignment
//! from the Kafka group coordinator.
//!
//! ## Why not the consumer group protocol
//!
//! A worker killed with `kill -9` never leaves its consumer group, so its
//! restarted successor depends on the broker noticing the death. On tansu
//! 0.6.0 (`coordinator/group/administrator.rs`) a new dynamic member turns the
//! formed group back to "forming" but keeps the dead member as its leader, and
//! only the leader may send the assignment: every SyncGroup of the newcomer is
//! REBALANCE_IN_PROGRESS until the missed-heartbeat sweep drops the dead leader
//! after the group's session timeout (measured with plain librdkafka: 45.2 s,
//! 12.2 s with a 10 s session). Static membership (`group.instance.id`)
//! brought that to 6–9 s, but in our chaos runs tansu still left a restarted
//! static member without an assignment, now and then for good, and rejoining
//! (static or dynamic) did not reliably end it: CI once waited over three
//! minutes for the price processor. Recovery cannot hang on a broker's
//! bookkeeping of members that are dead.
//!
//! ## How leases work
//!
//! Every processor already holds a connection to the state database (its
//! version store). A worker holds, on a session of its own, one lock per
//! partition it applies and one that counts it as a live worker of the group.
//! The server drops a session's locks the moment the session ends, and a `kill -9`ed worker's socket is closed by the kernel, so
//! its partitions are free at once: its successor (or another worker) takes
//! them on its next lease check, within a second, and starts from the group's
//! committed offsets. No timeout is involved. Each worker takes at most its
//! fair share, ⌈partitions ÷ live workers⌉, and gives back what exceeds it
//! between batches (after the batch's offsets are committed), so adding a
//! worker spreads the partitions and stopping one hands its partitions to the
//! rest. Offsets stay in Kafka under the group's id (a commit outside a group
//! generation, as any manually assigned consumer does, on Apache Kafka as on
//! tansu), so `flywheel lag` and `flywheel replay` work unchanged.
//!
//! Two workers applying one partition for a moment (a worker cut off from the
//! state database notices on its next lease check and stops) cost duplicate
//! writes, which the version guard and idempotent writes make harmless.

use std::collections::BTreeSet;

use super::state::{StateDb, StateError};

/// A worker's leases on one group's partitions, held by `session`.
pub struct PartitionLeases {
    session: StateDb,
    group: String,
    partitions: i32,
    held: BTreeSet<i32>,
}

impl PartitionLeases {
    /// Joins `group` as a live worker on `session` (a session of its own:
    /// the leases end with it). `partitions` is the topic's partition count.
    pub async fn join(
        mut session: StateDb,
        group: &str,
        partitions: i32,
        worker_name: &str,
    ) -> Result<PartitionLeases, StateError> {
        session.join_workers(group, worker_name).await?;
        Ok(PartitionLeases {
            session,
            group: group.to_owned(),
            partitions,
            held: BTreeSet::new(),
        })
    }

    /// The partitions this worker holds.
    pub fn held(&self) -> &BTreeSet<i32> {
        &self.held
    }

    /// Moves this worker's leases toward its fair share: takes free partitions
    /// up to it, gives back the highest ones beyond it. When the set changes,
    /// `apply_assignment` gets the new set *after* new leases are taken and
    /// *before* given-up ones are released, so no partition is consumed
    /// unleased by this worker. Call it only when everything consumed so far
    /// is committed. Returns whether the set changed.
    pub async fn rebalance<E: From<StateError>>(
        &mut self,
        apply_assignment: impl FnOnce(&BTreeSet<i32>) -> Result<(), E>,
    ) -> Result<bool, E> {
        let workers = self.session.count_workers(&self.group).await?;
        let share = fair_share(self.partitions, workers);
        let leased: BTreeSet<i32> = self
            .session
            .leased(&self.group, self.partitions)
            .await?
            .into_iter()
            .collect();
        // A lease this session lost (the database restarted the session's
        // locks away, an operator terminated it) is no longer ours.
        let mut next: BTreeSet<i32> = self.held.intersection(&leased).copied().collect();
        let lost = self.held.len() - next.len();
        let mut release = Vec::new();
        while next.len() > share {
            if let Some(highest) = next.pop_last() {
                release.push(highest);
            }
        }
        for partition in 0..self.partitions {
            if next.len() >= share {
                break;
            }
            if leased.contains(&partition) {
                continue;
            }
            if self.session.try_lease(&self.group, partition).await? {
                next.insert(partition);
            }
        }
        if next == self.held && lost == 0 {
            return Ok(false);
        }
        apply_assignment(&next)?;
        for partition in &release {
            self.session.release(&self.group, *partition).await?;
        }
        tracing::info!(
            group = %self.group, workers, share, held = ?next, released = ?release,
            "partition leases changed"
        );
        self.held = next;
        Ok(true)
    }
}

/// ⌈partitions ÷ workers⌉: the most one worker takes.
fn fair_share(partitions: i32, workers: usize) -> usize {
    let partitions = usize::try_from(partitions.max(0)).unwrap_or(0);
    partitions.div_ceil(workers.max(1))
}

#[cfg(test)]
mod tests {
    use super::fair_share;

    #[test]
    fn the_fair_share_rounds_up_so_every_partition_finds_a_worker() {
        assert_eq!(fair_share(3, 1), 3);
        assert_eq!(fair_share(3, 2), 2);
        assert_eq!(fair_share(3, 3), 1);
        assert_eq!(fair_share(3, 5), 1);
        assert_eq!(fair_share(12, 5), 3);
        // Not yet counted as a worker (between join and the first check).
        assert_eq!(fair_share(3, 0), 3);
        assert_eq!(fair_share(0, 2), 0);
    }
}
