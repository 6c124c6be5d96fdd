//! A shop that restores its API budget slowly, hit by a burst of ERP stock
//! changes: the stock processor waits for budget instead of failing, keeps only
//! the newest version per key while it waits (coalescing), and the shop
//! converges on the ERP once the burst is over.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{TestEnv, processor_outcomes, shop_stock, wait_for};
use flywheel::erp::demo_erp::DemoSize;
use serde_json::json;
use shopsim::{ShopSim, SimConfig};

const T: Duration = Duration::from_secs(120);
const SKUS: u32 = 40;
const ROUNDS: i32 = 40;

fn throttle_waits(processor: &str) -> f64 {
    prometheus::gather()
        .iter()
        .filter(|f| f.name() == "flywheel_shop_api_throttle_wait_seconds_total")
        .flat_map(|f| f.get_metric())
        .filter(|m| m.get_label().iter().any(|l| l.value() == processor))
        .map(|m| m.get_counter().value())
        .sum()
}

/// What the shop should show for every SKU and warehouse.
async fn expected(env: &TestEnv) -> HashMap<(String, String), i64> {
    env.shop_should_show_all(SKUS, 0).await
}

/// Spends the shop's GraphQL budget until less than one mutation's worth is
/// left, with queries that cost what they request (the catalogue has SKUS
/// variants): large ones first, then small ones.
async fn drain_budget(sim: &ShopSim) {
    let http = reqwest::Client::new();
    for _ in 0..200 {
        let status = &sim.stats()["throttle_status"];
        let left = status["currentlyAvailable"].as_f64().unwrap_or(0.0);
        if left < 10.0 {
            return;
        }
        let first = if left > 100.0 { 40 } else { 1 };
        let r = http
            .post(sim.graphql_url())
            .header("X-Shopify-Access-Token", &sim.config.access_token)
            .json(&json!({"query": format!("{{ productVariants(first: {first}) {{ nodes {{ id sku inventoryItem {{ id }} }} }} }}")}))
            .send()
            .await
            .expect("the simulator answers");
        assert!(r.status().is_success());
    }
    panic!("could not spend the shop's budget");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_shop_converges_with_coalesced_writes_and_no_failures() {
    let env = TestEnv::new(
        "throttled_shop",
        DemoSize {
            skus: SKUS,
            warehouses: 3,
            orders: 0,
            seed: 0.3,
        },
    )
    .await;
    // Shopify's bucket size, but a tenth of its restore rate: ten points a
    // second is one inventory mutation a second.
    let sim = ShopSim::start(
        SimConfig {
            seed: shopsim::catalog::demo_seed(SKUS, 3),
            restore_rate: 10.0,
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("the shop simulator starts");
    let source = env.start_streaming().await;
    let config = common::processor_config(&env, &sim, "throttled_shop-processors");
    let processor = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::stock_to_shop::run(&c, &c.shops[0].clone(), t).await
    });

    let want = expected(&env).await;
    wait_for("the shop to match the ERP snapshot", T, || async {
        shop_stock(&sim).await == want
    })
    .await;

    // Another app spends the shop's budget; then the burst: every SKU's WH1
    // stock changes in each of ROUNDS transactions, 50 ms apart.
    drain_budget(&sim).await;
    for round in 1..=ROUNDS {
        env.erp
            .execute(
                "UPDATE stock_quant q SET quantity = 500 + $1::int + q.product_id
                 FROM stock_warehouse w
                 WHERE w.code = 'WH1' AND q.location_id = w.lot_stock_id",
                &[&round],
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await; // pacing the burst, not waiting for a result
    }
    let want = expected(&env).await;
    assert_eq!(
        want[&("SKU-000001".to_string(), "WH1".to_string())],
        500 + ROUNDS as i64 + 1,
        "the ERP holds the burst's last value"
    );
    wait_for(
        "the shop to converge on the ERP after the burst",
        T,
        || async { shop_stock(&sim).await == want },
    )
    .await;

    let outcomes = processor_outcomes();
    let events = outcomes.values().sum::<u64>();
    let writes = sim.operations("inventorySetQuantities");
    assert!(
        outcomes.get("coalesced").copied().unwrap_or(0) > 0,
        "versions waiting for budget were coalesced: {outcomes:?}"
    );
    assert!(
        throttle_waits("stock") > 0.0,
        "the processor waited for budget"
    );
    assert_eq!(
        outcomes.get("dead_lettered").copied().unwrap_or(0),
        0,
        "a throttle is never a failure: {outcomes:?}"
    );
    assert!(
        writes * 20 < events,
        "{writes} inventory mutations for {events} events: writes were not batched"
    );
    // `stop` fails if the processor had stopped on its own or with an error.
    processor.stop().await;
    source.stop().await;
}
