//! Freshness benchmark: ERP stock changes → the shop, under Shopify's default
//! GraphQL budget (1000 points, 100/s restore), batched and coalesced (the
//! product) vs a naive mode that makes one call per event (`batch_max = 1`).
//!
//! `cargo bench --bench freshness` (env: BENCH_SKUS, BENCH_RATE, BENCH_SECONDS).
//! Starts its own PostgreSQL, tansu and shop simulators. One source captures the
//! ERP; each mode then runs in turn in the same process against the same offered
//! load (BENCH_RATE single-row stock moves per second over random SKUs for
//! BENCH_SECONDS), with its own fresh shop, state database and consumer group
//! starting at the end of the topic. A mode's phase ends when its shop matches
//! the ERP again. Reported: freshness (ERP commit → applied in the shop) p50/p99,
//! API cost points, mutations, time to converge; and naive/batched ratios.

mod common;

use common::{connect, env_or};
use std::time::{Duration, Instant};

use flywheel::config::{Config, GroupStart, Secret};
use flywheel::erp::demo_erp::{self, DemoSize, ErpActivity};
use flywheel::local_infra::{LocalBroker, LocalPostgres};
use flywheel::ops::quantiles::BucketCounts;
use flywheel::sync::apply_loop::freshness_histogram;
use shopsim::{ShopSim, SimConfig};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// (sku, warehouse, what the shop should show) for every pair.
const ERP_STOCK: &str = "SELECT p.default_code, w.code,
        greatest(floor(coalesce(sum(q.quantity - q.reserved_quantity), 0)), 0)::bigint
    FROM product_product p CROSS JOIN stock_warehouse w
    JOIN stock_location vl ON vl.id = w.view_location_id
    LEFT JOIN stock_location l ON l.usage = 'internal' AND l.parent_path LIKE vl.parent_path || '%'
    LEFT JOIN stock_quant q ON q.location_id = l.id AND q.product_id = p.id
    GROUP BY 1, 2";

fn stock_cost_points() -> f64 {
    prometheus::gather()
        .iter()
        .filter(|f| f.name() == "flywheel_shop_api_cost_points_total")
        .flat_map(|f| f.get_metric())
        .filter(|m| m.get_label().iter().any(|l| l.value() == "stock"))
        .map(|m| m.get_counter().value())
        .sum()
}

/// (inventory item, location) of each (sku, warehouse) the ERP has, with the
/// quantity the shop should show.
async fn erp_levels(erp: &Client, sim: &ShopSim) -> Vec<((u64, u64), i64)> {
    let rows = erp.query(ERP_STOCK, &[]).await.expect("ERP stock");
    let shop = sim.shop().state.lock();
    rows.iter()
        .filter_map(|r| {
            let (sku, wh, want): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
            let item = shop.variant_by_sku(&sku)?.inventory_item_id;
            let location = shop.location_by_name(&wh)?.id;
            Some(((item, location), want))
        })
        .collect()
}

/// SKU/warehouse pairs where the shop differs from the ERP's available.
async fn differences(erp: &Client, sim: &ShopSim) -> usize {
    let want = erp_levels(erp, sim).await;
    let shop = sim.shop().state.lock();
    want.iter()
        .filter(|(level, q)| shop.levels.get(level).map(|l| l.available) != Some(*q))
        .count()
}

struct Phase {
    p50: f64,
    p99: f64,
    events: u64,
    cost: f64,
    mutations: u64,
    converge_s: f64,
}

async fn phase(
    name: &str,
    base: &Config,
    pg: &LocalPostgres,
    size: DemoSize,
    batch_max: usize,
) -> Phase {
    let rate: u32 = env_or("BENCH_RATE", 20);
    let seconds: u64 = env_or("BENCH_SECONDS", 15);
    let erp = connect(&base.erp.dsn).await;
    // A shop that already matches the ERP, so only this phase's changes move.
    let sim = ShopSim::start(
        SimConfig {
            seed: shopsim::catalog::demo_seed(size.skus, size.warehouses),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().expect("address"),
    )
    .await
    .expect("shop simulator");
    for (level, q) in erp_levels(&erp, &sim).await {
        sim.shop()
            .state
            .lock()
            .levels
            .entry(level)
            .or_default()
            .available = q;
    }
    pg.create_database(&format!("state_{name}"))
        .await
        .expect("state database");
    let mut config = base.clone();
    config.processors.state_dsn = Some(pg.dsn(&format!("state_{name}")));
    config.processors.group_id = format!("bench-{name}");
    config.processors.new_group_start = GroupStart::Latest;
    config.processors.batch_max = batch_max;
    config.processors.shop_graphql_url = sim.graphql_url();
    config.processors.shop_access_token = Secret(sim.config.access_token.clone());
    let stop = CancellationToken::new();
    let processor = tokio::spawn({
        let (config, stop) = (config.clone(), stop.clone());
        async move { flywheel::sync::stock_to_shop::run(&config, stop).await }
    });
    // Until the group has its partitions, changes would be skipped as
    // "before the start": give it a moment (this is a benchmark, not a test).
    tokio::time::sleep(Duration::from_secs(5)).await;

    let fresh0 = BucketCounts::take(freshness_histogram());
    let cost0 = stock_cost_points();
    let mutations = || {
        sim.stats()["api"]["operations"]["inventorySetQuantities"]
            .as_u64()
            .unwrap_or(0)
    };
    let m0 = mutations();
    let mut activity = ErpActivity::new(size, 11);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        activity.stock_move(&erp).await.expect("stock move");
    }
    let load_end = Instant::now();
    while differences(&erp, &sim).await > 0 {
        if load_end.elapsed() > Duration::from_secs(600) {
            panic!("{name}: the shop did not converge within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let converge_s = load_end.elapsed().as_secs_f64();
    let fresh = BucketCounts::take(freshness_histogram()).since(&fresh0);
    stop.cancel();
    let _ = processor.await;
    Phase {
        p50: fresh.quantile(0.5).unwrap_or(f64::NAN),
        p99: fresh.quantile(0.99).unwrap_or(f64::NAN),
        events: fresh.count(),
        cost: stock_cost_points() - cost0,
        mutations: mutations() - m0,
        converge_s,
    }
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let skus: u32 = env_or("BENCH_SKUS", 2000);
        let size = DemoSize {
            skus,
            warehouses: 3,
            orders: 0,
            ..DemoSize::default()
        };
        let pg = LocalPostgres::start().await.expect("PostgreSQL");
        let broker = LocalBroker::start().await.expect("tansu");
        pg.create_database("erp").await.expect("database");
        let mut erp = connect(&pg.dsn("erp")).await;
        demo_erp::create_and_seed(&mut erp, size)
            .await
            .expect("demo ERP");
        let mut config = Config::default();
        config.erp.dsn = pg.dsn("erp");
        config.kafka.bootstrap = broker.bootstrap();
        config.metrics.listen = String::new();
        let shutdown = CancellationToken::new();
        let source = tokio::spawn({
            let (config, token) = (config.clone(), shutdown.clone());
            async move { flywheel::erp::source::run_with_retries(&config, token).await }
        });
        // The snapshot is not part of the measurement; wait until it is done.
        loop {
            let done = erp
                .query_opt("SELECT 1 FROM flywheel.source_snapshot", &[])
                .await
                .ok()
                .flatten()
                .is_some();
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "freshness benchmark: {skus} SKUs × 3 warehouses, {} stock moves/s for {} s, Shopify default budget (1000 points, 100/s)",
            env_or("BENCH_RATE", 20u32),
            env_or("BENCH_SECONDS", 15u64)
        );
        let batched = phase("batched", &config, &pg, size, 250).await;
        let naive = phase("naive", &config, &pg, size, 1).await;
        println!(
            "{:<8} {:>10} {:>10} {:>8} {:>10} {:>10} {:>12}",
            "mode", "fresh p50", "fresh p99", "events", "cost pts", "mutations", "converge s"
        );
        for (name, p) in [("batched", &batched), ("naive", &naive)] {
            println!(
                "{name:<8} {:>9.3}s {:>9.3}s {:>8} {:>10.0} {:>10} {:>12.1}",
                p.p50, p.p99, p.events, p.cost, p.mutations, p.converge_s
            );
        }
        println!(
            "naive / batched: freshness p50 {:.1}×, p99 {:.1}×, cost {:.1}×, mutations {:.1}×",
            naive.p50 / batched.p50,
            naive.p99 / batched.p99,
            naive.cost / batched.cost.max(1.0),
            naive.mutations as f64 / batched.mutations.max(1) as f64
        );
        shutdown.cancel();
        let _ = source.await;
    });
}
