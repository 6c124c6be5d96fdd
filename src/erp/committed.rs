//! A committed ERP transaction as every source hands it to the shared
//! pipeline: which trigger rows it touched, and where it sits in the stream.

use std::collections::{HashMap, HashSet};

use super::position::Position;

/// Trigger column values of one changed row, in the trigger's `columns` order
/// (text; `None` for NULL).
pub type TriggerRow = Vec<Option<String>>;

#[derive(Debug, Default)]
pub struct CommittedTxn {
    /// The database's id of the transaction, for sources whose queries must
    /// wait until it is visible (PostgreSQL: the xid of its Begin; see
    /// `erp::postgres::visibility`). 0 where the source does not need it.
    pub txid: u64,
    /// The version of every event the transaction causes: it only grows along
    /// the stream (PostgreSQL: the commit LSN; binlog: the end of its commit
    /// event).
    pub version: Position,
    /// Where the stream resumes once this transaction's events are
    /// acknowledged (PostgreSQL: the end LSN of the commit; binlog: the end of
    /// its commit event).
    pub resume_at: Position,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_ts_micros: i64,
    /// (entity, trigger) → distinct trigger rows.
    pub touched: HashMap<(usize, usize), HashSet<TriggerRow>>,
    /// Entities whose trigger tables were truncated: every key is affected.
    pub truncated: HashSet<usize>,
    pub row_changes: u64,
    /// Written by Flywheel itself: its rows are not captured, or an order
    /// written into the ERP would echo back to the shop.
    pub own_write: bool,
}

impl CommittedTxn {
    /// Whether the pipeline has entities to re-read for it.
    pub fn has_work(&self) -> bool {
        !self.touched.is_empty() || !self.truncated.is_empty()
    }
}
