//! One ERP, several shops at once (real PostgreSQL, source, broker,
//! gateway, processors, two shop simulators): `eu` shows the list prices in
//! EUR with warehouses as named, `us` shows the US Retail price list in USD
//! with WH1 and WH3 swapped. Each converges on its own prices and mapping, and
//! each shop's orders come back to it alone. A Shopify shop and a
//! WooCommerce shop side by side in one `flywheel run` process get their own
//! stock, prices and order status. Its own binary: it reads process-wide
//! metrics.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{TestEnv, small, wait_for};
use flywheel::config::{Platform, Secret, ShopConfig};
use shopsim::{ShopSim, SimConfig, Topic};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(90);
const SECRET: &str = "multi-shop-secret";
const SKUS: u32 = 20;

/// A shop simulator with the demo catalogue whose order webhooks go to `callback`.
async fn wired_sim(callback: String) -> ShopSim {
    ShopSim::start(
        SimConfig {
            webhook_secret: SECRET.into(),
            seed: shopsim::catalog::demo_seed(SKUS, 3),
            subscriptions: [
                Topic::OrdersCreate,
                Topic::OrdersPaid,
                Topic::OrdersUpdated,
                Topic::OrdersFulfilled,
            ]
            .iter()
            .map(|t| (*t, callback.clone()))
            .collect(),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().expect("an address"),
    )
    .await
    .expect("the shop simulator starts")
}

fn shop(name: &str, sim: &ShopSim) -> ShopConfig {
    ShopConfig {
        name: name.into(),
        platform: Platform::Shopify,
        webhook_secrets: vec![Secret(SECRET.into())],
        admin_url: sim.graphql_url(),
        access_token: Secret(sim.config.access_token.clone()),
        ..ShopConfig::local_default()
    }
}

/// `flywheel_processor_events_total` of one processor, shop and outcome.
fn events(entity: &str, shop: &str, outcome: &str) -> u64 {
    common::processor_events(&[("entity", entity), ("shop", shop), ("outcome", outcome)])
}

#[tokio::test(flavor = "multi_thread")]
async fn two_shops_get_their_own_prices_stock_mapping_and_orders() {
    let env = TestEnv::new("multi_shop", small()).await;
    let source = env.start_streaming().await;

    // The gateway first: the simulators need its address for their webhooks.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = env.config.clone();
    config.gateway.listen = "127.0.0.1:0".into();
    config.gateway.dedupe_path = dir.path().join("seen.log");
    let placeholder = ShopConfig {
        webhook_secrets: vec![Secret(SECRET.into())],
        ..ShopConfig::local_default()
    };
    config.shops = ["eu", "us"]
        .map(|name| ShopConfig {
            name: name.into(),
            ..placeholder.clone()
        })
        .to_vec();
    let gateway_stop = CancellationToken::new();
    let gateway =
        flywheel::shop::gateway::start(&config, axum::Router::new(), gateway_stop.clone())
            .await
            .expect("the gateway starts");
    let callback = |shop: &str| format!("http://{}/webhooks/shopify/{shop}", gateway.addr);
    let (eu_sim, us_sim) = (
        wired_sim(callback("eu")).await,
        wired_sim(callback("us")).await,
    );
    let us_prices_before = common::shop_prices(&us_sim).await;

    let eu = shop("eu", &eu_sim);
    let us = ShopConfig {
        price_list: "3".into(), // US Retail
        currency: "USD".into(),
        warehouse_locations: [("WH1", "WH3"), ("WH3", "WH1")]
            .map(|(w, l)| (w.to_owned(), l.to_owned()))
            .into_iter()
            .collect(),
        ..shop("us", &us_sim)
    };
    config.shops = vec![eu.clone(), us.clone()];
    config.processors.group_id = "multi_shop".into();
    config.processors.batch_wait_ms = 50;
    config.validate().expect("a valid two-shop configuration");
    let mut processors = vec![common::RunningProcessor::spawn(
        &config,
        |c, t| async move { flywheel::sync::orders_to_erp::run(&c, t).await },
    )];
    for s in [&eu, &us] {
        let s = s.clone();
        processors.push(common::RunningProcessor::spawn(&config, {
            let s = s.clone();
            |c, t| async move { flywheel::sync::stock_to_shop::run(&c, &s, t).await }
        }));
        processors.push(common::RunningProcessor::spawn(&config, {
            let s = s.clone();
            |c, t| async move { flywheel::sync::price_to_shop::run(&c, &s, t).await }
        }));
        processors.push(common::RunningProcessor::spawn(&config, {
            |c, t| async move { flywheel::sync::status_to_shop::run(&c, &s, t).await }
        }));
    }

    // Stock: the same ERP levels, each through its shop's warehouse map.
    let want_eu = env.shop_should_show_all(SKUS, 0).await;
    let swap = |l: &str| match l {
        "WH1" => "WH3".to_owned(),
        "WH3" => "WH1".to_owned(),
        other => other.to_owned(),
    };
    let want_us: HashMap<(String, String), i64> = want_eu
        .iter()
        .map(|((sku, l), n)| ((sku.clone(), swap(l)), *n))
        .collect();
    assert_ne!(want_eu, want_us, "the maps make a difference here");
    wait_for("eu to show the ERP's stock", T, || async {
        common::shop_stock(&eu_sim).await == want_eu
    })
    .await;
    wait_for("us to show the ERP's stock through its map", T, || async {
        common::shop_stock(&us_sim).await == want_us
    })
    .await;

    // Prices: eu the list prices; us the US Retail ones where the list has
    // one, and its own prices elsewhere.
    let list = common::erp_list_prices(&env).await;
    wait_for("eu to show the list prices", T, || async {
        common::shop_prices(&eu_sim).await == list
    })
    .await;
    let us_retail: HashMap<String, String> = env
        .erp
        .query(
            "SELECT p.default_code, i.fixed_price::text FROM product_pricelist_item i
             JOIN product_product p ON p.product_tmpl_id = i.product_tmpl_id
             WHERE i.pricelist_id = 3 AND p.default_code IS NOT NULL",
            &[],
        )
        .await
        .expect("reading US Retail")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(!us_retail.is_empty());
    let mut want_us_prices = us_prices_before.clone();
    for (sku, price) in &us_retail {
        want_us_prices.insert(sku.clone(), (price.clone(), None));
    }
    wait_for("us to show the US Retail prices", T, || async {
        let now = common::shop_prices(&us_sim).await;
        now.iter().all(|(sku, (price, _))| {
            want_us_prices
                .get(sku)
                .is_some_and(|(want, _)| want == price)
        })
    })
    .await;

    // One order in each shop, both for a SKU each shop has on its first
    // location. The simulators number orders alike: the channel tells them apart.
    let sellable = |want: &HashMap<(String, String), i64>| {
        (1..=SKUS)
            .map(|i| format!("SKU-{i:06}"))
            .find(|sku| want[&(sku.clone(), "WH1".to_owned())] > 0)
            .expect("a SKU in stock at WH1")
    };
    let eu_order = eu_sim
        .place_order_for(&sellable(&want_eu), 1)
        .expect("an eu order");
    let us_order = us_sim
        .place_order_for(&sellable(&want_us), 1)
        .expect("a us order");
    for (channel, id) in [("eu", eu_order), ("us", us_order)] {
        wait_for("each shop's order in the ERP, confirmed", T, || async {
            env.order_states(channel, id).await == ["sale"]
        })
        .await;
    }

    // Shipping the eu order fulfils it in eu; us sees the status and leaves
    // its own orders alone.
    let fulfilled = |sim: &ShopSim, id: u64| {
        sim.shop().state.lock().orders.get(&id).map(|o| {
            (
                o.fulfillment_status.clone(),
                o.fulfillments
                    .iter()
                    .filter_map(|f| f.tracking_number.clone())
                    .collect::<Vec<_>>(),
            )
        })
    };
    let us_skipped = events("order_status", "us", "not_applicable");
    env.ship("eu", eu_order, "EU0001").await;
    wait_for("the eu order fulfilled in eu", T, || async {
        fulfilled(&eu_sim, eu_order) == Some((Some("fulfilled".into()), vec!["EU0001".into()]))
    })
    .await;
    wait_for("us to see the eu status and pass", T, || async {
        events("order_status", "us", "not_applicable") > us_skipped
    })
    .await;
    assert_eq!(
        fulfilled(&us_sim, us_order),
        Some((None, vec![])),
        "us's order of the same number is not eu's"
    );
    env.ship("us", us_order, "US0001").await;
    wait_for("the us order fulfilled in us", T, || async {
        fulfilled(&us_sim, us_order) == Some((Some("fulfilled".into()), vec!["US0001".into()]))
    })
    .await;
    assert_eq!(
        fulfilled(&eu_sim, eu_order).map(|f| f.1),
        Some(vec!["EU0001".to_owned()]),
        "eu fulfilled once"
    );

    for p in processors {
        p.stop().await;
    }
    gateway_stop.cancel();
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shop_that_is_down_holds_no_other_back_and_catches_up_when_it_returns() {
    let env = TestEnv::new("shop_down", small()).await;
    let source = env.start_streaming().await;
    let (up_sim, down_sim) = (
        common::start_shop(SKUS).await,
        common::start_shop(SKUS).await,
    );
    // Every request to `down` fails with 503 until it comes back.
    down_sim.set_faults(
        shopsim::ApiFaults {
            error_probability: 1.0,
            ..Default::default()
        },
        Default::default(),
    );
    let mut config = env.config.clone();
    config.shops = vec![shop("up", &up_sim), shop("down", &down_sim)];
    config.processors.group_id = "shop_down".into();
    config.processors.batch_wait_ms = 50;
    let processors: Vec<_> = config
        .shops
        .clone()
        .into_iter()
        .map(|s| {
            common::RunningProcessor::spawn(&config, |c, t| async move {
                flywheel::sync::stock_to_shop::run(&c, &s, t).await
            })
        })
        .collect();

    wait_for("up to show the ERP's stock", T, || async {
        common::shop_stock(&up_sim).await == env.shop_should_show_all(SKUS, 0).await
    })
    .await;
    // …and to follow a change, while `down` still answers nothing.
    env.set_stock(4, "WH2", 61).await;
    wait_for("up to follow a change", T, || async {
        common::shop_stock(&up_sim).await == env.shop_should_show_all(SKUS, 0).await
    })
    .await;
    assert!(
        down_sim.stats()["api"]["injected_errors"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "the down shop was tried"
    );
    assert_ne!(
        common::shop_stock(&down_sim).await,
        env.shop_should_show_all(SKUS, 0).await,
        "nothing reached the down shop"
    );

    // Back up: everything it missed arrives, the change included.
    down_sim.set_faults(Default::default(), Default::default());
    wait_for("down to catch up once it is back", T, || async {
        common::shop_stock(&down_sim).await == env.shop_should_show_all(SKUS, 0).await
    })
    .await;

    for p in processors {
        p.stop().await;
    }
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shop_refusing_its_token_stops_alone_and_says_which() {
    let env = TestEnv::new("shop_token", small()).await;
    let source = env.start_streaming().await;
    let (good_sim, bad_sim) = (
        common::start_shop(SKUS).await,
        common::start_shop(SKUS).await,
    );
    let mut config = env.config.clone();
    config.shops = vec![
        shop("good", &good_sim),
        ShopConfig {
            access_token: Secret("shpat_revoked".into()),
            ..shop("bad", &bad_sim)
        },
    ];
    config.processors.group_id = "shop_token".into();
    config.processors.batch_wait_ms = 50;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("flywheel.toml");
    std::fs::write(&file, toml::to_string(&config).expect("config as TOML")).expect("config");
    let log = dir.path().join("processors.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .arg("--config")
        .arg(&file)
        .arg("processors")
        .env("FLYWHEEL_METRICS__LISTEN", "")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("a log file"))
        .spawn()
        .expect("spawning flywheel processors");
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();

    wait_for("the good shop to show the ERP's stock", T, || async {
        common::shop_stock(&good_sim).await == env.shop_should_show_all(SKUS, 0).await
    })
    .await;
    wait_for(
        "the bad shop's processors to say why they stopped",
        T,
        || async {
            let text = logged();
            text.contains("shop `bad`") && text.contains("401")
        },
    )
    .await;
    // …while the good one keeps following the ERP, in the same process.
    env.set_stock(3, "WH1", 42).await;
    wait_for("the good shop to follow a change", T, || async {
        common::shop_stock(&good_sim).await == env.shop_should_show_all(SKUS, 0).await
    })
    .await;
    assert!(
        child.try_wait().expect("the processors").is_none(),
        "the process stays up for the good shop:\n{}",
        logged()
    );
    assert!(
        !logged().contains("shpat_revoked"),
        "the token is never logged"
    );
    let _ = child.kill();
    let _ = child.wait();
    source.stop().await;
}

/// `outlet`'s count of `sku`: its only warehouse WH2, on hand − reserved.
async fn outlet_count(env: &TestEnv, sku: &str) -> i64 {
    let (on_hand, reserved, _) = env.stock_of(sku, "WH2").await;
    let num = |s: &str| s.parse::<f64>().expect("a decimal");
    (num(&on_hand).trunc() as i64 - num(&reserved).ceil() as i64).max(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shopify_and_a_woocommerce_shop_share_one_erp_in_one_process() {
    use shopsim::woo::{WooConfig, WooSim};
    let env = TestEnv::new("shopify_woo", small()).await;
    let source = env.start_streaming().await;
    let port = flywheel::local_infra::free_port().expect("a free port");
    let gateway = format!("http://127.0.0.1:{port}");
    let main_sim = wired_sim(format!("{gateway}/webhooks/shopify/main")).await;
    let woo_sim = WooSim::start(
        WooConfig {
            seed: shopsim::catalog::demo_seed(SKUS, 1),
            order_webhooks: vec![format!("{gateway}/webhooks/woocommerce/outlet")],
            variations_per_product: 2,
            ..WooConfig::default()
        },
        "127.0.0.1:0".parse().expect("an address"),
    )
    .await
    .expect("the WooCommerce simulator starts");
    let woo_prices_before = woo_sim.prices();

    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = env.config.clone();
    config.gateway.listen = format!("127.0.0.1:{port}");
    config.gateway.dedupe_path = dir.path().join("seen.log");
    config.shops = vec![
        shop("main", &main_sim),
        ShopConfig {
            name: "outlet".into(),
            platform: Platform::Woocommerce,
            webhook_secrets: vec![Secret(woo_sim.config.webhook_secret.clone())],
            admin_url: format!("{}/wp-json/wc/v3", woo_sim.base_url()),
            consumer_key: Secret(woo_sim.config.consumer_key.clone()),
            consumer_secret: Secret(woo_sim.config.consumer_secret.clone()),
            price_list: "2".into(), // Wholesale
            warehouse_locations: [("WH2".to_owned(), String::new())].into_iter().collect(),
            ..ShopConfig::local_default()
        },
    ];
    config.processors.group_id = "shopify_woo".into();
    config.processors.batch_wait_ms = 50;
    config.validate().expect("a valid configuration");
    let file = dir.path().join("flywheel.toml");
    std::fs::write(&file, toml::to_string(&config).expect("config as TOML")).expect("config");
    let log = dir.path().join("flywheel.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .arg("--config")
        .arg(&file)
        .args(["run", "--roles", "gateway,processors"])
        .env("FLYWHEEL_METRICS__LISTEN", "")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("a log file"))
        .spawn()
        .expect("spawning flywheel");
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();

    // Stock: main per location, outlet one count per SKU from WH2 alone.
    let want_main = env.shop_should_show_all(SKUS, 0).await;
    let mut want_outlet = std::collections::BTreeMap::new();
    for i in 1..=SKUS {
        let sku = format!("SKU-{i:06}");
        want_outlet.insert(sku.clone(), Some(outlet_count(&env, &sku).await));
    }
    wait_for("main to show the ERP's stock", T, || async {
        common::shop_stock(&main_sim).await == want_main
    })
    .await;
    wait_for("outlet to count WH2's stock", T, || async {
        woo_sim.stock() == want_outlet
    })
    .await;
    // Prices: main the list prices, outlet the Wholesale ones as sales.
    let list = common::erp_list_prices(&env).await;
    let wholesale = common::wholesale_view(&env, &woo_prices_before).await;
    assert_ne!(wholesale, woo_prices_before);
    wait_for("main to show the list prices", T, || async {
        common::shop_prices(&main_sim).await == list
    })
    .await;
    wait_for("outlet to show the Wholesale prices", T, || async {
        woo_sim.prices() == wholesale
    })
    .await;

    // An order in each shop reaches the ERP once, under its own channel.
    let sku = (1..=SKUS)
        .map(|i| format!("SKU-{i:06}"))
        .find(|sku| want_main[&(sku.clone(), "WH1".to_owned())] > 0 && want_outlet[sku] > Some(0))
        .expect("a SKU both shops have in stock");
    let main_order = main_sim.place_order_for(&sku, 1).expect("a main order");
    let outlet_order = woo_sim.place_order(&sku, 1).await.expect("an outlet order");
    for (channel, id) in [("main", main_order), ("outlet", outlet_order)] {
        wait_for("each shop's order in the ERP, confirmed", T, || async {
            env.order_states(channel, id).await == ["sale"]
        })
        .await;
    }

    // Shipping the outlet order completes it in WooCommerce with one note;
    // main's order stays open, then ships on its own.
    let woo_order = |id: u64| {
        woo_sim.state().orders.get(&id).map(|o| {
            let notes: Vec<String> = o.notes.iter().map(|n| n.note.clone()).collect();
            (o.status.clone(), notes)
        })
    };
    let main_fulfilled = || {
        main_sim
            .shop()
            .state
            .lock()
            .orders
            .get(&main_order)
            .map(|o| o.fulfillment_status.clone())
    };
    env.ship("outlet", outlet_order, "OUT0001").await;
    wait_for("the outlet order completed in WooCommerce", T, || async {
        woo_order(outlet_order).is_some_and(|(status, _)| status == "completed")
    })
    .await;
    let (_, notes) = woo_order(outlet_order).expect("the order");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("OUT0001"), "{notes:?}");
    assert_eq!(main_fulfilled(), Some(None), "main's order is not outlet's");
    env.ship("main", main_order, "MAIN0001").await;
    wait_for("the main order fulfilled in main", T, || async {
        main_fulfilled() == Some(Some("fulfilled".into()))
    })
    .await;
    assert_eq!(
        woo_order(outlet_order).map(|o| o.1.len()),
        Some(1),
        "one note"
    );
    assert!(
        child.try_wait().expect("flywheel").is_none(),
        "flywheel is still up:\n{}",
        logged()
    );
    for secret in [
        &woo_sim.config.consumer_secret,
        &main_sim.config.access_token,
    ] {
        assert!(
            !logged().contains(secret.as_str()),
            "secrets are never logged"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    source.stop().await;
}
