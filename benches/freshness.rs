//! Freshness benchmark: ERP stock changes → the shop. Shopify under its
//! default GraphQL budget (1000 points, 100/s restore), batched and coalesced
//! (the product) vs a naive mode that makes one call per event
//! (`batch_max = 1`) and the former default that waited 200 ms to gather each
//! batch (`waited`); a WooCommerce shop (one count per SKU over every
//! warehouse) alone; both shops at once, each with its own processor; and both
//! with the Shopify shop throttled to 1 point/s (not waited for: it cannot
//! keep up), to see that the WooCommerce shop keeps its freshness.
//!
//! `cargo bench --bench freshness` (env: BENCH_SKUS, BENCH_RATE, BENCH_SECONDS,
//! BENCH_PHASES: a comma-separated subset of the phases, default all; the
//! ratios print when their phases ran).
//! Starts its own PostgreSQL, tansu and shop simulators. One source captures the
//! ERP; each mode then runs in turn in the same process against the same offered
//! load (BENCH_RATE single-row stock moves per second over random SKUs for
//! BENCH_SECONDS), with its own fresh shop, state database and consumer group
//! starting at the end of the topic. A mode's phase ends when its shop matches
//! the ERP again. Reported per phase and shop: freshness (ERP commit → applied
//! in the shop) p50/p99, stock writes (Shopify mutations, WooCommerce batch
//! items), time to converge; naive/batched ratios, and each shop's p99 beside
//! the other over its p99 alone.

mod common;

use common::{ERP_STOCK, connect, env_or};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use flywheel::config::{Config, GroupStart, Platform, Secret, ShopConfig};
use flywheel::erp::demo_erp::{self, DemoSize, ErpActivity};
use flywheel::local_infra::{LocalBroker, LocalPostgres};
use flywheel::ops::quantiles::BucketCounts;
use flywheel::sync::apply_loop::freshness_histogram;
use flywheel::sync::state::{StateDb, StockPart};
use shopsim::woo::{WooConfig, WooSim};
use shopsim::{ShopSim, SimConfig};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

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

/// (SKU, warehouse, on hand − reserved) of every pair: what a WooCommerce
/// stock processor that has been running knows of the ERP.
const ERP_PARTS: &str = "SELECT p.default_code, w.code,
        floor(coalesce(sum(q.quantity - q.reserved_quantity), 0))::bigint
    FROM product_product p CROSS JOIN stock_warehouse w
    JOIN stock_location vl ON vl.id = w.view_location_id
    LEFT JOIN stock_location l ON l.usage = 'internal' AND l.parent_path LIKE vl.parent_path || '%'
    LEFT JOIN stock_quant q ON q.location_id = l.id AND q.product_id = p.id
    WHERE p.default_code IS NOT NULL
    GROUP BY 1, 2";

/// SKU → what a WooCommerce shop stocked from every warehouse should count.
const ERP_TOTALS: &str = "SELECT p.default_code,
        greatest(floor(coalesce(sum(q.quantity - q.reserved_quantity)
                                FILTER (WHERE l.usage = 'internal'), 0)), 0)::bigint
    FROM product_product p
    LEFT JOIN stock_quant q ON q.product_id = p.id
    LEFT JOIN stock_location l ON l.id = q.location_id
    WHERE p.default_code IS NOT NULL
    GROUP BY 1";

async fn erp_totals(erp: &Client) -> BTreeMap<String, Option<i64>> {
    let rows = erp.query(ERP_TOTALS, &[]).await.expect("ERP totals");
    rows.iter().map(|r| (r.get(0), Some(r.get(1)))).collect()
}

/// A shop of one phase: which platform, and for Shopify the batch size.
#[derive(Clone, Copy)]
enum Shop {
    /// `throttled`: a restore rate of 1 point/s, near zero; not waited for.
    Shopify {
        batch_max: usize,
        throttled: bool,
    },
    Woocommerce,
}

/// A running simulator of a phase, seeded to match the ERP.
enum Sim {
    Shopify(ShopSim),
    Woocommerce(WooSim),
}

impl Sim {
    async fn start(shop: Shop, erp: &Client, size: DemoSize) -> Sim {
        match shop {
            Shop::Shopify { throttled, .. } => {
                let defaults = SimConfig::default();
                let sim = ShopSim::start(
                    SimConfig {
                        seed: shopsim::catalog::demo_seed(size.skus, size.warehouses),
                        restore_rate: if throttled {
                            1.0
                        } else {
                            defaults.restore_rate
                        },
                        ..defaults
                    },
                    "127.0.0.1:0".parse().expect("address"),
                )
                .await
                .expect("shop simulator");
                for (level, q) in erp_levels(erp, &sim).await {
                    sim.shop()
                        .state
                        .lock()
                        .levels
                        .entry(level)
                        .or_default()
                        .available = q;
                }
                Sim::Shopify(sim)
            }
            Shop::Woocommerce => {
                let sim = WooSim::start(
                    WooConfig {
                        seed: shopsim::catalog::demo_seed(size.skus, 1),
                        // A generous host: the ERP's pace, not the host, is measured.
                        requests_per_second: 50.0,
                        burst: 50.0,
                        ..WooConfig::default()
                    },
                    "127.0.0.1:0".parse().expect("address"),
                )
                .await
                .expect("WooCommerce simulator");
                let totals = erp_totals(erp).await;
                for p in sim.state().products.values_mut() {
                    if let Some(q) = totals.get(&p.sku) {
                        p.stock_quantity = *q;
                    }
                }
                Sim::Woocommerce(sim)
            }
        }
    }

    fn shop_config(&self, name: &str) -> ShopConfig {
        match self {
            Sim::Shopify(sim) => ShopConfig {
                name: name.into(),
                admin_url: sim.graphql_url(),
                access_token: Secret(sim.config.access_token.clone()),
                ..ShopConfig::local_default()
            },
            Sim::Woocommerce(sim) => ShopConfig {
                name: name.into(),
                platform: Platform::Woocommerce,
                admin_url: format!("{}/wp-json/wc/v3", sim.base_url()),
                consumer_key: Secret(sim.config.consumer_key.clone()),
                consumer_secret: Secret(sim.config.consumer_secret.clone()),
                requests_per_second: 50.0,
                burst: 50,
                ..ShopConfig::local_default()
            },
        }
    }

    /// Levels (Shopify) or counts (WooCommerce) that differ from the ERP.
    async fn differences(&self, erp: &Client) -> usize {
        match self {
            Sim::Shopify(sim) => differences(erp, sim).await,
            Sim::Woocommerce(sim) => {
                let want = erp_totals(erp).await;
                let have = sim.stock();
                want.iter()
                    .filter(|(sku, q)| have.get(*sku) != Some(q))
                    .count()
            }
        }
    }

    /// Stock writes: Shopify mutations, WooCommerce batch items.
    fn writes(&self) -> u64 {
        match self {
            Sim::Shopify(sim) => sim.operations("inventorySetQuantities"),
            Sim::Woocommerce(sim) => sim.stats().batch_items,
        }
    }
}

/// One shop's figures in one phase.
struct Phase {
    shop: String,
    p50: f64,
    p99: f64,
    events: u64,
    writes: u64,
    converge_s: f64,
}

/// Runs the offered load against `shops` at once (each its own simulator,
/// stock processor and consumer group), until every shop matches the ERP.
async fn phase(
    name: &str,
    base: &Config,
    pg: &LocalPostgres,
    size: DemoSize,
    shops: &[(&str, Shop)],
) -> Vec<Phase> {
    let rate: u32 = env_or("BENCH_RATE", 20);
    let seconds: u64 = env_or("BENCH_SECONDS", 15);
    let erp = connect(&base.erp.dsn).await;
    pg.create_database(&format!("state_{name}"))
        .await
        .expect("state database");
    let stop = CancellationToken::new();
    let mut sims = Vec::new();
    let mut processors = Vec::new();
    for (shop_name, shop) in shops {
        let sim = Sim::start(*shop, &erp, size).await;
        let mut config = base.clone();
        config.processors.state_dsn = Some(pg.dsn(&format!("state_{name}")));
        config.processors.group_id = format!("bench-{name}");
        config.processors.new_group_start = GroupStart::Latest;
        if let Shop::Shopify { batch_max, .. } = shop {
            config.processors.batch_max = *batch_max;
        }
        config.shops = vec![sim.shop_config(shop_name)];
        if let Shop::Woocommerce = shop {
            // The group starts at the end of the topic; the state database
            // knows the ERP as a processor that has been running would.
            let parts: Vec<StockPart> = erp
                .query(ERP_PARTS, &[])
                .await
                .expect("ERP parts")
                .iter()
                .map(|r| StockPart {
                    sku: r.get(0),
                    warehouse: r.get(1),
                    version: 0,
                    sellable: r.get(2),
                    own_reserved: 0,
                })
                .collect();
            let mut state = StateDb::connect(&config).await.expect("state database");
            for chunk in parts.chunks(1000) {
                state.store_parts(shop_name, chunk).await.expect("parts");
            }
        }
        processors.push(tokio::spawn({
            let stop = stop.clone();
            async move {
                flywheel::sync::stock_to_shop::run(&config, &config.shops[0].clone(), stop).await
            }
        }));
        sims.push(sim);
    }
    // Until the groups have their partitions, changes would be skipped as
    // "before the start": give them a moment (this is a benchmark, not a test).
    tokio::time::sleep(Duration::from_secs(5)).await;

    let by_shop =
        |shop: &str| BucketCounts::take_where(freshness_histogram(), |l| l.get(1) == Some(&shop));
    let fresh0: Vec<BucketCounts> = shops.iter().map(|(n, _)| by_shop(n)).collect();
    let writes0: Vec<u64> = sims.iter().map(Sim::writes).collect();
    let mut activity = ErpActivity::new(size, 11);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        activity.stock_move(&erp).await.expect("stock move");
    }
    let load_end = Instant::now();
    let awaited: Vec<bool> = shops
        .iter()
        .map(|(_, shop)| {
            !matches!(
                shop,
                Shop::Shopify {
                    throttled: true,
                    ..
                }
            )
        })
        .collect();
    let mut converged: Vec<Option<f64>> = vec![None; sims.len()];
    while (0..sims.len()).any(|i| awaited[i] && converged[i].is_none()) {
        for (i, sim) in sims.iter().enumerate() {
            if awaited[i] && converged[i].is_none() && sim.differences(&erp).await == 0 {
                converged[i] = Some(load_end.elapsed().as_secs_f64());
            }
        }
        if load_end.elapsed() > Duration::from_secs(600) {
            panic!("{name}: the shops did not converge within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    for p in processors {
        let _ = p.await;
    }
    shops
        .iter()
        .enumerate()
        .map(|(i, (shop, _))| {
            let fresh = by_shop(shop).since(&fresh0[i]);
            Phase {
                shop: format!("{name}/{shop}"),
                p50: fresh.quantile(0.5).unwrap_or(f64::NAN),
                p99: fresh.quantile(0.99).unwrap_or(f64::NAN),
                events: fresh.count(),
                writes: sims[i].writes() - writes0[i],
                converge_s: converged[i].unwrap_or(f64::NAN),
            }
        })
        .collect()
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
        broker.configure(&mut config.kafka);
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
        let shopify = |batch_max| Shop::Shopify {
            batch_max,
            throttled: false,
        };
        let throttled = Shop::Shopify {
            batch_max: 250,
            throttled: true,
        };
        let phases: String = env_or(
            "BENCH_PHASES",
            "batched,naive,waited,woo,two,throttled".to_owned(),
        );
        let runs = |name: &str| phases.split(',').any(|p| p.trim() == name);
        let mut rows = Vec::new();
        if runs("batched") {
            rows.extend(phase("batched", &config, &pg, size, &[("shopify", shopify(250))]).await);
        }
        if runs("naive") {
            rows.extend(phase("naive", &config, &pg, size, &[("shopify", shopify(1))]).await);
        }
        // The former default: every batch waited 200 ms for more events.
        let waited = Config {
            processors: flywheel::config::ProcessorsConfig {
                batch_wait_ms: 200,
                ..config.processors.clone()
            },
            ..config.clone()
        };
        if runs("waited") {
            rows.extend(phase("waited", &waited, &pg, size, &[("shopify", shopify(250))]).await);
        }
        if runs("woo") {
            rows.extend(phase("woo", &config, &pg, size, &[("woo", Shop::Woocommerce)]).await);
        }
        if runs("two") {
            rows.extend(
                phase(
                    "two",
                    &config,
                    &pg,
                    size,
                    &[("shopify", shopify(250)), ("woo", Shop::Woocommerce)],
                )
                .await,
            );
        }
        if runs("throttled") {
            rows.extend(
                phase(
                    "throttled",
                    &config,
                    &pg,
                    size,
                    &[("shopify", throttled), ("woo", Shop::Woocommerce)],
                )
                .await,
            );
        }
        println!(
            "{:<18} {:>10} {:>10} {:>8} {:>8} {:>12}",
            "phase/shop", "fresh p50", "fresh p99", "events", "writes", "converge s"
        );
        for p in &rows {
            println!(
                "{:<18} {:>9.3}s {:>9.3}s {:>8} {:>8} {:>12.1}",
                p.shop, p.p50, p.p99, p.events, p.writes, p.converge_s
            );
        }
        let row = |name: &str| rows.iter().find(|p| p.shop == name);
        if let (Some(batched), Some(naive)) = (row("batched/shopify"), row("naive/shopify")) {
            println!(
                "naive / batched (Shopify): freshness p50 {:.1}×, p99 {:.1}×, mutations {:.1}×",
                naive.p50 / batched.p50,
                naive.p99 / batched.p99,
                naive.writes as f64 / batched.writes.max(1) as f64
            );
        }
        if let (Some(batched), Some(waited)) = (row("batched/shopify"), row("waited/shopify")) {
            println!(
                "waited 200 ms / batched as it arrives (Shopify): freshness p50 {:.1}×, p99 {:.1}×, mutations {:.2}×",
                waited.p50 / batched.p50,
                waited.p99 / batched.p99,
                waited.writes as f64 / batched.writes.max(1) as f64
            );
        }
        if let (Some(batched), Some(alone), Some(two), Some(beside), Some(throttled)) = (
            row("batched/shopify"),
            row("woo/woo"),
            row("two/shopify"),
            row("two/woo"),
            row("throttled/woo"),
        ) {
            println!(
                "two shops at once / alone: Shopify p99 {:.1}×, WooCommerce p99 {:.1}×; WooCommerce beside a Shopify shop throttled to 1 point/s / alone: p99 {:.1}×",
                two.p99 / batched.p99,
                beside.p99 / alone.p99,
                throttled.p99 / alone.p99
            );
        }
        shutdown.cancel();
        let _ = source.await;
    });
}
