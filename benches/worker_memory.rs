//! Worker memory benchmark: `flywheel run` (every role in one process) as a
//! child process of its own, against PostgreSQL (the demo ERP, BENCH_SKUS ×
//! 3 warehouses), the development broker and a Shopify simulator with the
//! same catalogue that places 2 orders/s and sends every webhook topic to the
//! worker's gateway. From the worker's start: its first full sync, then a
//! stock move every 100 ms. Its `VmRSS`, `RssAnon` and thread count are
//! sampled every BENCH_SAMPLE_SECS for BENCH_SECONDS.
//!
//! `cargo bench --bench worker_memory` (env: BENCH_SKUS=10000,
//! BENCH_SECONDS=150, BENCH_SAMPLE_SECS=10, BENCH_PRODUCT_WEBHOOKS=1 (0: the
//! shop sends no `products/*` webhooks); MALLOC_ARENA_MAX and other
//! variables of the bench's environment reach the worker).

mod common;

use common::{connect, env_or};
use std::process::Stdio;
use std::time::{Duration, Instant};

use flywheel::config::{Config, Secret};
use flywheel::erp::demo_erp::{self, DemoSize};
use flywheel::local_infra::{LocalBroker, LocalPostgres, free_port};
use shopsim::{ShopSim, SimConfig, Topic};

const SECRET: &str = "bench-secret";

/// (VmRSS, RssAnon, RssFile) in MB and the thread count of process `pid`.
fn sample(pid: u32) -> Option<(f64, f64, f64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let mb = |kb: u64| kb as f64 / 1024.0;
    Some((
        mb(field("VmRSS:")?),
        mb(field("RssAnon:")?),
        mb(field("RssFile:")?),
        field("Threads:")?,
    ))
}

#[tokio::main]
async fn main() {
    let skus: u32 = env_or("BENCH_SKUS", 10_000);
    let seconds: u64 = env_or("BENCH_SECONDS", 150);
    let every: u64 = env_or("BENCH_SAMPLE_SECS", 10);
    let product_webhooks = env_or("BENCH_PRODUCT_WEBHOOKS", 1u8) == 1;
    let pg = LocalPostgres::start().await.expect("PostgreSQL");
    let broker = LocalBroker::start().await.expect("tansu");
    pg.create_database("erp").await.expect("database");
    let mut erp = connect(&pg.dsn("erp")).await;
    demo_erp::create_and_seed(
        &mut erp,
        DemoSize {
            skus,
            warehouses: 3,
            orders: 0,
            ..DemoSize::default()
        },
    )
    .await
    .expect("demo ERP");

    let (gateway_port, metrics_port) = (free_port().expect("a port"), free_port().expect("a port"));
    let callback = format!("http://127.0.0.1:{gateway_port}/webhooks/shopify/demo");
    let sim = ShopSim::start(
        SimConfig {
            webhook_secret: SECRET.into(),
            seed: shopsim::catalog::demo_seed(skus, 3),
            subscriptions: Topic::ALL
                .iter()
                .filter(|t| product_webhooks || !t.as_str().starts_with("products/"))
                .map(|t| (*t, callback.clone()))
                .collect(),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().expect("an address"),
    )
    .await
    .expect("the shop simulator");

    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = Config::default();
    config.erp.dsn = pg.dsn("erp");
    broker.configure(&mut config.kafka);
    config.metrics.listen = format!("127.0.0.1:{metrics_port}");
    config.gateway.listen = format!("127.0.0.1:{gateway_port}");
    config.gateway.dedupe_path = dir.path().join("seen.log");
    config.shops[0].admin_url = sim.graphql_url();
    config.shops[0].access_token = Secret(sim.config.access_token.clone());
    config.shops[0].webhook_secrets = vec![Secret(SECRET.into())];
    let file = dir.path().join("flywheel.toml");
    std::fs::write(&file, toml::to_string(&config).expect("config as TOML"))
        .expect("writing the configuration");
    let log = dir.path().join("worker.log");
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .arg("--config")
        .arg(&file)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("the worker's log"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawning flywheel run");
    let pid = worker.id().expect("the worker's pid");
    let started = Instant::now();
    sim.start_order_generator(2.0);

    // A stock move every 100 ms, on a random quant.
    let mover = tokio::spawn({
        let erp = connect(&pg.dsn("erp")).await;
        let quants = i32::try_from(skus * 3).unwrap_or(i32::MAX);
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let id = fastrand::i32(1..=quants);
                let _ = erp
                    .execute(
                        "UPDATE stock_quant SET quantity = quantity + 1 WHERE id = $1",
                        &[&id],
                    )
                    .await;
            }
        }
    });

    println!(
        "worker memory: `flywheel run` (all roles) as its own process; {skus} SKUs × 3 warehouses, \
         first full sync, then a stock move every 100 ms and 2 shop orders/s"
    );
    println!("  time    VmRSS   RssAnon  RssFile  threads");
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(every)).await;
        if let Ok(Some(status)) = worker.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("the worker stopped ({status}); its log:\n{text}");
        }
        let Some((rss, anon, file, threads)) = sample(pid) else {
            continue;
        };
        println!(
            "  {:>4} s {rss:>6.1} MB {anon:>6.1} MB {file:>6.1} MB {threads:>5}",
            started.elapsed().as_secs()
        );
        samples.push(rss);
    }
    mover.abort();
    let ready = reqwest::get(format!("http://127.0.0.1:{metrics_port}/readyz"))
        .await
        .is_ok_and(|r| r.status() == 200);
    let steady = &samples[samples.len() / 2..];
    let (low, high) = steady
        .iter()
        .fold((f64::MAX, 0.0f64), |(l, h), r| (l.min(*r), h.max(*r)));
    println!(
        "  steady (second half of the samples): {low:.0}–{high:.0} MB VmRSS; worker ready at the end: {ready}"
    );
    assert!(
        ready,
        "the worker was not ready at the end; see {}",
        log.display()
    );
    let _ = worker.kill().await;
}
