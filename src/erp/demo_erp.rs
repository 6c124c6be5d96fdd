//! The demo ERP: an Odoo-shaped schema and a deterministic data generator.
//!
//! Used by the demo, the tests and the benchmarks. Generation runs in SQL
//! (`generate_series`, `setseed`) so 10,000 SKUs across 3 warehouses take well
//! under a second, and the same size and seed always give the same data. The SKU
//! set is `sku(1..=skus)`, which the shop simulator reproduces to match.

use tokio_postgres::Client;

const SCHEMA: &str = include_str!("demo_erp.sql");

/// How big a demo ERP to generate.
#[derive(Clone, Copy, Debug)]
pub struct DemoSize {
    pub skus: u32,
    pub warehouses: u32,
    /// Orders to pre-create (with partners, lines and pickings).
    pub orders: u32,
    /// `setseed` value in [-1, 1]: same seed, same data.
    pub seed: f64,
}

impl Default for DemoSize {
    fn default() -> Self {
        DemoSize {
            skus: 1_000,
            warehouses: 3,
            orders: 100,
            seed: 0.42,
        }
    }
}

/// The SKU of demo product `i` (1-based), as both the ERP and the shop simulator name it.
pub fn sku(i: u32) -> String {
    format!("SKU-{i:06}")
}

/// The code of demo warehouse `i` (1-based).
pub fn warehouse_code(i: u32) -> String {
    format!("WH{i}")
}

/// Creates the demo ERP tables.
pub async fn create_schema(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(SCHEMA).await
}

/// Creates the schema and fills it with `size` worth of data, in one transaction.
pub async fn create_and_seed(
    client: &mut Client,
    size: DemoSize,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(SCHEMA).await?;
    tx.execute("SELECT setseed($1)", &[&size.seed]).await?;
    tx.batch_execute(
        "INSERT INTO res_currency (name) VALUES ('EUR'), ('USD');
         INSERT INTO stock_location (id, name, location_id, usage, parent_path) VALUES
           (1, 'Physical Locations', NULL, 'view', '1/'),
           (2, 'Partners', NULL, 'view', '2/'),
           (3, 'Partners/Customers', 2, 'customer', '2/3/'),
           (4, 'Partners/Vendors', 2, 'supplier', '2/4/'),
           (5, 'Virtual Locations', NULL, 'view', '5/'),
           (6, 'Virtual Locations/Inventory adjustment', 5, 'inventory', '5/6/');
         SELECT setval('stock_location_id_seq', 6);",
    )
    .await?;

    // Each warehouse: a view location, its internal Stock, and two internal shelves
    // under Stock, so stock per warehouse is a sum over several locations.
    for w in 1..=size.warehouses.max(1) {
        let code = warehouse_code(w);
        tx.execute(
            "WITH v AS (
               INSERT INTO stock_location (name, location_id, usage) VALUES ($1, 1, 'view') RETURNING id),
             s AS (
               INSERT INTO stock_location (name, location_id, usage)
               SELECT $1 || '/Stock', v.id, 'internal' FROM v RETURNING id, location_id)
             INSERT INTO stock_warehouse (name, code, view_location_id, lot_stock_id)
             SELECT 'Warehouse ' || $1, $1, s.location_id, s.id FROM s",
            &[&code],
        )
        .await?;
        tx.execute(
            "INSERT INTO stock_location (name, location_id, usage)
             SELECT w.code || '/Stock/Shelf ' || n, w.lot_stock_id, 'internal'
             FROM stock_warehouse w, generate_series(1, 2) n WHERE w.code = $1",
            &[&code],
        )
        .await?;
    }
    // Odoo's parent_path: the ids from the root down, each followed by '/'.
    tx.batch_execute(
        "WITH RECURSIVE p AS (
           SELECT id, id::text || '/' AS path FROM stock_location WHERE location_id IS NULL
           UNION ALL
           SELECT c.id, p.path || c.id || '/' FROM stock_location c JOIN p ON c.location_id = p.id)
         UPDATE stock_location l SET parent_path = p.path FROM p WHERE p.id = l.id;",
    )
    .await?;

    let n = size.skus as i32;
    tx.execute(
        "INSERT INTO product_template (id, name, list_price)
         SELECT i, 'Product ' || i, round((5 + random() * 195)::numeric, 2)
         FROM generate_series(1, $1) i",
        &[&n],
    )
    .await?;
    tx.execute(
        "INSERT INTO product_product (id, product_tmpl_id, default_code)
         SELECT i, i, 'SKU-' || lpad(i::text, 6, '0') FROM generate_series(1, $1) i",
        &[&n],
    )
    .await?;
    tx.batch_execute(
        "SELECT setval('product_template_id_seq', greatest(1, (SELECT max(id) FROM product_template)));
         SELECT setval('product_product_id_seq', greatest(1, (SELECT max(id) FROM product_product)));

         -- Every product in every warehouse's Stock; some also on a shelf; a few
         -- sitting at the customer location, which must not count as stock.
         INSERT INTO stock_quant (product_id, location_id, quantity, reserved_quantity)
         SELECT p.id, w.lot_stock_id, q.qty, floor(random() * least(q.qty, 5) + 0)
         FROM product_product p CROSS JOIN stock_warehouse w
         CROSS JOIN LATERAL (SELECT floor(random() * 200)::numeric AS qty OFFSET 0) q;

         INSERT INTO stock_quant (product_id, location_id, quantity)
         SELECT p.id, l.id, floor(random() * 50)
         FROM product_product p CROSS JOIN stock_location l
         WHERE l.name LIKE '%/Shelf %' AND random() < 0.3;

         INSERT INTO stock_quant (product_id, location_id, quantity)
         SELECT p.id, 3, floor(random() * 10) + 1 FROM product_product p WHERE random() < 0.1;

         INSERT INTO product_pricelist (id, name, currency_id) VALUES
           (1, 'Public Pricelist', 1), (2, 'Wholesale', 1), (3, 'US Retail', 2);
         SELECT setval('product_pricelist_id_seq', 3);

         -- Wholesale: a fixed variant price for every third product.
         INSERT INTO product_pricelist_item (pricelist_id, applied_on, product_id, fixed_price)
         SELECT 2, '0_product_variant', p.id, round(t.list_price * 0.8, 2)
         FROM product_product p JOIN product_template t ON t.id = p.product_tmpl_id
         WHERE p.id % 3 = 0;

         -- US Retail: a fixed template price for every fifth product.
         INSERT INTO product_pricelist_item (pricelist_id, applied_on, product_tmpl_id, fixed_price)
         SELECT 3, '1_product', t.id, round(t.list_price * 1.1, 2)
         FROM product_template t WHERE t.id % 5 = 0;",
    )
    .await?;

    let orders = size.orders as i32;
    tx.execute(
        "INSERT INTO res_partner (name, email, street, city, zip, country_code)
         SELECT 'Customer ' || i, 'customer' || i || '@example.com', i || ' Main Street', 'Springfield',
                lpad((10000 + i)::text, 5, '0'), 'DE'
         FROM generate_series(1, greatest($1 / 2, 1)) i",
        &[&orders],
    )
    .await?;
    tx.execute(
        "INSERT INTO sale_order (name, partner_id, state, currency_id)
         SELECT 'S' || lpad(i::text, 5, '0'),
                1 + (i % greatest($1 / 2, 1)),
                (ARRAY['draft','sale','sale','done','cancel'])[1 + i % 5], 1
         FROM generate_series(1, $1) i",
        &[&orders],
    )
    .await?;
    tx.execute(
        "INSERT INTO sale_order_line (order_id, product_id, name, product_uom_qty, price_unit)
         SELECT o.id, p.id, 'Product ' || p.id, 1 + floor(random() * 3), t.list_price
         FROM sale_order o
         CROSS JOIN LATERAL generate_series(1, 1 + (o.id % 3)) k
         JOIN product_product p ON p.id = 1 + ((o.id * 7 + k * 13) % $1)
         JOIN product_template t ON t.id = p.product_tmpl_id",
        &[&n],
    )
    .await?;
    tx.batch_execute(
        "UPDATE sale_order o SET amount_total = s.total
         FROM (SELECT order_id, sum(product_uom_qty * price_unit) total FROM sale_order_line GROUP BY 1) s
         WHERE s.order_id = o.id;
         INSERT INTO stock_picking (name, sale_id, state, location_id, location_dest_id,
                                    carrier_name, carrier_tracking_ref, date_done)
         SELECT 'WH1/OUT/' || lpad(o.id::text, 5, '0'), o.id,
                CASE o.state WHEN 'done' THEN 'done' WHEN 'cancel' THEN 'cancel' ELSE 'assigned' END,
                w.lot_stock_id, 3,
                CASE o.state WHEN 'done' THEN 'DHL' END,
                CASE o.state WHEN 'done' THEN 'JD' || lpad(o.id::text, 12, '0') END,
                CASE o.state WHEN 'done' THEN now() END
         FROM sale_order o, stock_warehouse w
         WHERE w.code = 'WH1' AND o.state <> 'draft';",
    )
    .await?;
    tx.commit().await
}

/// A small deterministic PRNG (SplitMix64) for reproducible ERP activity.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `1..=n` (n > 0).
    pub fn one_to(&mut self, n: u32) -> u32 {
        1 + (self.next_u64() % n.max(1) as u64) as u32
    }
}

/// ERP activity of the kind a warehouse produces, for the demo and benchmarks.
pub struct ErpActivity {
    rng: SplitMix64,
    size: DemoSize,
}

impl ErpActivity {
    pub fn new(size: DemoSize, seed: u64) -> Self {
        ErpActivity {
            rng: SplitMix64::new(seed),
            size,
        }
    }

    /// Moves stock of one SKU in one warehouse: a picking that changes the Stock
    /// quant, never below what is reserved there (an ERP does not move
    /// promised units away). Returns the number of rows changed (1).
    pub async fn stock_move(&mut self, client: &Client) -> Result<u64, tokio_postgres::Error> {
        let product = self.rng.one_to(self.size.skus) as i32;
        let warehouse = warehouse_code(self.rng.one_to(self.size.warehouses));
        let delta = (self.rng.next_u64() % 21) as i32 - 10;
        retry_conflicts(|| async {
            client
                .execute(
                "UPDATE stock_quant q SET quantity = greatest(q.quantity + $3::int, q.reserved_quantity, 0), write_date = now()
                 FROM stock_warehouse w
                 WHERE w.code = $2 AND q.location_id = w.lot_stock_id AND q.product_id = $1",
                &[&product, &warehouse, &delta],
            )
                .await
        })
        .await
    }

    /// Changes the list price of one product by a few percent.
    pub async fn price_change(&mut self, client: &Client) -> Result<u64, tokio_postgres::Error> {
        let product = self.rng.one_to(self.size.skus) as i32;
        let pct = 0.95 + (self.rng.next_u64() % 11) as f64 / 100.0;
        client
            .execute(
                "UPDATE product_template SET list_price = round(list_price * $2::float8::numeric, 2),
                        write_date = now() WHERE id = $1",
                &[&product, &pct],
            )
            .await
    }

    /// Ships the oldest confirmed shop order that has no delivery yet: a done
    /// picking with a carrier and tracking reference. Returns the rows changed
    /// (0 when nothing waits to be shipped).
    pub async fn ship_shop_order(&mut self, client: &Client) -> Result<u64, tokio_postgres::Error> {
        let carrier = ["DHL", "UPS", "DPD"][(self.rng.next_u64() % 3) as usize];
        let tracking = format!("{carrier}{:012}", self.rng.next_u64() % 1_000_000_000_000);
        retry_conflicts(|| async {
            client
                .execute(
                "INSERT INTO stock_picking (name, sale_id, state, carrier_name, carrier_tracking_ref, date_done)
                 SELECT 'WH/OUT/' || o.id, o.id, 'done', $1, $2, now()
                 FROM sale_order o
                 WHERE o.channel IS NOT NULL AND o.state = 'sale'
                   AND NOT EXISTS (SELECT 1 FROM stock_picking p WHERE p.sale_id = o.id)
                 ORDER BY o.id LIMIT 1",
                &[&carrier, &tracking],
            )
                .await
        })
        .await
    }
}

/// Runs one statement again when PostgreSQL aborted it for a deadlock or a
/// serialization failure, as an ERP's own clients do (Odoo retries such
/// transactions): a delivery touches the same quants and order lines as an
/// order being written by the order processor at that moment, and the
/// database picks one of the two to abort.
async fn retry_conflicts<F, Fut>(mut run: F) -> Result<u64, tokio_postgres::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, tokio_postgres::Error>>,
{
    use tokio_postgres::error::SqlState;
    let mut attempt = 0u32;
    loop {
        match run().await {
            Err(e)
                if attempt < 5
                    && matches!(
                        e.code(),
                        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
                            || *c == SqlState::T_R_SERIALIZATION_FAILURE
                    ) =>
            {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20 * u64::from(attempt))).await;
            }
            done => return done,
        }
    }
}

/// Units the ERP has promised but does not have: Σ max(0, reserved − quantity)
/// over its quants. Reservations come from confirmed orders and stock moves
/// never go below them, so anything here was sold beyond the stock.
pub async fn oversold_units(client: &Client) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT coalesce(sum(greatest(reserved_quantity - quantity, 0)), 0)::bigint FROM stock_quant",
            &[],
        )
        .await?
        .get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable() {
        assert_eq!(sku(1), "SKU-000001");
        assert_eq!(sku(10_000), "SKU-010000");
        assert_eq!(warehouse_code(3), "WH3");
    }

    #[test]
    fn prng_is_deterministic_and_in_range() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..1000 {
            let x = a.one_to(10);
            assert_eq!(x, b.one_to(10));
            assert!((1..=10).contains(&x));
        }
    }
}
