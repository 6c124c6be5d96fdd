//! kill -9 of the processors process in the middle of a batch, then a restart:
//! nothing is lost (the shop converges on the ERP) and nothing is applied twice
//! (the shop's record of every quantity it was set to holds each ERP value at
//! most once, in ERP order).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{TestEnv, shop_stock, wait_for};
use flywheel::erp::demo_erp::DemoSize;
use shopsim::ApiFaults;

const T: Duration = Duration::from_secs(120);
/// The restarted processors are the same static group members as the killed
/// ones (`processors.instance_id`), so they get their partitions back within
/// seconds instead of after the dead members' session timeout (`bus::group`).
const AFTER_CRASH: Duration = Duration::from_secs(45);
const SKUS: u32 = 30;
const ROUNDS: i32 = 30;
/// Every value the burst writes is above this, and strictly grows per key.
const BURST_BASE: i64 = 10_000;

struct Processors(Child);

impl Processors {
    fn spawn(env: &TestEnv, sim: &shopsim::ShopSim) -> Processors {
        let child = Command::new(env!("CARGO_BIN_EXE_flywheel"))
            .arg("processors")
            .env("FLYWHEEL_ERP__DSN", &env.config.erp.dsn)
            .env("FLYWHEEL_KAFKA__BOOTSTRAP", &env.config.kafka.bootstrap)
            .env(
                "FLYWHEEL_KAFKA__TOPIC_PREFIX",
                &env.config.kafka.topic_prefix,
            )
            .env("FLYWHEEL_KAFKA__PARTITIONS", "3")
            .env("FLYWHEEL_PROCESSORS__GROUP_ID", "processor_crash")
            .env("FLYWHEEL_PROCESSORS__INSTANCE_ID", "crash-worker")
            .env("FLYWHEEL_PROCESSORS__BATCH_MAX", "40")
            .env("FLYWHEEL_PROCESSORS__BATCH_WAIT_MS", "50")
            .env("FLYWHEEL_PROCESSORS__SHOP_GRAPHQL_URL", sim.graphql_url())
            .env(
                "FLYWHEEL_PROCESSORS__SHOP_ACCESS_TOKEN",
                &sim.config.access_token,
            )
            .env("FLYWHEEL_METRICS__LISTEN", "")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning flywheel processors");
        Processors(child)
    }

    fn kill_9(&mut self) {
        self.0.kill().expect("kill -9");
        self.0.wait().expect("reaping the killed processors");
    }
}

impl Drop for Processors {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sets applied by the shop for burst values (≥ BURST_BASE), per level.
fn burst_sets(sim: &shopsim::ShopSim) -> Vec<Vec<i64>> {
    sim.shop()
        .state
        .lock()
        .set_history
        .values()
        .map(|h| h.iter().copied().filter(|q| *q >= BURST_BASE).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_batch_loses_nothing_and_applies_nothing_twice() {
    let env = TestEnv::new(
        "processor_crash",
        DemoSize {
            skus: SKUS,
            warehouses: 3,
            orders: 0,
            seed: 0.4,
        },
    )
    .await;
    let sim = common::start_shop(SKUS).await;
    let source = env.start_streaming().await;
    // Slow inventory mutations, so a kill lands inside a batch's write.
    sim.set_faults(
        ApiFaults {
            mutation_latency_ms: 150,
            ..ApiFaults::default()
        },
        Default::default(),
    );
    let mut processors = Processors::spawn(&env, &sim);

    for round in 1..=ROUNDS {
        env.erp
            .execute(
                "UPDATE stock_quant q SET quantity = $2 + $1::int * 100 + q.product_id
                 FROM stock_warehouse w
                 WHERE w.code = 'WH1' AND q.location_id = w.lot_stock_id",
                &[&round, &(BURST_BASE as i32)],
            )
            .await
            .unwrap();
    }
    wait_for("the processors to be writing the burst", T, || async {
        burst_sets(&sim).iter().map(Vec::len).sum::<usize>() >= 5
    })
    .await;
    processors.kill_9();
    let before_restart: usize = burst_sets(&sim).iter().map(Vec::len).sum();
    processors = Processors::spawn(&env, &sim);

    let mut want = std::collections::HashMap::new();
    for p in 1..=SKUS {
        for w in 1..=3 {
            let (sku, wh) = (format!("SKU-{p:06}"), format!("WH{w}"));
            let v = env.shop_should_show(&sku, &wh, 0).await;
            want.insert((sku, wh), v);
        }
    }
    wait_for(
        "the shop to converge after the crash",
        AFTER_CRASH,
        || async { shop_stock(&sim).await == want },
    )
    .await;

    let sets = burst_sets(&sim);
    let total: usize = sets.iter().map(Vec::len).sum();
    assert!(
        total > before_restart,
        "the restarted processors wrote the rest ({before_restart} sets before, {total} after)"
    );
    for history in &sets {
        assert!(
            history.windows(2).all(|w| w[0] < w[1]),
            "a level was set to an ERP value twice or out of order: {history:?}"
        );
    }
    drop(processors);
    source.stop().await;
}
