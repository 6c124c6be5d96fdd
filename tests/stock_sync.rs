//! ERP stock → shop, end to end: real PostgreSQL (demo ERP), the source, a
//! real broker, the stock processor, and the shop simulator.

mod common;

use std::time::Duration;

use common::{TestEnv, shop_stock, small, wait_for};

const T: Duration = Duration::from_secs(90);
const SAFETY: i64 = 2;

async fn expected(env: &TestEnv, sku: &str, wh: &str) -> i64 {
    env.shop_should_show(sku, wh, SAFETY).await
}

#[tokio::test(flavor = "multi_thread")]
async fn erp_stock_converges_in_the_shop_and_unknown_skus_are_dead_lettered() {
    let env = TestEnv::new("stock_sync", small()).await;
    let sim = common::start_shop(20).await;
    let source = env.start_streaming().await;

    let mut config = common::processor_config(&env, &sim, "stock_sync-processors");
    config.shops[0].safety_stock = SAFETY;
    let processor = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::stock_to_shop::run(&c, &c.shops[0].clone(), t).await
    });

    // The snapshot converges: every SKU in every warehouse.
    let want = env.shop_should_show_all(20, SAFETY).await;
    assert!(
        want.values().any(|v| *v > 0),
        "the demo ERP has stock to sync"
    );
    wait_for("the shop to match the ERP snapshot", T, || async {
        shop_stock(&sim).await == want
    })
    .await;

    // A change in the ERP follows.
    env.set_stock(7, "WH2", 321).await;
    let now = expected(&env, "SKU-000007", "WH2").await;
    wait_for("the shop to follow the ERP change", T, || async {
        shop_stock(&sim)
            .await
            .get(&("SKU-000007".to_string(), "WH2".to_string()))
            == Some(&now)
    })
    .await;

    // A SKU the shop does not sell: dead-lettered, and the processor goes on.
    env.add_erp_product(901, Some("SKU-ERP-ONLY")).await;
    let mut dlq = env.reader("flywheel.dlq.v1");
    let records = dlq
        .read_until(T, |r| {
            r.iter()
                .any(|d| d.str("error_class") == Some("unknown_sku"))
        })
        .await;
    let letter = records
        .iter()
        .find(|d| d.str("error_class") == Some("unknown_sku"))
        .unwrap();
    assert!(letter.str("reason").unwrap().contains("SKU-ERP-ONLY"));
    assert_eq!(letter.str("original_topic"), Some("erp.stock.v1"));
    assert_eq!(letter.headers["flywheel.original.topic"], "erp.stock.v1");
    env.set_stock(8, "WH3", 99).await;
    let now = expected(&env, "SKU-000008", "WH3").await;
    wait_for("sync to continue after a dead letter", T, || async {
        shop_stock(&sim)
            .await
            .get(&("SKU-000008".to_string(), "WH3".to_string()))
            == Some(&now)
    })
    .await;

    assert_eq!(sim.stats()["api"]["throttled"], 0);
    processor.stop().await;

    // Replay: a new consumer group reads the topic from the start; the version
    // store says it was all applied, so nothing reaches the shop.
    let mut stock = env.reader("erp.stock.v1");
    let total = stock.drain(Duration::from_secs(1)).await.len() as u64;
    let mutations = || sim.operations("inventorySetQuantities");
    let (writes_before, before) = (mutations(), common::processor_outcomes());
    let state_before = shop_stock(&sim).await;
    config.processors.group_id = "stock_sync-replay".into();
    let replay = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::stock_to_shop::run(&c, &c.shops[0].clone(), t).await
    });
    wait_for("the replay to handle every record", T, || async {
        let now = common::processor_outcomes();
        let handled: u64 = ["applied", "skipped_stale", "coalesced", "dead_lettered"]
            .iter()
            .map(|o| now.get(*o).unwrap_or(&0) - before.get(*o).unwrap_or(&0))
            .sum();
        handled >= total
    })
    .await;
    let now = common::processor_outcomes();
    assert_eq!(
        now.get("applied"),
        before.get("applied"),
        "a replay applied something"
    );
    assert!(now["skipped_stale"] > before.get("skipped_stale").copied().unwrap_or(0));
    assert_eq!(mutations(), writes_before, "the replay wrote to the shop");
    assert_eq!(shop_stock(&sim).await, state_before);
    replay.stop().await;
    source.stop().await;
}

/// A first full sync of a catalogue too large to look up SKU by SKU: the
/// stock processor exports the shop's catalogue with one bulk query, and the
/// whole sync costs a fraction of the 3 points per SKU the lookups alone
/// would.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_full_sync_maps_the_catalogue_with_one_bulk_export() {
    const SKUS: u32 = 400;
    let env = TestEnv::new(
        "full_sync",
        flywheel::erp::demo_erp::DemoSize {
            skus: SKUS,
            warehouses: 3,
            orders: 0,
            seed: 0.3,
        },
    )
    .await;
    let sim = common::start_shop(SKUS).await;
    let source = env.start_streaming().await;
    let config = common::processor_config(&env, &sim, "full_sync-processors");
    let stock = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::stock_to_shop::run(&c, &c.shops[0].clone(), t).await
    });
    let want = env.shop_should_show_all(SKUS, 0).await;
    wait_for("the shop to match the ERP snapshot", T, || async {
        shop_stock(&sim).await == want
    })
    .await;
    let export = sim
        .shop()
        .bulk
        .current(shopsim::bulk::OpKind::Query)
        .expect("the catalogue was exported in bulk");
    assert_eq!(export.status, "COMPLETED");
    assert_eq!(export.root_object_count, u64::from(SKUS));
    let lookups = f64::from(SKUS) * 3.0;
    let cost = sim.stats()["api"]["cost_used"].as_f64().unwrap_or_default();
    assert!(
        cost < lookups / 2.0,
        "the sync cost {cost} points; looking up {SKUS} SKUs alone costs {lookups}"
    );
    stock.stop().await;
    source.stop().await;
}

/// Two warehouses going to one Shopify location would overwrite each other's
/// quantity there, each write undoing the other. A mapping that says so is
/// refused when the configuration loads (`config`'s tests); one that does so
/// implicitly (an unlisted warehouse goes to the location of its own name)
/// stops the stock processor with an error naming both.
#[tokio::test(flavor = "multi_thread")]
async fn two_warehouses_going_to_one_location_stop_the_processor_with_both_named() {
    let env = TestEnv::new("shared_location", small()).await;
    let sim = common::start_shop(20).await;
    let source = env.start_streaming().await;
    let mut config = common::processor_config(&env, &sim, "shared_location-processors");
    // WH2 is not listed: it goes to location `WH2` as well.
    config.shops[0].warehouse_locations = [("WH1".to_owned(), "WH2".to_owned())].into();
    let shop = config.shops[0].clone();
    let processor = tokio::spawn(async move {
        flywheel::sync::stock_to_shop::run(&config, &shop, Default::default()).await
    });
    let stopped = tokio::time::timeout(T, processor)
        .await
        .expect("the processor stops on its own")
        .expect("the processor does not panic");
    let err = stopped
        .expect_err("a shared location is an error")
        .to_string();
    assert!(
        err.contains("warehouses `WH1` and `WH2` both go to the shop's location `WH2`")
            || err.contains("warehouses `WH2` and `WH1` both go to the shop's location `WH2`"),
        "{err}"
    );
    source.stop().await;
}
