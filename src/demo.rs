//! `flywheel demo`: the main job on a local default setup.
//!
//! Starts what is not configured (PostgreSQL with the demo ERP, a tansu broker),
//! runs the ERP source against them, generates ERP activity, and prints a status
//! line every second. Ctrl-C stops the activity, lets the source confirm what it
//! produced, and stops the servers it started.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use flywheel::config::{Config, ErpConfig, KafkaConfig};
use flywheel::erp::demo_erp::{self, DemoSize, ErpActivity};
use flywheel::erp::source_metrics::{BucketCounts, SourceMetrics};
use flywheel::local_infra::{LocalBroker, LocalPostgres};
use flywheel::ops;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// SKUs in the demo ERP.
    #[arg(long, default_value_t = 2000)]
    skus: u32,
    /// Warehouses in the demo ERP.
    #[arg(long, default_value_t = 3)]
    warehouses: u32,
    /// ERP transactions per second (stock moves and some price changes).
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Stop after this many seconds (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
}

pub async fn run(
    args: DemoArgs,
    mut config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut local_pg = None;
    let mut local_broker = None;
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
        eprintln!("starting a local tansu broker…");
        let broker = LocalBroker::start().await?;
        config.kafka.bootstrap = broker.bootstrap();
        local_broker = Some(broker);
    }

    let readiness = ops::http::Readiness::default();
    let metrics_addr = match config.metrics.addr()? {
        Some(addr) => Some(
            ops::http::serve(addr, readiness.clone(), shutdown.clone())
                .await
                .with_context(|| {
                    format!("serving /metrics on {addr} (set metrics.listen to change it)")
                })?,
        ),
        None => None,
    };
    eprintln!(
        "ERP: {}\nKafka: {}\nmetrics: {}\n",
        config.erp.dsn,
        config.kafka.bootstrap,
        metrics_addr.map_or("off".into(), |a| format!("http://{a}/metrics"))
    );

    let source_config = config.clone();
    let source_shutdown = shutdown.child_token();
    let mut source = tokio::spawn({
        let token = source_shutdown.clone();
        async move { flywheel::erp::source::run_with_retries(&source_config, token).await }
    });
    readiness.set(true);

    let activity_stop = CancellationToken::new();
    let activity = tokio::spawn(generate_activity(
        config.erp.dsn.clone(),
        size,
        args.rate,
        activity_stop.clone(),
    ));

    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = Snapshot::take();
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            r = &mut source => break r.context("source task").and_then(|r| r.map_err(Into::into)).and(Err(anyhow::anyhow!("the source stopped"))),
            _ = tick.tick() => {
                let now = Snapshot::take();
                print_status(&last, &now);
                last = now;
                if args.seconds > 0 && started.elapsed() >= Duration::from_secs(args.seconds) {
                    break Ok(());
                }
            }
        }
    };
    activity_stop.cancel();
    let _ = activity.await;
    source_shutdown.cancel();
    if !source.is_finished() {
        match tokio::time::timeout(Duration::from_secs(30), &mut source).await {
            Ok(Ok(Err(e))) => eprintln!("source stopped with: {e}"),
            Err(_) => eprintln!("source did not stop within 30 s"),
            _ => {}
        }
    }
    drop(local_broker);
    drop(local_pg);
    eprintln!("demo stopped; local servers removed");
    outcome
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
                let r = if n.is_multiple_of(10) {
                    activity.price_change(&client).await
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
    events: u64,
    dead: u64,
}

impl Snapshot {
    fn take() -> Snapshot {
        let m = SourceMetrics::get();
        let sum = |families: Vec<prometheus::proto::MetricFamily>| -> u64 {
            families
                .iter()
                .flat_map(|f| f.get_metric())
                .map(|m| m.get_counter().value() as u64)
                .sum()
        };
        Snapshot {
            at: Instant::now(),
            txns: m.transactions.get(),
            events: sum(prometheus::core::Collector::collect(&m.events))
                + sum(prometheus::core::Collector::collect(&m.snapshot_events)),
            dead: sum(prometheus::core::Collector::collect(&m.dead_letters)),
        }
    }
}

fn print_status(before: &Snapshot, now: &Snapshot) {
    let m = SourceMetrics::get();
    let secs = now.at.duration_since(before.at).as_secs_f64().max(0.001);
    let latency = BucketCounts::take(&m.commit_to_ack_seconds);
    let (p50, p99) = (latency.quantile(0.5), latency.quantile(0.99));
    println!(
        "captured {:>6.0} tx/s | produced {:>6.0} events/s (total {:>7}) | slot lag {:>8} B | commit→ack p50 {:>6} p99 {:>6} | dead letters {}",
        (now.txns - before.txns) as f64 / secs,
        (now.events - before.events) as f64 / secs,
        now.events,
        m.replication_lag_bytes.get(),
        fmt_secs(p50),
        fmt_secs(p99),
        now.dead
    );
}

fn fmt_secs(s: Option<f64>) -> String {
    match s {
        Some(s) if s < 1.0 => format!("{:.0}ms", s * 1000.0),
        Some(s) => format!("{s:.1}s"),
        None => "-".into(),
    }
}
