//! The stock Flywheel sets in the shop comes back as `inventory_levels/update`
//! webhooks (Shopify sends them for every change, ours included). Through the
//! gateway and `shop.inventory.v1`, those are recognised as our own echo and
//! pushed nowhere; a change made in the shop itself is told apart.

mod common;

use std::time::Duration;

use common::{TestEnv, processor_outcomes, shop_stock, small, wait_for};
use serde_json::json;
use shopsim::Topic;

const T: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread")]
async fn our_own_stock_writes_come_back_as_echoes_and_shop_changes_are_told_apart() {
    let env = TestEnv::new("inventory_echo", small()).await;
    let source = env.start_streaming().await;
    let wired = common::WiredShop::start(
        &env,
        "inventory_echo-processors",
        20,
        &[Topic::InventoryLevelsUpdate],
    )
    .await;
    let (sim, config) = (&wired.sim, &wired.config);
    let stock = common::RunningProcessor::spawn(config, |c, t| async move {
        flywheel::sync::stock_to_shop::run(&c, &c.shops[0].clone(), t).await
    });
    let inventory = common::RunningProcessor::spawn(config, |c, t| async move {
        flywheel::sync::shop_inventory::run(&c, &c.shops[0].clone(), t).await
    });

    // The snapshot sets every level with stock (the shop starts at 0): each
    // of those writes comes back as a webhook, and each is an echo.
    let want = env.shop_should_show_all(20, 0).await;
    let changed = want.values().filter(|v| **v != 0).count() as u64;
    assert!(changed > 0, "the demo ERP has stock to sync");
    wait_for("the shop to match the ERP", T, || async {
        shop_stock(sim).await == want
    })
    .await;
    wait_for("every write's webhook to come back", T, || async {
        processor_outcomes().get("echo").copied().unwrap_or(0) >= changed
    })
    .await;
    assert_eq!(
        processor_outcomes().get("shop_change"),
        None,
        "an echo of our own write was taken for a change in the shop"
    );

    // A merchant edits a level in the shop admin: a change, not an echo, and
    // nothing is written anywhere because of it.
    let level = sim
        .shop()
        .state
        .lock()
        .levels
        .keys()
        .next()
        .copied()
        .expect("a level");
    let r: serde_json::Value = reqwest::Client::new()
        .post(sim.graphql_url())
        .header("X-Shopify-Access-Token", &sim.config.access_token)
        .json(&json!({
            "query": "mutation($input: InventorySetQuantitiesInput!) { inventorySetQuantities(input: $input) { userErrors { message } } }",
            "variables": {"input": {"name": "available", "reason": "correction", "quantities": [{
                "inventoryItemId": format!("gid://shopify/InventoryItem/{}", level.0),
                "locationId": format!("gid://shopify/Location/{}", level.1),
                "quantity": 4242, "changeFromQuantity": null}]}}
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["data"]["inventorySetQuantities"]["userErrors"], json!([]));
    wait_for("the shop's own change to be told apart", T, || async {
        processor_outcomes().get("shop_change").copied() == Some(1)
    })
    .await;
    assert_eq!(
        sim.shop().state.lock().levels[&level].available,
        4242,
        "Flywheel did not write back over the shop's change"
    );

    stock.stop().await;
    inventory.stop().await;
    source.stop().await;
    wired.stop();
}
