//! The inventory levels the stock processor last wrote to the shop, per
//! (inventory item, location), in Flywheel's own schema. The shop announces
//! every change with `inventory_levels/update`, ours included: comparing with
//! what we wrote tells our own echo from a change made in the shop.
//!
//! Each write is recorded before it is sent (intended) and confirmed after the
//! shop accepted it. After a crash this tells the restarted processor which
//! writes surely landed (confirmed at the event's version: nothing to do) and
//! which are uncertain (read the shop before deciding), so a replay applies
//! nothing twice without reading every level.
//!
//! Items and locations are stored by their numeric id (the tail of the GraphQL
//! gid), which is how webhooks name them.

use std::collections::HashMap;

use tokio_postgres::Client;

const DDL: &str = "CREATE SCHEMA IF NOT EXISTS flywheel;
CREATE TABLE IF NOT EXISTS flywheel.shop_levels_written (
    inventory_item text NOT NULL,
    location       text NOT NULL,
    quantity       bigint NOT NULL,
    written_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (inventory_item, location));
ALTER TABLE flywheel.shop_levels_written
    ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS confirmed boolean NOT NULL DEFAULT false";

/// The last write to one level: its quantity and the ERP version it carried,
/// and whether the shop confirmed it (false: intended, outcome unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub quantity: i64,
    pub version: i64,
    pub confirmed: bool,
}

/// `gid://shopify/InventoryItem/42` → `42`; a bare id stays as it is.
pub fn numeric_id(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

pub async fn open(client: &Client) -> Result<(), tokio_postgres::Error> {
    crate::pg::own_schema::create_tables(client, DDL).await
}

/// Records writes about to be sent: (item, location, quantity, version).
pub async fn intend(
    client: &Client,
    levels: &[(&str, &str, i64, i64)],
) -> Result<(), tokio_postgres::Error> {
    let (items, locations, quantities, versions) = columns(levels);
    client
        .execute(
            "INSERT INTO flywheel.shop_levels_written (inventory_item, location, quantity, version, confirmed)
             SELECT i, l, q, v, false FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS t(i, l, q, v)
             ON CONFLICT (inventory_item, location) DO UPDATE
               SET quantity = excluded.quantity, version = excluded.version,
                   confirmed = false, written_at = now()",
            &[&items, &locations, &quantities, &versions],
        )
        .await?;
    Ok(())
}

/// Marks writes the shop accepted.
pub async fn confirm(
    client: &Client,
    levels: &[(&str, &str, i64, i64)],
) -> Result<(), tokio_postgres::Error> {
    let (items, locations, quantities, versions) = columns(levels);
    client
        .execute(
            "UPDATE flywheel.shop_levels_written w SET confirmed = true
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS t(i, l, q, v)
             WHERE w.inventory_item = t.i AND w.location = t.l AND w.quantity = t.q AND w.version = t.v",
            &[&items, &locations, &quantities, &versions],
        )
        .await?;
    Ok(())
}

#[allow(clippy::type_complexity)]
fn columns<'a>(
    levels: &[(&'a str, &'a str, i64, i64)],
) -> (Vec<&'a str>, Vec<&'a str>, Vec<i64>, Vec<i64>) {
    (
        levels.iter().map(|l| numeric_id(l.0)).collect(),
        levels.iter().map(|l| numeric_id(l.1)).collect(),
        levels.iter().map(|l| l.2).collect(),
        levels.iter().map(|l| l.3).collect(),
    )
}

/// The last write of each (item, location) pair we ever wrote, keyed by the
/// pairs as given.
pub async fn load(
    client: &Client,
    pairs: &[(String, String)],
) -> Result<HashMap<(String, String), Written>, tokio_postgres::Error> {
    let items: Vec<&str> = pairs.iter().map(|p| numeric_id(&p.0)).collect();
    let locations: Vec<&str> = pairs.iter().map(|p| numeric_id(&p.1)).collect();
    let rows = client
        .query(
            "SELECT k.n, w.quantity, w.version, w.confirmed
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(item, location, n)
             JOIN flywheel.shop_levels_written w
               ON w.inventory_item = k.item AND w.location = k.location",
            &[&items, &locations],
        )
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let n = usize::try_from(r.get::<_, i64>(0)).ok()?.checked_sub(1)?;
            let written = Written {
                quantity: r.get(1),
                version: r.get(2),
                confirmed: r.get(3),
            };
            Some((pairs.get(n)?.clone(), written))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn gids_and_bare_ids_name_the_same_item() {
        assert_eq!(super::numeric_id("gid://shopify/InventoryItem/42"), "42");
        assert_eq!(super::numeric_id("42"), "42");
    }
}
