//! `flywheel lag` and the consumer lag it reads: a processor group that has
//! not consumed lags by everything in its topic; once the processor has
//! applied and committed, its lag is zero.

mod common;

use std::time::Duration;

use common::{TestEnv, shop_stock, small, wait_for};

const T: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread")]
async fn lag_counts_what_a_group_has_not_committed() {
    let env = TestEnv::new("consumer_lag", small()).await;
    let source = env.start_streaming().await;
    let sim = common::start_shop(20).await;
    let config = common::processor_config(&env, &sim, "consumer_lag-processors");
    // The snapshot's 20 SKUs × 3 warehouses, none consumed yet.
    let mut stock = env.reader("erp.stock.v1");
    let produced = stock.read_until(T, |r| r.len() >= 60).await.len() as i64;
    assert_eq!(common::stock_lag(&config), produced);

    let (ok, text) = common::flywheel_cli(&config, &["lag"]).await;
    assert!(ok, "flywheel lag failed: {text}");
    let stock_rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("consumer_lag-processors.stock.demo "))
        .collect();
    assert_eq!(stock_rows.len(), 3, "one row per partition:\n{text}");
    let printed: i64 = stock_rows
        .iter()
        .map(|l| l.split_whitespace().last().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(printed, produced, "{text}");
    assert!(text.contains("slot consumer_lag: active"), "{text}");

    let processor = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::stock_to_shop::run(&c, &c.shops[0].clone(), t).await
    });
    wait_for("the stock group to catch up", T, || async {
        !shop_stock(&sim).await.is_empty() && common::stock_lag(&config) == 0
    })
    .await;
    processor.stop().await;
    source.stop().await;
}
