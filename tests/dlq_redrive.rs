//! `flywheel dlq`: a stock change for a SKU the shop lacks is dead-lettered;
//! `list` and `show` find it; once the shop has the SKU, `redrive` sends the
//! original record back and the processor applies it.

mod common;

use std::time::Duration;

use common::{TestEnv, shop_stock, small, wait_for};

const T: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_redriven_after_its_cause_is_fixed_is_applied() {
    let env = TestEnv::new("dlq_redrive", small()).await;
    let source = env.start_streaming().await;
    let sim = common::start_shop(20).await;
    let config = common::processor_config(&env, &sim, "dlq_redrive-processors");
    let processor = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::stock_to_shop::run(&c, &c.shops[0].clone(), t).await
    });
    // An empty dead-letter topic is not an error.
    let (ok, text) = common::flywheel_cli(&config, &["dlq", "list"]).await;
    assert!(ok, "{text}");
    assert!(
        !text.contains("ERROR") && !text.contains("PartitionEOF"),
        "listing an empty topic printed an error: {text}"
    );
    env.add_erp_product(901, Some("SKU-NEW")).await;

    wait_for("the dead letter to be listed", T, || async {
        let (ok, text) = common::flywheel_cli(&config, &["dlq", "list"]).await;
        ok && text.contains("SKU-NEW/WH1")
    })
    .await;
    let (_, letters) = common::flywheel_cli(&config, &["dlq", "list"]).await;
    let line = letters
        .lines()
        .find(|l| l.contains("SKU-NEW/WH1"))
        .expect("listed above");
    assert!(line.contains("unknown_sku"), "{line}");
    assert!(line.contains("processor.stock"), "{line}");
    let id = line.split_whitespace().next().unwrap().to_owned();
    let (ok, shown) = common::flywheel_cli(&config, &["dlq", "show", &id]).await;
    assert!(ok, "{shown}");
    assert!(
        shown.contains("original:    dlq_redrive.erp.stock.v1")
            || shown.contains("original:    erp.stock.v1"),
        "{shown}"
    );
    assert!(shown.contains("redrivable"), "{shown}");
    let (ok, text) = common::flywheel_cli(&config, &["dlq", "redrive", "9:999"]).await;
    assert!(!ok && text.contains("no dead letter 9:999"), "{text}");

    // The cause is fixed: the shop now sells SKU-NEW. Redrive; it is applied.
    sim.shop().state.lock().add_product("SKU-NEW", "1.00", 0);
    let (ok, text) = common::flywheel_cli(&config, &["dlq", "redrive", &id]).await;
    assert!(ok, "{text}");
    wait_for("the redriven stock in the shop", T, || async {
        shop_stock(&sim)
            .await
            .get(&("SKU-NEW".to_string(), "WH1".to_string()))
            == Some(&4)
    })
    .await;
    processor.stop().await;
    source.stop().await;
}
