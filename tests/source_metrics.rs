//! `/metrics` of the source. A binary of its own: the Prometheus registry is
//! per process, so no other test's events can make these counters move.

mod common;

use std::time::Duration;

use common::{TestEnv, small, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("response");
    let status = body
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body)
}

/// The value of a sample line `name{labels} value`, if present.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_report_events_transactions_lag_and_commit_age() {
    let env = TestEnv::new("metrics", small()).await;
    let shutdown = CancellationToken::new();
    let readiness = flywheel::ops::http::Readiness::default();
    let addr = flywheel::ops::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        readiness.clone(),
        shutdown.clone(),
    )
    .await
    .expect("serving metrics");
    assert_eq!(get(addr, "/readyz").await.0, 503);
    readiness.set(true);
    assert_eq!(get(addr, "/readyz").await.0, 200);
    assert_eq!(get(addr, "/healthz").await.0, 200);

    let source = env.start_streaming().await;
    for i in 0..5 {
        env.erp
            .execute(
                "UPDATE stock_quant SET quantity = quantity + 1 WHERE product_id = $1",
                &[&(i + 1)],
            )
            .await
            .unwrap();
    }
    wait_for(
        "stock events in /metrics",
        Duration::from_secs(30),
        || async {
            let (_, text) = get(addr, "/metrics").await;
            sample(&text, "flywheel_source_events_total{entity=\"stock\"}").unwrap_or(0.0) >= 15.0
        },
    )
    .await;
    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &text,
            "flywheel_source_snapshot_events_total{entity=\"stock\"}"
        ),
        Some(60.0)
    );
    assert!(sample(&text, "flywheel_source_transactions_total").unwrap() >= 5.0);
    assert!(sample(&text, "flywheel_source_row_changes_total").unwrap() >= 5.0);
    assert!(sample(&text, "flywheel_source_replication_lag_bytes").is_some());
    let age = sample(&text, "flywheel_source_seconds_since_last_commit").unwrap();
    assert!(
        (0.0..60.0).contains(&age),
        "seconds since last commit: {age}"
    );
    assert!(
        sample(
            &text,
            "flywheel_source_commit_to_ack_seconds_count{entity=\"stock\"}"
        )
        .unwrap()
            >= 15.0
    );
    source.stop().await;
    shutdown.cancel();
}
