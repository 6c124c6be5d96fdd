//! The processors' state in PostgreSQL: tables in the `flywheel` schema,
//! partition leases as session-level advisory locks keyed
//! `(hashtext(group), partition)` and `(hashtext(group || '#workers'),
//! pg_backend_pid())`.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::{
    CatalogEntry, CountWritten, Holder, LevelWrite, StockPart, Version, Written, numeric_id,
};

const DDL: &str = "CREATE SCHEMA IF NOT EXISTS flywheel;
CREATE TABLE IF NOT EXISTS flywheel.applied_versions (
    processor  text NOT NULL,
    key        text NOT NULL,
    version    bigint NOT NULL,
    tiebreak   text NOT NULL DEFAULT '',
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (processor, key));
CREATE TABLE IF NOT EXISTS flywheel.levels_written (
    shop           text NOT NULL,
    inventory_item text NOT NULL,
    location       text NOT NULL,
    quantity       bigint NOT NULL,
    version        bigint NOT NULL,
    confirmed      boolean NOT NULL DEFAULT false,
    written_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shop, inventory_item, location));
CREATE TABLE IF NOT EXISTS flywheel.stock_parts (
    shop         text NOT NULL,
    sku          text NOT NULL,
    warehouse    text NOT NULL,
    version      bigint NOT NULL,
    sellable     bigint NOT NULL,
    own_reserved bigint NOT NULL,
    PRIMARY KEY (shop, sku, warehouse));
CREATE TABLE IF NOT EXISTS flywheel.stock_counts (
    shop         text NOT NULL,
    sku          text NOT NULL,
    quantity     bigint NOT NULL,
    own_reserved bigint NOT NULL,
    held         bigint NOT NULL,
    held_since   bigint NOT NULL,
    confirmed    boolean NOT NULL,
    written_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shop, sku));
CREATE TABLE IF NOT EXISTS flywheel.catalog_variants (
    shop           text NOT NULL,
    sku            text NOT NULL,
    variant        text,
    product        text NOT NULL,
    inventory_item text,
    version        bigint NOT NULL,
    PRIMARY KEY (shop, sku));
CREATE INDEX IF NOT EXISTS catalog_variants_product ON flywheel.catalog_variants (shop, product);
CREATE TABLE IF NOT EXISTS flywheel.catalog_exports (
    shop        text PRIMARY KEY,
    exported_at timestamptz NOT NULL DEFAULT now())";

pub async fn create_tables(client: &Client) -> Result<(), tokio_postgres::Error> {
    crate::pg::own_schema::create_tables(client, DDL).await
}

pub async fn load_versions(
    client: &Client,
    processor: &str,
    keys: &[String],
) -> Result<HashMap<String, Version>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT key, version, tiebreak FROM flywheel.applied_versions
             WHERE processor = $1 AND key = ANY($2)",
            &[&processor, &keys],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                (r.get::<_, i64>(1), r.get::<_, String>(2)),
            )
        })
        .collect())
}

pub async fn applied_at(
    client: &Client,
    processor: &str,
    key: &str,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT (extract(epoch FROM applied_at) * 1000000)::bigint
             FROM flywheel.applied_versions WHERE processor = $1 AND key = $2",
            &[&processor, &key],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

pub async fn store_versions(
    client: &Client,
    processor: &str,
    applied: &[(String, Version)],
) -> Result<(), tokio_postgres::Error> {
    let keys: Vec<&str> = applied.iter().map(|(k, _)| k.as_str()).collect();
    let versions: Vec<i64> = applied.iter().map(|(_, v)| v.0).collect();
    let tiebreaks: Vec<&str> = applied.iter().map(|(_, v)| v.1.as_str()).collect();
    client
        .execute(
            "INSERT INTO flywheel.applied_versions (processor, key, version, tiebreak)
             SELECT $1, k, v, t FROM unnest($2::text[], $3::bigint[], $4::text[]) AS x(k, v, t)
             ON CONFLICT (processor, key) DO UPDATE
               SET version = excluded.version, tiebreak = excluded.tiebreak, applied_at = now()
               WHERE (excluded.version, excluded.tiebreak)
                   > (flywheel.applied_versions.version, flywheel.applied_versions.tiebreak)",
            &[&processor, &keys, &versions, &tiebreaks],
        )
        .await?;
    Ok(())
}

#[allow(clippy::type_complexity)]
fn columns<'a>(levels: &[LevelWrite<'a>]) -> (Vec<&'a str>, Vec<&'a str>, Vec<i64>, Vec<i64>) {
    (
        levels.iter().map(|l| numeric_id(l.0)).collect(),
        levels.iter().map(|l| numeric_id(l.1)).collect(),
        levels.iter().map(|l| l.2).collect(),
        levels.iter().map(|l| l.3).collect(),
    )
}

pub async fn intend_levels(
    client: &Client,
    shop: &str,
    levels: &[LevelWrite<'_>],
) -> Result<(), tokio_postgres::Error> {
    let (items, locations, quantities, versions) = columns(levels);
    client
        .execute(
            "INSERT INTO flywheel.levels_written (shop, inventory_item, location, quantity, version, confirmed)
             SELECT $5, i, l, q, v, false FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS t(i, l, q, v)
             ON CONFLICT (shop, inventory_item, location) DO UPDATE
               SET quantity = excluded.quantity, version = excluded.version,
                   confirmed = false, written_at = now()",
            &[&items, &locations, &quantities, &versions, &shop],
        )
        .await?;
    Ok(())
}

pub async fn confirm_levels(
    client: &Client,
    shop: &str,
    levels: &[LevelWrite<'_>],
) -> Result<(), tokio_postgres::Error> {
    let (items, locations, quantities, versions) = columns(levels);
    client
        .execute(
            "UPDATE flywheel.levels_written w SET confirmed = true
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS t(i, l, q, v)
             WHERE w.shop = $5 AND w.inventory_item = t.i AND w.location = t.l
               AND w.quantity = t.q AND w.version = t.v",
            &[&items, &locations, &quantities, &versions, &shop],
        )
        .await?;
    Ok(())
}

/// (1-based position in `pairs`, last write) of the pairs ever written.
pub async fn load_levels(
    client: &Client,
    shop: &str,
    pairs: &[(String, String)],
) -> Result<Vec<(i64, Written)>, tokio_postgres::Error> {
    let items: Vec<&str> = pairs.iter().map(|p| numeric_id(&p.0)).collect();
    let locations: Vec<&str> = pairs.iter().map(|p| numeric_id(&p.1)).collect();
    let rows = client
        .query(
            "SELECT k.n, w.quantity, w.version, w.confirmed
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(item, location, n)
             JOIN flywheel.levels_written w
               ON w.shop = $3 AND w.inventory_item = k.item AND w.location = k.location",
            &[&items, &locations, &shop],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let written = Written {
                quantity: r.get(1),
                version: r.get(2),
                confirmed: r.get(3),
            };
            (r.get::<_, i64>(0), written)
        })
        .collect())
}

pub async fn load_catalog(
    client: &Client,
    shop: &str,
    skus: &[String],
) -> Result<Vec<CatalogEntry>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT sku, variant, product, inventory_item FROM flywheel.catalog_variants
             WHERE shop = $1 AND sku = ANY($2) AND variant IS NOT NULL AND inventory_item IS NOT NULL",
            &[&shop, &skus],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| CatalogEntry {
            sku: r.get(0),
            variant: r.get(1),
            product: r.get(2),
            inventory_item: r.get(3),
        })
        .collect())
}

/// Entries unique by SKU.
pub async fn store_catalog(
    client: &Client,
    shop: &str,
    version: i64,
    entries: &[&CatalogEntry],
) -> Result<(), tokio_postgres::Error> {
    let column = |f: fn(&CatalogEntry) -> &str| entries.iter().map(|e| f(e)).collect::<Vec<_>>();
    client
        .execute(
            "INSERT INTO flywheel.catalog_variants (shop, sku, variant, product, inventory_item, version)
             SELECT $1, s, v, p, i, $2
             FROM unnest($3::text[], $4::text[], $5::text[], $6::text[]) AS x(s, v, p, i)
             ON CONFLICT (shop, sku) DO UPDATE
               SET variant = excluded.variant, product = excluded.product,
                   inventory_item = excluded.inventory_item, version = excluded.version
               WHERE excluded.version >= flywheel.catalog_variants.version",
            &[
                &shop,
                &version,
                &column(|e| &e.sku),
                &column(|e| &e.variant),
                &column(|e| &e.product),
                &column(|e| &e.inventory_item),
            ],
        )
        .await?;
    Ok(())
}

pub async fn forget_variants(
    client: &Client,
    shop: &str,
    product: &str,
    version: i64,
    keep: &[&str],
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE flywheel.catalog_variants
             SET variant = NULL, inventory_item = NULL, version = $3
             WHERE shop = $1 AND product = $2 AND version <= $3 AND NOT (sku = ANY($4))",
            &[&shop, &product, &version, &keep],
        )
        .await?;
    Ok(())
}

pub async fn forget_catalog(
    client: &Client,
    shop: &str,
    version: i64,
    skus: &[String],
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE flywheel.catalog_variants
             SET variant = NULL, inventory_item = NULL, version = $2
             WHERE shop = $1 AND sku = ANY($3) AND version <= $2",
            &[&shop, &version, &skus],
        )
        .await?;
    Ok(())
}

pub async fn catalog_exported(client: &Client, shop: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM flywheel.catalog_exports WHERE shop = $1",
            &[&shop],
        )
        .await?
        .is_some())
}

pub async fn mark_catalog_exported(
    client: &Client,
    shop: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO flywheel.catalog_exports (shop) VALUES ($1)
             ON CONFLICT (shop) DO UPDATE SET exported_at = now()",
            &[&shop],
        )
        .await?;
    Ok(())
}

/// The advisory locks of this database under key `hashtext($1)`: their
/// second key and holder.
const LOCKS_UNDER: &str = "SELECT l.objid::bigint::int, l.pid
     FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND l.classid = hashtext($1)::oid";

fn workers_key(group: &str) -> String {
    format!("{group}#workers")
}

pub async fn join_workers(
    client: &Client,
    group: &str,
    worker: &str,
) -> Result<(), tokio_postgres::Error> {
    // Shown in `pg_stat_activity` and in `flywheel replay`'s refusal.
    client
        .execute(
            "SELECT set_config('application_name', $1, false)",
            &[&format!("flywheel processors {worker}")],
        )
        .await?;
    client
        .execute(
            "SELECT pg_advisory_lock(hashtext($1), pg_backend_pid())",
            &[&workers_key(group)],
        )
        .await?;
    Ok(())
}

pub async fn count_workers(client: &Client, group: &str) -> Result<usize, tokio_postgres::Error> {
    Ok(client
        .query(LOCKS_UNDER, &[&workers_key(group)])
        .await?
        .len())
}

pub async fn leased(client: &Client, group: &str) -> Result<Vec<i32>, tokio_postgres::Error> {
    Ok(client
        .query(LOCKS_UNDER, &[&group])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

pub async fn try_lease(
    client: &Client,
    group: &str,
    partition: i32,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext($1), $2)",
            &[&group, &partition],
        )
        .await?
        .get(0))
}

pub async fn release(
    client: &Client,
    group: &str,
    partition: i32,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_advisory_unlock(hashtext($1), $2)",
            &[&group, &partition],
        )
        .await?;
    Ok(())
}

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
            session: i64::from(r.get::<_, i32>(0)),
            name: r.get(1),
            client_addr: r.get(2),
            partitions: r.get(3),
        })
        .collect())
}

pub async fn store_parts(
    client: &Client,
    shop: &str,
    parts: &[StockPart],
) -> Result<(), tokio_postgres::Error> {
    let skus: Vec<&str> = parts.iter().map(|p| p.sku.as_str()).collect();
    let warehouses: Vec<&str> = parts.iter().map(|p| p.warehouse.as_str()).collect();
    let versions: Vec<i64> = parts.iter().map(|p| p.version).collect();
    let sellable: Vec<i64> = parts.iter().map(|p| p.sellable).collect();
    let own: Vec<i64> = parts.iter().map(|p| p.own_reserved).collect();
    client
        .execute(
            "INSERT INTO flywheel.stock_parts (shop, sku, warehouse, version, sellable, own_reserved)
             SELECT $1, s, w, v, q, r
             FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[]) AS t(s, w, v, q, r)
             ON CONFLICT (shop, sku, warehouse) DO UPDATE
               SET version = excluded.version, sellable = excluded.sellable,
                   own_reserved = excluded.own_reserved
               WHERE excluded.version >= flywheel.stock_parts.version",
            &[&shop, &skus, &warehouses, &versions, &sellable, &own],
        )
        .await?;
    Ok(())
}

pub async fn load_parts(
    client: &Client,
    shop: &str,
    skus: &[String],
) -> Result<Vec<StockPart>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT sku, warehouse, version, sellable, own_reserved FROM flywheel.stock_parts
             WHERE shop = $1 AND sku = ANY($2)",
            &[&shop, &skus],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| StockPart {
            sku: r.get(0),
            warehouse: r.get(1),
            version: r.get(2),
            sellable: r.get(3),
            own_reserved: r.get(4),
        })
        .collect())
}

pub async fn load_counts(
    client: &Client,
    shop: &str,
    skus: &[String],
) -> Result<HashMap<String, CountWritten>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT sku, quantity, own_reserved, held, held_since, confirmed FROM flywheel.stock_counts
             WHERE shop = $1 AND sku = ANY($2)",
            &[&shop, &skus],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let written = CountWritten {
                quantity: r.get(1),
                own_reserved: r.get(2),
                held: r.get(3),
                held_since: r.get(4),
                confirmed: r.get(5),
            };
            (r.get(0), written)
        })
        .collect())
}

pub async fn record_counts(
    client: &Client,
    shop: &str,
    counts: &[(String, CountWritten)],
) -> Result<(), tokio_postgres::Error> {
    let column =
        |f: fn(&CountWritten) -> i64| -> Vec<i64> { counts.iter().map(|(_, c)| f(c)).collect() };
    let skus: Vec<&str> = counts.iter().map(|(s, _)| s.as_str()).collect();
    let confirmed: Vec<bool> = counts.iter().map(|(_, c)| c.confirmed).collect();
    client
        .execute(
            "INSERT INTO flywheel.stock_counts (shop, sku, quantity, own_reserved, held, held_since, confirmed)
             SELECT $1, s, q, r, h, hs, c
             FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::boolean[])
               AS t(s, q, r, h, hs, c)
             ON CONFLICT (shop, sku) DO UPDATE
               SET quantity = excluded.quantity, own_reserved = excluded.own_reserved,
                   held = excluded.held, held_since = excluded.held_since,
                   confirmed = excluded.confirmed, written_at = now()",
            &[
                &shop,
                &skus,
                &column(|c| c.quantity),
                &column(|c| c.own_reserved),
                &column(|c| c.held),
                &column(|c| c.held_since),
                &confirmed,
            ],
        )
        .await?;
    Ok(())
}

pub async fn confirm_counts(
    client: &Client,
    shop: &str,
    counts: &[(String, i64)],
) -> Result<(), tokio_postgres::Error> {
    let skus: Vec<&str> = counts.iter().map(|(s, _)| s.as_str()).collect();
    let quantities: Vec<i64> = counts.iter().map(|(_, q)| *q).collect();
    client
        .execute(
            "UPDATE flywheel.stock_counts c SET confirmed = true
             FROM unnest($2::text[], $3::bigint[]) AS t(s, q)
             WHERE c.shop = $1 AND c.sku = t.s AND c.quantity = t.q",
            &[&shop, &skus, &quantities],
        )
        .await?;
    Ok(())
}
