//! `flywheel demo`: the main job on a local default setup.
//!
//! Starts what is not configured (PostgreSQL with the demo ERP, the development
//! broker, the shop simulator throttled like Shopify), runs every role against them
//! (source, gateway, processors), generates ERP activity (stock moves, price
//! changes, shipments) and shop orders, and prints a status line every second.
//! Ctrl-C stops the activity, lets the roles finish what they hold, and stops
//! the servers it started.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use flywheel::config::{
    Config, ErpConfig, KafkaConfig, Platform, ProcessorsConfig, Secret, ShopConfig,
};
use flywheel::erp::demo_erp::{self, DemoSize, ErpActivity};
use flywheel::erp::source_metrics::SourceMetrics;
use flywheel::local_infra::{LocalBroker, LocalPostgres, free_port};
use flywheel::ops::quantiles::BucketCounts;
use flywheel::sync::apply_loop::freshness_histogram;
use prometheus::proto::MetricFamily;
use shopsim::{ShopSim, SimConfig, Topic};

use crate::roles;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// SKUs in the demo ERP (the first sync maps each SKU in the shop, about
    /// three API points apiece under Shopify's cost model).
    #[arg(long, default_value_t = 200)]
    skus: u32,
    /// Warehouses in the demo ERP.
    #[arg(long, default_value_t = 3)]
    warehouses: u32,
    /// ERP transactions per second (stock moves and some price changes).
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Shop orders per second placed in the simulator.
    #[arg(long, default_value_t = 0.5)]
    orders_per_second: f64,
    /// The simulated shop's GraphQL restore rate (points/s; Shopify's standard plan: 100).
    #[arg(long, default_value_t = 100.0)]
    shop_restore_rate: f64,
    /// Stop after this many seconds (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
    /// Log to the terminal too (by default logs go to a file, so the status
    /// line stays readable).
    #[arg(long)]
    pub verbose: bool,
}

/// Where the demo's logs go unless `--verbose`: one file per run, kept after
/// the demo stops so it can be read.
pub fn log_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("flywheel-demo-{}.log", std::process::id()))
}

pub async fn run(
    args: DemoArgs,
    mut config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut local_pg = None;
    let mut local_broker = None;
    let mut local_shop = None;
    let size = DemoSize {
        skus: args.skus,
        warehouses: args.warehouses,
        ..DemoSize::default()
    };
    if config.erp.dsn == ErpConfig::default().dsn {
        eprintln!(
            "starting a local PostgreSQL with the demo ERP ({} SKUs × {} warehouses)…",
            args.skus, args.warehouses
        );
        let pg = LocalPostgres::start().await?;
        pg.create_database("erp").await?;
        let (mut client, conn) =
            tokio_postgres::connect(&pg.dsn("erp"), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        demo_erp::create_and_seed(&mut client, size).await?;
        config.erp.dsn = pg.dsn("erp");
        local_pg = Some(pg);
    }
    if config.kafka.bootstrap == KafkaConfig::default().bootstrap {
        eprintln!("starting the development broker (tansu, built in)…");
        let broker = LocalBroker::start().await?;
        config.kafka.bootstrap = broker.bootstrap();
        local_broker = Some(broker);
    }
    let workdir = tempfile::tempdir().context("a temporary directory for the gateway")?;
    if config.processors.shop_graphql_url == ProcessorsConfig::default().shop_graphql_url {
        // The gateway's port is chosen first so the shop can be told where
        // to send its webhooks before either runs.
        let gateway_port = free_port()?;
        config.gateway.listen = format!("127.0.0.1:{gateway_port}");
        config.gateway.dedupe_path = workdir.path().join("gateway-seen.log");
        let sim_config = SimConfig {
            seed: shop_seed_from_erp(&config.erp.dsn, args.warehouses).await?,
            restore_rate: args.shop_restore_rate,
            subscriptions: [
                Topic::OrdersCreate,
                Topic::OrdersPaid,
                Topic::OrdersUpdated,
                Topic::OrdersCancelled,
                Topic::OrdersFulfilled,
                Topic::InventoryLevelsUpdate,
            ]
            .iter()
            .map(|t| {
                (
                    *t,
                    format!("http://127.0.0.1:{gateway_port}/webhooks/shopify/demo"),
                )
            })
            .collect(),
            ..SimConfig::default()
        };
        eprintln!(
            "starting the shop simulator ({} points, {}/s restore)…",
            sim_config.bucket_size, sim_config.restore_rate
        );
        let sim = ShopSim::start(sim_config, "127.0.0.1:0".parse()?).await?;
        config.gateway.shops = vec![ShopConfig {
            name: "demo".into(),
            platform: Platform::Shopify,
            secrets: vec![sim.config.webhook_secret.clone()],
        }];
        config.processors.shop_graphql_url = sim.graphql_url();
        config.processors.shop_access_token = Secret(sim.config.access_token.clone());
        config.processors.shop_channel = "demo".into();
        local_shop = Some(sim);
    }

    let roles_shutdown = shutdown.child_token();
    let started = roles::start(&config, &roles::ALL, &roles_shutdown).await?;
    eprintln!(
        "ERP: {}\nKafka: {}\nshop: {}\ngateway: {}\nmetrics: {}\n",
        config.erp.dsn,
        config.kafka.bootstrap,
        config.processors.shop_graphql_url,
        started
            .gateway
            .map_or("-".into(), |a| format!("http://{a}/webhooks/…")),
        started
            .metrics
            .map_or("off".into(), |a| format!("http://{a}/metrics"))
    );

    let activity_stop = CancellationToken::new();
    let activity = tokio::spawn(generate_activity(
        config.erp.dsn.clone(),
        size,
        args.rate,
        activity_stop.clone(),
    ));
    if let Some(sim) = &local_shop {
        sim.start_order_generator(args.orders_per_second);
    }

    let (erp, erp_conn) = tokio_postgres::connect(&config.erp.dsn, tokio_postgres::NoTls)
        .await
        .context("connecting to the ERP for the status line")?;
    tokio::spawn(erp_conn);
    let started_at = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = Snapshot::take();
    // Seconds in a row that looked steady, and when that run began.
    let mut steady_run: Option<(u32, Duration)> = None;
    let mut steady = false;
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = tick.tick() => {
                if !started.all_running() {
                    break Err(anyhow::anyhow!("a role stopped"));
                }
                let now = Snapshot::take();
                let sales = match &local_shop {
                    Some(sim) => {
                        let (sold, refused) = {
                            let st = sim.shop().state.lock();
                            (st.orders.len(), st.refused_orders)
                        };
                        let oversold = demo_erp::oversold_units(&erp).await.unwrap_or(-1);
                        format!(" | shop orders {sold} (refused short {refused}), oversold {oversold} units")
                    }
                    None => String::new(),
                };
                print_status(&last, &now, &sales);
                steady_run = match (is_steady(&last, &now), steady_run) {
                    (false, _) => None,
                    (true, None) => Some((1, started_at.elapsed().saturating_sub(Duration::from_secs(1)))),
                    (true, Some((n, since))) => Some((n + 1, since)),
                };
                if let Some((STEADY_SECONDS, since)) = steady_run
                    && !steady
                {
                    steady = true;
                    println!(
                        "steady state since {:.0} s after start: the first sync is done and ERP changes reach the shop within a second (p99)",
                        since.as_secs_f64()
                    );
                }
                last = now;
                if args.seconds > 0 && started_at.elapsed() >= Duration::from_secs(args.seconds) {
                    break Ok(());
                }
            }
        }
    };
    if let Some(sim) = &local_shop {
        sim.stop_order_generator();
    }
    activity_stop.cancel();
    let _ = activity.await;
    roles_shutdown.cancel();
    let stopped =
        tokio::time::timeout(Duration::from_secs(30), started.wait(&roles_shutdown)).await;
    let outcome = match stopped {
        Err(_) => outcome.and(Err(anyhow::anyhow!("the roles did not stop within 30 s"))),
        Ok(r) => outcome.and(r),
    };
    drop(local_shop);
    drop(local_broker);
    drop(local_pg);
    eprintln!("demo stopped; local servers removed");
    outcome
}

/// A shop that already sells the ERP's products at their list prices, as a
/// merchant's shop does when Flywheel is introduced: the first sync then
/// finds most prices in place and spends its budget on what differs.
async fn shop_seed_from_erp(dsn: &str, warehouses: u32) -> anyhow::Result<shopsim::state::Seed> {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let products = client
        .query(
            "SELECT p.default_code, t.list_price::text FROM product_product p
             JOIN product_template t ON t.id = p.product_tmpl_id
             WHERE p.default_code IS NOT NULL ORDER BY p.id",
            &[],
        )
        .await
        .context("reading the demo ERP's catalogue")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(shopsim::state::Seed {
        products,
        ..shopsim::catalog::demo_seed(0, warehouses)
    })
}

async fn generate_activity(dsn: String, size: DemoSize, rate: u32, stop: CancellationToken) {
    let Ok((client, conn)) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await else {
        eprintln!("activity generator cannot connect to the ERP");
        return;
    };
    tokio::spawn(conn);
    let mut activity = ErpActivity::new(size, 7);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                n += 1;
                // Mostly stock moves; every 10th a price change, every 5th a shipment.
                let r = if n.is_multiple_of(10) {
                    activity.price_change(&client).await
                } else if n.is_multiple_of(5) {
                    activity.ship_shop_order(&client).await
                } else {
                    activity.stock_move(&client).await
                };
                if let Err(e) = r {
                    eprintln!("ERP activity failed: {e}");
                }
            }
        }
    }
}

/// Counters at one moment, for per-second rates.
struct Snapshot {
    at: Instant,
    txns: u64,
    applied: u64,
    throttle_wait_secs: f64,
    dead: u64,
    to_shop: BucketCounts,
    to_erp: BucketCounts,
}

/// Sum of a metric's series (counters) whose labels pass `keep`.
fn sum(families: &[MetricFamily], name: &str, keep: impl Fn(&[(&str, &str)]) -> bool) -> f64 {
    families
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            let labels: Vec<(&str, &str)> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            keep(&labels)
        })
        .map(|m| m.get_counter().value())
        .sum()
}

impl Snapshot {
    fn take() -> Snapshot {
        let families = prometheus::gather();
        let all = |_: &[(&str, &str)]| true;
        let freshness = freshness_histogram();
        Snapshot {
            at: Instant::now(),
            txns: SourceMetrics::get().transactions.get(),
            applied: sum(&families, "flywheel_processor_events_total", |l| {
                l.contains(&("outcome", "applied"))
            }) as u64,
            throttle_wait_secs: sum(
                &families,
                "flywheel_shop_api_throttle_wait_seconds_total",
                all,
            ),
            dead: (sum(&families, "flywheel_source_dead_letters_total", all)
                + sum(&families, "flywheel_processor_events_total", |l| {
                    l.contains(&("outcome", "dead_lettered"))
                })) as u64,
            to_shop: BucketCounts::take_where(freshness, |l| l != ["order_in"]),
            to_erp: BucketCounts::take_where(freshness, |l| l == ["order_in"]),
        }
    }
}

fn print_status(before: &Snapshot, now: &Snapshot, sales: &str) {
    let m = SourceMetrics::get();
    let secs = now.at.duration_since(before.at).as_secs_f64().max(0.001);
    let to_shop = now.to_shop.since(&before.to_shop);
    let to_erp = now.to_erp.since(&before.to_erp);
    println!(
        "captured {:>4.0} tx/s | applied {:>5.0}/s (total {:>6}) | slot lag {:>7} B | fresh ERP→shop p50 {:>6} p99 {:>6}, shop→ERP p50 {:>6} p99 {:>6} | throttled {:>4.1} s/s | dead letters {}{sales}",
        (now.txns - before.txns) as f64 / secs,
        (now.applied - before.applied) as f64 / secs,
        now.applied,
        m.replication_lag_bytes.get(),
        fmt_secs(to_shop.quantile(0.5)),
        fmt_secs(to_shop.quantile(0.99)),
        fmt_secs(to_erp.quantile(0.5)),
        fmt_secs(to_erp.quantile(0.99)),
        (now.throttle_wait_secs - before.throttle_wait_secs) / secs,
        now.dead
    );
}

/// Seconds in a row [`is_steady`] must hold before the demo says so: one
/// such second also happens during the first sync, between two throttled ones.
const STEADY_SECONDS: u32 = 5;

/// What reached the shop in the last interval was at most a second old
/// (p99), and the shop's budget was not the limit.
fn is_steady(before: &Snapshot, now: &Snapshot) -> bool {
    let secs = now.at.duration_since(before.at).as_secs_f64().max(0.001);
    let throttled = (now.throttle_wait_secs - before.throttle_wait_secs) / secs;
    let to_shop = now.to_shop.since(&before.to_shop);
    to_shop.quantile(0.99).is_some_and(|p99| p99 <= 1.0) && throttled < 0.5
}

fn fmt_secs(s: Option<f64>) -> String {
    match s {
        Some(s) if s < 1.0 => format!("{:.0}ms", s * 1000.0),
        Some(s) => format!("{s:.1}s"),
        None => "-".into(),
    }
}
