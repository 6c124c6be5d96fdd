//! The processors' state in MariaDB/MySQL: tables in the state database
//! (`erp.state_database` on the ERP's server by default), partition leases as
//! user-level locks (`GET_LOCK`), which the server releases the moment their
//! session ends.
//!
//! Lock names are server-wide, so each is made from a digest of the state
//! database and the group (names are at most 64 characters):
//! `flywheel.<digest>.p<partition>` for a partition's lease and
//! `flywheel.<digest>.w<slot>` for a live worker. MariaDB cannot list the
//! locks held, so a worker takes one of `WORKER_SLOTS` numbered slots and the
//! live workers are counted with `IS_USED_LOCK` over the slots.

use std::collections::HashMap;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};
use sha2::{Digest, Sha256};

use super::{
    CatalogEntry, CountWritten, Holder, LevelWrite, StockPart, Version, Written, numeric_id,
};
use crate::mysql::quote_ident;

/// The most workers of one group counted as live; more still work, but are
/// not counted in the fair share (and are told so in the log).
const WORKER_SLOTS: usize = 64;

/// A session on a MariaDB/MySQL state database.
pub struct MysqlState {
    conn: Conn,
    /// The database, quoted.
    db: String,
    /// The database, as named: part of every lock name.
    database: String,
}

/// Text columns compare byte for byte, as PostgreSQL's `text` does: keys
/// differing only in case are different keys.
const TABLE_OPTIONS: &str = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// A JSON array as a query parameter (`JSON_TABLE(?, …)`).
fn json(value: impl serde::Serialize) -> String {
    serde_json::to_string(&value).unwrap_or_else(|_| "[]".into())
}

impl MysqlState {
    pub async fn connect(opts: Opts, database: &str) -> Result<MysqlState, mysql_async::Error> {
        let mut conn = Conn::new(opts).await?;
        let db = quote_ident(database);
        for ddl in [
            format!("CREATE DATABASE IF NOT EXISTS {db}"),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.applied_versions (
                   processor  VARCHAR(64) NOT NULL,
                   `key`      VARCHAR(255) NOT NULL,
                   version    BIGINT NOT NULL,
                   tiebreak   VARCHAR(255) NOT NULL DEFAULT '',
                   applied_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
                   PRIMARY KEY (processor, `key`)) {TABLE_OPTIONS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.levels_written (
                   shop           VARCHAR(64) NOT NULL,
                   inventory_item VARCHAR(64) NOT NULL,
                   location       VARCHAR(64) NOT NULL,
                   quantity       BIGINT NOT NULL,
                   version        BIGINT NOT NULL DEFAULT 0,
                   confirmed      BOOLEAN NOT NULL DEFAULT FALSE,
                   written_at     TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
                   PRIMARY KEY (shop, inventory_item, location)) {TABLE_OPTIONS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.stock_parts (
                   shop         VARCHAR(64) NOT NULL,
                   sku          VARCHAR(255) NOT NULL,
                   warehouse    VARCHAR(255) NOT NULL,
                   version      BIGINT NOT NULL,
                   sellable     BIGINT NOT NULL,
                   own_reserved BIGINT NOT NULL,
                   PRIMARY KEY (shop, sku, warehouse)) {TABLE_OPTIONS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.stock_counts (
                   shop         VARCHAR(64) NOT NULL,
                   sku          VARCHAR(255) NOT NULL,
                   quantity     BIGINT NOT NULL,
                   own_reserved BIGINT NOT NULL,
                   held         BIGINT NOT NULL,
                   held_since   BIGINT NOT NULL,
                   confirmed    BOOLEAN NOT NULL,
                   written_at   TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
                   PRIMARY KEY (shop, sku)) {TABLE_OPTIONS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.catalog_variants (
                   shop           VARCHAR(64) NOT NULL,
                   sku            VARCHAR(255) NOT NULL,
                   variant        VARCHAR(64) NULL,
                   product        VARCHAR(64) NOT NULL,
                   inventory_item VARCHAR(64) NULL,
                   version        BIGINT NOT NULL,
                   PRIMARY KEY (shop, sku),
                   KEY catalog_variants_product (shop, product)) {TABLE_OPTIONS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.catalog_exports (
                   shop        VARCHAR(64) NOT NULL PRIMARY KEY,
                   exported_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) {TABLE_OPTIONS}"
            ),
        ] {
            conn.query_drop(ddl).await?;
        }
        Ok(MysqlState {
            conn,
            db,
            database: database.to_owned(),
        })
    }

    pub async fn load_versions(
        &mut self,
        processor: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Version>, mysql_async::Error> {
        let rows: Vec<(String, i64, String)> = self
            .conn
            .exec(
                format!(
                    "SELECT v.`key`, v.version, v.tiebreak FROM {}.applied_versions v
                     JOIN JSON_TABLE(?, '$[*]' COLUMNS (
                            k VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$')) j
                       ON v.`key` = j.k
                     WHERE v.processor = ?",
                    self.db
                ),
                (json(keys), processor),
            )
            .await?;
        Ok(rows.into_iter().map(|(k, v, t)| (k, (v, t))).collect())
    }

    pub async fn applied_at(
        &mut self,
        processor: &str,
        key: &str,
    ) -> Result<Option<i64>, mysql_async::Error> {
        self.conn
            .exec_first(
                format!(
                    "SELECT CAST(UNIX_TIMESTAMP(applied_at) * 1000000 AS SIGNED)
                     FROM {}.applied_versions WHERE processor = ? AND `key` = ?",
                    self.db
                ),
                (processor, key),
            )
            .await
    }

    pub async fn store_versions(
        &mut self,
        processor: &str,
        applied: &[(String, Version)],
    ) -> Result<(), mysql_async::Error> {
        let rows: Vec<(&str, i64, &str)> = applied
            .iter()
            .map(|(k, v)| (k.as_str(), v.0, v.1.as_str()))
            .collect();
        // Assignments run left to right and see the columns already set: the
        // tiebreak changes before the version, and when it changed because
        // the pair was newer, (new version, new tiebreak) > (old version, new
        // tiebreak) still holds exactly when the version itself grew.
        let newer = "(VALUES(version), VALUES(tiebreak)) > (version, tiebreak)";
        self.conn
            .exec_drop(
                format!(
                    "INSERT INTO {}.applied_versions (processor, `key`, version, tiebreak)
                     SELECT ?, j.k, j.v, j.t FROM JSON_TABLE(?, '$[*]' COLUMNS (
                       k VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[0]',
                       v BIGINT PATH '$[1]',
                       t VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[2]')) j
                     ON DUPLICATE KEY UPDATE
                       applied_at = IF({newer}, CURRENT_TIMESTAMP(6), applied_at),
                       tiebreak = IF({newer}, VALUES(tiebreak), tiebreak),
                       version = IF({newer}, VALUES(version), version)",
                    self.db
                ),
                (processor, json(rows)),
            )
            .await
    }

    pub async fn intend_levels(
        &mut self,
        shop: &str,
        levels: &[LevelWrite<'_>],
    ) -> Result<(), mysql_async::Error> {
        self.conn
            .exec_drop(
                format!(
                    "INSERT INTO {}.levels_written (shop, inventory_item, location, quantity, version, confirmed)
                     SELECT ?, j.i, j.l, j.q, j.v, FALSE FROM JSON_TABLE(?, '$[*]' COLUMNS (
                       i VARCHAR(64) PATH '$[0]', l VARCHAR(64) PATH '$[1]',
                       q BIGINT PATH '$[2]', v BIGINT PATH '$[3]')) j
                     ON DUPLICATE KEY UPDATE quantity = VALUES(quantity), version = VALUES(version),
                       confirmed = FALSE, written_at = CURRENT_TIMESTAMP(6)",
                    self.db
                ),
                (shop, json(level_rows(levels))),
            )
            .await
    }

    pub async fn confirm_levels(
        &mut self,
        shop: &str,
        levels: &[LevelWrite<'_>],
    ) -> Result<(), mysql_async::Error> {
        self.conn
            .exec_drop(
                format!(
                    "UPDATE {}.levels_written w
                     JOIN JSON_TABLE(?, '$[*]' COLUMNS (
                       i VARCHAR(64) PATH '$[0]', l VARCHAR(64) PATH '$[1]',
                       q BIGINT PATH '$[2]', v BIGINT PATH '$[3]')) j
                       ON w.shop = ? AND w.inventory_item = j.i AND w.location = j.l
                      AND w.quantity = j.q AND w.version = j.v
                     SET w.confirmed = TRUE",
                    self.db
                ),
                (json(level_rows(levels)), shop),
            )
            .await
    }

    pub async fn load_levels(
        &mut self,
        shop: &str,
        pairs: &[(String, String)],
    ) -> Result<Vec<(i64, Written)>, mysql_async::Error> {
        let keys: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(i, l)| (numeric_id(i), numeric_id(l)))
            .collect();
        let rows: Vec<(i64, i64, i64, bool)> = self
            .conn
            .exec(
                format!(
                    "SELECT j.n, w.quantity, w.version, w.confirmed
                     FROM JSON_TABLE(?, '$[*]' COLUMNS (
                       n FOR ORDINALITY, i VARCHAR(64) PATH '$[0]', l VARCHAR(64) PATH '$[1]')) j
                     JOIN {}.levels_written w
                       ON w.shop = ? AND w.inventory_item = j.i AND w.location = j.l",
                    self.db
                ),
                (json(keys), shop),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(n, quantity, version, confirmed)| {
                (
                    n,
                    Written {
                        quantity,
                        version,
                        confirmed,
                    },
                )
            })
            .collect())
    }

    pub async fn store_parts(
        &mut self,
        shop: &str,
        parts: &[StockPart],
    ) -> Result<(), mysql_async::Error> {
        let rows: Vec<(&str, &str, i64, i64, i64)> = parts
            .iter()
            .map(|p| {
                (
                    p.sku.as_str(),
                    p.warehouse.as_str(),
                    p.version,
                    p.sellable,
                    p.own_reserved,
                )
            })
            .collect();
        // Assignments run left to right and see the columns already set: the
        // version is compared by every other column first and set last.
        let newer = "VALUES(version) >= version";
        self.conn
            .exec_drop(
                format!(
                    "INSERT INTO {}.stock_parts (shop, sku, warehouse, version, sellable, own_reserved)
                     SELECT ?, j.s, j.w, j.v, j.q, j.r FROM JSON_TABLE(?, '$[*]' COLUMNS (
                       s VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[0]',
                       w VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[1]',
                       v BIGINT PATH '$[2]', q BIGINT PATH '$[3]', r BIGINT PATH '$[4]')) j
                     ON DUPLICATE KEY UPDATE
                       sellable = IF({newer}, VALUES(sellable), sellable),
                       own_reserved = IF({newer}, VALUES(own_reserved), own_reserved),
                       version = IF({newer}, VALUES(version), version)",
                    self.db
                ),
                (shop, json(rows)),
            )
            .await
    }

    pub async fn load_parts(
        &mut self,
        shop: &str,
        skus: &[String],
    ) -> Result<Vec<StockPart>, mysql_async::Error> {
        let rows: Vec<(String, String, i64, i64, i64)> = self
            .conn
            .exec(
                format!(
                    "SELECT p.sku, p.warehouse, p.version, p.sellable, p.own_reserved
                     FROM {}.stock_parts p
                     JOIN JSON_TABLE(?, '$[*]' COLUMNS (
                            s VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$')) j
                       ON p.sku = j.s
                     WHERE p.shop = ?",
                    self.db
                ),
                (json(skus), shop),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(sku, warehouse, version, sellable, own_reserved)| StockPart {
                    sku,
                    warehouse,
                    version,
                    sellable,
                    own_reserved,
                },
            )
            .collect())
    }

    pub async fn load_counts(
        &mut self,
        shop: &str,
        skus: &[String],
    ) -> Result<HashMap<String, CountWritten>, mysql_async::Error> {
        let rows: Vec<(String, i64, i64, i64, i64, bool)> = self
            .conn
            .exec(
                format!(
                    "SELECT c.sku, c.quantity, c.own_reserved, c.held, c.held_since, c.confirmed
                     FROM {}.stock_counts c
                     JOIN JSON_TABLE(?, '$[*]' COLUMNS (
                            s VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$')) j
                       ON c.sku = j.s
                     WHERE c.shop = ?",
                    self.db
                ),
                (json(skus), shop),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(sku, quantity, own_reserved, held, held_since, confirmed)| {
                    let written = CountWritten {
                        quantity,
                        own_reserved,
                        held,
                        held_since,
                        confirmed,
                    };
                    (sku, written)
                },
            )
            .collect())
    }

    pub async fn load_catalog(
        &mut self,
        shop: &str,
        skus: &[String],
    ) -> Result<Vec<CatalogEntry>, mysql_async::Error> {
        let rows: Vec<(String, String, String, String)> = self
            .conn
            .exec(
                format!(
                    "SELECT c.sku, c.variant, c.product, c.inventory_item
                     FROM {}.catalog_variants c
                     JOIN JSON_TABLE(?, '$[*]' COLUMNS (
                            s VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$')) j
                       ON c.sku = j.s
                     WHERE c.shop = ? AND c.variant IS NOT NULL AND c.inventory_item IS NOT NULL",
                    self.db
                ),
                (json(skus), shop),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(sku, variant, product, inventory_item)| CatalogEntry {
                sku,
                variant,
                product,
                inventory_item,
            })
            .collect())
    }

    /// Entries unique by SKU.
    pub async fn store_catalog(
        &mut self,
        shop: &str,
        version: i64,
        entries: &[&CatalogEntry],
    ) -> Result<(), mysql_async::Error> {
        let rows: Vec<(&str, &str, &str, &str)> = entries
            .iter()
            .map(|e| {
                (
                    e.sku.as_str(),
                    e.variant.as_str(),
                    e.product.as_str(),
                    e.inventory_item.as_str(),
                )
            })
            .collect();
        // Assignments see the columns already set, so the version, which
        // the guard reads, is set last.
        let newer = "VALUES(version) >= version";
        self.conn
            .exec_drop(
                format!(
                    "INSERT INTO {}.catalog_variants (shop, sku, variant, product, inventory_item, version)
                     SELECT ?, j.s, j.v, j.p, j.i, ? FROM JSON_TABLE(?, '$[*]' COLUMNS (
                       s VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[0]',
                       v VARCHAR(64) PATH '$[1]', p VARCHAR(64) PATH '$[2]',
                       i VARCHAR(64) PATH '$[3]')) j
                     ON DUPLICATE KEY UPDATE
                       variant = IF({newer}, VALUES(variant), variant),
                       product = IF({newer}, VALUES(product), product),
                       inventory_item = IF({newer}, VALUES(inventory_item), inventory_item),
                       version = IF({newer}, VALUES(version), version)",
                    self.db
                ),
                (shop, version, json(rows)),
            )
            .await
    }

    pub async fn forget_variants(
        &mut self,
        shop: &str,
        product: &str,
        version: i64,
        keep: &[&str],
    ) -> Result<(), mysql_async::Error> {
        self.conn
            .exec_drop(
                format!(
                    "UPDATE {}.catalog_variants
                     SET variant = NULL, inventory_item = NULL, version = ?
                     WHERE shop = ? AND product = ? AND version <= ?
                       AND NOT JSON_CONTAINS(?, JSON_QUOTE(sku))",
                    self.db
                ),
                (version, shop, product, version, json(keep)),
            )
            .await
    }

    pub async fn forget_catalog(
        &mut self,
        shop: &str,
        version: i64,
        skus: &[String],
    ) -> Result<(), mysql_async::Error> {
        self.conn
            .exec_drop(
                format!(
                    "UPDATE {}.catalog_variants
                     SET variant = NULL, inventory_item = NULL, version = ?
                     WHERE shop = ? AND version <= ? AND JSON_CONTAINS(?, JSON_QUOTE(sku))",
                    self.db
                ),
                (version, shop, version, json(skus)),
            )
            .await
    }

    pub async fn catalog_exported(&mut self, shop: &str) -> Result<bool, mysql_async::Error> {
        let found: Option<i64> = self
            .conn
            .exec_first(
                format!("SELECT 1 FROM {}.catalog_exports WHERE shop = ?", self.db),
                (shop,),
            )
            .await?;
        Ok(found.is_some())
    }

    pub async fn mark_catalog_exported(&mut self, shop: &str) -> Result<(), mysql_async::Error> {
        self.conn
            .exec_drop(
                format!(
                    "INSERT INTO {}.catalog_exports (shop) VALUES (?)
                     ON DUPLICATE KEY UPDATE exported_at = CURRENT_TIMESTAMP(6)",
                    self.db
                ),
                (shop,),
            )
            .await
    }

    pub async fn record_counts(
        &mut self,
        shop: &str,
        counts: &[(String, CountWritten)],
    ) -> Result<(), mysql_async::Error> {
        // Flags as 0/1: JSON_TABLE reads numbers into integer columns.
        let rows: Vec<(&str, i64, i64, i64, i64, i64)> = counts
            .iter()
            .map(|(s, c)| {
                let confirmed = i64::from(c.confirmed);
                (
                    s.as_str(),
                    c.quantity,
                    c.own_reserved,
                    c.held,
                    c.held_since,
                    confirmed,
                )
            })
            .collect();
        self.conn
            .exec_drop(
                format!(
                    "INSERT INTO {}.stock_counts (shop, sku, quantity, own_reserved, held, held_since, confirmed)
                     SELECT ?, j.s, j.q, j.r, j.h, j.hs, j.c FROM JSON_TABLE(?, '$[*]' COLUMNS (
                       s VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[0]',
                       q BIGINT PATH '$[1]', r BIGINT PATH '$[2]', h BIGINT PATH '$[3]',
                       hs BIGINT PATH '$[4]', c TINYINT PATH '$[5]')) j
                     ON DUPLICATE KEY UPDATE quantity = VALUES(quantity),
                       own_reserved = VALUES(own_reserved), held = VALUES(held),
                       held_since = VALUES(held_since), confirmed = VALUES(confirmed),
                       written_at = CURRENT_TIMESTAMP(6)",
                    self.db
                ),
                (shop, json(rows)),
            )
            .await
    }

    pub async fn confirm_counts(
        &mut self,
        shop: &str,
        counts: &[(String, i64)],
    ) -> Result<(), mysql_async::Error> {
        self.conn
            .exec_drop(
                format!(
                    "UPDATE {}.stock_counts c
                     JOIN JSON_TABLE(?, '$[*]' COLUMNS (
                       s VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[0]',
                       q BIGINT PATH '$[1]')) j
                       ON c.shop = ? AND c.sku = j.s AND c.quantity = j.q
                     SET c.confirmed = TRUE",
                    self.db
                ),
                (json(counts), shop),
            )
            .await
    }

    /// `flywheel.<digest of database and group>.<suffix>`.
    fn lock_name(&self, group: &str, suffix: &str) -> String {
        lock_name(&self.database, group, suffix)
    }

    fn worker_slots(&self, group: &str) -> Vec<String> {
        (0..WORKER_SLOTS)
            .map(|slot| self.lock_name(group, &format!("w{slot}")))
            .collect()
    }

    /// (lock name, holding connection) of the named locks somebody holds.
    async fn used(&mut self, names: &[String]) -> Result<Vec<(String, u64)>, mysql_async::Error> {
        self.conn
            .exec(
                "SELECT j.n, IS_USED_LOCK(j.n) FROM JSON_TABLE(?, '$[*]' COLUMNS (
                   n VARCHAR(64) PATH '$')) j
                 WHERE IS_USED_LOCK(j.n) IS NOT NULL",
                (json(names),),
            )
            .await
    }

    async fn get_lock(&mut self, name: &str) -> Result<bool, mysql_async::Error> {
        // 1: taken; 0: held by another session; NULL: an error.
        let got: Option<Option<i64>> = self
            .conn
            .exec_first("SELECT GET_LOCK(?, 0)", (name,))
            .await?;
        Ok(got.flatten() == Some(1))
    }

    pub async fn join_workers(&mut self, group: &str) -> Result<(), mysql_async::Error> {
        let slots = self.worker_slots(group);
        let used: Vec<String> = self.used(&slots).await?.into_iter().map(|u| u.0).collect();
        for slot in slots.iter().filter(|s| !used.contains(s)) {
            // Another worker may take it first: then the next one.
            if self.get_lock(slot).await? {
                return Ok(());
            }
        }
        tracing::warn!(
            group,
            slots = WORKER_SLOTS,
            "every worker slot of the group is taken: this worker applies partitions but is not counted in the fair share"
        );
        Ok(())
    }

    pub async fn count_workers(&mut self, group: &str) -> Result<usize, mysql_async::Error> {
        let slots = self.worker_slots(group);
        Ok(self.used(&slots).await?.len())
    }

    pub async fn leased(
        &mut self,
        group: &str,
        partitions: i32,
    ) -> Result<Vec<i32>, mysql_async::Error> {
        let names: Vec<String> = (0..partitions)
            .map(|p| self.lock_name(group, &format!("p{p}")))
            .collect();
        let used = self.used(&names).await?;
        Ok((0..partitions)
            .zip(&names)
            .filter(|(_, name)| used.iter().any(|(u, _)| u == *name))
            .map(|(p, _)| p)
            .collect())
    }

    pub async fn try_lease(
        &mut self,
        group: &str,
        partition: i32,
    ) -> Result<bool, mysql_async::Error> {
        let name = self.lock_name(group, &format!("p{partition}"));
        self.get_lock(&name).await
    }

    pub async fn release(&mut self, group: &str, partition: i32) -> Result<(), mysql_async::Error> {
        let name = self.lock_name(group, &format!("p{partition}"));
        self.conn.exec_drop("DO RELEASE_LOCK(?)", (name,)).await
    }

    /// The sessions holding a worker slot of `group`.
    pub async fn holders(&mut self, group: &str) -> Result<Vec<Holder>, mysql_async::Error> {
        let slots = self.worker_slots(group);
        let mut holders = Vec::new();
        for (_, session) in self.used(&slots).await? {
            // Without the PROCESS privilege only the user's own sessions are
            // listed: the holder is still shown, without its address.
            let who: Option<(String, String)> = self
                .conn
                .exec_first(
                    "SELECT USER, HOST FROM information_schema.PROCESSLIST WHERE ID = ?",
                    (session,),
                )
                .await?;
            holders.push(Holder {
                session: i64::try_from(session).unwrap_or(i64::MAX),
                name: match &who {
                    Some((user, _)) => format!("flywheel processors (user {user})"),
                    None => "flywheel processors".into(),
                },
                client_addr: who.map(|(_, host)| host),
                partitions: Vec::new(),
            });
        }
        Ok(holders)
    }
}

fn level_rows<'a>(levels: &[LevelWrite<'a>]) -> Vec<(&'a str, &'a str, i64, i64)> {
    levels
        .iter()
        .map(|l| (numeric_id(l.0), numeric_id(l.1), l.2, l.3))
        .collect()
}

fn lock_name(database: &str, group: &str, suffix: &str) -> String {
    let digest = Sha256::new()
        .chain_update(database.as_bytes())
        .chain_update([0])
        .chain_update(group.as_bytes())
        .finalize();
    format!("flywheel.{}.{suffix}", hex::encode(&digest[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_names_fit_the_server_limit_and_separate_databases_and_groups() {
        let long = "g".repeat(500);
        let name = lock_name("flywheel", &long, &format!("p{}", i32::MAX));
        assert!(name.len() <= 64, "{name} is {} characters", name.len());
        assert_ne!(lock_name("a", "g", "p0"), lock_name("b", "g", "p0"));
        assert_ne!(lock_name("a", "g", "p0"), lock_name("a", "h", "p0"));
        // No ambiguity from concatenation.
        assert_ne!(lock_name("ab", "c", "p0"), lock_name("a", "bc", "p0"));
        assert_eq!(lock_name("a", "g", "p0"), lock_name("a", "g", "p0"));
    }
}
