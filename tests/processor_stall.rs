//! A stuck processor is never silent: while its group has records waiting and
//! nothing is committed for `processors.stall_timeout_secs`, it is marked
//! stalled (`flywheel_processor_stalled`, which the processors role's
//! `/readyz` and an alert rule read), and it recovers by itself once the cause
//! is gone. Its own binary: the gauges are process-global.

mod common;

use std::time::Duration;

use common::{TestEnv, shop_stock, small, wait_for};
use flywheel::sync::apply_loop::is_stalled;
use shopsim::ApiFaults;

const T: Duration = Duration::from_secs(90);

fn gauge(name: &str, entity: &str) -> Option<f64> {
    prometheus::gather()
        .iter()
        .find(|f| f.name() == name)?
        .get_metric()
        .iter()
        .find(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "entity" && l.value() == entity)
        })
        .map(|m| m.get_gauge().value())
}

/// The stock processor of the test configuration's one shop.
fn stock_lane() -> flywheel::sync::Lane {
    flywheel::sync::Lane::for_shop("stock", flywheel::bus::topics::ERP_STOCK, "demo")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_processor_that_cannot_commit_is_stalled_until_it_moves_again() {
    let env = TestEnv::new("processor_stall", small()).await;
    let source = env.start_streaming().await;
    let sim = common::start_shop(20).await;
    // The shop answers nothing but 503: the stock processor retries and never
    // finishes a batch, so its group's offsets stand still with records waiting.
    sim.set_faults(
        ApiFaults {
            error_probability: 1.0,
            ..ApiFaults::default()
        },
        Default::default(),
    );
    let mut config = common::processor_config(&env, &sim, "processor_stall");
    config.processors.stall_timeout_secs = 2;
    let processor = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::stock_to_shop::run(&c, &c.shops[0].clone(), t).await
    });
    wait_for("the processor to hold its partitions", T, || async {
        gauge("flywheel_processor_assigned_partitions", "stock") == Some(3.0)
    })
    .await;
    wait_for("the processor to be reported stalled", T, || async {
        is_stalled(&stock_lane())
    })
    .await;
    assert_eq!(gauge("flywheel_processor_stalled", "stock"), Some(1.0));
    assert!(common::stock_lag(&config) > 0, "records are waiting");

    // The shop is back: the processor catches up and is no longer stalled.
    sim.set_faults(ApiFaults::default(), Default::default());
    wait_for("the processor to catch up", T, || async {
        common::stock_lag(&config) == 0 && !shop_stock(&sim).await.is_empty()
    })
    .await;
    wait_for("the stall to clear", T, || async {
        !is_stalled(&stock_lane())
    })
    .await;
    processor.stop().await;
    source.stop().await;
}
