//! Order latency benchmark: a shop's `orders/create` webhook → the order
//! committed in the ERP, through the gateway, Kafka and the order processor.
//!
//! `cargo bench --bench order_latency` (env: BENCH_RATE orders/s, default 20;
//! BENCH_SECONDS, default 15).
//! Starts its own PostgreSQL (the demo ERP) and tansu. Orders are offered open
//! loop: each signed webhook leaves at its scheduled time whether or not the
//! ones before it are done. An order counts as in the ERP when a query on the
//! ERP's `sale_order` (repeated every 2 ms) first sees it, so a figure is at
//! most a poll late. Reported: webhook → 200 from the gateway (durable in
//! Kafka) and webhook → committed in the ERP, p50/p99.

mod common;

use common::{connect, env_or};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use flywheel::config::{Config, Platform, Secret, ShopConfig};
use flywheel::erp::demo_erp::{self, DemoSize};
use flywheel::local_infra::{LocalBroker, LocalPostgres};
use flywheel::shop::signature::sign;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "bench-secret";

fn body(i: usize, skus: usize) -> Vec<u8> {
    let sku = |n: usize| format!("SKU-{:06}", n % skus + 1);
    serde_json::to_vec(&serde_json::json!({
        "id": 5_000_000 + i, "name": format!("#B{i}"), "email": format!("buyer{}@example.com", i % 50),
        "created_at": "2026-12-04T10:00:00Z", "updated_at": "2026-12-04T10:00:00Z",
        "currency": "EUR", "total_price": "30.00",
        "financial_status": "paid", "fulfillment_status": null,
        "customer": {"id": i % 50, "email": format!("buyer{}@example.com", i % 50), "first_name": "B", "last_name": "Uyer"},
        "line_items": [
            {"id": 2 * i, "sku": sku(i), "quantity": 1, "price": "10.00", "title": "T"},
            {"id": 2 * i + 1, "sku": sku(i * 7 + 3), "quantity": 2, "price": "10.00", "title": "T"}
        ]
    }))
    .expect("a JSON body")
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let rate: u64 = env_or("BENCH_RATE", 20);
    let seconds: u64 = env_or("BENCH_SECONDS", 15);
    let skus = 2000;
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

    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = Config::default();
    config.erp.dsn = pg.dsn("erp");
    broker.configure(&mut config.kafka);
    config.metrics.listen = String::new();
    config.gateway.listen = "127.0.0.1:0".into();
    config.gateway.dedupe_path = dir.path().join("seen.log");
    config.processors.group_id = "bench-orders".into();
    config.shops = vec![ShopConfig {
        name: "bench".into(),
        platform: Platform::Shopify,
        webhook_secrets: vec![Secret(SECRET.into())],
        ..ShopConfig::local_default()
    }];
    let token = CancellationToken::new();
    let gw = flywheel::shop::gateway::start(&config, Router::new(), token.clone())
        .await
        .expect("gateway");
    let url = format!("http://{}/webhooks/shopify/bench", gw.addr);
    let ready = format!("http://{}/readyz", gw.addr);
    while reqwest::get(&ready)
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let processor = tokio::spawn({
        let (config, token) = (config.clone(), token.clone());
        async move { flywheel::sync::orders_to_erp::run(&config, token).await }
    });

    let client = reqwest::Client::new();
    let post = |i: usize| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let b = body(i, skus as usize);
            client
                .post(&url)
                .header("X-Shopify-Topic", "orders/create")
                .header("X-Shopify-Hmac-Sha256", sign(SECRET, &b))
                .header("X-Shopify-Webhook-Id", format!("bench-order-{i}"))
                .header("X-Shopify-Triggered-At", "2026-12-04T10:00:00Z")
                .body(b)
                .send()
                .await
                .map(|r| r.status())
        }
    };
    // Warm-up: the processor's first order waits for its group to form and
    // its ERP connection; not part of the measurement.
    let warm = 1_000_000;
    assert_eq!(post(warm).await.expect("warm-up webhook"), 200);
    let seen = |ids: Vec<String>| {
        let erp = &erp;
        async move {
            erp.query(
                "SELECT shop_order_id FROM sale_order WHERE channel = 'bench' AND shop_order_id = ANY($1)",
                &[&ids],
            )
            .await
            .expect("ERP orders")
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
        }
    };
    let started = Instant::now();
    while seen(vec![(5_000_000 + warm).to_string()]).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the warm-up order never reached the ERP"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    println!(
        "order latency benchmark: {rate} orders/s for {seconds} s (2 lines each), one gateway, one order processor, one tansu broker, demo ERP on PostgreSQL"
    );
    let total = (rate * seconds) as usize;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let acks: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let start = Instant::now();
    let mut senders = Vec::new();
    for i in 0..total {
        let at = start + Duration::from_micros(i as u64 * 1_000_000 / rate);
        let (sent, acks, post) = (sent.clone(), acks.clone(), post(i));
        senders.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let t = Instant::now();
            sent.lock().insert((5_000_000 + i).to_string(), t);
            let status = post.await.expect("webhook");
            assert_eq!(status, 200, "the gateway refused a webhook");
            acks.lock().push(t.elapsed());
        }));
    }
    let mut committed = Vec::with_capacity(total);
    let deadline = start + Duration::from_secs(seconds + 120);
    while committed.len() < total {
        assert!(Instant::now() < deadline, "orders never reached the ERP");
        let pending: Vec<String> = sent.lock().keys().cloned().collect();
        if !pending.is_empty() {
            let now = Instant::now();
            for id in seen(pending).await {
                if let Some(t) = sent.lock().remove(&id) {
                    committed.push(now - t);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for s in senders {
        s.await.expect("sender");
    }
    let mut acks = acks.lock().clone();
    acks.sort();
    committed.sort();
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!(
        "  webhook → 200 (durable in Kafka)  : p50 {:>8}  p99 {:>8}",
        ms(quantile(&acks, 0.5)),
        ms(quantile(&acks, 0.99))
    );
    println!(
        "  webhook → committed in the ERP    : p50 {:>8}  p99 {:>8}  max {:>8}  ({} orders)",
        ms(quantile(&committed, 0.5)),
        ms(quantile(&committed, 0.99)),
        ms(committed[committed.len() - 1]),
        committed.len()
    );
    token.cancel();
    processor
        .await
        .expect("processor task")
        .expect("the order processor stopped with an error");
}
