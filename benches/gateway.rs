//! Webhook gateway benchmark: sustained webhooks/s and time to a durable 200,
//! against a bare axum handler that does no work, in the same run.
//!
//! `cargo bench --bench gateway` (env: BENCH_REQUESTS=4000, BENCH_CONCURRENCY=16,
//! BENCH_ROUNDS=3, BENCH_BODY=real|small; any `BENCH_RDKAFKA_<property>`, dots as underscores, e.g.
//! `BENCH_RDKAFKA_linger_ms=1`, is passed to the gateway's producer).
//! Starts its own tansu broker. Every request is a distinct, signed Shopify
//! `orders/create` (so none is deduplicated); the gateway answers 200 only after
//! Kafka acknowledged the raw record and the canonical event. The bare handler
//! and the gateway take turns, `BENCH_ROUNDS` times, and each reports its
//! median round: on a shared 2-core machine one round of either can be a
//! third slower than the next.
//!
//! Each round also reports the CPU time per request of the load generator,
//! the server under test (its own runtime's threads), the gateway's
//! librdkafka threads and the broker process: the 2 cores are shared by all
//! four, so the server side's cost per request is the figure that carries to
//! a deployment where the broker and the shops are elsewhere.

mod common;

use common::{cpu, env_or};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use flywheel::config::{Config, Platform, Secret, ShopConfig};
use flywheel::local_infra::LocalBroker;
use flywheel::shop::signature::sign;
use tokio_util::sync::CancellationToken;

/// The bodies the load generator sends: distinct orders (their top-level
/// `id` differs), signed one by one.
enum Bodies {
    /// A real Shopify `orders/create` body (17 KB, four lines) of the shared
    /// webhook samples, split where its order id goes.
    Real {
        before_id: Vec<u8>,
        after_id: Vec<u8>,
    },
    /// A minimal order of the fields the gateway maps (under 400 bytes).
    Small,
}

impl Bodies {
    fn from_env() -> Bodies {
        if std::env::var("BENCH_BODY").is_ok_and(|b| b == "small") {
            return Bodies::Small;
        }
        let dir = std::env::var_os("FLYWHEEL_WEBHOOK_SAMPLES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/webhook-samples")
            });
        let path = dir.join("shopify/orders__create__1.json");
        let text = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (set FLYWHEEL_WEBHOOK_SAMPLES, or BENCH_BODY=small)",
                path.display()
            )
        });
        let mut order: serde_json::Value = serde_json::from_slice(&text).expect("sample JSON");
        const MARK: u64 = 918_273_645_546_372_819;
        order["id"] = MARK.into();
        let compact = serde_json::to_string(&order).expect("serialize");
        let (before, after) = compact
            .split_once(&MARK.to_string())
            .expect("the mark appears once");
        Bodies::Real {
            before_id: before.as_bytes().to_vec(),
            after_id: after.as_bytes().to_vec(),
        }
    }

    fn body(&self, i: usize) -> Vec<u8> {
        match self {
            Bodies::Real {
                before_id,
                after_id,
            } => {
                let id = (5_000_000_000_000 + i).to_string();
                [before_id.as_slice(), id.as_bytes(), after_id.as_slice()].concat()
            }
            Bodies::Small => serde_json::to_vec(&serde_json::json!({
                "id": 1_000_000 + i, "name": format!("#{i}"), "email": "bench@example.com",
                "updated_at": "2026-11-23T10:00:00Z", "currency": "EUR", "total_price": "20.00",
                "financial_status": "paid", "fulfillment_status": null,
                "customer": {"id": 7, "email": "bench@example.com", "first_name": "B", "last_name": "Ench"},
                "line_items": [{"id": i, "sku": "SKU-000001", "quantity": 2, "price": "10.00", "title": "T"}]
            }))
            .expect("serialize"),
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Bodies::Real { .. } => "real 17 KB Shopify orders/create bodies",
            Bodies::Small => "small (under 400 B) orders/create bodies",
        }
    }
}

struct Run {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    non_200: usize,
    cpu: CpuPerRequest,
}

/// CPU time per request, by who spent it.
#[derive(Clone, Copy, Default)]
struct CpuPerRequest {
    /// The HTTP clients, signing and building the bodies.
    load: Duration,
    /// The server under test: HTTP and, for the gateway, its own work.
    server: Duration,
    /// The gateway's Kafka client threads.
    librdkafka: Duration,
    broker: Duration,
}

impl CpuPerRequest {
    /// What the server side costs wherever the broker and the clients run.
    fn server_side(&self) -> Duration {
        self.server + self.librdkafka
    }
}

/// Thread names: the servers under test run on the `SERVER_THREADS` runtime,
/// the load generator on another, librdkafka names its own threads `rdk:…`.
const SERVER_THREADS: &str = "bench-server";

struct CpuSample {
    threads: HashMap<u32, (String, Duration)>,
    broker: Duration,
}

fn cpu_sample(broker_pid: u32) -> CpuSample {
    CpuSample {
        threads: cpu::threads(std::process::id()),
        broker: cpu::process(broker_pid),
    }
}

fn cpu_per_request(before: &CpuSample, after: &CpuSample, requests: usize) -> CpuPerRequest {
    let spent = cpu::by_class(&before.threads, &after.threads, |name| {
        if name.starts_with(SERVER_THREADS) {
            "server"
        } else if name.starts_with("rdk:") {
            "librdkafka"
        } else {
            "load"
        }
    });
    let per = |d: Duration| d / requests.max(1) as u32;
    let class = |c: &str| per(spent.get(c).copied().unwrap_or_default());
    CpuPerRequest {
        load: class("load"),
        server: class("server"),
        librdkafka: class("librdkafka"),
        broker: per(after.broker.saturating_sub(before.broker)),
    }
}

/// `requests` webhooks numbered from `first`: ids never repeat across calls,
/// so the gateway deduplicates none of them.
async fn drive(
    url: String,
    bodies: &Arc<Bodies>,
    first: usize,
    requests: usize,
    concurrency: usize,
    broker_pid: u32,
) -> Run {
    let client = reqwest::Client::new();
    let cpu_before = cpu_sample(broker_pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (client, url, bodies) = (client.clone(), url.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut non_200 = 0;
            let mut i = worker;
            while i < requests {
                let b = bodies.body(first + i);
                let sig = sign("bench-secret", &b);
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header("X-Shopify-Topic", "orders/create")
                    .header("X-Shopify-Hmac-Sha256", sig)
                    .header("X-Shopify-Webhook-Id", format!("bench-{}", first + i))
                    .header("X-Shopify-Triggered-At", "2026-11-23T10:00:00Z")
                    .body(b)
                    .send()
                    .await;
                latencies.push(t.elapsed());
                if !matches!(r, Ok(ref r) if r.status() == 200) {
                    non_200 += 1;
                }
                i += concurrency;
            }
            (latencies, non_200)
        }));
    }
    let mut all = Vec::new();
    let mut non_200 = 0;
    for t in tasks {
        let (l, n) = t.await.expect("worker");
        all.extend(l);
        non_200 += n;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_per_request(&cpu_before, &cpu_sample(broker_pid), all.len());
    all.sort();
    let q = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Run {
        per_second: all.len() as f64 / elapsed,
        p50: q(0.5),
        p99: q(0.99),
        non_200,
        cpu,
    }
}

/// The round with the median throughput (its latencies with it).
fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
    let middle = runs.len() / 2;
    runs.swap_remove(middle)
}

fn main() {
    // The servers under test get their own runtime, as they would in their
    // own process: sharing one with 256 client tasks delayed the gateway's
    // wake-ups from librdkafka's threads behind the clients' work (0.45x the
    // bare handler's throughput with small bodies, against 0.62x apart). It
    // also lets the CPU time of the server and of the clients be told apart.
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(SERVER_THREADS)
        .enable_all()
        .build()
        .expect("server runtime");
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-load")
        .enable_all()
        .build()
        .expect("load runtime");
    load.block_on(run(server.handle().clone()));
}

async fn run(server: tokio::runtime::Handle) {
    let requests: usize = env_or("BENCH_REQUESTS", 4000);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 16);
    let rounds: usize = env_or("BENCH_ROUNDS", 3).max(1);
    let bodies = Arc::new(Bodies::from_env());
    let broker = LocalBroker::start().await.expect("tansu");
    let broker_pid = broker.pid().expect("the broker runs");
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    broker.configure(&mut config.kafka);
    for (name, value) in std::env::vars() {
        if let Some(property) = name.strip_prefix("BENCH_RDKAFKA_") {
            config
                .kafka
                .librdkafka
                .insert(property.replace('_', "."), value);
        }
    }
    config.gateway.listen = "127.0.0.1:0".into();
    config.gateway.dedupe_path = dir.path().join("seen.log");
    config.shops = vec![ShopConfig {
        name: "bench".into(),
        platform: Platform::Shopify,
        webhook_secrets: vec![Secret("bench-secret".into())],
        ..ShopConfig::local_default()
    }];
    let token = CancellationToken::new();
    let gw = {
        let token = token.clone();
        server
            .spawn(
                async move { flywheel::shop::gateway::start(&config, Router::new(), token).await },
            )
            .await
            .expect("gateway task")
            .expect("gateway")
    };
    let ready = format!("http://{}/readyz", gw.addr);
    while reqwest::get(&ready)
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The baseline: the same HTTP stack reading the body and answering 200.
    let bare_addr = server
        .spawn(async move {
            let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = bare.local_addr().unwrap();
            tokio::spawn(async move {
                axum::serve(
                    bare,
                    Router::new().route(
                        "/webhooks/shopify/bench",
                        post(|_body: axum::body::Bytes| async { "ok" }),
                    ),
                )
                .await
            });
            addr
        })
        .await
        .expect("bare server");

    // Warm both up, then let them take turns; each keeps its median round.
    let bare_url = format!("http://{bare_addr}/webhooks/shopify/bench");
    let gateway_url = format!("http://{}/webhooks/shopify/bench", gw.addr);
    drive(bare_url.clone(), &bodies, 0, 200, concurrency, broker_pid).await;
    let (mut bare_runs, mut gateway_runs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let first = round * requests;
        let round_at = |url: &str| {
            drive(
                url.to_owned(),
                &bodies,
                first,
                requests,
                concurrency,
                broker_pid,
            )
        };
        bare_runs.push(round_at(&bare_url).await);
        gateway_runs.push(round_at(&gateway_url).await);
        let (b, g) = (&bare_runs[round], &gateway_runs[round]);
        println!(
            "  round {}: bare {:.0} req/s, gateway {:.0} req/s ({:.2}x); CPU per request: bare {}; gateway {}",
            round + 1,
            b.per_second,
            g.per_second,
            g.per_second / b.per_second,
            describe_cpu(&b.cpu),
            describe_cpu(&g.cpu),
        );
    }
    let base = median(bare_runs);
    let ours = median(gateway_runs);

    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    println!(
        "{requests} signed orders/create webhooks ({}), {concurrency} concurrent clients on their own threads, one tansu broker; median of {rounds} rounds",
        bodies.describe()
    );
    println!(
        "  bare axum handler : {:>7.0} req/s  p50 {:>9}  p99 {:>9}",
        base.per_second,
        ms(base.p50),
        ms(base.p99)
    );
    println!(
        "  flywheel gateway  : {:>7.0} req/s  p50 {:>9}  p99 {:>9}  (non-200: {})",
        ours.per_second,
        ms(ours.p50),
        ms(ours.p99),
        ours.non_200
    );
    println!(
        "  ratio gateway/bare: throughput {:.2}x, p50 {:.1}x, p99 {:.1}x",
        ours.per_second / base.per_second,
        ours.p50.as_secs_f64() / base.p50.as_secs_f64(),
        ours.p99.as_secs_f64() / base.p99.as_secs_f64()
    );
    println!(
        "  CPU per request (median rounds): bare {}; gateway {}",
        describe_cpu(&base.cpu),
        describe_cpu(&ours.cpu)
    );
    println!(
        "  server side only (the broker and the clients elsewhere): bare {:.1} us, gateway {:.1} us: {:.2}x the bare handler's requests per core",
        micros(base.cpu.server_side()),
        micros(ours.cpu.server_side()),
        base.cpu.server_side().as_secs_f64() / ours.cpu.server_side().as_secs_f64()
    );
    assert_eq!(base.non_200, 0);
    assert_eq!(ours.non_200, 0, "every webhook must be accepted");
    token.cancel();
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn describe_cpu(c: &CpuPerRequest) -> String {
    format!(
        "load generator {:.1} us, server {:.1} us, librdkafka {:.1} us, broker {:.1} us",
        micros(c.load),
        micros(c.server),
        micros(c.librdkafka),
        micros(c.broker)
    )
}
