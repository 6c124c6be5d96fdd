//! The `flywheel` binary: one binary, roles chosen by subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use flywheel::config::{Config, LogFormat};
use flywheel::erp::demo_erp::{self, DemoSize};
use flywheel::ops;

mod demo;

#[derive(Parser)]
#[command(
    name = "flywheel",
    version,
    about = "Change-data-capture between an ERP and online shops"
)]
struct Cli {
    /// TOML configuration file (FLYWHEEL_* environment variables override it).
    #[arg(long, short, global = true, env = "FLYWHEEL_CONFIG")]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    json_logs: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ERP source: logical replication → entity events in Kafka.
    Source,
    /// Run the webhook gateway: shop webhooks → Kafka, 200 only once durable.
    Gateway,
    /// Run the processors (so far: ERP stock and prices → the shop; shop orders → the ERP).
    Processors,
    /// Create the Kafka topics Flywheel writes (idempotent).
    Topics,
    /// Everything locally: its own PostgreSQL with the demo ERP, a tansu broker,
    /// the source, and ERP activity, with a live status line. Ctrl-C stops it all.
    Demo(demo::DemoArgs),
    /// Create and fill the demo ERP schema in the database of `erp.dsn`.
    SeedDemoErp {
        #[arg(long, default_value_t = 1000)]
        skus: u32,
        #[arg(long, default_value_t = 3)]
        warehouses: u32,
        #[arg(long, default_value_t = 100)]
        orders: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flywheel: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.json_logs {
        config.log.format = LogFormat::Json;
    }
    ops::logging::init(&config.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flywheel: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flywheel: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, leaving out causes the message above already quotes.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    match command {
        Command::Source => {
            let readiness = ops::http::Readiness::default();
            if let Some(addr) = config.metrics.addr()? {
                ops::http::serve(addr, readiness.clone(), shutdown.clone()).await?;
            }
            readiness.set(true);
            flywheel::erp::source::run_with_retries(&config, shutdown).await?;
        }
        Command::Gateway => {
            let running = flywheel::shop::gateway::start(
                &config,
                ops::http::metrics_router(),
                shutdown.clone(),
            )
            .await?;
            eprintln!("gateway listening on http://{}", running.addr);
            running.done.await?;
        }
        Command::Processors => {
            let readiness = ops::http::Readiness::default();
            if let Some(addr) = config.metrics.addr()? {
                ops::http::serve(addr, readiness.clone(), shutdown.clone()).await?;
            }
            readiness.set(true);
            tokio::try_join!(
                flywheel::sync::stock_to_shop::run(&config, shutdown.clone()),
                flywheel::sync::price_to_shop::run(&config, shutdown.clone()),
                flywheel::sync::orders_to_erp::run(&config, shutdown),
            )?;
        }
        Command::Topics => {
            let connector =
                flywheel::erp::connector::Connector::load(config.erp.connector.as_deref())?;
            let mut topics = connector.topics();
            topics.push(flywheel::bus::topics::DEAD_LETTERS.into());
            topics.extend(
                flywheel::shop::gateway::TOPICS
                    .iter()
                    .map(|t| t.to_string()),
            );
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            flywheel::bus::topics::ensure_topics(&config.kafka, &names).await?;
            println!("topics ready: {}", names.join(", "));
        }
        Command::Demo(args) => demo::run(args, config, shutdown).await?,
        Command::SeedDemoErp {
            skus,
            warehouses,
            orders,
        } => {
            let (mut client, conn) = config
                .erp
                .pg_config()?
                .connect(tokio_postgres::NoTls)
                .await?;
            tokio::spawn(conn);
            let size = DemoSize {
                skus,
                warehouses,
                orders,
                ..DemoSize::default()
            };
            demo_erp::create_and_seed(&mut client, size).await?;
            println!("demo ERP created: {skus} SKUs in {warehouses} warehouses, {orders} orders");
        }
    }
    Ok(())
}

/// SIGINT/SIGTERM cancel `shutdown`; a second signal exits at once.
fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        for n in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                tracing::info!("stopping (signal again to exit immediately)");
                shutdown.cancel();
            } else {
                std::process::exit(130);
            }
        }
    });
}
