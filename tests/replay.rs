//! `flywheel replay`: refused while the group's processor runs; a dry run
//! commits nothing; a replay to the earliest offsets makes the restarted
//! processor read every record again and apply nothing new.

mod common;

use std::time::Duration;

use common::{TestEnv, processor_outcomes, shop_stock, small, wait_for};

const T: Duration = Duration::from_secs(90);
const GROUP: &str = "replay-processors";

async fn replay(config: &flywheel::config::Config, extra: &[&str]) -> (bool, String) {
    let group = format!("{GROUP}.stock.demo");
    let mut args = vec!["replay", "--group", &group, "--topic", "erp.stock.v1"];
    args.extend_from_slice(extra);
    common::flywheel_cli(config, &args).await
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_moves_a_stopped_group_back_and_nothing_is_applied_twice() {
    let env = TestEnv::new("replay", small()).await;
    let source = env.start_streaming().await;
    let sim = common::start_shop(20).await;
    let config = common::processor_config(&env, &sim, GROUP);
    let mut stock = env.reader("erp.stock.v1");
    let total = stock.read_until(T, |r| r.len() >= 60).await.len() as i64;

    let processor = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::stock_to_shop::run(&c, &c.shops[0].clone(), t).await
    });
    wait_for("the processor to apply everything", T, || async {
        !shop_stock(&sim).await.is_empty() && common::stock_lag(&config) == 0
    })
    .await;
    let (ok, text) = replay(&config, &["--to-earliest"]).await;
    assert!(
        !ok,
        "a replay under a running processor was accepted: {text}"
    );
    assert!(text.contains("live member"), "{text}");
    processor.stop().await;

    // The stopped member leaves the group; then a dry run shows, commits nothing.
    wait_for("the group to be empty", T, || async {
        let (ok, _) = replay(&config, &["--to-earliest", "--dry-run"]).await;
        ok
    })
    .await;
    let (ok, text) = replay(&config, &["--to-earliest", "--dry-run"]).await;
    assert!(ok, "{text}");
    assert!(text.contains("dry run: nothing committed"), "{text}");
    assert_eq!(common::stock_lag(&config), 0, "a dry run moved the offsets");

    let (ok, text) = replay(&config, &["--to-earliest"]).await;
    assert!(ok, "{text}");
    assert_eq!(
        common::stock_lag(&config),
        total,
        "every record is to be read again"
    );

    let before = processor_outcomes();
    let mutations = || sim.operations("inventorySetQuantities");
    let writes_before = mutations();
    let again = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::stock_to_shop::run(&c, &c.shops[0].clone(), t).await
    });
    wait_for("the replayed group to catch up", T, || async {
        common::stock_lag(&config) == 0
    })
    .await;
    let after = processor_outcomes();
    assert_eq!(
        after.get("applied"),
        before.get("applied"),
        "the replay applied something"
    );
    assert!(
        after.get("skipped_stale").copied().unwrap_or(0)
            > before.get("skipped_stale").copied().unwrap_or(0),
        "the replayed records were read and skipped as stale"
    );
    assert_eq!(mutations(), writes_before, "the replay wrote to the shop");
    again.stop().await;
    source.stop().await;
}
