//! Which partitions of its topic a processor applies: leases held as
//! session-level advisory locks in the state database, instead of an
//! assignment from the Kafka group coordinator.
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
//! version store). A worker holds, on a session of its own, one advisory lock
//! per partition it applies, keyed `(hashtext(group), partition)`, and one
//! lock `(hashtext(group || '#workers'), pg_backend_pid())` that counts it as a
//! live worker of the group. PostgreSQL drops a session's locks the moment the
//! session ends, and a `kill -9`ed worker's socket is closed by the kernel, so
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

use tokio_postgres::Client;

/// A worker's leases on one group's partitions, held by `client`'s session.
pub struct PartitionLeases {
    client: Client,
    group: String,
    partitions: i32,
    held: BTreeSet<i32>,
}

/// A live session holding leases of a group, for operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: i32,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub partitions: Vec<i32>,
}

/// The advisory locks of this database under key `hashtext($1)`: their
/// second key and holder.
const LOCKS_UNDER: &str = "SELECT l.objid::bigint::int, l.pid
     FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND l.classid = hashtext($1)::oid";

impl PartitionLeases {
    /// Joins `group` as a live worker on `client` (a session of its own: the
    /// leases end with it). `partitions` is the topic's partition count.
    pub async fn join(
        client: Client,
        group: &str,
        partitions: i32,
        worker_name: &str,
    ) -> Result<PartitionLeases, tokio_postgres::Error> {
        // Shown in `pg_stat_activity` and in `flywheel replay`'s refusal.
        client
            .execute(
                "SELECT set_config('application_name', $1, false)",
                &[&format!("flywheel processors {worker_name}")],
            )
            .await?;
        client
            .execute(
                "SELECT pg_advisory_lock(hashtext($1), pg_backend_pid())",
                &[&workers_key(group)],
            )
            .await?;
        Ok(PartitionLeases {
            client,
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
    pub async fn rebalance<E: From<tokio_postgres::Error>>(
        &mut self,
        apply_assignment: impl FnOnce(&BTreeSet<i32>) -> Result<(), E>,
    ) -> Result<bool, E> {
        let workers = self.locks_under(&workers_key(&self.group)).await?.len();
        let share = fair_share(self.partitions, workers);
        let leased: BTreeSet<i32> = self
            .locks_under(&self.group)
            .await?
            .into_iter()
            .map(|(partition, _)| partition)
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
            let taken: bool = self
                .client
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtext($1), $2)",
                    &[&self.group, &partition],
                )
                .await?
                .get(0);
            if taken {
                next.insert(partition);
            }
        }
        if next == self.held && lost == 0 {
            return Ok(false);
        }
        apply_assignment(&next)?;
        for partition in &release {
            self.client
                .execute(
                    "SELECT pg_advisory_unlock(hashtext($1), $2)",
                    &[&self.group, partition],
                )
                .await?;
        }
        tracing::info!(
            group = %self.group, workers, share, held = ?next, released = ?release,
            "partition leases changed"
        );
        self.held = next;
        Ok(true)
    }

    /// (second key, holder pid) of this database's locks under `hashtext(key)`.
    async fn locks_under(&self, key: &str) -> Result<Vec<(i32, i32)>, tokio_postgres::Error> {
        Ok(self
            .client
            .query(LOCKS_UNDER, &[&key])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }
}

/// The sessions holding partitions of `group`, with what they hold.
pub async fn holders(client: &Client, group: &str) -> Result<Vec<Holder>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT locks.pid, coalesce(a.application_name, ''), a.client_addr::text,
                        array_agg(locks.objid ORDER BY locks.objid)
                 FROM ({LOCKS_UNDER}) AS locks(objid, pid)
                 LEFT JOIN pg_stat_activity a ON a.pid = locks.pid
                 GROUP BY 1, 2, 3 ORDER BY 1"
            ),
            &[&group],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Holder {
            pid: r.get(0),
            application_name: r.get(1),
            client_addr: r.get(2),
            partitions: r.get(3),
        })
        .collect())
}

fn workers_key(group: &str) -> String {
    format!("{group}#workers")
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
