//! `flywheel run` with every role in one process, configured by a TOML file:
//! its `/metrics` (and the gateway's) pass `promtool check metrics`, ERP changes
//! reach the shop, and SIGTERM under load stops every role cleanly (exit 0)
//! and loses nothing (restarted, the shop converges on the ERP). The
//! deployment's Prometheus files pass `promtool check config/rules`, and every
//! metric the alert rules and the Grafana dashboard query is exported.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{TestEnv, shop_stock, small, wait_for};
use flywheel::local_infra::free_port;

const T: Duration = Duration::from_secs(90);

/// Whether `promtool` can lint here. It is not a prerequisite of `cargo
/// test` (the README promises Rust and PostgreSQL only), so without it the
/// lint is skipped loudly; `.ci/run` installs it and sets
/// FLYWHEEL_REQUIRE_PROMTOOL so CI never skips.
fn promtool_available() -> bool {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("FLYWHEEL_REQUIRE_PROMTOOL").is_none(),
            "promtool is required here (Debian package `prometheus`)"
        );
        eprintln!(
            "promtool not installed: the Prometheus lint is skipped (apt-get install prometheus)"
        );
    }
    found
}

async fn promtool_check(metrics: &str) -> (bool, String) {
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package `prometheus`; .ci/run installs it)");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(metrics.as_bytes()).await.expect("writing");
    }
    let out = child.wait_with_output().await.expect("promtool ran");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_role_in_one_process_syncs_passes_promtool_and_stops_on_sigterm() {
    let env = TestEnv::new("all_roles", small()).await;
    let sim = common::start_shop(20).await;
    let mut config = common::processor_config(&env, &sim, "all_roles-processors");
    let (metrics_port, gateway_port) = (free_port().unwrap(), free_port().unwrap());
    config.metrics.listen = format!("127.0.0.1:{metrics_port}");
    config.gateway.listen = format!("127.0.0.1:{gateway_port}");
    let dir = tempfile::tempdir().unwrap();
    config.gateway.dedupe_path = dir.path().join("seen.log");
    config.shops[0].webhook_secrets = vec![flywheel::config::Secret("s".into())];
    // Often enough that the drift gauges are exported within the test.
    config.reconcile.interval_secs = 3;
    let file = dir.path().join("flywheel.toml");
    std::fs::write(&file, toml::to_string(&config).expect("config as TOML")).unwrap();

    // The child's log goes to a file, shown when the test fails.
    let log_path = dir.path().join("flywheel.log");
    let _show_log = common::ShowLogOnPanic(log_path.clone());
    let start = || {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("the child's log file");
        tokio::process::Command::new(env!("CARGO_BIN_EXE_flywheel"))
            .arg("--config")
            .arg(&file)
            .arg("run")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .expect("spawning flywheel run")
    };
    let mut child = start();

    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    wait_for("every role to be ready", T, || async {
        let ready = |port: u16| async move {
            reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
                .await
                .is_ok_and(|r| r.status() == 200)
        };
        ready(metrics_port).await && ready(gateway_port).await
    })
    .await;
    env.set_stock(3, "WH1", 321).await;
    // A product without a SKU getting stock: a source dead letter.
    env.add_erp_product(900, None).await;
    // A signed webhook through the gateway.
    let body = std::fs::read("tests/fixtures/shopify_orders_create.json").unwrap();
    let url = format!("http://127.0.0.1:{gateway_port}/webhooks/shopify/demo");
    let status = common::post_shopify_order(&url, "s", "all-roles-1", body).await;
    assert_eq!(status, 200);
    let want = env.shop_should_show("SKU-000003", "WH1", 0).await;
    wait_for("the ERP change in the shop", T, || async {
        shop_stock(&sim)
            .await
            .get(&("SKU-000003".to_string(), "WH1".to_string()))
            == Some(&want)
    })
    .await;
    let wanted = [
        "flywheel_source_events_total",
        "flywheel_processor_events_total",
        "flywheel_processor_freshness_seconds_bucket",
        "flywheel_consumer_lag_records",
        "flywheel_shop_api_cost_points_total",
        "flywheel_source_dead_letters_total",
        "flywheel_role_restarts_total",
        "flywheel_source_replication_lag_seconds",
        "flywheel_drift_keys",
        "flywheel_reconcile_last_success_timestamp_seconds",
    ];
    let mut missing = Vec::new();
    for _ in 0..(T.as_millis() / 200) {
        let text = reqwest::get(&metrics_url)
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        missing = wanted.iter().filter(|m| !text.contains(*m)).collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(missing.is_empty(), "metrics never exported: {missing:?}");
    let lint = promtool_available();
    for url in [
        metrics_url.clone(),
        format!("http://127.0.0.1:{gateway_port}/metrics"),
    ]
    .into_iter()
    .filter(|_| lint)
    {
        let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let (ok, report) = promtool_check(&body).await;
        assert!(ok, "promtool check metrics on {url}:\n{report}");
    }

    // The deployment's Prometheus configuration and alert rules are valid, and
    // every metric they and the dashboard query is exported by a role.
    for (what, file) in [
        ("config", "deploy/prometheus/prometheus.yml"),
        ("rules", "deploy/prometheus/rules.yml"),
    ]
    .into_iter()
    .filter(|_| lint)
    {
        let out = tokio::process::Command::new("promtool")
            .args(["check", what, file])
            .output()
            .await
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool check {what} {file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("deploy/grafana/dashboards/flywheel.json").unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut queried: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    queried.push(std::fs::read_to_string("deploy/prometheus/rules.yml").unwrap());
    let mut exported = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    exported.push_str(
        &reqwest::get(format!("http://127.0.0.1:{gateway_port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let names: std::collections::BTreeSet<String> =
        queried.iter().flat_map(|q| metric_names(q)).collect();
    assert!(names.len() >= 8, "found the queried metrics: {names:?}");
    for name in names {
        assert!(
            exported.contains(&format!("\n{name}")) || exported.contains(&format!("\n{name}{{")),
            "{name} is queried by the dashboard or the rules but no role exports it"
        );
    }

    // SIGTERM under load: every role stops within the bound, exit 0; restarted,
    // the shop converges on the ERP (nothing lost).
    let writer = tokio::spawn({
        let dsn = env.dsn.clone();
        async move {
            let erp = common::connect(&dsn).await;
            for round in 0..200 {
                erp.execute(
                    "UPDATE stock_quant q SET quantity = 100 + $1::int + q.product_id
                     FROM stock_warehouse w WHERE w.lot_stock_id = q.location_id AND q.product_id = 1 + $1::int % 20",
                    &[&round],
                )
                .await
                .expect("ERP write");
                tokio::time::sleep(Duration::from_millis(10)).await; // pacing the load
            }
        }
    });
    wait_for("the load to be under way", T, || async {
        shop_stock(&sim)
            .await
            .get(&("SKU-000002".to_string(), "WH1".to_string()))
            .is_some_and(|v| *v > 100)
    })
    .await;
    let pid = child.id().expect("running") as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("flywheel run stopped within 60 s of SIGTERM")
        .expect("status");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    writer.await.expect("the ERP writer");
    let mut child = start();
    let want = env.shop_should_show_all(20, 0).await;
    wait_for("the shop to converge after the restart", T, || async {
        shop_stock(&sim).await == want
    })
    .await;
    let pid = child.id().expect("running") as i32;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("stopped")
        .expect("status");
    assert!(
        status.success(),
        "exit status after the second SIGTERM: {status}"
    );
}

/// `flywheel_…` metric names in a PromQL text.
fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("flywheel_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn processors_are_live_but_not_ready_while_their_state_database_is_away() {
    let env = TestEnv::new("not_ready", small()).await;
    let sim = common::start_shop(2).await;
    let mut config = common::processor_config(&env, &sim, "not_ready-processors");
    let metrics_port = free_port().unwrap();
    config.metrics.listen = format!("127.0.0.1:{metrics_port}");
    // Nothing listens there.
    config.processors.state_dsn = Some(format!(
        "host=127.0.0.1 port={} user=flywheel dbname=flywheel connect_timeout=2",
        free_port().unwrap()
    ));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flywheel.toml");
    std::fs::write(&file, toml::to_string(&config).expect("config as TOML")).unwrap();
    let log_path = dir.path().join("flywheel.log");
    let _show_log = common::ShowLogOnPanic(log_path.clone());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .arg("--config")
        .arg(&file)
        .args(["run", "--roles", "processors"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .expect("spawning flywheel run");

    let get = |path: &'static str| async move {
        reqwest::get(format!("http://127.0.0.1:{metrics_port}{path}")).await
    };
    // The processors fail to start and are retried: the process is alive,
    // says so, and says it is not ready.
    wait_for(
        "processor restarts while the state database is away",
        T,
        || async {
            let Ok(r) = get("/metrics").await else {
                return false;
            };
            let text = r.text().await.unwrap_or_default();
            text.lines().any(|l| {
                l.starts_with("flywheel_role_restarts_total{role=\"stock.demo\"}")
                    && !l.ends_with(" 0")
            })
        },
    )
    .await;
    assert_eq!(get("/healthz").await.expect("healthz").status(), 200);
    assert_eq!(get("/readyz").await.expect("readyz").status(), 503);

    let pid = child.id().expect("running") as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("stopped within 60 s of SIGTERM")
        .expect("status");
    assert!(status.success(), "exit status after SIGTERM: {status}");
}
