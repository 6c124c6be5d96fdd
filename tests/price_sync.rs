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
