//! kill -9 of the processors process in the middle of a batch, then a restart:
//! nothing is lost (the shop converges on the ERP) and nothing is applied twice
//! or out of order (the shop's record of every quantity a level was set to
//! never goes back to an older ERP value).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{TestEnv, shop_stock, wait_for};
use flywheel::erp::demo_erp::DemoSize;
use shopsim::ApiFaults;

const T: Duration = Duration::from_secs(120);
/// The killed worker's partition leases end with its state-database sessions,
/// so the restarted one takes them on its first lease check
/// (`sync::partition_leases`); no broker timeout is involved.
const AFTER_CRASH: Duration = Duration::from_secs(45);
const SKUS: u32 = 30;
const ROUNDS: i32 = 30;
/// Every value the burst writes is above this, and strictly grows per key.
const BURST_BASE: i64 = 10_000;

struct Processors(Child);

/// Where a test's workers log (appended across restarts, shown on failure).
fn worker_log(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("a log directory");
    let path = dir.path().join(format!("{name}.log"));
    (dir, path)
}

impl Processors {
    fn spawn(env: &TestEnv, sim: &shopsim::ShopSim, log: &Path) -> Processors {
        Self::spawn_as(env, sim, "processor_crash", "crash-worker", log)
    }

    fn spawn_as(
        env: &TestEnv,
        sim: &shopsim::ShopSim,
        group: &str,
        instance: &str,
        log: &Path,
    ) -> Processors {
        Self::spawn_with(env, sim, group, instance, log, &[])
    }

    /// [`Processors::spawn_as`] with `settings` (environment variables)
    /// overriding the defaults.
    fn spawn_with(
        env: &TestEnv,
        sim: &shopsim::ShopSim,
        group: &str,
        instance: &str,
        log: &Path,
        settings: &[(&str, &str)],
    ) -> Processors {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the worker's log file");
        let child = Command::new(env!("CARGO_BIN_EXE_flywheel"))
            .arg("processors")
            .env("FLYWHEEL_ERP__DSN", &env.config.erp.dsn)
            .env("FLYWHEEL_KAFKA__BOOTSTRAP", &env.config.kafka.bootstrap)
            .env(
                "FLYWHEEL_KAFKA__FETCH_WAIT_MAX_MS",
                env.config.kafka.fetch_wait_max_ms.to_string(),
            )
            .env(
                "FLYWHEEL_KAFKA__TOPIC_PREFIX",
                &env.config.kafka.topic_prefix,
            )
            .env("FLYWHEEL_KAFKA__PARTITIONS", "3")
            .env("FLYWHEEL_PROCESSORS__GROUP_ID", group)
            .env("FLYWHEEL_PROCESSORS__INSTANCE_ID", instance)
            .env("FLYWHEEL_PROCESSORS__BATCH_MAX", "40")
            .env("FLYWHEEL_PROCESSORS__BATCH_WAIT_MS", "50")
            .env(
                "FLYWHEEL_SHOPS",
                format!(
                    r#"[{{name="demo", platform="shopify", admin_url="{}", access_token="{}"}}]"#,
                    sim.graphql_url(),
                    sim.config.access_token
                ),
            )
            .env("FLYWHEEL_METRICS__LISTEN", "")
            .envs(settings.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning flywheel processors");
        Processors(child)
    }

    /// SIGTERM; panics unless it exits 0 within the shutdown timeout.
    fn terminate(mut self) {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        let rc = unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "sending SIGTERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(35);
        loop {
            if let Some(status) = self.0.try_wait().expect("waiting for the worker") {
                assert!(
                    status.success(),
                    "a worker stopped by SIGTERM exited with {status}"
                );
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a worker did not stop within its shutdown timeout"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
    sets_from(sim, BURST_BASE)
}

/// Sets applied by the shop for values ≥ `base`, per level.
fn sets_from(sim: &shopsim::ShopSim, base: i64) -> Vec<Vec<i64>> {
    sim.shop()
        .state
        .lock()
        .set_history
        .values()
        .map(|h| h.iter().copied().filter(|q| *q >= base).collect())
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
    let (_log_dir, log) = worker_log("crash-worker");
    let _show_log = common::ShowLogOnPanic(log.clone());
    let mut processors = Processors::spawn(&env, &sim, &log);

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
    processors = Processors::spawn(&env, &sim, &log);

    let want = env.shop_should_show_all(SKUS, 0).await;
    common::wait_for_shop_stock(
        "the shop to converge after the crash",
        AFTER_CRASH,
        &sim,
        &want,
    )
    .await;

    let total: usize = burst_sets(&sim).iter().map(Vec::len).sum();
    assert!(
        total > before_restart,
        "the restarted processors wrote the rest ({before_restart} sets before, {total} after)"
    );
    // Every set, not only the burst's: a replay writing a pre-burst value over
    // a burst value is the failure to catch. Nothing but these writes moves a
    // level here (no sales), so an equal neighbour is a compare-and-set of a
    // level onto the value it holds, which changes nothing: the events carry
    // the state at capture time, so two versions can ask for the same number.
    for history in sim.shop().state.lock().set_history.values() {
        let Some(first) = history.iter().position(|q| *q >= BURST_BASE) else {
            continue;
        };
        assert!(
            history[first..].windows(2).all(|w| w[0] <= w[1]),
            "a level was set back to an older ERP value: {history:?}"
        );
    }
    drop(processors);
    source.stop().await;
}

/// A rolling restart: two workers share the partitions (each leases some of
/// every processor's topic); each in turn is stopped with SIGTERM (its leases
/// end with its sessions, so the other takes every partition within a second)
/// and started again, and takes its share back. ERP changes made while one
/// worker is away reach the shop through the other: the sync never stalls.
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_of_two_workers_never_stalls() {
    let env = TestEnv::new(
        "rolling_restart",
        DemoSize {
            skus: 10,
            warehouses: 3,
            orders: 0,
            seed: 0.5,
        },
    )
    .await;
    let sim = common::start_shop(10).await;
    let source = env.start_streaming().await;
    let group = "rolling_restart";
    let (_log_dir, log) = worker_log("rolling-workers");
    let _show_log = common::ShowLogOnPanic(log.clone());
    let mut workers = [
        Some(Processors::spawn_as(&env, &sim, group, "worker-a", &log)),
        Some(Processors::spawn_as(&env, &sim, group, "worker-b", &log)),
    ];
    let want = || env.shop_should_show_all(10, 0);
    wait_for("the shop to match the ERP", T, || async {
        shop_stock(&sim).await == want().await
    })
    .await;
    let state = std::sync::Arc::new(tokio::sync::Mutex::new(
        flywheel::sync::state::StateDb::connect(&common::processor_config(&env, &sim, group))
            .await
            .expect("the state database"),
    ));
    let both_work = || async {
        wait_for(
            "both workers to lease partitions of every processor's topic",
            T,
            || async {
                let mut each_shared = true;
                for lane in flywheel::sync::lanes(&flywheel::config::Config::default()) {
                    let holders = state
                        .lock()
                        .await
                        .holders(&format!("{group}.{}", lane.name()))
                        .await
                        .unwrap();
                    each_shared &= holders.len() == 2;
                }
                each_shared
            },
        )
        .await
    };
    both_work().await;
    let instances = ["worker-a", "worker-b"];
    for (round, stopped) in [0usize, 1, 0, 1].into_iter().enumerate() {
        workers[stopped].take().expect("running").terminate();
        // Every SKU changes while this worker is away: the other applies all.
        env.erp
            .execute(
                "UPDATE stock_quant q SET quantity = q.quantity + 1 + $1::int
                 FROM stock_warehouse w WHERE q.location_id = w.lot_stock_id",
                &[&(round as i32)],
            )
            .await
            .unwrap();
        let away = std::time::Instant::now();
        wait_for(
            "the other worker to apply what changed while one was away",
            Duration::from_secs(30),
            || async { shop_stock(&sim).await == want().await },
        )
        .await;
        println!(
            "round {round}: applied by the remaining worker after {:.1?}",
            away.elapsed()
        );
        workers[stopped] = Some(Processors::spawn_as(
            &env,
            &sim,
            group,
            instances[stopped],
            &log,
        ));
        both_work().await;
    }
    drop(workers);
    source.stop().await;
}

/// A worker coalesces two ERP changes of one level and writes the newer; it
/// is killed while that write is at the shop, and the write lands. Its
/// successor, batching differently, replays the older change on its own:
/// that change must not be written over the newer (the shop would show an
/// old number until the newer came again), nor the newer written twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_batched_differently_never_puts_an_older_level_back() {
    const BASE: i64 = 20_000;
    let env = TestEnv::new(
        "replay_older",
        DemoSize {
            skus: 5,
            warehouses: 3,
            orders: 0,
            seed: 0.6,
        },
    )
    .await;
    let sim = common::start_shop(5).await;
    let source = env.start_streaming().await;
    let group = "replay_older";
    let (_log_dir, log) = worker_log("replay-older");
    let _show_log = common::ShowLogOnPanic(log.clone());
    let want_all = || env.shop_should_show_all(5, 0);

    // In step with the ERP, every offset committed.
    let first = Processors::spawn_as(&env, &sim, group, "first", &log);
    common::wait_for_shop_stock("the first sync", T, &sim, &want_all().await).await;
    first.terminate();

    // Two changes of one level, in two transactions (two versions).
    let row = env
        .erp
        .query_one(
            "SELECT id, default_code FROM product_product ORDER BY id LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let (product, sku): (i32, String) = (row.get(0), row.get(1));
    // Each captured before the next commits, so each event carries its own
    // number (an event carries the state when it was captured).
    let mut stock = env.reader(flywheel::bus::topics::ERP_STOCK);
    env.set_stock(product, "WH1", BASE as i32).await;
    let older = env.shop_should_show(&sku, "WH1", 0).await;
    published(&mut stock, &sku, older).await;
    env.set_stock(product, "WH1", BASE as i32 + 100).await;
    let newer = env.shop_should_show(&sku, "WH1", 0).await;
    published(&mut stock, &sku, newer).await;
    assert!(older >= BASE - 10 && newer > older, "{older} then {newer}");

    // One batch takes both (coalesced to the newer); its write is slow, and
    // the worker dies while the shop carries it out.
    sim.set_faults(
        ApiFaults {
            mutation_latency_ms: 2_000,
            ..ApiFaults::default()
        },
        Default::default(),
    );
    let batch_wait = [("FLYWHEEL_PROCESSORS__BATCH_WAIT_MS", "1000")];
    let mut coalescing = Processors::spawn_with(&env, &sim, group, "coalescing", &log, &batch_wait);
    wait_for("the newer level's write to reach the shop", T, || async {
        sim.shop()
            .idempotency
            .lock()
            .values()
            .any(|r| matches!(r, shopsim::graphql::Idempotent::InProgress { .. }))
    })
    .await;
    coalescing.kill_9();
    wait_for("the dead worker's write to land", T, || async {
        sets_from(&sim, BASE - 10).iter().any(|h| h == &[newer])
    })
    .await;
    sim.set_faults(ApiFaults::default(), Default::default());

    // One event per batch: the older change is replayed alone, first.
    let one_by_one = [("FLYWHEEL_PROCESSORS__BATCH_MAX", "1")];
    let _successor = Processors::spawn_with(&env, &sim, group, "successor", &log, &one_by_one);
    env.set_stock(product, "WH1", BASE as i32 + 200).await;
    let latest = env.shop_should_show(&sku, "WH1", 0).await;
    common::wait_for_shop_stock("the replay and a later change", T, &sim, &want_all().await).await;
    let sets: Vec<Vec<i64>> = sets_from(&sim, BASE - 10)
        .into_iter()
        .filter(|h| !h.is_empty())
        .collect();
    assert_eq!(
        sets,
        vec![vec![newer, latest]],
        "the level went {older} → {newer} in the ERP (one batch, written once), then {latest}"
    );
    source.stop().await;
}

/// Waits until `erp.stock.v1` holds an event of `sku` in WH1 asking for `target`.
async fn published(stock: &mut common::TopicReader, sku: &str, target: i64) {
    stock
        .read_until(T, |recs| {
            recs.iter().any(|r| {
                r.str("sku") == Some(sku)
                    && r.str("warehouse") == Some("WH1")
                    && common::stock_target(r, "demo") == target
            })
        })
        .await;
}
