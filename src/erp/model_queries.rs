//! The seam between the shared ERP pipeline and one kind of database: running
//! a connector's SQL. `erp::postgres::queries` and `erp::mysql::queries`
//! implement it; everything above it (keys, values, events, dead letters) is
//! written once in `entity_model` and `pipeline`.

use std::future::Future;

use super::committed::{CommittedTxn, TriggerRow};
use super::entity_model::{EntityKey, ModelError};

/// One result row of a connector query: (column label, text value), `None`
/// for NULL, in the query's column order.
pub type TextRow = Vec<(String, Option<String>)>;

/// Runs the connector's queries for the entities of one `EntityModels`
/// (indices are into its `entities`), on connections of one database.
///
/// Contract, for every implementation:
/// - Values come back as text, named by their column label; the shared code
///   maps rows to keys and fields. How parameters are passed is the database
///   kind's (PostgreSQL: one `text[]` per key part or trigger column;
///   MariaDB/MySQL: one JSON array of tuples) and is checked when the
///   implementation is built, so a broken connector fails at start.
/// - `trigger_keys` gets the changed rows of one trigger, each holding the
///   trigger's `columns` in order, and returns the rows of its `keys` query.
/// - `model` gets keys in the entity's key order and returns one row per key
///   that exists; a key without a row is deleted.
/// - `wait_visible` returns once every later query sees the given
///   transactions as committed. A change stream may hand out a transaction
///   before ordinary sessions can see it (see `erp::postgres::visibility`).
/// - Queries only read, so a retry repeats nothing. Each error says whether a
///   retry can help (`retryable` of `ModelError::Query` and
///   `ModelError::Visibility`), decided where it arose.
pub trait ModelQueries: Send + Sync {
    fn trigger_keys(
        &self,
        entity: usize,
        trigger: usize,
        rows: &[TriggerRow],
    ) -> impl Future<Output = Result<Vec<TextRow>, ModelError>> + Send;

    fn all_keys(
        &self,
        entity: usize,
    ) -> impl Future<Output = Result<Vec<TextRow>, ModelError>> + Send;

    fn model(
        &self,
        entity: usize,
        keys: &[EntityKey],
    ) -> impl Future<Output = Result<Vec<TextRow>, ModelError>> + Send;

    fn wait_visible(
        &self,
        txns: &[&CommittedTxn],
    ) -> impl Future<Output = Result<(), ModelError>> + Send;

    /// How many queries run at once (one per connection): a large read is
    /// split into a multiple of this many even parts so none waits alone.
    fn parallelism(&self) -> usize {
        1
    }
}
