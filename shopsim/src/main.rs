//! `shopsim`: run the Shopify-compatible simulator as a server.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use shopsim::{ShopSim, SimConfig, Topic};

#[derive(Parser)]
#[command(
    name = "shopsim",
    version,
    about = "A Shopify-compatible Admin API and webhook sender"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8089", env = "SHOPSIM_LISTEN")]
    listen: SocketAddr,
    /// Demo catalogue size (same SKUs as the demo ERP).
    #[arg(long, default_value_t = 1000)]
    skus: u32,
    /// Locations, named WH1..WHn like the demo ERP's warehouses.
    #[arg(long, default_value_t = 3)]
    locations: u32,
    /// Seed from a JSON file instead of the demo catalogue.
    #[arg(long)]
    seed_file: Option<PathBuf>,
    #[arg(
        long,
        env = "SHOPSIM_ACCESS_TOKEN",
        default_value = "shpat_flywheel_local"
    )]
    access_token: String,
    #[arg(
        long,
        env = "SHOPSIM_WEBHOOK_SECRET",
        default_value = "flywheel-local-secret"
    )]
    webhook_secret: String,
    #[arg(long, default_value = "flywheel-demo.myshopify.com")]
    shop_domain: String,
    /// GraphQL bucket size in cost points.
    #[arg(long, default_value_t = 1000.0)]
    bucket_size: f64,
    /// GraphQL restore rate in points per second.
    #[arg(long, default_value_t = 100.0)]
    restore_rate: f64,
    /// A webhook subscription `topic=url` (repeatable), e.g. orders/create=http://127.0.0.1:8080/webhooks/shopify/demo.
    #[arg(long = "webhook")]
    webhooks: Vec<String>,
    /// Place this many orders per second (0 = none).
    #[arg(long, default_value_t = 0.0)]
    order_rate: f64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let seed = match &args.seed_file {
        Some(p) => match shopsim::catalog::seed_from_file(p) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("shopsim: {e}");
                return std::process::ExitCode::from(2);
            }
        },
        None => shopsim::catalog::demo_seed(args.skus, args.locations),
    };
    let mut subscriptions = Vec::new();
    for w in &args.webhooks {
        let Some((topic, url)) = w.split_once('=') else {
            eprintln!("shopsim: --webhook wants topic=url, got `{w}`");
            return std::process::ExitCode::from(2);
        };
        let Some(topic) = Topic::parse(topic) else {
            eprintln!("shopsim: unsupported webhook topic `{topic}`");
            return std::process::ExitCode::from(2);
        };
        subscriptions.push((topic, url.to_owned()));
    }
    let config = SimConfig {
        shop_domain: args.shop_domain,
        access_token: args.access_token,
        webhook_secret: args.webhook_secret,
        bucket_size: args.bucket_size,
        restore_rate: args.restore_rate,
        seed,
        subscriptions,
        ..SimConfig::default()
    };
    let sim = match ShopSim::start(config, args.listen).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shopsim: cannot listen on {}: {e}", args.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    if args.order_rate > 0.0 {
        sim.start_order_generator(args.order_rate);
    }
    eprintln!(
        "shopsim: GraphQL at {} (X-Shopify-Access-Token required); /_sim/state, /_sim/stats",
        sim.graphql_url()
    );
    let _ = tokio::signal::ctrl_c().await;
    std::process::ExitCode::SUCCESS
}
