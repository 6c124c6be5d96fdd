//! The ERPNext demo ERP on MariaDB: an ERPNext-shaped schema and a
//! deterministic data generator, the counterpart of [`demo_erp`](super::demo_erp)
//! (Odoo on PostgreSQL) with the same SKUs, so the shop simulator matches both.
//!
//! Generation runs in SQL over MariaDB's sequence tables (`seq_1_to_N`), so
//! 10,000 items across 3 warehouses take about a second and the same size
//! always gives the same data.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::demo_erp::{DemoSize, SplitMix64, sku, warehouse_code};
use super::erpnext::recompute_reserved;

const SCHEMA: &str = include_str!("demo_erpnext.sql");

/// The demo company's abbreviation, the suffix of its warehouse names.
pub const COMPANY_ABBR: &str = "FW";
/// The price list every item has a price in (ERPNext's default selling list).
pub const STANDARD_SELLING: &str = "Standard Selling";
/// A second selling list in EUR, with prices for every fifth item.
pub const WHOLESALE: &str = "Wholesale";

/// The ERPNext name of demo warehouse `i` (1-based): `WH1 - FW`, as ERPNext
/// names a warehouse after its company.
pub fn warehouse_name(i: u32) -> String {
    format!("{} - {COMPANY_ABBR}", warehouse_code(i))
}

/// Creates the demo tables.
pub async fn create_schema(conn: &mut Conn) -> Result<(), mysql_async::Error> {
    conn.query_drop(SCHEMA).await
}

/// Creates the schema and fills it with `size` worth of data. Each table is
/// filled by one statement; the data is deterministic (the seed is unused:
/// quantities and prices are functions of the item and warehouse numbers).
pub async fn create_and_seed(conn: &mut Conn, size: DemoSize) -> Result<(), mysql_async::Error> {
    create_schema(conn).await?;
    let (skus, warehouses) = (size.skus.max(1), size.warehouses.max(1));
    let statements = [
        format!(
            "INSERT INTO `tabSingles` (doctype, field, value) VALUES
               ('Stock Settings', 'default_warehouse', '{}'),
               ('Selling Settings', 'selling_price_list', '{STANDARD_SELLING}')",
            warehouse_name(1)
        ),
        format!(
            "INSERT INTO `tabWarehouse` (name, warehouse_name, company, modified)
             SELECT CONCAT('WH', seq, ' - {COMPANY_ABBR}'), CONCAT('WH', seq), 'Flywheel Demo', NOW(6)
             FROM seq_1_to_{warehouses}"
        ),
        format!(
            "INSERT INTO `tabItem` (name, item_code, item_name, creation, modified)
             SELECT CONCAT('SKU-', LPAD(seq, 6, '0')), CONCAT('SKU-', LPAD(seq, 6, '0')),
                    CONCAT('Demo product ', seq), NOW(6), NOW(6)
             FROM seq_1_to_{skus}"
        ),
        format!(
            "INSERT INTO `tabBin` (name, item_code, warehouse, actual_qty, projected_qty, stock_uom, modified)
             SELECT CONCAT('BIN-', i.seq, '-', w.seq), CONCAT('SKU-', LPAD(i.seq, 6, '0')),
                    CONCAT('WH', w.seq, ' - {COMPANY_ABBR}'),
                    (i.seq * 7 + w.seq * 13) % 50 + 5, (i.seq * 7 + w.seq * 13) % 50 + 5, 'Nos', NOW(6)
             FROM seq_1_to_{skus} i CROSS JOIN seq_1_to_{warehouses} w"
        ),
        format!(
            "INSERT INTO `tabPrice List` (name, price_list_name, currency, modified) VALUES
               ('{STANDARD_SELLING}', '{STANDARD_SELLING}', 'EUR', NOW(6)),
               ('{WHOLESALE}', '{WHOLESALE}', 'EUR', NOW(6))"
        ),
        format!(
            "INSERT INTO `tabItem Price` (name, item_code, item_name, uom, price_list, currency,
                                          price_list_rate, modified)
             SELECT CONCAT('IP-S-', seq), CONCAT('SKU-', LPAD(seq, 6, '0')), CONCAT('Demo product ', seq),
                    'Nos', '{STANDARD_SELLING}', 'EUR', 5 + (seq * 37) % 200 + 0.99, NOW(6)
             FROM seq_1_to_{skus}
             UNION ALL
             SELECT CONCAT('IP-W-', seq), CONCAT('SKU-', LPAD(seq, 6, '0')), CONCAT('Demo product ', seq),
                    'Nos', '{WHOLESALE}', 'EUR', 4 + (seq * 37) % 200, NOW(6)
             FROM seq_1_to_{skus} WHERE seq % 5 = 0"
        ),
    ];
    for sql in &statements {
        conn.query_drop(sql).await?;
    }
    if size.orders > 0 {
        seed_orders(conn, size).await?;
    }
    // Fresh statistics, as a database that grew over time has: right after a
    // bulk load the optimizer would otherwise pick the wrong index for the
    // connector's lookups (seconds instead of milliseconds per batch).
    conn.query_drop(
        "ANALYZE TABLE `tabItem`, `tabWarehouse`, `tabBin`, `tabPrice List`, `tabItem Price`,
                       `tabCustomer`, `tabSales Order`, `tabSales Order Item`",
    )
    .await
}

/// Submitted ERP-side sales orders (no shop channel) of one or two items from
/// the first warehouse, with their reservations in `tabBin`.
async fn seed_orders(conn: &mut Conn, size: DemoSize) -> Result<(), mysql_async::Error> {
    let (skus, orders) = (size.skus.max(1), size.orders);
    let wh = warehouse_name(1);
    let statements = [
        format!(
            "INSERT INTO `tabCustomer` (name, customer_name, email_id, creation, modified)
             SELECT CONCAT('CUST-', LPAD(seq, 5, '0')), CONCAT('Customer ', seq),
                    CONCAT('customer', seq, '@example.com'), NOW(6), NOW(6)
             FROM seq_1_to_{orders}"
        ),
        format!(
            "INSERT INTO `tabSales Order` (name, naming_series, customer, customer_name, transaction_date,
                                           delivery_date, currency, status, docstatus, set_warehouse,
                                           creation, modified)
             SELECT CONCAT('SAL-ORD-', LPAD(seq, 5, '0')), 'SAL-ORD-.YYYY.-', CONCAT('CUST-', LPAD(seq, 5, '0')),
                    CONCAT('Customer ', seq), CURDATE(), CURDATE() + INTERVAL 3 DAY, 'EUR',
                    'To Deliver and Bill', 1, '{wh}', NOW(6), NOW(6)
             FROM seq_1_to_{orders}"
        ),
        format!(
            "INSERT INTO `tabSales Order Item` (name, parent, idx, item_code, qty, rate, amount, warehouse,
                                                docstatus, modified)
             SELECT CONCAT('SOI-', o.seq, '-', l.seq), CONCAT('SAL-ORD-', LPAD(o.seq, 5, '0')), l.seq,
                    CONCAT('SKU-', LPAD((o.seq * 31 + l.seq * 17) % {skus} + 1, 6, '0')),
                    1 + (o.seq + l.seq) % 3, 10, 10 * (1 + (o.seq + l.seq) % 3), '{wh}', 1, NOW(6)
             FROM seq_1_to_{orders} o CROSS JOIN seq_1_to_2 l
             WHERE l.seq = 1 OR o.seq % 2 = 0"
        ),
    ];
    for sql in &statements {
        conn.query_drop(sql).await?;
    }
    recompute_reserved(conn, None).await
}

/// ERP activity of the kind a warehouse produces, for tests, the demo and
/// benchmarks: the ERPNext counterpart of `demo_erp::ErpActivity`.
pub struct ErpNextActivity {
    rng: SplitMix64,
    size: DemoSize,
}

impl ErpNextActivity {
    pub fn new(size: DemoSize, seed: u64) -> Self {
        ErpNextActivity {
            rng: SplitMix64::new(seed),
            size,
        }
    }

    /// A stock entry for one item in one warehouse: `actual_qty` moves by
    /// −10..=10, never below what is reserved there. Returns the rows changed.
    pub async fn stock_move(&mut self, conn: &mut Conn) -> Result<u64, mysql_async::Error> {
        let item = sku(self.rng.one_to(self.size.skus));
        let warehouse = warehouse_name(self.rng.one_to(self.size.warehouses));
        let delta = (self.rng.next_u64() % 21) as i64 - 10;
        conn.exec_drop(
            "UPDATE `tabBin` SET actual_qty = GREATEST(actual_qty + ?, reserved_qty, 0),
                    projected_qty = actual_qty + ordered_qty - reserved_qty,
                    modified = NOW(6)
             WHERE item_code = ? AND warehouse = ?",
            (delta, item, warehouse),
        )
        .await?;
        Ok(conn.affected_rows())
    }

    /// Changes one item's standard selling price by a few percent.
    pub async fn price_change(&mut self, conn: &mut Conn) -> Result<u64, mysql_async::Error> {
        let item = sku(self.rng.one_to(self.size.skus));
        let pct = 0.95 + (self.rng.next_u64() % 11) as f64 / 100.0;
        conn.exec_drop(
            "UPDATE `tabItem Price` SET price_list_rate = ROUND(price_list_rate * ?, 2), modified = NOW(6)
             WHERE item_code = ? AND price_list = ?",
            (pct, item, STANDARD_SELLING),
        )
        .await?;
        Ok(conn.affected_rows())
    }

    /// Ships the oldest submitted shop order without a delivery: a submitted
    /// delivery note (carrier and tracking reference) for all its items, the
    /// order completed and the stock taken out of `tabBin`, in one
    /// transaction, as ERPNext's submit does. Returns 1, or 0 when nothing
    /// waits to be shipped.
    pub async fn ship_shop_order(&mut self, conn: &mut Conn) -> Result<u64, mysql_async::Error> {
        let carrier = ["DHL", "UPS", "DPD"][(self.rng.next_u64() % 3) as usize];
        let tracking = format!("{carrier}{:012}", self.rng.next_u64() % 1_000_000_000_000);
        let mut tx = conn
            .start_transaction(mysql_async::TxOpts::default())
            .await?;
        let order: Option<(String, Option<String>)> = tx
            .query_first(
                "SELECT so.name, so.customer FROM `tabSales Order` so
                 WHERE so.custom_channel IS NOT NULL AND so.docstatus = 1
                   AND so.status = 'To Deliver and Bill'
                   AND NOT EXISTS (SELECT 1 FROM `tabDelivery Note Item` d
                                   WHERE d.against_sales_order = so.name AND d.docstatus = 1)
                 ORDER BY so.creation, so.name LIMIT 1 FOR UPDATE",
            )
            .await?;
        let Some((order, customer)) = order else {
            tx.rollback().await?;
            return Ok(0);
        };
        let note = format!("MAT-DN-{order}");
        tx.exec_drop(
            "INSERT INTO `tabDelivery Note` (name, customer, posting_date, posting_time, status, docstatus,
                                             transporter_name, lr_no, lr_date, modified)
             VALUES (?, ?, CURDATE(), CURTIME(6), 'Completed', 1, ?, ?, CURDATE(), NOW(6))",
            (&note, customer, carrier, &tracking),
        )
        .await?;
        tx.exec_drop(
            "INSERT INTO `tabDelivery Note Item` (name, parent, idx, item_code, qty, warehouse,
                                                  against_sales_order, so_detail, docstatus, modified)
             SELECT CONCAT(?, '-', soi.idx), ?, soi.idx, soi.item_code, soi.qty, soi.warehouse, soi.parent,
                    soi.name, 1, NOW(6)
             FROM `tabSales Order Item` soi WHERE soi.parent = ?",
            (&note, &note, &order),
        )
        .await?;
        tx.exec_drop(
            "UPDATE `tabBin` b JOIN (
               SELECT item_code, warehouse, SUM(qty - delivered_qty) AS qty FROM `tabSales Order Item`
               WHERE parent = ? GROUP BY item_code, warehouse) d
               ON d.item_code = b.item_code AND d.warehouse = b.warehouse
             SET b.actual_qty = b.actual_qty - d.qty, b.reserved_qty = GREATEST(b.reserved_qty - d.qty, 0),
                 b.modified = NOW(6)",
            (&order,),
        )
        .await?;
        tx.exec_drop(
            "UPDATE `tabSales Order Item` SET delivered_qty = qty, modified = NOW(6) WHERE parent = ?",
            (&order,),
        )
        .await?;
        tx.exec_drop(
            "UPDATE `tabSales Order` SET status = 'Completed', per_delivered = 100, modified = NOW(6)
             WHERE name = ?",
            (&order,),
        )
        .await?;
        tx.commit().await?;
        Ok(1)
    }
}

/// Units the ERP has promised but does not have: Σ max(0, reserved − actual)
/// over its bins (the counterpart of `demo_erp::oversold_units`).
pub async fn oversold_units(conn: &mut Conn) -> Result<i64, mysql_async::Error> {
    let n: Option<i64> = conn
        .query_first(
            "SELECT CAST(COALESCE(SUM(GREATEST(reserved_qty - actual_qty, 0)), 0) AS SIGNED) FROM `tabBin`",
        )
        .await?;
    Ok(n.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warehouse_names_follow_erpnext() {
        assert_eq!(warehouse_name(2), "WH2 - FW");
    }
}
