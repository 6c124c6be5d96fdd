//! What the shop tells Flywheel through its webhooks besides orders.
//!
//! The stock Flywheel sets in the shop comes back as `inventory_levels/update`
//! webhooks (Shopify sends them for every change, ours included). Through the
//! gateway and `shop.inventory.v1`, those are recognised as our own echo and
//! pushed nowhere; a change made in the shop itself is told apart.
//!
//! The shop's `products/*` webhooks keep the catalogue mapping (SKU →
//! variant) current through `shop.catalog.v1`; the mapping is shared by the
//! shop's processors and kept across their restarts.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{TestEnv, processor_outcomes, shop_stock, small, wait_for, wait_for_shop_stock};
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

#[tokio::test(flavor = "multi_thread")]
async fn the_catalogue_mapping_in_postgresql_keeps_its_contract() {
    let env = TestEnv::new("catalog_in_postgres", small()).await;
    let mut state = flywheel::sync::state::StateDb::connect(&env.config)
        .await
        .expect("the state database");
    common::check_catalogue_mapping(&mut state).await;
}

/// (variant, inventory item, version) the state database maps `sku` to.
async fn mapped(env: &TestEnv, sku: &str) -> Option<(Option<String>, Option<String>, i64)> {
    env.erp
        .query_opt(
            "SELECT variant, inventory_item, version FROM flywheel.catalog_variants
             WHERE shop = 'demo' AND sku = $1",
            &[&sku],
        )
        .await
        .expect("the catalogue mapping")
        .map(|r| (r.get(0), r.get(1), r.get(2)))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catalogue_mapping_is_shared_kept_across_restarts_and_follows_product_webhooks() {
    let env = TestEnv::new("catalog_mapping", small()).await;
    let source = env.start_streaming().await;
    let wired = common::WiredShop::start(
        &env,
        "catalog_mapping-processors",
        20,
        &[
            Topic::ProductsCreate,
            Topic::ProductsUpdate,
            Topic::ProductsDelete,
        ],
    )
    .await;
    let (sim, config) = (&wired.sim, &wired.config);
    let catalog = common::RunningProcessor::spawn(config, |c, t| async move {
        flywheel::sync::shop_catalog::run(&c, &c.shops[0].clone(), t).await
    });
    let stock_processor = || {
        common::RunningProcessor::spawn(config, |c, t| async move {
            flywheel::sync::stock_to_shop::run(&c, &c.shops[0].clone(), t).await
        })
    };
    let stock = stock_processor();
    let want = env.shop_should_show_all(20, 0).await;
    wait_for_shop_stock("the first sync", T, sim, &want).await;
    // The store never held an export: the first miss exports the catalogue,
    // and no SKU is looked up one by one.
    assert_eq!(sim.operations("bulkOperationRunQuery"), 1);
    let lookups = sim.operations("productVariants");
    assert_eq!(lookups, 0, "SKUs were looked up one by one, not exported");
    let stored: i64 = env
        .erp
        .query_one(
            "SELECT count(*) FROM flywheel.catalog_variants WHERE shop = 'demo' AND variant IS NOT NULL",
            &[],
        )
        .await
        .expect("the catalogue mapping")
        .get(0);
    assert_eq!(stored, 20, "every SKU of the export is stored");
    let (_, _, version_before) = mapped(&env, "SKU-000004").await.expect("SKU-000004 mapped");

    // A restarted stock processor and a new price processor of the shop find
    // the mapping stored: neither asks the shop for it again.
    stock.stop().await;
    let stock = stock_processor();
    env.set_stock(3, "WH1", 61).await;
    let want = env.shop_should_show_all(20, 0).await;
    wait_for_shop_stock("a change after the restart", T, sim, &want).await;
    assert_eq!(
        (
            sim.operations("productVariants"),
            sim.operations("bulkOperationRunQuery")
        ),
        (lookups, 1),
        "the restarted stock processor read the catalogue again"
    );
    let prices = common::RunningProcessor::spawn(config, |c, t| async move {
        flywheel::sync::price_to_shop::run(&c, &c.shops[0].clone(), t).await
    });
    env.erp
        .execute(
            "UPDATE product_template SET list_price = 55.50 WHERE id = 4",
            &[],
        )
        .await
        .expect("a price change");
    common::wait_for_shop_price("the price change", T, sim, "SKU-000004", "55.50").await;
    assert_eq!(
        mapped(&env, "SKU-000004").await.map(|m| m.2),
        Some(version_before),
        "the price processor looked the SKU up again instead of reading the shared mapping"
    );
    assert_eq!(
        sim.operations("bulkOperationRunQuery"),
        1,
        "the price processor exported the catalogue again"
    );

    // The price processor's first writes fire a `products/update` per
    // product. One for SKU-000003's product applied after the replacement's
    // `products/create` of the same second would map the SKU back to the
    // gone variant (and the deletion then forget it): webhooks of one second
    // cannot be ordered across products. Let them all be applied first.
    wait_for("every product webhook applied", T, || async {
        let sent = &sim.stats()["webhooks"];
        sent["delivered"] == sent["queued"] && common::group_lag(config, "catalog") == 0
    })
    .await;

    // The merchant replaces a product: the old variant and inventory item
    // are gone, a new one has the SKU. The webhooks map the SKU anew, and
    // the next stock change goes to the new item without a lookup.
    let (old_item, new_item) = sim.replace_product("SKU-000003", 0).expect("SKU-000003");
    wait_for("the new variant to be mapped", T, || async {
        mapped(&env, "SKU-000003").await.and_then(|m| m.1) == Some(new_item.to_string())
    })
    .await;
    let lookups = sim.operations("productVariants");
    env.set_stock(3, "WH1", 62).await;
    let want = env.shop_should_show("SKU-000003", "WH1", 0).await;
    let level = ("SKU-000003".to_owned(), "WH1".to_owned());
    wait_for("the change on the new product", T, || async {
        shop_stock(sim).await.get(&level) == Some(&want)
    })
    .await;
    assert_ne!(old_item, new_item);
    assert_eq!(
        sim.operations("productVariants") - lookups,
        0,
        "the new variant came from the webhooks, not a lookup"
    );

    // Replaced again while the catalogue processor is behind (stopped): the
    // stock write finds the mapped item gone, looks the SKU up in the shop
    // and writes to the new item at once; nothing is dead-lettered.
    catalog.stop().await;
    let (_, newest_item) = sim.replace_product("SKU-000005", 0).expect("SKU-000005");
    let lookups = sim.operations("productVariants");
    let looked_up_from = chrono::Utc::now().timestamp_micros();
    let dead_letters = processor_outcomes().get("dead_lettered").copied();
    // Both warehouses in one transaction: the second level of the SKU goes
    // to the item the first one found.
    env.erp
        .execute(
            "UPDATE stock_quant SET quantity = 64 WHERE product_id = 5 AND location_id IN
               (SELECT lot_stock_id FROM stock_warehouse WHERE code IN ('WH1', 'WH2'))",
            &[],
        )
        .await
        .expect("setting stock");
    let mut want = HashMap::new();
    for wh in ["WH1", "WH2"] {
        let level = ("SKU-000005".to_owned(), wh.to_owned());
        want.insert(level, env.shop_should_show("SKU-000005", wh, 0).await);
    }
    wait_for("the change on the replaced product", T, || async {
        let shown = shop_stock(sim).await;
        want.iter().all(|(level, q)| shown.get(level) == Some(q))
    })
    .await;
    assert!(
        sim.operations("productVariants") > lookups,
        "the stale item was looked up again"
    );
    // The lookup is stored too, unless the mapping holds a webhook stamped
    // within the read margin (2 s) of it: a read does not outrank a webhook
    // that may be for a later change; the next write looks up again.
    let (_, item, version) = mapped(&env, "SKU-000005").await.expect("SKU-000005 mapped");
    assert!(
        item == Some(newest_item.to_string()) || version > looked_up_from - 2_000_000,
        "the lookup was not stored though nothing newer was: {item:?} at {version}"
    );
    assert_eq!(
        processor_outcomes().get("dead_lettered").copied(),
        dead_letters,
        "a write to a replaced item was dead-lettered instead of looked up again"
    );

    // The same for a price: the product is gone, the write looks it up anew.
    sim.replace_product("SKU-000006", 0).expect("SKU-000006");
    env.erp
        .execute(
            "UPDATE product_template SET list_price = 66.60 WHERE id = 6",
            &[],
        )
        .await
        .expect("a price change");
    common::wait_for_shop_price(
        "the price of the replaced product",
        T,
        sim,
        "SKU-000006",
        "66.60",
    )
    .await;
    assert_eq!(
        processor_outcomes().get("dead_lettered").copied(),
        dead_letters,
        "a price write to a replaced product was dead-lettered instead of looked up again"
    );

    prices.stop().await;
    stock.stop().await;
    source.stop().await;
    wired.stop();
}

/// Shopify stamps a product's `updated_at`, the version of its `products/*`
/// webhooks, in whole seconds. A product replaced after a lookup of its SKU,
/// in the same second, must still replace what the lookup stored; refused as
/// older, the SKU stayed mapped to the gone variant until the product
/// changed again.
#[tokio::test(flavor = "multi_thread")]
async fn a_product_replaced_in_the_second_of_a_lookup_replaces_what_the_lookup_stored() {
    use flywheel::shop::shopify::catalog::gid;
    use flywheel::sync::shop_catalog::StoredCatalog;
    use flywheel::sync::state::{CatalogEntry, StateDb};

    let env = TestEnv::new("catalog_same_second", small()).await;
    let sim = common::start_shop(20).await;
    let config = common::processor_config(&env, &sim, "catalog_same_second-processors");
    let shop = config.shops[0].clone();
    let mut catalog = StoredCatalog::for_shop(&config, &shop, "stock")
        .await
        .expect("the shop's catalogue");
    let mut state = StateDb::connect(&config).await.expect("the state database");
    // A fresh SKU per attempt; an attempt across a second's turn proves
    // nothing and goes again.
    for n in 7..12 {
        let sku = format!("SKU-{n:06}");
        let before = chrono::Utc::now();
        let looked_up = catalog.variants([sku.as_str()]).await.expect("a lookup");
        let (old_item, new_item) = sim.replace_product(&sku, 0).expect("the SKU's product");
        let after = chrono::Utc::now();
        if before.timestamp() != after.timestamp() {
            continue;
        }
        assert_eq!(
            looked_up[&sku].inventory_item,
            gid("InventoryItem", &old_item.to_string())
        );
        let new = {
            let st = sim.shop().state.lock();
            let v = st.variant_by_item(new_item).expect("the new variant");
            CatalogEntry {
                sku: sku.clone(),
                variant: v.id.to_string(),
                product: v.product_id.to_string(),
                inventory_item: new_item.to_string(),
            }
        };
        // The new product's `products/create`, stamped as Shopify does: this
        // second, no fraction.
        let version = after.timestamp() * 1_000_000;
        state
            .store_product(&shop.name, &new.product.clone(), version, &[new])
            .await
            .expect("storing the product");
        let now = catalog.variants([sku.as_str()]).await.expect("the mapping");
        assert_eq!(
            now[&sku].inventory_item,
            gid("InventoryItem", &new_item.to_string()),
            "the SKU is still mapped to the variant the lookup found"
        );
        return;
    }
    panic!("every attempt crossed a second's turn");
}
