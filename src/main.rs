//! The `flywheel` binary: one binary, roles chosen by subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use flywheel::config::{Config, LogFormat};
use flywheel::erp::demo_erp::{self, DemoSize};
use flywheel::ops;

mod demo;
#[cfg(feature = "dev-broker")]
mod dev_broker;
mod roles;

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
    /// Run the processors: ERP stock, prices and order status → the shop; shop orders → the ERP.
    Processors,
    /// Run several roles in one process against the configured infrastructure.
    Run {
        /// The roles to run (comma-separated).
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = roles::ALL)]
        roles: Vec<roles::Role>,
    },
    /// Create the Kafka topics Flywheel writes (idempotent).
    Topics,
    /// Print every processor group's lag per topic and partition, and the slot's lag.
    Lag,
    /// Move a stopped consumer group's offsets (its processor then re-applies
    /// from there; what was applied already is skipped as stale).
    Replay(ReplayArgs),
    /// Inspect the dead-letter topic and redrive letters after fixing their cause.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Compare every shop with the ERP (after the processors' mapping) and
    /// print the drift; exits 0 in sync, 1 on drift, 2 when it could not compare.
    Reconcile(ReconcileArgs),
    /// The whole story of one key (`stock SKU-000042/WH1`, `price
    /// SKU-000042/list/EUR`): the ERP now, its events in Kafka, what each shop's
    /// processor applied, what the shop shows, dead letters, and a verdict per
    /// shop; exits 0 in sync everywhere, 1 if not, 2 when it could not trace.
    /// `order main-shop/1234`: the order's events in Kafka and who fed each
    /// (a webhook, the poll, reconciliation), what the order processor
    /// applied; exits 0 when the ERP has it at its latest version.
    Trace {
        #[arg(value_enum)]
        entity: TraceEntity,
        key: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Everything locally: its own PostgreSQL with the demo ERP, a tansu broker and
    /// a shop simulator (unless configured), all roles, ERP activity and shop
    /// orders, with a live status line. Ctrl-C stops it all.
    Demo(demo::DemoArgs),
    /// A Kafka-protocol development broker (tansu, in-memory storage): what
    /// `flywheel demo` and the tests start when no Kafka is configured.
    #[cfg(feature = "dev-broker")]
    DevBroker(dev_broker::DevBrokerArgs),
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

#[derive(clap::Args)]
struct ReconcileArgs {
    /// One shop (its `[[shops]]` name); every shop when absent.
    #[arg(long)]
    shop: Option<String>,
    /// What to compare.
    #[arg(long, value_enum, default_value_t = EntityArg::All)]
    entity: EntityArg,
    /// Produce the drifted keys' ERP events again (and the shop orders the ERP
    /// lacks), for the processors to apply.
    #[arg(long)]
    repair: bool,
    /// How far back to look for shop orders (seconds); default
    /// `reconcile.orders_lookback_secs`.
    #[arg(long)]
    orders_lookback_secs: Option<u64>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EntityArg {
    Stock,
    Price,
    Orders,
    All,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TraceEntity {
    Stock,
    Price,
    /// A shop order (`<shop>/<order id>`), shop → ERP.
    Order,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum DlqAction {
    /// One line per dead letter: id (partition:offset), stage, class, key, reason.
    List,
    /// Everything one dead letter holds.
    Show { id: String },
    /// Produce the original records of these dead letters to their topics again.
    Redrive {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to_earliest", "to_offset", "to_time", "by_duration"])))]
struct ReplayArgs {
    /// The consumer group, e.g. `flywheel-processors.stock`.
    #[arg(long)]
    group: String,
    /// The topic (without `kafka.topic_prefix`), e.g. `erp.stock.v1`.
    #[arg(long)]
    topic: String,
    /// Back to the first record each partition holds.
    #[arg(long)]
    to_earliest: bool,
    /// To this offset on every partition.
    #[arg(long)]
    to_offset: Option<i64>,
    /// To the first record at or after this RFC 3339 time (needs a broker with
    /// reliable time indexes; tansu's is not).
    #[arg(long)]
    to_time: Option<String>,
    /// To the first record of this long ago: `90s`, `30m`, `1h`, `2d`.
    #[arg(long)]
    by_duration: Option<String>,
    /// Show the moves without committing them.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match &cli.command {
        // Needs no Flywheel configuration: `local_infra` starts it with
        // whatever environment its parent has.
        #[cfg(feature = "dev-broker")]
        Command::DevBroker(_) => Ok(Config::default()),
        _ => Config::load(cli.config.as_deref()),
    };
    let mut config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flywheel: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.json_logs {
        config.log.format = LogFormat::Json;
    }
    match &cli.command {
        // The terminal shows the demo's status line; its logs go to a file.
        Command::Demo(args) if !args.verbose => {
            let path = demo::log_path();
            if let Err(e) = ops::logging::init_to_file(&config.log, &path) {
                eprintln!(
                    "flywheel: cannot write the log file {}: {e}",
                    path.display()
                );
                return ExitCode::FAILURE;
            }
            eprintln!("logs: {} (--verbose shows them here)", path.display());
        }
        _ => ops::logging::init(&config.log),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flywheel: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match &cli.command {
        Command::Reconcile(args) => return runtime.block_on(reconcile(&config, args)),
        Command::Trace {
            entity,
            key,
            format,
        } => return runtime.block_on(trace(&config, *entity, key, *format)),
        _ => {}
    }
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

/// Fails with the setting to fix when Kafka cannot be reached or refuses us.
async fn kafka_answers(config: &Config) -> anyhow::Result<()> {
    let kafka = config.kafka.clone();
    tokio::task::spawn_blocking(move || {
        flywheel::bus::client::probe(&kafka, std::time::Duration::from_secs(10))
    })
    .await??;
    Ok(())
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    match command {
        Command::Source => run_roles(&config, &[roles::Role::Source], shutdown).await?,
        Command::Gateway => run_roles(&config, &[roles::Role::Gateway], shutdown).await?,
        Command::Processors => run_roles(&config, &[roles::Role::Processors], shutdown).await?,
        Command::Run { roles } => run_roles(&config, &roles, shutdown).await?,
        Command::Lag => {
            kafka_answers(&config).await?;
            print_lag(&config).await?
        }
        Command::Replay(args) => {
            kafka_answers(&config).await?;
            replay(&config, args).await?
        }
        Command::Dlq { action } => {
            kafka_answers(&config).await?;
            dlq(&config, action).await?
        }
        Command::Topics => {
            let connector = flywheel::erp::connector::Connector::for_erp(&config.erp)?;
            let mut topics = connector.topics();
            topics.push(flywheel::bus::topics::DEAD_LETTERS.into());
            topics.extend(
                flywheel::shop::gateway::TOPICS
                    .iter()
                    .map(|t| t.to_string()),
            );
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            flywheel::bus::topics::ensure_topics_and_check(&config.kafka, &names).await?;
            let physical: Vec<String> = names.iter().map(|n| config.kafka.topic(n)).collect();
            println!("topics ready: {}", physical.join(", "));
        }
        Command::Demo(args) => demo::run(args, config, shutdown).await?,
        Command::Reconcile(_) | Command::Trace { .. } => {
            unreachable!("run before, for their exit status")
        }
        #[cfg(feature = "dev-broker")]
        Command::DevBroker(args) => dev_broker::run(args).await?,
        Command::SeedDemoErp {
            skus,
            warehouses,
            orders,
        } => {
            let mut client =
                flywheel::pg::tls::connect(&config.erp.pg_config()?, &config.erp.tls()?).await?;
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

/// Exits 0 in sync, 1 on drift, 2 when it could not compare.
async fn reconcile(config: &Config, args: &ReconcileArgs) -> ExitCode {
    use flywheel::reconcile::{self, Entity, Request};
    let request = Request {
        shop: args.shop.clone(),
        entities: match args.entity {
            EntityArg::Stock => vec![Entity::Stock],
            EntityArg::Price => vec![Entity::Price],
            EntityArg::Orders => vec![],
            EntityArg::All => Entity::ALL.to_vec(),
        },
        repair: args.repair,
        budget_share: 1.0,
        orders_lookback: matches!(args.entity, EntityArg::Orders | EntityArg::All).then(|| {
            std::time::Duration::from_secs(
                args.orders_lookback_secs
                    .unwrap_or(config.reconcile.orders_lookback_secs),
            )
        }),
    };
    let reports = match reconcile::reconcile(config, &request).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flywheel: could not compare: {}", error_chain(&e.into()));
            return ExitCode::from(2);
        }
    };
    match args.format {
        Format::Table => print!("{}", reconcile::render_table(&reports)),
        Format::Json => match serde_json::to_string_pretty(&reports) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("flywheel: {e}");
                return ExitCode::from(2);
            }
        },
    }
    ExitCode::from(reconcile::exit_status(&reports))
}

/// Exits 0 when every shop is in sync for the key (an order: the ERP has
/// it at its latest version), 1 if not, 2 when it could not trace.
async fn trace(config: &Config, entity: TraceEntity, key: &str, format: Format) -> ExitCode {
    use flywheel::reconcile::{Entity, trace};
    let entity = match entity {
        TraceEntity::Stock => Entity::Stock,
        TraceEntity::Price => Entity::Price,
        TraceEntity::Order => {
            let traced = trace::trace_order(config, key).await;
            return tell(traced, trace::render_order, |t| t.in_erp, format);
        }
    };
    let traced = trace::trace(config, entity, key).await;
    tell(
        traced,
        trace::render,
        |t| t.shops.iter().all(|s| s.in_sync),
        format,
    )
}

/// Prints a trace as a table or JSON; exits 0 when `fine` says so, 1 if
/// not, 2 when it could not trace or print.
fn tell<T: serde::Serialize>(
    traced: Result<T, flywheel::reconcile::ReconcileError>,
    table: fn(&T) -> String,
    fine: fn(&T) -> bool,
    format: Format,
) -> ExitCode {
    let story = match traced {
        Ok(t) => t,
        Err(e) => {
            eprintln!("flywheel: could not trace: {}", error_chain(&e.into()));
            return ExitCode::from(2);
        }
    };
    match format {
        Format::Table => print!("{}", table(&story)),
        Format::Json => match serde_json::to_string_pretty(&story) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("flywheel: {e}");
                return ExitCode::from(2);
            }
        },
    }
    ExitCode::from(u8::from(!fine(&story)))
}

async fn dlq(config: &Config, action: DlqAction) -> anyhow::Result<()> {
    use flywheel::ops::dlq::{read_all, redrive, select};
    let kafka = config.kafka.clone();
    let all = tokio::task::spawn_blocking(move || read_all(&kafka)).await??;
    match action {
        DlqAction::List => {
            for p in &all {
                let l = &p.letter;
                let reason: String = l.reason.chars().take(100).collect();
                println!(
                    "{:<10} {:<22} {:<18} {:<28} {}",
                    p.id(),
                    l.stage,
                    l.error_class,
                    l.key,
                    reason
                );
            }
            println!("{} dead letters", all.len());
        }
        DlqAction::Show { id } => {
            let p = select(&all, &[id])?.remove(0);
            let l = &p.letter;
            println!("id:          {}", p.id());
            println!("key:         {}", l.key);
            println!("stage:       {}", l.stage);
            println!("error_class: {}", l.error_class);
            println!("reason:      {}", l.reason);
            println!(
                "occurred_at: {}",
                chrono::DateTime::from_timestamp_micros(l.occurred_at_micros)
                    .map_or("?".into(), |t| t.to_rfc3339())
            );
            println!("attempts:    {}", l.attempts);
            if let Some(t) = &l.original_topic {
                println!(
                    "original:    {t} partition {} offset {}",
                    l.original_partition.map_or("?".into(), |v| v.to_string()),
                    l.original_offset.map_or("?".into(), |v| v.to_string())
                );
            }
            if let Some(pos) = &l.source_position {
                println!("source at:   {pos}");
            }
            if let Some(c) = &l.context {
                println!("context:     {c}");
            }
            println!(
                "record:      {}",
                l.payload
                    .as_ref()
                    .map_or("none".into(), |b| format!("{} bytes (redrivable)", b.len()))
            );
        }
        DlqAction::Redrive { ids } => {
            let chosen = select(&all, &ids)?;
            redrive(&config.kafka, &chosen).await?;
            for p in &chosen {
                println!(
                    "redriven {} → {}",
                    p.id(),
                    p.letter.original_topic.as_deref().unwrap_or("?")
                );
            }
        }
    }
    Ok(())
}

async fn replay(config: &Config, args: ReplayArgs) -> anyhow::Result<()> {
    use flywheel::ops::replay::{Target, parse_duration};
    let target = if args.to_earliest {
        Target::Earliest
    } else if let Some(n) = args.to_offset {
        Target::Offset(n)
    } else if let Some(t) = &args.to_time {
        let at = chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|e| anyhow::anyhow!("--to-time {t:?} is not an RFC 3339 time: {e}"))?;
        Target::TimeMillis(at.timestamp_millis())
    } else if let Some(d) = &args.by_duration {
        let ago = parse_duration(d)
            .ok_or_else(|| anyhow::anyhow!("--by-duration {d:?}: use e.g. 90s, 30m, 1h, 2d"))?;
        Target::TimeMillis(chrono::Utc::now().timestamp_millis() - ago.as_millis() as i64)
    } else {
        anyhow::bail!("say where to: --to-earliest, --to-offset, --to-time or --by-duration");
    };
    flywheel::ops::replay::ensure_no_workers(config, &args.group).await?;
    let kafka = config.kafka.clone();
    let (group, topic, dry_run) = (args.group.clone(), args.topic.clone(), args.dry_run);
    let moves = tokio::task::spawn_blocking(move || {
        flywheel::ops::replay::replay(&kafka, &group, &topic, target, dry_run)
    })
    .await??;
    println!("{:>9} {:>12} {:>12}", "partition", "before", "after");
    for m in &moves {
        println!(
            "{:>9} {:>12} {:>12}",
            m.partition,
            m.before.map_or("-".into(), |b| b.to_string()),
            m.after
        );
    }
    if args.dry_run {
        println!("dry run: nothing committed");
    } else {
        println!(
            "committed: group {} re-reads {} from these offsets when it starts",
            args.group, args.topic
        );
    }
    Ok(())
}

async fn print_lag(config: &Config) -> anyhow::Result<()> {
    let c = config.clone();
    let lags = tokio::task::spawn_blocking(move || flywheel::ops::lag::consumer_lag(&c))
        .await?
        .map_err(|e| {
            anyhow::anyhow!(
                "reading consumer offsets from {}: {e}",
                config.kafka.bootstrap
            )
        })?;
    // Group names grow with the shop's name: the columns follow.
    let (gw, tw) = lags.iter().fold((36, 32), |(g, t), l| {
        (g.max(l.group.len()), t.max(l.topic.len()))
    });
    println!(
        "{:<gw$} {:<tw$} {:>9} {:>12} {:>12} {:>9}",
        "group", "topic", "partition", "committed", "high", "lag"
    );
    for l in &lags {
        println!(
            "{:<gw$} {:<tw$} {:>9} {:>12} {:>12} {:>9}",
            l.group,
            l.topic,
            l.partition,
            l.committed.map_or("-".into(), |c| c.to_string()),
            l.high_watermark,
            l.lag
        );
    }
    println!(
        "total consumer lag: {} records",
        lags.iter().map(|l| l.lag).sum::<i64>()
    );
    match flywheel::ops::lag::slot_lag(config).await {
        Ok(Some((active, bytes))) => println!(
            "slot {}: {}, {bytes} bytes of WAL not yet confirmed",
            config.erp.slot,
            if active { "active" } else { "inactive" }
        ),
        Ok(None) => println!("slot {}: does not exist", config.erp.slot),
        Err(e) => println!("slot {}: cannot read ({e})", config.erp.slot),
    }
    Ok(())
}

async fn run_roles(
    config: &Config,
    roles: &[roles::Role],
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started = roles::start(config, roles, &shutdown).await?;
    if let Some(addr) = started.gateway {
        eprintln!("gateway listening on http://{addr}");
    }
    if let Some(addr) = started.metrics {
        eprintln!("metrics on http://{addr}/metrics");
    }
    let bound = std::time::Duration::from_secs(config.lifecycle.shutdown_timeout_secs);
    let stopping = shutdown.clone();
    let wait = started.wait(&shutdown);
    tokio::pin!(wait);
    tokio::select! {
        r = &mut wait => return r,
        _ = stopping.cancelled() => {}
    }
    // Stopping: the roles finish in-flight work, commit and confirm, within the bound.
    match tokio::time::timeout(bound, wait).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!(
            "the roles did not stop within lifecycle.shutdown_timeout_secs = {}s; exiting without them (work not committed is replayed at the next start)",
            bound.as_secs()
        ),
    }
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
