//! Reconciliation benchmark: `flywheel reconcile` of every stock level and
//! price of a catalogue (BENCH_SKUS SKUs × 3 warehouses, default 10,000)
//! against the Shopify simulator under Shopify's standard GraphQL budget
//! (1000 points, 100/s restore). Reported: time, API cost in points, and the
//! time over the floor the budget itself sets on that cost ((cost − bucket) ÷
//! restore rate), measured in the same run.
//!
//! Two ways of reading the shop, each measured: `paged` (GraphQL pages, about
//! 4 points a level, paced by the budget) and `bulk` (one bulk export of the
//! whole catalogue, outside the budget); BENCH_MODE=paged|bulk|both (default
//! both; paged takes about 27 minutes at 10,000 SKUs).
//!
//! `cargo bench --bench reconcile` (env: BENCH_SKUS, BENCH_MODE). Starts its
//! own PostgreSQL (the ERP, read in a consistent snapshot) and shop simulator.

mod common;

use std::time::Instant;

use common::{connect, env_or};
use flywheel::config::{Config, Secret};
use flywheel::erp::demo_erp::{self, DemoSize};
use flywheel::local_infra::LocalPostgres;
use flywheel::reconcile::{Entity, Request, reconcile};
use shopsim::{ShopSim, SimConfig};

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
        pg.create_database("erp").await.expect("database");
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
        let mut config = Config::default();
        config.erp.dsn = pg.dsn("erp");
        config.metrics.listen = String::new();
        config.shops[0].admin_url = sim.graphql_url();
        config.shops[0].access_token = Secret(sim.config.access_token.clone());

        let mode: String = env_or("BENCH_MODE", "both".to_owned());
        let modes: Vec<(&str, usize)> = [("paged", usize::MAX), ("bulk", 0)]
            .into_iter()
            .filter(|(m, _)| mode == "both" || mode == *m)
            .collect();

        println!("reconcile: {skus} SKUs × 3 warehouses, Shopify standard budget ({bucket} points, {restore}/s)");
        println!(
            "{:<6} {:<8} {:>9} {:>9} {:>10} {:>12} {:>10}",
            "read", "entity", "keys", "seconds", "points", "floor (s)", "time/floor"
        );
        for (read, bulk_above_keys) in modes {
        config.reconcile.bulk_above_keys = bulk_above_keys;
        for entity in Entity::ALL {
            let cost_before = sim.stats()["api"]["cost_used"].as_f64().unwrap_or_default();
            let started = Instant::now();
            let reports = reconcile(
                &config,
                &Request {
                    shop: None,
                    entities: vec![entity],
                    repair: false,
                    budget_share: 1.0,
                    orders_lookback: None,
                },
            )
            .await
            .expect("reconcile");
            let seconds = started.elapsed().as_secs_f64();
            let cost = sim.stats()["api"]["cost_used"].as_f64().unwrap_or_default() - cost_before;
            let floor = ((cost - bucket).max(0.0)) / restore;
            let keys: usize = reports.iter().map(|r| r.compared).sum();
            println!(
                "{:<6} {:<8} {:>9} {:>9.1} {:>10.0} {:>12.1} {:>10}",
                read,
                entity.name(),
                keys,
                seconds,
                cost,
                floor,
                if floor > 0.0 {
                    format!("{:.2}×", seconds / floor)
                } else {
                    "-".into()
                }
            );
        }
        }
    });
}
