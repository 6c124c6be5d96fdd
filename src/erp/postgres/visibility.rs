//! Waiting until transactions the replication stream delivered are visible to
//! ordinary queries.
//!
//! Why: the source re-reads each touched entity with the connector's SQL
//! rather than trusting the row images in the WAL. PostgreSQL makes a commit
//! visible to other sessions (`ProcArrayEndTransaction`) *after* it has
//! flushed the commit record, and the walsender may decode and send the
//! transaction as soon as the record is flushed. A query run at once can
//! therefore still see the state before the transaction: the key lookup finds
//! no key for a new row, or the model read returns the old stock level, and
//! the event carries the new version with the old value. When it is the last
//! change of a key, nothing later corrects it: the shop keeps the old value
//! for good. (Seen under load in the chaos test: an ERP shipment never
//! fulfilled, a final price never published.) So before a batch is read, one
//! snapshot must show every transaction of the batch as committed; every
//! query after it takes a newer snapshot and sees them too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::erp::source_metrics::SourceMetrics;

/// A PostgreSQL snapshot (`pg_current_snapshot()`) as 64-bit transaction ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub xmax: u64,
    /// Transactions running when the snapshot was taken.
    pub xip: Vec<u64>,
}

impl Snapshot {
    /// Whether the committed transaction `xid` (the 32-bit id of a pgoutput
    /// Begin) is visible in this snapshot: it precedes `xmax` and was not
    /// running. 32-bit ids wrap, so "precedes" is PostgreSQL's modular
    /// comparison (`TransactionIdPrecedes`); a running id is always within
    /// 2^31 of `xmax`, so comparing the low 32 bits of `xip` is exact.
    pub fn shows_committed(&self, xid: u32) -> bool {
        let xmax = self.xmax as u32;
        let precedes_xmax = (xid.wrapping_sub(xmax) as i32) < 0;
        precedes_xmax && !self.xip.iter().any(|&x| x as u32 == xid)
    }
}

/// Whether `xid` ended before a snapshot whose `xmin` (its oldest running
/// transaction, 64 bits) is given: then every later snapshot shows it as
/// finished, and a committed one as visible. `xmin` 0 is no snapshot yet. A
/// running id is within 2^31 of every xmin, so the modular comparison never
/// calls a running transaction finished.
pub fn ended_before(xid: u32, xmin: u64) -> bool {
    xmin != 0 && (xid.wrapping_sub(xmin as u32) as i32) < 0
}

/// After this long, waiting is logged (once per batch): something holds a
/// committed transaction out of the proc array far longer than it should.
const WARN_AFTER: Duration = Duration::from_secs(5);

/// Returns once a snapshot shows every transaction of `xids` as committed.
/// Each snapshot that still showed one in flight counts in
/// `flywheel_source_visibility_waits_total`.
///
/// `horizon` is the newest xmin any earlier check saw (0 for none): ids that
/// ended before it need no query. Catching up a backlog, the first snapshot's
/// xmin is past every id of it, and each later query would have queued on a
/// query connection behind the previous batch's reads.
pub async fn wait_until_visible(
    client: &Client,
    xids: &[u32],
    horizon: &AtomicU64,
) -> Result<(), tokio_postgres::Error> {
    let known = horizon.load(Ordering::Acquire);
    if xids.iter().all(|&x| ended_before(x, known)) {
        return Ok(());
    }
    let started = Instant::now();
    let mut warned = false;
    loop {
        let row = client
            .query_one(
                "SELECT pg_snapshot_xmax(s)::text::bigint, \
                        ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(s) x), \
                        pg_snapshot_xmin(s)::text::bigint \
                 FROM pg_current_snapshot() s",
                &[],
            )
            .await?;
        let snapshot = Snapshot {
            xmax: row.get::<_, i64>(0) as u64,
            xip: row
                .get::<_, Vec<i64>>(1)
                .into_iter()
                .map(|x| x as u64)
                .collect(),
        };
        horizon.fetch_max(row.get::<_, i64>(2) as u64, Ordering::AcqRel);
        let Some(&pending) = xids.iter().find(|&&x| !snapshot.shows_committed(x)) else {
            return Ok(());
        };
        SourceMetrics::get().visibility_waits.inc();
        if !warned && started.elapsed() > WARN_AFTER {
            warned = true;
            tracing::warn!(
                xid = pending,
                waited_ms = started.elapsed().as_millis() as u64,
                "a transaction the replication stream delivered is still not visible to queries; \
                 waiting before reading its entities"
            );
        }
        // The window is the time between a commit record's flush and the end
        // of its transaction in the proc array: microseconds, longer only on
        // a starved CPU.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(xmax: u64, xip: &[u64]) -> Snapshot {
        Snapshot {
            xmax,
            xip: xip.to_vec(),
        }
    }

    #[test]
    fn an_id_below_xmax_and_not_running_is_visible() {
        let s = snap(1000, &[990, 995]);
        assert!(s.shows_committed(989));
        assert!(s.shows_committed(999));
        assert!(!s.shows_committed(990), "running");
        assert!(!s.shows_committed(995), "running");
    }

    #[test]
    fn an_id_at_or_after_xmax_is_not_yet_visible() {
        let s = snap(1000, &[]);
        assert!(!s.shows_committed(1000));
        assert!(!s.shows_committed(1001));
    }

    #[test]
    fn ids_before_a_seen_xmin_need_no_snapshot() {
        assert!(!ended_before(5, 0), "no snapshot seen yet");
        assert!(ended_before(999, 1000));
        assert!(!ended_before(1000, 1000), "xmin itself was running");
        assert!(!ended_before(1001, 1000));
        // Across the wrap: epoch 3's xmin 5 follows epoch 2's last ids.
        let xmin = (3u64 << 32) | 5;
        assert!(ended_before(0xFFFF_FFFE, xmin));
        assert!(ended_before(4, xmin));
        assert!(!ended_before(5, xmin));
        assert!(!ended_before(6, xmin));
    }

    #[test]
    fn ids_compare_across_the_32_bit_wraparound() {
        // Epoch 3, xmax just past the wrap: ids from just before it precede.
        let xmax = (3u64 << 32) | 5;
        let s = snap(xmax, &[(2u64 << 32) | 0xFFFF_FFF0]);
        assert!(s.shows_committed(0xFFFF_FFFE), "previous epoch, committed");
        assert!(s.shows_committed(4));
        assert!(!s.shows_committed(5));
        assert!(!s.shows_committed(0xFFFF_FFF0), "running across the wrap");
        // Epoch 3, xmax just before the wrap: an id past the wrap is newer.
        let s = snap((3u64 << 32) | 0xFFFF_FFF0, &[]);
        assert!(!s.shows_committed(3));
        assert!(s.shows_committed(0xFFFF_FFEF));
    }
}
