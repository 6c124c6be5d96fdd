//! The processors' own state, in the state database: PostgreSQL (`postgres`)
//! or MariaDB/MySQL (`mysql`), chosen by `ProcessorsConfig::state_location`
//! (by default the ERP's own server, whichever kind it is).
//!
//! What every backend keeps, and guarantees:
//! - **Applied versions** per (processor, key): the version guard's memory
//!   across restarts and replays. Storing never lowers a version, also when
//!   two workers race on one key (the comparison is in the upsert). A
//!   processor may keep a second set under another name, e.g. the versions
//!   it is about to send (`sync::price_to_shop`).
//! - **Levels written** to a shop per (shop, inventory item, location): recorded
//!   as intended before the write is sent and confirmed after the shop
//!   accepted it, so a restarted processor knows which writes surely landed
//!   and which to read back before deciding (see `sync::stock_to_shop`), and
//!   the shop's `inventory_levels/update` echo of our own write is told from a
//!   change made in the shop.
//! - **Stock counts** of shops keeping one count per SKU (WooCommerce): the
//!   ERP's latest stock of each (SKU, warehouse) — stored only when its
//!   version is newer than what is stored, so a replay cannot lower it — and
//!   what each count was last set to, with the bookkeeping of shop sales the
//!   ERP has not reserved yet (see `sync::stock_count_to_shop`).
//! - **The shop's catalogue mapping** per (shop, SKU): its variant, product
//!   and inventory item, as the shop last said (an export, a lookup, a
//!   `products/*` webhook), each entry with the version it was said at
//!   (Unix µs): storing never overwrites a newer entry, so a replayed old
//!   webhook cannot bring back a mapping a later one changed. A SKU whose
//!   variant is gone is kept without one and reads as unknown. Whether the
//!   whole catalogue was exported once is kept too. Shared by every processor
//!   of the shop, kept across restarts.
//! - **Partition leases** (see `sync::partition_leases`): named locks held by
//!   a session, which the server drops the moment the session ends, also when
//!   the worker was killed with `kill -9`. A backend supplies the primitives
//!   (join as a live worker, count the live workers, list the leased
//!   partitions, try to take one, give one back); the fair-share policy is
//!   written once.

mod mysql;
mod postgres;

use std::collections::HashMap;

use crate::config::{Config, ConfigError, StateLocation};

/// (version, tiebreak): compared as a pair, tiebreak as text.
pub type Version = (i64, String);

/// Whether `candidate` is newer than what was applied.
pub fn is_newer(candidate: &Version, applied: Option<&Version>) -> bool {
    applied.is_none_or(|a| candidate > a)
}

/// The last write to one level: its quantity and the ERP version it carried,
/// and whether the shop confirmed it (false: intended, outcome unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub quantity: i64,
    pub version: i64,
    pub confirmed: bool,
}

/// One level write: (inventory item, location, quantity, version). Items and
/// locations are stored by their numeric id (the tail of the GraphQL gid),
/// which is how webhooks name them.
pub type LevelWrite<'a> = (&'a str, &'a str, i64, i64);

/// `gid://shopify/InventoryItem/42` → `42`; a bare id stays as it is.
pub fn numeric_id(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

/// The ERP's stock of one SKU in one warehouse, as a shop keeping one count
/// per SKU needs it: `sellable` = on hand − reserved for anything but this
/// shop's orders; `own_reserved` = reserved for this shop's orders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockPart {
    pub sku: String,
    pub warehouse: String,
    pub version: i64,
    pub sellable: i64,
    pub own_reserved: i64,
}

/// What a shop's count of one SKU was last set to (`quantity`), the shop's
/// reservations in the ERP then (`own_reserved`), the units sold in the shop
/// and not yet reserved by the ERP that were held back (`held`, since
/// `held_since`, Unix seconds), and whether the shop confirmed the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountWritten {
    pub quantity: i64,
    pub own_reserved: i64,
    pub held: i64,
    pub held_since: i64,
    pub confirmed: bool,
}

/// One SKU's entry in a shop's catalogue mapping, by numeric ids (as
/// webhooks name them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    pub sku: String,
    pub variant: String,
    pub product: String,
    pub inventory_item: String,
}

/// A live session holding leases of a group, for operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The server's id of the session (PostgreSQL backend pid, MariaDB
    /// connection id).
    pub session: i64,
    pub name: String,
    pub client_addr: Option<String>,
    /// The partitions it leases (PostgreSQL); empty where the server cannot
    /// list them without knowing the topic (MariaDB/MySQL).
    pub partitions: Vec<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database: {}", crate::pg::error::db_error_text(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("state database: {}", crate::mysql::error_text(.0))]
    Mysql(#[from] mysql_async::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl StateError {
    /// A server away is worth another try; refused credentials, a missing
    /// database or a bad setting wait for an operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            StateError::Postgres(e) => crate::pg::error::is_retryable(e),
            StateError::Mysql(e) => crate::mysql::is_retryable(e),
            StateError::Config(_) => false,
        }
    }
}

/// A session on the state database, with Flywheel's tables created.
pub enum StateDb {
    Postgres(tokio_postgres::Client),
    Mysql(mysql::MysqlState),
}

impl StateDb {
    /// Connects to the configured state database and creates (or migrates)
    /// the processors' tables.
    pub async fn connect(config: &Config) -> Result<StateDb, StateError> {
        match config.processors.state_location(&config.erp)? {
            StateLocation::Postgres(dsn) => {
                let pg: tokio_postgres::Config = dsn
                    .parse()
                    .map_err(|e| ConfigError::Invalid(format!("processors.state_dsn: {e}")))?;
                let client = crate::pg::tls::connect(&pg, &config.erp.tls()?).await?;
                postgres::create_tables(&client).await?;
                Ok(StateDb::Postgres(client))
            }
            StateLocation::Mysql { opts, database } => Ok(StateDb::Mysql(
                mysql::MysqlState::connect(opts, &database).await?,
            )),
        }
    }

    /// Stored versions of `keys` for `processor` (absent = never applied).
    pub async fn load_versions(
        &mut self,
        processor: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Version>, StateError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        match self {
            StateDb::Postgres(c) => Ok(postgres::load_versions(c, processor, keys).await?),
            StateDb::Mysql(m) => Ok(m.load_versions(processor, keys).await?),
        }
    }

    /// When `processor` stored `key`'s current version (microseconds since
    /// the epoch; absent: never applied).
    pub async fn applied_at(
        &mut self,
        processor: &str,
        key: &str,
    ) -> Result<Option<i64>, StateError> {
        match self {
            StateDb::Postgres(c) => Ok(postgres::applied_at(c, processor, key).await?),
            StateDb::Mysql(m) => Ok(m.applied_at(processor, key).await?),
        }
    }

    /// Records applied versions; never lowers one.
    pub async fn store_versions(
        &mut self,
        processor: &str,
        applied: &[(String, Version)],
    ) -> Result<(), StateError> {
        if applied.is_empty() {
            return Ok(());
        }
        match self {
            StateDb::Postgres(c) => Ok(postgres::store_versions(c, processor, applied).await?),
            StateDb::Mysql(m) => Ok(m.store_versions(processor, applied).await?),
        }
    }

    /// Records level writes about to be sent (unconfirmed).
    pub async fn intend_levels(
        &mut self,
        shop: &str,
        levels: &[LevelWrite<'_>],
    ) -> Result<(), StateError> {
        if levels.is_empty() {
            return Ok(());
        }
        match self {
            StateDb::Postgres(c) => Ok(postgres::intend_levels(c, shop, levels).await?),
            StateDb::Mysql(m) => Ok(m.intend_levels(shop, levels).await?),
        }
    }

    /// Marks level writes the shop accepted (those still recorded as sent).
    pub async fn confirm_levels(
        &mut self,
        shop: &str,
        levels: &[LevelWrite<'_>],
    ) -> Result<(), StateError> {
        if levels.is_empty() {
            return Ok(());
        }
        match self {
            StateDb::Postgres(c) => Ok(postgres::confirm_levels(c, shop, levels).await?),
            StateDb::Mysql(m) => Ok(m.confirm_levels(shop, levels).await?),
        }
    }

    /// The last write to `shop` of each (item, location) pair ever written,
    /// keyed by the pairs as given (gids or bare ids).
    pub async fn load_levels(
        &mut self,
        shop: &str,
        pairs: &[(String, String)],
    ) -> Result<HashMap<(String, String), Written>, StateError> {
        if pairs.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = match self {
            StateDb::Postgres(c) => postgres::load_levels(c, shop, pairs).await?,
            StateDb::Mysql(m) => m.load_levels(shop, pairs).await?,
        };
        // Rows come back by their 1-based position in `pairs`.
        Ok(rows
            .into_iter()
            .filter_map(|(n, written)| {
                let n = usize::try_from(n).ok()?.checked_sub(1)?;
                Some((pairs.get(n)?.clone(), written))
            })
            .collect())
    }

    /// Stores the ERP's stock of (SKU, warehouse) pairs for `shop`, each only
    /// if its version is not older than the stored one. One entry per pair.
    pub async fn store_parts(&mut self, shop: &str, parts: &[StockPart]) -> Result<(), StateError> {
        if parts.is_empty() {
            return Ok(());
        }
        match self {
            StateDb::Postgres(c) => Ok(postgres::store_parts(c, shop, parts).await?),
            StateDb::Mysql(m) => Ok(m.store_parts(shop, parts).await?),
        }
    }

    /// Every stored (SKU, warehouse) of `skus` for `shop`.
    pub async fn load_parts(
        &mut self,
        shop: &str,
        skus: &[String],
    ) -> Result<Vec<StockPart>, StateError> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            StateDb::Postgres(c) => Ok(postgres::load_parts(c, shop, skus).await?),
            StateDb::Mysql(m) => Ok(m.load_parts(shop, skus).await?),
        }
    }

    /// The last count written to `shop` of each of `skus` ever written.
    pub async fn load_counts(
        &mut self,
        shop: &str,
        skus: &[String],
    ) -> Result<HashMap<String, CountWritten>, StateError> {
        if skus.is_empty() {
            return Ok(HashMap::new());
        }
        match self {
            StateDb::Postgres(c) => Ok(postgres::load_counts(c, shop, skus).await?),
            StateDb::Mysql(m) => Ok(m.load_counts(shop, skus).await?),
        }
    }

    /// Records counts: about to be written (`confirmed` false) or found
    /// already holding in the shop (true). One entry per SKU.
    pub async fn record_counts(
        &mut self,
        shop: &str,
        counts: &[(String, CountWritten)],
    ) -> Result<(), StateError> {
        if counts.is_empty() {
            return Ok(());
        }
        match self {
            StateDb::Postgres(c) => Ok(postgres::record_counts(c, shop, counts).await?),
            StateDb::Mysql(m) => Ok(m.record_counts(shop, counts).await?),
        }
    }

    /// Marks count writes the shop accepted (those still recorded as sent).
    pub async fn confirm_counts(
        &mut self,
        shop: &str,
        counts: &[(String, i64)],
    ) -> Result<(), StateError> {
        if counts.is_empty() {
            return Ok(());
        }
        match self {
            StateDb::Postgres(c) => Ok(postgres::confirm_counts(c, shop, counts).await?),
            StateDb::Mysql(m) => Ok(m.confirm_counts(shop, counts).await?),
        }
    }

    /// The catalogue mapping of `skus` in `shop` (SKUs without a known
    /// variant are absent).
    pub async fn load_catalog(
        &mut self,
        shop: &str,
        skus: &[String],
    ) -> Result<Vec<CatalogEntry>, StateError> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            StateDb::Postgres(c) => Ok(postgres::load_catalog(c, shop, skus).await?),
            StateDb::Mysql(m) => Ok(m.load_catalog(shop, skus).await?),
        }
    }

    /// Records what the shop said of these SKUs at `version`, over entries
    /// not newer. A SKU twice keeps its first entry (Shopify does not make
    /// SKUs unique; the first variant found wins, as a lookup's would).
    pub async fn store_catalog(
        &mut self,
        shop: &str,
        version: i64,
        entries: &[CatalogEntry],
    ) -> Result<(), StateError> {
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<&CatalogEntry> = entries
            .iter()
            .filter(|e| seen.insert(e.sku.as_str()))
            .collect();
        if unique.is_empty() {
            return Ok(());
        }
        match self {
            StateDb::Postgres(c) => Ok(postgres::store_catalog(c, shop, version, &unique).await?),
            StateDb::Mysql(m) => Ok(m.store_catalog(shop, version, &unique).await?),
        }
    }

    /// Records `product` as the shop has it at `version`: `entries` are all
    /// its variants now (none: deleted), and its SKUs not among them lose
    /// their variant, unless a newer entry says otherwise.
    pub async fn store_product(
        &mut self,
        shop: &str,
        product: &str,
        version: i64,
        entries: &[CatalogEntry],
    ) -> Result<(), StateError> {
        self.store_catalog(shop, version, entries).await?;
        let keep: Vec<&str> = entries.iter().map(|e| e.sku.as_str()).collect();
        match self {
            StateDb::Postgres(c) => {
                Ok(postgres::forget_variants(c, shop, product, version, &keep).await?)
            }
            StateDb::Mysql(m) => Ok(m.forget_variants(shop, product, version, &keep).await?),
        }
    }

    /// Takes the variants of `skus` away, unless an entry newer than
    /// `version` says otherwise.
    pub async fn forget_catalog(
        &mut self,
        shop: &str,
        version: i64,
        skus: &[String],
    ) -> Result<(), StateError> {
        if skus.is_empty() {
            return Ok(());
        }
        match self {
            StateDb::Postgres(c) => Ok(postgres::forget_catalog(c, shop, version, skus).await?),
            StateDb::Mysql(m) => Ok(m.forget_catalog(shop, version, skus).await?),
        }
    }

    /// Whether `shop`'s whole catalogue was exported into the mapping once.
    pub async fn catalog_exported(&mut self, shop: &str) -> Result<bool, StateError> {
        match self {
            StateDb::Postgres(c) => Ok(postgres::catalog_exported(c, shop).await?),
            StateDb::Mysql(m) => Ok(m.catalog_exported(shop).await?),
        }
    }

    pub async fn mark_catalog_exported(&mut self, shop: &str) -> Result<(), StateError> {
        match self {
            StateDb::Postgres(c) => Ok(postgres::mark_catalog_exported(c, shop).await?),
            StateDb::Mysql(m) => Ok(m.mark_catalog_exported(shop).await?),
        }
    }

    /// Counts this session as a live worker of `group` until it ends.
    pub async fn join_workers(&mut self, group: &str, worker: &str) -> Result<(), StateError> {
        match self {
            StateDb::Postgres(c) => Ok(postgres::join_workers(c, group, worker).await?),
            StateDb::Mysql(m) => Ok(m.join_workers(group).await?),
        }
    }

    /// How many sessions are live workers of `group`.
    pub async fn count_workers(&mut self, group: &str) -> Result<usize, StateError> {
        match self {
            StateDb::Postgres(c) => Ok(postgres::count_workers(c, group).await?),
            StateDb::Mysql(m) => Ok(m.count_workers(group).await?),
        }
    }

    /// The partitions (of `0..partitions`) some session leases for `group`.
    pub async fn leased(&mut self, group: &str, partitions: i32) -> Result<Vec<i32>, StateError> {
        match self {
            StateDb::Postgres(c) => Ok(postgres::leased(c, group).await?),
            StateDb::Mysql(m) => Ok(m.leased(group, partitions).await?),
        }
    }

    /// Takes `partition`'s lease on this session if it is free.
    pub async fn try_lease(&mut self, group: &str, partition: i32) -> Result<bool, StateError> {
        match self {
            StateDb::Postgres(c) => Ok(postgres::try_lease(c, group, partition).await?),
            StateDb::Mysql(m) => Ok(m.try_lease(group, partition).await?),
        }
    }

    /// Gives back a lease this session holds.
    pub async fn release(&mut self, group: &str, partition: i32) -> Result<(), StateError> {
        match self {
            StateDb::Postgres(c) => Ok(postgres::release(c, group, partition).await?),
            StateDb::Mysql(m) => Ok(m.release(group, partition).await?),
        }
    }

    /// The live workers of `group`, for operators (`flywheel replay`).
    pub async fn holders(&mut self, group: &str) -> Result<Vec<Holder>, StateError> {
        match self {
            StateDb::Postgres(c) => Ok(postgres::holders(c, group).await?),
            StateDb::Mysql(m) => Ok(m.holders(group).await?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_compares_version_then_tiebreak() {
        let v = |n: i64, t: &str| (n, t.to_string());
        assert!(is_newer(&v(1, ""), None));
        assert!(is_newer(&v(2, ""), Some(&v(1, "z"))));
        assert!(!is_newer(&v(1, "a"), Some(&v(1, "a"))), "equal is stale");
        assert!(is_newer(&v(1, "b"), Some(&v(1, "a"))));
        assert!(!is_newer(&v(0, "z"), Some(&v(1, ""))));
    }

    #[test]
    fn gids_and_bare_ids_name_the_same_item() {
        assert_eq!(numeric_id("gid://shopify/InventoryItem/42"), "42");
        assert_eq!(numeric_id("42"), "42");
    }
}
