//! A first sync at catalogue scale, end to end (real PostgreSQL, source,
//! broker, stock and price processors, shop simulator): from an empty mapping
//! the catalogue is exported in bulk and the prices are written with bulk
//! mutations, so the points spent stay far below what one call per product
//! would cost; afterwards a single price change goes out as a plain call, at
//! once. Its own binary: it reads the simulator's counters.

mod common;

use std::time::Duration;

use common::{TestEnv, erp_list_prices, shop_prices, shop_stock, wait_for};
use flywheel::erp::demo_erp::DemoSize;

const T: Duration = Duration::from_secs(120);
const SKUS: u32 = 300;

#[tokio::test(flavor = "multi_thread")]
async fn a_first_sync_maps_the_catalogue_and_writes_prices_in_bulk() {
    let size = DemoSize {
        skus: SKUS,
        warehouses: 3,
        orders: 0,
        seed: 0.1,
    };
    let env = TestEnv::new("bulk_sync", size).await;
    let sim = common::start_shop(SKUS).await;
    // Every product's price differs from the ERP's, so every one is written.
    for v in sim.shop().state.lock().variants.values_mut() {
        v.price = "1.00".into();
    }
    let source = env.start_streaming().await;
    let config = common::processor_config(&env, &sim, "bulk_sync-processors");
    let stock = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::stock_to_shop::run(&c, &c.shops[0].clone(), t).await
    });
    let prices = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::price_to_shop::run(&c, &c.shops[0].clone(), t).await
    });

    let want_prices = erp_list_prices(&env).await;
    let want_stock = env.shop_should_show_all(SKUS, 0).await;
    wait_for(
        "the shop to match the ERP's prices and stock",
        T,
        || async { shop_prices(&sim).await == want_prices && shop_stock(&sim).await == want_stock },
    )
    .await;

    let bulk_writes = sim.operations("bulkOperationRunMutation");
    let direct_writes = sim.operations("productVariantsBulkUpdate");
    assert!(bulk_writes >= 1, "prices were written in bulk");
    assert!(
        direct_writes < u64::from(SKUS) / 2,
        "most of the {SKUS} products were written in bulk, not one call each ({direct_writes} calls)"
    );
    assert!(
        sim.operations("bulkOperationRunQuery") >= 1,
        "the catalogue was exported in bulk"
    );
    let spent = sim.stats()["api"]["cost_used"].as_u64().unwrap_or(0);
    assert!(
        spent < 10 * u64::from(SKUS) / 2,
        "the first sync cost {spent} points; one call per product would cost {} for the prices alone",
        10 * SKUS
    );

    // One change: a plain call, not a bulk operation.
    env.erp
        .execute(
            "UPDATE product_template SET list_price = 77.70 WHERE id = 6",
            &[],
        )
        .await
        .expect("a price change");
    common::wait_for_shop_price("the single price change", T, &sim, "SKU-000006", "77.70").await;
    assert_eq!(
        sim.operations("bulkOperationRunMutation"),
        bulk_writes,
        "one price is not worth a bulk operation"
    );
    assert_eq!(
        sim.operations("productVariantsBulkUpdate"),
        direct_writes + 1
    );

    prices.stop().await;
    stock.stop().await;
    source.stop().await;
}
