//! Full sync benchmark: a merchant connecting a catalogue for the first time.
//! BENCH_SKUS SKUs (default 10,000) × 3 warehouses in the demo ERP; a Shopify
//! shop (the simulator, Shopify's standard budget: 1000 points, 100/s) with
//! the same products, no stock and every price different; an empty catalogue
//! mapping, an empty state database, consumer groups from the start of the
//! topics. The source, the stock processor and the price processor start at
//! once; measured until the shop matches the ERP (every level, every price).
//!
//! Reported: the time (and the source's snapshot within it), the API points
//! spent, the calls and bulk operations by kind; beside them the floor the
//! budget would set on the same sync done item by item (a lookup of 3 points
//! per SKU, a price mutation of 10 points per product, a stock mutation per
//! 250 levels), computed from the same run's counts.
//!
//! `cargo bench --bench full_sync` (env: BENCH_SKUS, BENCH_BULK_LATENCY_MS:
//! how long the simulator takes to run each bulk operation, default 0; Shopify
//! takes seconds). Starts its own PostgreSQL, tansu and shop simulator.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{ERP_STOCK, connect, env_or};
use flywheel::config::{Config, Secret};
use flywheel::erp::demo_erp::{self, DemoSize};
use flywheel::local_infra::{LocalBroker, LocalPostgres};
use shopsim::{ShopSim, SimConfig};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// SKU → list price (the shop's price list is the list price).
const ERP_PRICES: &str = "SELECT p.default_code, t.list_price::text
    FROM product_product p JOIN product_template t ON t.id = p.product_tmpl_id";

/// What the shop must show: (item, location) → available, and variant →
/// price (by id: the simulator finds a SKU by scanning).
struct Want {
    levels: Vec<((u64, u64), i64)>,
    prices: Vec<(u64, f64)>,
}

async fn want(erp: &Client, sim: &ShopSim) -> Want {
    let stock = erp.query(ERP_STOCK, &[]).await.expect("ERP stock");
    let prices = erp.query(ERP_PRICES, &[]).await.expect("ERP prices");
    let shop = sim.shop().state.lock();
    let by_sku: HashMap<&str, &shopsim::state::Variant> = shop
        .variants
        .values()
        .map(|v| (v.sku.as_str(), v))
        .collect();
    let locations: HashMap<&str, u64> = shop
        .locations
        .values()
        .map(|l| (l.name.as_str(), l.id))
        .collect();
    Want {
        levels: stock
            .iter()
            .filter_map(|r| {
                let (sku, wh, q): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
                let item = by_sku.get(sku.as_str())?.inventory_item_id;
                Some(((item, *locations.get(wh.as_str())?), q))
            })
            .collect(),
        prices: prices
            .iter()
            .filter_map(|r| {
                let (sku, price): (String, String) = (r.get(0), r.get(1));
                Some((by_sku.get(sku.as_str())?.id, price.parse().ok()?))
            })
            .collect(),
    }
}

/// (levels, prices) where the shop differs from `want`.
fn differences(want: &Want, sim: &ShopSim) -> (usize, usize) {
    let shop = sim.shop().state.lock();
    let levels = want
        .levels
        .iter()
        .filter(|(level, q)| shop.levels.get(level).map(|l| l.available) != Some(*q))
        .count();
    let prices = want
        .prices
        .iter()
        .filter(|(variant, p)| {
            shop.variants
                .get(variant)
                .and_then(|v| v.price.parse::<f64>().ok())
                .is_none_or(|have| (have - *p).abs() > 0.0005)
        })
        .count();
    (levels, prices)
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let skus: u32 = env_or("BENCH_SKUS", 10_000);
        let size = DemoSize {
            skus,
            warehouses: 3,
            orders: 0,
            ..DemoSize::default()
        };
        let pg = LocalPostgres::start().await.expect("PostgreSQL");
        let broker = LocalBroker::start().await.expect("tansu");
        pg.create_database("erp").await.expect("database");
        pg.create_database("state").await.expect("database");
        let mut erp = connect(&pg.dsn("erp")).await;
        demo_erp::create_and_seed(&mut erp, size)
            .await
            .expect("demo ERP");
        let defaults = SimConfig::default();
        let (bucket, restore) = (defaults.bucket_size, defaults.restore_rate);
        let sim = ShopSim::start(
            SimConfig {
                seed: shopsim::catalog::demo_seed(skus, 3),
                ..defaults
            },
            "127.0.0.1:0".parse().expect("an address"),
        )
        .await
        .expect("the shop simulator");
        let bulk_latency_ms: u64 = env_or("BENCH_BULK_LATENCY_MS", 0);
        sim.set_faults(
            shopsim::ApiFaults {
                bulk_latency_ms,
                ..shopsim::ApiFaults::default()
            },
            shopsim::WebhookFaults::default(),
        );
        for v in sim.shop().state.lock().variants.values_mut() {
            v.price = "1.00".into();
        }
        let want = want(&erp, &sim).await;
        let (levels0, prices0) = differences(&want, &sim);

        let mut config = Config::default();
        config.erp.dsn = pg.dsn("erp");
        broker.configure(&mut config.kafka);
        config.metrics.listen = String::new();
        config.processors.state_dsn = Some(pg.dsn("state"));
        config.processors.group_id = "full-sync".into();
        config.shops[0].admin_url = sim.graphql_url();
        config.shops[0].access_token = Secret(sim.config.access_token.clone());
        println!(
            "full sync: {skus} SKUs × 3 warehouses, Shopify standard budget ({bucket} points, {restore}/s), \
             each bulk operation {bulk_latency_ms} ms; the shop differs from the ERP in {levels0} levels and {prices0} prices"
        );

        let stop = CancellationToken::new();
        let started = Instant::now();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn({
            let (config, stop) = (config.clone(), stop.clone());
            async move {
                flywheel::erp::source::run_with_retries(&config, stop)
                    .await
                    .map_err(|e| e.to_string())
            }
        }));
        tasks.push(tokio::spawn({
            let (config, stop) = (config.clone(), stop.clone());
            async move {
                flywheel::sync::stock_to_shop::run(&config, &config.shops[0].clone(), stop)
                    .await
                    .map_err(|e| e.to_string())
            }
        }));
        tasks.push(tokio::spawn({
            let (config, stop) = (config.clone(), stop.clone());
            async move {
                flywheel::sync::price_to_shop::run(&config, &config.shops[0].clone(), stop)
                    .await
                    .map_err(|e| e.to_string())
            }
        }));

        let mut snapshot_s = None;
        let synced_s = loop {
            if snapshot_s.is_none()
                && erp
                    .query_opt("SELECT 1 FROM flywheel.source_snapshot", &[])
                    .await
                    .ok()
                    .flatten()
                    .is_some()
            {
                snapshot_s = Some(started.elapsed().as_secs_f64());
            }
            if differences(&want, &sim) == (0, 0) {
                break started.elapsed().as_secs_f64();
            }
            if let Some(t) = tasks.iter().position(|t| t.is_finished()) {
                panic!("a role stopped: {:?}", tasks.remove(t).await);
            }
            if started.elapsed() > Duration::from_secs(3600) {
                panic!(
                    "not in sync after an hour: {:?} (levels, prices) differ",
                    differences(&want, &sim)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        stop.cancel();
        for t in tasks {
            let _ = t.await;
        }

        let api = &sim.stats()["api"];
        let ops = |name: &str| sim.operations(name);
        let points = api["cost_used"].as_f64().unwrap_or_default();
        // The same sync item by item: every SKU looked up (3 points), every
        // product's price its own mutation, a stock mutation per 250 levels.
        let item_points = f64::from(skus) * 3.0
            + prices0 as f64 * 10.0
            + (want.levels.len() as f64 / 250.0).ceil() * 10.0;
        let item_floor = (item_points - bucket).max(0.0) / restore;
        println!(
            "{:<28} {:>10}",
            "in sync after (s)",
            format!("{synced_s:.1}")
        );
        println!(
            "{:<28} {:>10}",
            "  of which snapshot (s)",
            format!("{:.1}", snapshot_s.unwrap_or(f64::NAN))
        );
        println!("{:<28} {:>10.0}", "points spent", points);
        for op in [
            "inventorySetQuantities",
            "productVariantsBulkUpdate",
            "productVariants",
            "bulkOperationRunQuery",
            "bulkOperationRunMutation",
            "stagedUploadsCreate",
            "bulkOperation",
            "currentBulkOperation",
        ] {
            println!("{:<28} {:>10}", format!("  {op} calls"), ops(op));
        }
        println!(
            "item by item: {item_points:.0} points, a floor of {item_floor:.0} s at {restore}/s; \
             this run {:.1}× faster than that floor",
            item_floor / synced_s
        );
    });
}
