//! `flywheel demo`: the main job on a local default setup.
//!
//! Starts what is not configured (PostgreSQL with the Odoo-shaped demo ERP, or
//! with `--erp erpnext` MariaDB with the ERPNext-shaped one, where Flywheel's
//! state lives too; the development broker; two simulated shops: `demo`,
//! throttled like Shopify, and `outlet`, a WooCommerce shop stocked from the
//! first warehouse), runs every role against them
//! (source, gateway, processors), generates ERP activity (stock moves, price
//! changes, shipments) and shop orders, and prints a status line every second.
//! Ctrl-C stops the activity, lets the roles finish what they hold, and stops
//! the servers it started.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use flywheel::config::{Config, ErpConfig, ErpKind, KafkaConfig, Platform, Secret, ShopConfig};
use flywheel::erp::demo_erp::{self, DemoSize, ErpActivity};
use flywheel::erp::demo_erpnext::{self, ErpNextActivity};
use flywheel::erp::source_metrics::SourceMetrics;
use flywheel::local_infra::{LocalBroker, LocalMariadb, LocalPostgres, free_port};
use flywheel::ops::quantiles::BucketCounts;
use flywheel::sync::apply_loop::freshness_histogram;
use mysql_async::prelude::Queryable;
use prometheus::proto::MetricFamily;
use shopsim::woo::{WooConfig, WooSim};
use shopsim::{ShopSim, SimConfig, Topic};

use crate::roles;

/// Which demo ERP runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoErp {
    /// Odoo-shaped, on PostgreSQL.
    Odoo,
    /// ERPNext-shaped, on MariaDB.
    Erpnext,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The demo ERP.
    #[arg(long, value_enum, default_value_t = DemoErp::Odoo)]
    erp: DemoErp,
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
    /// Run the Shopify shop alone, without the WooCommerce `outlet`.
    #[arg(long)]
    shopify_only: bool,
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
    let mut local_mariadb = None;
    let mut local_broker = None;
    let mut local_shop = None;
    let mut local_woo = None;
    let size = DemoSize {
        skus: args.skus,
        warehouses: args.warehouses,
        ..DemoSize::default()
    };
    let erp_configured = config.erp.dsn != ErpConfig::default().dsn;
    match args.erp {
        DemoErp::Odoo if !erp_configured => {
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
        DemoErp::Erpnext if !erp_configured => {
            eprintln!(
                "starting a local MariaDB with the ERPNext demo ERP ({} SKUs × {} warehouses)…",
                args.skus, args.warehouses
            );
            let mariadb = LocalMariadb::start().await?;
            mariadb.create_database("erpnext").await?;
            let mut conn = mariadb.connect("erpnext").await?;
            demo_erpnext::create_and_seed(&mut conn, size).await?;
            config.erp.dsn = mariadb.dsn("erpnext");
            local_mariadb = Some(mariadb);
        }
        DemoErp::Odoo | DemoErp::Erpnext => {}
    }
    if args.erp == DemoErp::Erpnext {
        for shop in &mut config.shops {
            // ERPNext names warehouses after the company; the shop after the code.
            if shop.warehouse_locations.is_empty() {
                shop.warehouse_locations = (1..=args.warehouses)
                    .map(|i| (demo_erpnext::warehouse_name(i), demo_erp::warehouse_code(i)))
                    .collect();
            }
            if shop.price_list == ShopConfig::local_default().price_list {
                shop.price_list = demo_erpnext::STANDARD_SELLING.into();
            }
        }
    }
    if config.kafka.bootstrap == KafkaConfig::default().bootstrap {
        eprintln!("starting the development broker (tansu, built in)…");
        let broker = LocalBroker::start().await?;
        broker.configure(&mut config.kafka);
        local_broker = Some(broker);
    }
    let workdir = tempfile::tempdir().context("a temporary directory for the gateway")?;
    // No shop configured: the simulator plays the default one.
    let local_default = ShopConfig::local_default();
    if config.shops.len() == 1 && config.shops[0].admin_url == local_default.admin_url {
        // The gateway's port is chosen first so the shop can be told where
        // to send its webhooks before either runs.
        let gateway_port = free_port()?;
        config.gateway.listen = format!("127.0.0.1:{gateway_port}");
        config.gateway.dedupe_path = workdir.path().join("gateway-seen.log");
        let sim_config = SimConfig {
            seed: shop_seed_from_erp(&config, args.warehouses).await?,
            restore_rate: args.shop_restore_rate,
            subscriptions: [
                Topic::OrdersCreate,
                Topic::OrdersPaid,
                Topic::OrdersUpdated,
                Topic::OrdersCancelled,
                Topic::OrdersFulfilled,
                Topic::InventoryLevelsUpdate,
                Topic::ProductsCreate,
                Topic::ProductsUpdate,
                Topic::ProductsDelete,
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
        let seed = sim_config.seed.clone();
        let sim = ShopSim::start(sim_config, "127.0.0.1:0".parse()?).await?;
        if !args.shopify_only {
            let (woo, outlet) = start_outlet(&config, args.erp, seed, gateway_port).await?;
            config.shops.push(outlet);
            local_woo = Some(woo);
        }
        let shop = &mut config.shops[0];
        shop.name = "demo".into();
        shop.platform = Platform::Shopify;
        shop.webhook_secrets = vec![Secret(sim.config.webhook_secret.clone())];
        shop.admin_url = sim.graphql_url();
        shop.access_token = Secret(sim.config.access_token.clone());
        local_shop = Some(sim);
    }

    let roles_shutdown = shutdown.child_token();
    let started = roles::start(&config, &roles::ALL, &roles_shutdown).await?;
    eprintln!(
        "ERP: {}\nKafka: {}\nshops: {}\ngateway: {}\nmetrics: {}\n",
        config.erp.dsn,
        config.kafka.bootstrap,
        config
            .shops
            .iter()
            .map(|s| format!("{} ({}, {})", s.name, s.platform.as_str(), s.admin_url))
            .collect::<Vec<_>>()
            .join(", "),
        started
            .gateway
            .map_or("-".into(), |a| format!("http://{a}/webhooks/…")),
        started
            .metrics
            .map_or("off".into(), |a| format!("http://{a}/metrics"))
    );

    let activity_stop = CancellationToken::new();
    let activity = tokio::spawn(generate_activity(
        ErpHandle::connect(&config, args.erp).await?,
        size,
        args.rate,
        activity_stop.clone(),
    ));
    if let Some(sim) = &local_shop {
        sim.start_order_generator(args.orders_per_second);
    }
    let woo_orders = local_woo.clone().map(|woo| {
        tokio::spawn(generate_woo_orders(
            woo,
            args.orders_per_second,
            activity_stop.clone(),
        ))
    });
    let shop_names: Vec<String> = config.shops.iter().map(|s| s.name.clone()).collect();

    let mut erp = ErpHandle::connect(&config, args.erp)
        .await
        .context("connecting to the ERP for the status line")?;
    let started_at = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = Snapshot::take(&shop_names);
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
                let now = Snapshot::take(&shop_names);
                let mut sales = match &local_shop {
                    Some(sim) => {
                        let (sold, refused) = {
                            let st = sim.shop().state.lock();
                            (st.orders.len(), st.refused_orders)
                        };
                        let oversold = erp.oversold_units().await.unwrap_or(-1);
                        format!(" | shop orders {sold} (refused short {refused}), oversold {oversold} units")
                    }
                    None => String::new(),
                };
                if let Some(woo) = &local_woo {
                    sales.push_str(&format!(", outlet orders {}", woo.state().orders.len()));
                }
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
    if let Some(orders) = woo_orders {
        let _ = orders.await;
    }
    roles_shutdown.cancel();
    let stopped =
        tokio::time::timeout(Duration::from_secs(30), started.wait(&roles_shutdown)).await;
    let outcome = match stopped {
        Err(_) => outcome.and(Err(anyhow::anyhow!("the roles did not stop within 30 s"))),
        Ok(r) => outcome.and(r),
    };
    drop(local_shop);
    drop(local_woo);
    drop(local_broker);
    drop(local_pg);
    drop(local_mariadb);
    eprintln!("demo stopped; local servers removed");
    outcome
}

/// A shop that already sells the ERP's products at their list prices, as a
/// merchant's shop does when Flywheel is introduced: the first sync then
/// finds most prices in place and spends its budget on what differs.
async fn shop_seed_from_erp(
    config: &Config,
    warehouses: u32,
) -> anyhow::Result<shopsim::state::Seed> {
    let products = match config.erp.kind() {
        ErpKind::Postgres => {
            let (client, conn) =
                tokio_postgres::connect(&config.erp.dsn, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            client
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
                .collect()
        }
        ErpKind::Mysql => {
            let mut conn = mysql_async::Conn::new(config.erp.mysql_opts()?).await?;
            let rows: Vec<(String, String)> = conn
                .exec(
                    "SELECT item_code, CAST(ROUND(price_list_rate, 2) AS CHAR) FROM `tabItem Price`
                     WHERE price_list = ? AND customer IS NULL ORDER BY item_code",
                    (config.shops.first().map_or("", |s| s.price_list.as_str()),),
                )
                .await
                .context("reading the demo ERP's catalogue")?;
            rows
        }
    };
    Ok(shopsim::state::Seed {
        products,
        ..shopsim::catalog::demo_seed(0, warehouses)
    })
}

/// A connection to the demo ERP, for its activity and the status line.
enum ErpHandle {
    Odoo(tokio_postgres::Client, ErpActivity),
    Erpnext(mysql_async::Conn, ErpNextActivity),
}

impl ErpHandle {
    async fn connect(config: &Config, erp: DemoErp) -> anyhow::Result<ErpHandle> {
        let size = DemoSize::default();
        Ok(match erp {
            DemoErp::Odoo => {
                let (client, conn) =
                    tokio_postgres::connect(&config.erp.dsn, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                ErpHandle::Odoo(client, ErpActivity::new(size, 7))
            }
            DemoErp::Erpnext => ErpHandle::Erpnext(
                mysql_async::Conn::new(config.erp.mysql_opts()?).await?,
                ErpNextActivity::new(size, 7),
            ),
        })
    }

    fn with_size(self, size: DemoSize) -> ErpHandle {
        match self {
            ErpHandle::Odoo(c, _) => ErpHandle::Odoo(c, ErpActivity::new(size, 7)),
            ErpHandle::Erpnext(c, _) => ErpHandle::Erpnext(c, ErpNextActivity::new(size, 7)),
        }
    }

    async fn oversold_units(&mut self) -> anyhow::Result<i64> {
        Ok(match self {
            ErpHandle::Odoo(c, _) => demo_erp::oversold_units(c).await?,
            ErpHandle::Erpnext(c, _) => demo_erpnext::oversold_units(c).await?,
        })
    }

    /// One ERP transaction: mostly stock moves; every 10th a price change,
    /// every 5th a shipment.
    async fn act(&mut self, n: u64) -> anyhow::Result<()> {
        match self {
            ErpHandle::Odoo(c, a) => {
                if n.is_multiple_of(10) {
                    a.price_change(c).await?;
                } else if n.is_multiple_of(5) {
                    a.ship_shop_order(c).await?;
                } else {
                    a.stock_move(c).await?;
                }
            }
            ErpHandle::Erpnext(c, a) => {
                if n.is_multiple_of(10) {
                    a.price_change(c).await?;
                } else if n.is_multiple_of(5) {
                    a.ship_shop_order(c).await?;
                } else {
                    a.stock_move(c).await?;
                }
            }
        }
        Ok(())
    }
}

async fn generate_activity(erp: ErpHandle, size: DemoSize, rate: u32, stop: CancellationToken) {
    let mut erp = erp.with_size(size);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                n += 1;
                if let Err(e) = erp.act(n).await {
                    eprintln!("ERP activity failed: {e}");
                }
            }
        }
    }
}

/// The WooCommerce simulator as the shop `outlet`: the demo shop's catalogue,
/// the ERP's first warehouse, its order webhooks to the gateway.
async fn start_outlet(
    config: &Config,
    erp: DemoErp,
    seed: shopsim::state::Seed,
    gateway_port: u16,
) -> anyhow::Result<(std::sync::Arc<WooSim>, ShopConfig)> {
    eprintln!("starting the WooCommerce simulator (shop `outlet`)…");
    let woo = WooSim::start(
        WooConfig {
            seed,
            order_webhooks: vec![format!(
                "http://127.0.0.1:{gateway_port}/webhooks/woocommerce/outlet"
            )],
            ..WooConfig::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let first_warehouse = match erp {
        DemoErp::Odoo => demo_erp::warehouse_code(1),
        DemoErp::Erpnext => demo_erpnext::warehouse_name(1),
    };
    let outlet = ShopConfig {
        name: "outlet".into(),
        platform: Platform::Woocommerce,
        webhook_secrets: vec![Secret(woo.config.webhook_secret.clone())],
        admin_url: format!("{}/wp-json/wc/v3", woo.base_url()),
        consumer_key: Secret(woo.config.consumer_key.clone()),
        consumer_secret: Secret(woo.config.consumer_secret.clone()),
        price_list: config.shops[0].price_list.clone(),
        warehouse_locations: [(first_warehouse, String::new())].into_iter().collect(),
        order_poll_secs: 30,
        ..ShopConfig::local_default()
    };
    Ok((std::sync::Arc::new(woo), outlet))
}

/// Places one-unit orders of random SKUs in the WooCommerce simulator.
async fn generate_woo_orders(
    woo: std::sync::Arc<WooSim>,
    per_second: f64,
    stop: CancellationToken,
) {
    if per_second <= 0.0 {
        return;
    }
    let skus: Vec<String> = woo.stock().into_keys().collect();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if let Some(sku) = fastrand::choice(&skus) {
                    // Refused (None) when the count is short, as the shop would.
                    let _ = woo.place_order(sku, 1).await;
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
    /// ERP → shop freshness of each shop, by name.
    per_shop: Vec<(String, BucketCounts)>,
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
    fn take(shops: &[String]) -> Snapshot {
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
            to_shop: BucketCounts::take_where(freshness, |l| l.first() != Some(&"order_in")),
            to_erp: BucketCounts::take_where(freshness, |l| l.first() == Some(&"order_in")),
            per_shop: shops
                .iter()
                .map(|shop| {
                    let counts = BucketCounts::take_where(freshness, |l| {
                        l.first() != Some(&"order_in") && l.get(1) == Some(&shop.as_str())
                    });
                    (shop.clone(), counts)
                })
                .collect(),
        }
    }
}

fn print_status(before: &Snapshot, now: &Snapshot, sales: &str) {
    let m = SourceMetrics::get();
    let secs = now.at.duration_since(before.at).as_secs_f64().max(0.001);
    let to_shop = now.to_shop.since(&before.to_shop);
    let to_erp = now.to_erp.since(&before.to_erp);
    let per_shop: String = if now.per_shop.len() > 1 {
        now.per_shop
            .iter()
            .zip(&before.per_shop)
            .map(|((shop, n), (_, b))| format!(" {shop} {}", fmt_secs(n.since(b).quantile(0.99))))
            .collect::<Vec<_>>()
            .join(",")
    } else {
        String::new()
    };
    let per_shop = if per_shop.is_empty() {
        per_shop
    } else {
        format!(" (p99 by shop:{per_shop})")
    };
    println!(
        "captured {:>4.0} tx/s | applied {:>5.0}/s (total {:>6}) | slot lag {:>7} B | fresh ERP→shop p50 {:>6} p99 {:>6}{per_shop}, shop→ERP p50 {:>6} p99 {:>6} | throttled {:>4.1} s/s | dead letters {}{sales}",
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
