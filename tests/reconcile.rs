//! `flywheel reconcile` against real parts (PostgreSQL ERP, source, broker,
//! processors, the shop simulators): drift made by hand in a shop — a stock
//! level, a price, a variant deleted — is reported exactly and nothing else,
//! `--repair` fixes it through the processors, and a second run reports none;
//! the same against a WooCommerce shop.

mod common;

use std::time::Duration;

use common::{TestEnv, erp_list_prices, shop_prices, shop_stock, wait_for};
use flywheel::config::{Config, Platform, Secret, ShopConfig};
use flywheel::erp::demo_erp::DemoSize;
use serde_json::Value;
use shopsim::woo::{WooConfig, WooSim};

const T: Duration = Duration::from_secs(120);
const SKUS: u32 = 12;

fn size(seed: f64) -> DemoSize {
    DemoSize {
        skus: SKUS,
        warehouses: 3,
        orders: 0,
        seed,
    }
}

/// Runs `flywheel reconcile --format json` with `args` on `config`; returns
/// its exit status and reports (its error when it could not compare).
async fn reconcile(config: &Config, args: &[&str]) -> (i32, Vec<Value>) {
    match reconcile_or_error(config, args).await {
        Ok(done) => done,
        Err(e) => panic!("reconcile could not compare: {e}"),
    }
}

async fn reconcile_or_error(config: &Config, args: &[&str]) -> Result<(i32, Vec<Value>), String> {
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("flywheel.toml");
    std::fs::write(&file, toml::to_string(config).expect("config as TOML")).expect("writing");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .arg("--config")
        .arg(&file)
        .args(["reconcile", "--format", "json"])
        .args(args)
        .env("FLYWHEEL_METRICS__LISTEN", "")
        .output()
        .await
        .expect("running flywheel reconcile");
    let code = out.status.code().expect("an exit status");
    if code == 2 {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reports: Vec<Value> = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "reconcile printed no JSON ({e}), exit {code}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Ok((code, reports))
}

/// The stock and price processors of the first shop, in-process.
fn stock_and_price(config: &Config) -> [common::RunningProcessor; 2] {
    [
        common::RunningProcessor::spawn(config, |c, t| async move {
            flywheel::sync::stock_to_shop::run(&c, &c.shops[0].clone(), t).await
        }),
        common::RunningProcessor::spawn(config, |c, t| async move {
            flywheel::sync::price_to_shop::run(&c, &c.shops[0].clone(), t).await
        }),
    ]
}

/// The report of `entity`.
fn report<'a>(reports: &'a [Value], entity: &str) -> &'a Value {
    reports
        .iter()
        .find(|r| r["entity"] == entity)
        .unwrap_or_else(|| panic!("no {entity} report in {reports:?}"))
}

fn keys(report: &Value, list: &str) -> Vec<String> {
    let items = report[list].as_array().expect("a list");
    items
        .iter()
        .map(|d| {
            d.get("key")
                .unwrap_or(d)
                .as_str()
                .expect("a key")
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_in_a_shopify_shop_is_reported_exactly_and_repaired() {
    let env = TestEnv::new("reconcile_shopify", size(0.6)).await;
    let sim = common::start_shop(SKUS).await;
    let source = env.start_streaming().await;
    let config = common::processor_config(&env, &sim, "reconcile_shopify");
    let [stock, price] = stock_and_price(&config);
    let want_stock = env.shop_should_show_all(SKUS, 0).await;
    let want_prices = erp_list_prices(&env).await;
    wait_for("the shop to match the ERP", T, || async {
        shop_stock(&sim).await == want_stock && shop_prices(&sim).await == want_prices
    })
    .await;

    let (code, reports) = reconcile(&config, &[]).await;
    assert_eq!(code, 0, "in sync: {reports:?}");
    let stock_report = report(&reports, "stock");
    assert_eq!(stock_report["compared"], SKUS * 3);
    assert_eq!(stock_report["in_sync"], SKUS * 3);
    assert_eq!(report(&reports, "price")["in_sync"], SKUS);

    // By hand in the shop admin: 7 more of SKU-000003 in WH2, SKU-000005 at 1.23.
    {
        let mut st = sim.shop().state.lock();
        let item = st
            .variant_by_sku("SKU-000003")
            .expect("variant")
            .inventory_item_id;
        let wh2 = st.location_by_name("WH2").expect("WH2").id;
        st.levels.get_mut(&(item, wh2)).expect("level").available += 7;
        let v = st.variant_by_sku("SKU-000005").expect("variant").id;
        st.variants.get_mut(&v).expect("variant").price = "1.23".into();
    }
    let (code, reports) = reconcile(&config, &[]).await;
    assert_eq!(code, 1, "drift: {reports:?}");
    let (stock_report, price_report) = (report(&reports, "stock"), report(&reports, "price"));
    assert_eq!(keys(stock_report, "drifted"), ["SKU-000003/WH2"]);
    assert_eq!(keys(price_report, "drifted"), ["SKU-000005"]);
    assert_eq!(price_report["drifted"][0]["shop"], "1.23");
    assert!(keys(stock_report, "missing_in_shop").is_empty());
    assert_eq!(stock_report["in_sync"], SKUS * 3 - 1);

    // The same comparison over one bulk export of the whole catalogue: the
    // same keys and nothing else, the shop's SKU the ERP lacks named too, for
    // a fraction of the cost of reading it page by page.
    let item = sim
        .shop()
        .state
        .lock()
        .add_product("SKU-NOT-IN-ERP", "5.00", 3);
    let cost = || sim.stats()["api"]["cost_used"].as_f64().unwrap_or_default();
    let mut bulk = config.clone();
    bulk.reconcile.bulk_above_keys = 0;
    let before = cost();
    let (code, bulk_reports) = reconcile(&bulk, &[]).await;
    let bulk_cost = cost() - before;
    assert_eq!(code, 1, "drift: {bulk_reports:?}");
    let (bulk_stock, bulk_price) = (
        report(&bulk_reports, "stock"),
        report(&bulk_reports, "price"),
    );
    assert_eq!(keys(bulk_stock, "drifted"), ["SKU-000003/WH2"]);
    assert_eq!(bulk_stock["drifted"], stock_report["drifted"]);
    assert_eq!(bulk_stock["in_sync"], SKUS * 3 - 1);
    assert!(keys(bulk_stock, "missing_in_shop").is_empty());
    assert_eq!(keys(bulk_price, "drifted"), ["SKU-000005"]);
    assert_eq!(bulk_price["drifted"], price_report["drifted"]);
    assert_eq!(keys(bulk_stock, "missing_in_erp"), ["SKU-NOT-IN-ERP"]);
    let before = cost();
    let _ = reconcile(&config, &[]).await;
    let paged_cost = cost() - before;
    assert!(
        bulk_cost * 4.0 < paged_cost,
        "a bulk export costs {bulk_cost} points, reading page by page {paged_cost}"
    );
    {
        let mut st = sim.shop().state.lock();
        let v = st.variant_by_item(item).expect("the added variant").clone();
        st.variants.remove(&v.id);
        st.products.remove(&v.product_id);
        st.levels.retain(|(i, _), _| *i != item);
    }

    let (code, reports) = reconcile(&config, &["--repair"]).await;
    assert_eq!(
        code, 1,
        "the drift is still there when reported: {reports:?}"
    );
    assert_eq!(report(&reports, "stock")["repaired"], 1);
    assert_eq!(report(&reports, "price")["repaired"], 1);
    wait_for("the processors to apply the repair", T, || async {
        shop_stock(&sim).await == want_stock && shop_prices(&sim).await == want_prices
    })
    .await;
    let (code, reports) = reconcile(&config, &[]).await;
    assert_eq!(code, 0, "repaired: {reports:?}");

    // A variant deleted in the shop: missing, in every warehouse, and nothing else.
    {
        let mut st = sim.shop().state.lock();
        let v = st.variant_by_sku("SKU-000007").expect("variant").id;
        st.variants.remove(&v);
    }
    let (code, reports) = reconcile(&config, &["--entity", "stock"]).await;
    assert_eq!(code, 1);
    assert_eq!(reports.len(), 1, "stock alone: {reports:?}");
    let stock_report = report(&reports, "stock");
    assert_eq!(
        keys(stock_report, "missing_in_shop"),
        ["SKU-000007/WH1", "SKU-000007/WH2", "SKU-000007/WH3"]
    );
    assert!(keys(stock_report, "drifted").is_empty());

    let error = reconcile_or_error(&config, &["--shop", "nowhere"]).await;
    assert!(
        error
            .as_ref()
            .is_err_and(|e| e.contains("no shop named `nowhere`")),
        "an unknown shop cannot be compared (exit 2): {error:?}"
    );
    stock.stop().await;
    price.stop().await;
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_in_a_woocommerce_shop_is_reported_exactly_and_repaired() {
    let env = TestEnv::new("reconcile_woo", size(0.8)).await;
    let sim = WooSim::start(
        WooConfig {
            seed: shopsim::state::Seed {
                initial_available: 1_000,
                ..shopsim::catalog::demo_seed(SKUS, 1)
            },
            ..WooConfig::default()
        },
        "127.0.0.1:0".parse().expect("an address"),
    )
    .await
    .expect("the WooCommerce simulator starts");
    let source = env.start_streaming().await;
    let mut config = env.config.clone();
    config.shops = vec![ShopConfig {
        name: "woo".into(),
        platform: Platform::Woocommerce,
        admin_url: format!("{}/wp-json/wc/v3", sim.base_url()),
        consumer_key: Secret(sim.config.consumer_key.clone()),
        consumer_secret: Secret(sim.config.consumer_secret.clone()),
        requests_per_second: 50.0,
        ..ShopConfig::local_default()
    }];
    config.processors.group_id = "reconcile_woo".into();
    config.processors.batch_wait_ms = 50;
    config.validate().expect("a valid WooCommerce shop");
    let [stock, price] = stock_and_price(&config);
    let mut want_counts = std::collections::BTreeMap::new();
    for p in 1..=SKUS {
        let sku = format!("SKU-{p:06}");
        let mut total = 0;
        for wh in ["WH1", "WH2", "WH3"] {
            let (on_hand, reserved, _) = env.stock_of(&sku, wh).await;
            let num = |s: &str| s.parse::<f64>().expect("a decimal");
            total += num(&on_hand).trunc() as i64 - num(&reserved).ceil() as i64;
        }
        want_counts.insert(sku, Some(total.max(0)));
    }
    let list_prices = erp_list_prices(&env).await;
    let prices_match = || {
        sim.prices().iter().all(|(sku, (regular, _))| {
            list_prices
                .get(sku)
                .is_some_and(|(want, _)| want.parse::<f64>().ok() == regular.parse::<f64>().ok())
        })
    };
    wait_for("the WooCommerce shop to match the ERP", T, || async {
        sim.stock() == want_counts && prices_match()
    })
    .await;
    let (code, reports) = reconcile(&config, &[]).await;
    assert_eq!(code, 0, "in sync: {reports:?}");
    assert_eq!(report(&reports, "stock")["in_sync"], SKUS);
    assert_eq!(report(&reports, "price")["in_sync"], SKUS);

    {
        let mut st = sim.state();
        let id = st.product_by_sku("SKU-000004").expect("product").id;
        let p = st.products.get_mut(&id).expect("product");
        p.stock_quantity = p.stock_quantity.map(|q| q + 9);
        let id = st.product_by_sku("SKU-000006").expect("product").id;
        st.products.get_mut(&id).expect("product").regular_price = "2.34".into();
    }
    let (code, reports) = reconcile(&config, &[]).await;
    assert_eq!(code, 1, "drift: {reports:?}");
    assert_eq!(keys(report(&reports, "stock"), "drifted"), ["SKU-000004"]);
    assert_eq!(keys(report(&reports, "price"), "drifted"), ["SKU-000006"]);

    let (code, _) = reconcile(&config, &["--repair"]).await;
    assert_eq!(code, 1);
    wait_for("the processors to apply the repair", T, || async {
        sim.stock() == want_counts && prices_match()
    })
    .await;
    let (code, reports) = reconcile(&config, &[]).await;
    assert_eq!(code, 0, "repaired: {reports:?}");
    stock.stop().await;
    price.stop().await;
    source.stop().await;
}

/// The value of the first sample of `metric` whose labels include all of
/// `labels`, in Prometheus text.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(metric) && labels.iter().all(|want| l.contains(want)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn continuous_reconciliation_repairs_drift_within_its_budget_share() {
    const SHARE: f64 = 0.2;
    const RESTORE: f64 = 50.0;
    const BUCKET: f64 = 1000.0;
    let env = TestEnv::new("reconcile_continuous", size(0.9)).await;
    // A slow plan (Shopify's standard: 100 points a second), so a fifth of
    // it is a pace the comparison must keep to.
    let sim = shopsim::ShopSim::start(
        shopsim::SimConfig {
            seed: shopsim::catalog::demo_seed(SKUS, 3),
            restore_rate: RESTORE,
            bucket_size: BUCKET,
            ..shopsim::SimConfig::default()
        },
        "127.0.0.1:0".parse().expect("an address"),
    )
    .await
    .expect("the shop simulator starts");
    let source = env.start_streaming().await;
    let mut config = common::processor_config(&env, &sim, "reconcile_continuous");
    config.reconcile.interval_secs = 1;
    config.reconcile.budget_share = SHARE;
    config.reconcile.auto_repair = true;
    let port = flywheel::local_infra::free_port().expect("a port");
    config.metrics.listen = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("flywheel.toml");
    std::fs::write(&file, toml::to_string(&config).expect("TOML")).expect("writing");
    let log = dir.path().join("processors.log");
    let _show_log = common::ShowLogOnPanic(log.clone());
    let started = std::time::Instant::now();
    let _processors = common::FlywheelProcess(
        std::process::Command::new(env!("CARGO_BIN_EXE_flywheel"))
            .arg("--config")
            .arg(&file)
            .args(["run", "--roles", "processors"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("spawning flywheel run"),
        None,
    );
    let metrics = || async move {
        match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    let want = env.shop_should_show_all(SKUS, 0).await;
    wait_for("the shop to match the ERP", T, || async {
        shop_stock(&sim).await == want
    })
    .await;

    // Drift by hand; the next comparisons find and repair it while an ERP
    // change keeps flowing.
    let key = ("SKU-000003".to_owned(), "WH2".to_owned());
    {
        let mut st = sim.shop().state.lock();
        let item = st
            .variant_by_sku(&key.0)
            .expect("variant")
            .inventory_item_id;
        let wh2 = st.location_by_name(&key.1).expect("WH2").id;
        st.levels.get_mut(&(item, wh2)).expect("level").available += 7;
    }
    assert_ne!(shop_stock(&sim).await.get(&key), want.get(&key));
    eprintln!("drift made at {:.1} s", started.elapsed().as_secs_f64());
    env.set_stock(8, "WH1", 4_321).await;
    let want = env.shop_should_show_all(SKUS, 0).await;
    wait_for(
        "the drift repaired and the live change applied",
        T,
        || async { shop_stock(&sim).await == want },
    )
    .await;
    eprintln!("repaired at {:.1} s", started.elapsed().as_secs_f64());
    // Logged per key, once the pass that repaired it ends.
    wait_for("the drifted key logged", T, || async {
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        logged.lines().any(|l| {
            l.contains("drift: the shop differs from the ERP") && l.contains("SKU-000003/WH2")
        })
    })
    .await;
    wait_for(
        "the drift gauge back at 0 after a later pass",
        T,
        || async {
            let text = metrics().await;
            sample(
                &text,
                "flywheel_drift_keys",
                &["entity=\"stock\"", "shop=\"demo\""],
            ) == Some(0.0)
                && sample(
                    &text,
                    "flywheel_reconcile_last_success_timestamp_seconds",
                    &["shop=\"demo\""],
                )
                .is_some_and(|t| t > 0.0)
        },
    )
    .await;

    // Its budget share, in the API cost the shop charged it: at most its
    // share of the bucket at start, and its share of the restore rate since.
    let text = metrics().await;
    let spent = sample(
        &text,
        "flywheel_shop_api_cost_points_total",
        &["processor=\"reconcile\"", "shop=\"demo\""],
    )
    .expect("the reconciliation's API cost");
    let allowed = SHARE * (BUCKET + RESTORE * started.elapsed().as_secs_f64());
    eprintln!(
        "reconciliation spent {spent:.0} of {allowed:.0} points in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(spent > 0.0, "it compared");
    assert!(
        spent <= allowed,
        "reconciliation spent {spent} points, over its share ({allowed})"
    );
    source.stop().await;
}

fn verdict(story: &Value) -> String {
    story["shops"][0]["verdict"]
        .as_str()
        .expect("a verdict")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_tells_why_a_key_is_or_is_not_in_sync() {
    let env = TestEnv::new("trace", size(0.5)).await;
    let sim = common::start_shop(SKUS).await;
    let source = env.start_streaming().await;
    let config = common::processor_config(&env, &sim, "trace");
    let spawn_stock = || {
        common::RunningProcessor::spawn(&config, |c, t| async move {
            flywheel::sync::stock_to_shop::run(&c, &c.shops[0].clone(), t).await
        })
    };
    let stock = spawn_stock();
    let want = env.shop_should_show_all(SKUS, 0).await;
    wait_for("the shop to match the ERP", T, || async {
        shop_stock(&sim).await == want
    })
    .await;

    // In sync: the events, the version applied, the verdict.
    let (code, story) = common::trace(&config, "stock", "SKU-000001/WH1").await;
    assert_eq!(code, 0, "{story}");
    assert_eq!(verdict(&story), "in sync");
    let newest = story["events"][0]["version"].as_i64().expect("an event");
    assert_eq!(story["shops"][0]["applied_version"].as_i64(), Some(newest));
    assert!(story["erp_now"]["on_hand"].is_string(), "{story}");
    let applied_at = story["shops"][0]["applied_at"]
        .as_str()
        .expect("when it was applied");
    let age = chrono::Utc::now()
        - chrono::DateTime::parse_from_rfc3339(applied_at)
            .expect("an RFC 3339 time")
            .with_timezone(&chrono::Utc);
    assert!(
        age < chrono::Duration::minutes(10),
        "applied at {applied_at}"
    );
    let last = &story["shops"][0]["last_write"];
    assert_eq!(last["confirmed"], true, "{story}");
    assert_eq!(last["version"].as_i64(), Some(newest), "{story}");
    assert_eq!(
        last["quantity"].as_i64(),
        want.get(&("SKU-000001".to_owned(), "WH1".to_owned()))
            .copied(),
        "{story}"
    );

    // Changed in the shop by hand.
    {
        let mut st = sim.shop().state.lock();
        let item = st
            .variant_by_sku("SKU-000003")
            .expect("variant")
            .inventory_item_id;
        let wh2 = st.location_by_name("WH2").expect("WH2").id;
        st.levels.get_mut(&(item, wh2)).expect("level").available += 5;
    }
    let (code, story) = common::trace(&config, "stock", "SKU-000003/WH2").await;
    assert_eq!(code, 1);
    assert!(
        verdict(&story).starts_with("the shop changed it"),
        "{story}"
    );

    // Pending: the processor is away when the ERP changes.
    stock.stop().await;
    env.set_stock(2, "WH1", 777).await;
    wait_for("the change in Kafka", T, || async {
        let (_, story) = common::trace(&config, "stock", "SKU-000002/WH1").await;
        story["events"][0]["value"]["on_hand"] == story["erp_now"]["on_hand"]
            && story["events"].as_array().is_some_and(|e| e.len() > 1)
    })
    .await;
    let (code, story) = common::trace(&config, "stock", "SKU-000002/WH1").await;
    assert_eq!(code, 1);
    assert!(verdict(&story).starts_with("not yet applied"), "{story}");

    // Dead-lettered: the shop lost the variant, the next change cannot land.
    {
        let mut st = sim.shop().state.lock();
        let v = st.variant_by_sku("SKU-000007").expect("variant").id;
        st.variants.remove(&v);
    }
    let stock = spawn_stock();
    env.set_stock(7, "WH1", 55).await;
    wait_for("the dead letter in the trace", T, || async {
        let (_, story) = common::trace(&config, "stock", "SKU-000007/WH1").await;
        verdict(&story).starts_with("dead letter") && verdict(&story).contains("unknown_sku")
    })
    .await;
    stock.stop().await;
    source.stop().await;
}

/// Shop orders whose webhooks were all lost (no subscription at all) and that
/// no poll has fed: `reconcile --entity orders` names them as not in the ERP
/// (and nothing else), `--repair` feeds them to the order processor, and a
/// second run finds every order in the ERP at its version.
#[tokio::test(flavor = "multi_thread")]
async fn shop_orders_the_erp_lacks_are_reported_and_fed_again() {
    let env = TestEnv::new("reconcile_orders", size(0.8)).await;
    let sim = common::start_shop(SKUS).await;
    flywheel::bus::topics::ensure_topics(&env.config.kafka, &["shop.orders.v1"])
        .await
        .expect("the orders topic");
    let config = common::processor_config(&env, &sim, "reconcile_orders");
    sim.stock_every_level(100);
    let first = sim.place_order_for("SKU-000004", 2).expect("an order");
    let second = sim.place_order_for("SKU-000009", 1).expect("an order");

    let (code, reports) = reconcile(&config, &["--entity", "orders"]).await;
    assert_eq!(code, 1, "orders the ERP lacks are drift: {reports:?}");
    assert_eq!(reports.len(), 1, "orders only: {reports:?}");
    let orders = report(&reports, "orders");
    assert_eq!(orders["compared"], 2);
    let mut missing = keys(orders, "missing_in_erp");
    missing.sort();
    let mut want = vec![format!("demo/{first}"), format!("demo/{second}")];
    want.sort();
    assert_eq!(missing, want);
    assert!(keys(orders, "drifted").is_empty());
    assert_eq!(env.order_states("demo", first).await.len(), 0);
    // Its trace says why: no webhook, no poll yet.
    let first_key = format!("demo/{first}");
    let (code, story) = common::trace(&config, "order", &first_key).await;
    assert_eq!(code, 1, "{story}");
    assert!(
        story["verdict"]
            .as_str()
            .is_some_and(|v| v.starts_with("not in Kafka")),
        "{story}"
    );

    let orders_in = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::orders_to_erp::run(&c, t).await
    });
    let (_, repaired) = reconcile(&config, &["--entity", "orders", "--repair"]).await;
    assert_eq!(report(&repaired, "orders")["repaired"], 2);
    wait_for("both orders in the ERP", T, || async {
        env.order_states("demo", first).await.len() == 1
            && env.order_states("demo", second).await.len() == 1
    })
    .await;
    wait_for(
        "a second reconcile to find every order in the ERP",
        T,
        || async {
            let (code, reports) = reconcile(&config, &["--entity", "orders"]).await;
            code == 0 && report(&reports, "orders")["in_sync"] == 2
        },
    )
    .await;
    // Now in the ERP, fed by the repair.
    let (code, story) = common::trace(&config, "order", &first_key).await;
    assert_eq!(code, 0, "{story}");
    assert_eq!(story["in_erp"], true, "{story}");
    assert_eq!(story["events"][0]["source"], "reconcile", "{story}");
    assert!(story["applied_version"].as_i64().is_some(), "{story}");
    orders_in.stop().await;
}
