//! ERP prices → shop, end to end (real PostgreSQL, source, broker, price
//! processor, shop simulator). Its own binary: it reads process-wide metrics.

mod common;

use std::time::Duration;

use common::{TestEnv, erp_list_prices, shop_prices, small, wait_for};

const T: Duration = Duration::from_secs(90);

fn not_applicable() -> u64 {
    common::processor_events(&[("outcome", "not_applicable")])
}

#[tokio::test(flavor = "multi_thread")]
async fn erp_list_prices_converge_in_the_shop_and_other_price_lists_do_not_touch_it() {
    let env = TestEnv::new("price_sync", small()).await;
    let sim = common::start_shop(20).await;
    let before = shop_prices(&sim).await;
    let source = env.start_streaming().await;
    let config = common::processor_config(&env, &sim, "price_sync-processors");
    let processor = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::price_to_shop::run(&c, &c.shops[0].clone(), t).await
    });

    let want = erp_list_prices(&env).await;
    assert_ne!(
        before, want,
        "the shop starts with other prices than the ERP"
    );
    wait_for("shop prices to match the ERP list prices", T, || async {
        shop_prices(&sim).await == want
    })
    .await;
    assert!(
        not_applicable() > 0,
        "the Wholesale and US Retail lists were seen and left alone"
    );

    // A list price change follows; a Wholesale change does not touch the shop.
    let seen_before = not_applicable();
    env.erp
        .batch_execute(
            "UPDATE product_template SET list_price = 77.70 WHERE id = 6;
             UPDATE product_pricelist_item SET fixed_price = 1.00 WHERE pricelist_id = 2 AND product_id = 3;",
        )
        .await
        .unwrap();
    common::wait_for_shop_price("the list price change", T, &sim, "SKU-000006", "77.70").await;
    wait_for("the Wholesale change to be handled", T, || async {
        not_applicable() > seen_before
    })
    .await;
    assert_eq!(shop_prices(&sim).await["SKU-000003"], want["SKU-000003"]);

    processor.stop().await;
    source.stop().await;
}

/// A worker killed after its price write went out but before it stored the
/// version as applied leaves that event and the older ones it coalesced to
/// be replayed, maybe batched differently: the older price, replayed alone,
/// must not be written over the newer one the shop already shows.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_price_replayed_after_a_crash_is_not_written_over_a_newer_one() {
    use flywheel::shop::shopify::prices::ShopifyPrices;
    use flywheel::sync::apply_loop::{Applier, Outcome, Pending};
    use flywheel::sync::price_to_shop::{Price, PriceToShop};
    use flywheel::sync::shop_catalog::StoredCatalog;

    let env = TestEnv::new("price_replay", small()).await;
    let sim = common::start_shop(20).await;
    let config = common::processor_config(&env, &sim, "price_replay-processors");
    let shop = config.shops[0].clone();
    let sku = "SKU-000004";
    let event = |version: i64, amount: &str| Pending {
        key: sku.to_owned(),
        version: (version, String::new()),
        source_ts_micros: 0,
        event: Price {
            sku: sku.to_owned(),
            price_list: shop.price_list.clone(),
            currency: shop.currency.clone(),
            amount: Some(amount.to_owned()),
            compare_at: None,
        },
        partition: 0,
        offset: version,
    };
    let worker = || async {
        let catalog = StoredCatalog::for_shop(&config, &shop, "price")
            .await
            .expect("the shop's catalogue");
        PriceToShop::new(&config, &shop, ShopifyPrices { catalog })
            .await
            .expect("a price processor")
    };
    let history = || {
        let st = sim.shop().state.lock();
        let variant = st
            .variants
            .values()
            .find(|v| v.sku == sku)
            .map(|v| v.id)
            .expect("the SKU's variant");
        st.price_history.get(&variant).cloned().unwrap_or_default()
    };

    // The dead worker: the older and the newer price in one batch, coalesced
    // to the newer, written; then killed (no version stored as applied).
    let outcomes = worker().await.apply(&[event(2, "502.20")]).await.unwrap();
    assert!(matches!(outcomes[..], [Outcome::Applied]), "{outcomes:?}");

    // Its successor gets the older price alone, then the newer, then a later one.
    let mut successor = worker().await;
    let outcomes = successor.apply(&[event(1, "501.10")]).await.unwrap();
    assert!(
        matches!(outcomes[..], [Outcome::Observed("superseded")]),
        "{outcomes:?}"
    );
    let outcomes = successor.apply(&[event(2, "502.20")]).await.unwrap();
    assert!(
        matches!(outcomes[..], [Outcome::Observed("unchanged")]),
        "{outcomes:?}"
    );
    let outcomes = successor.apply(&[event(3, "503.30")]).await.unwrap();
    assert!(matches!(outcomes[..], [Outcome::Applied]), "{outcomes:?}");
    assert_eq!(
        history(),
        ["502.20", "503.30"],
        "every price the shop was set to"
    );
}
