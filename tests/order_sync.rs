//! Orders both ways, end to end: the shop simulator's signed webhooks (each
//! delivered twice and out of order) → the gateway → Kafka → the order
//! processor → the demo ERP's sale_order; and the ERP's shipments and
//! cancellations → the source → `erp.order_status.v1` → the status processor →
//! the shop. Flywheel's own ERP writes must not come back (no echoes). A shop
//! order whose webhooks were all lost reaches the ERP through the order poll.

mod common;

use std::time::Duration;

use common::WIRED_SECRET as SECRET;
use common::{TestEnv, small, wait_for};
use flywheel::config::Config;
use serde_json::json;
use shopsim::{ApiFaults, Topic, WebhookFaults};

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn orders_flow_both_ways_once_and_without_echoes() {
    let env = TestEnv::new("order_sync", small()).await;
    let source = env.start_streaming().await;
    let wired = common::WiredShop::start(
        &env,
        "order_sync-processors",
        20,
        &[
            Topic::OrdersCreate,
            Topic::OrdersPaid,
            Topic::OrdersUpdated,
            Topic::OrdersCancelled,
            Topic::OrdersFulfilled,
        ],
    )
    .await;
    let (sim, config) = (&wired.sim, &wired.config);
    let callback = format!("http://{}/webhooks/shopify/demo", wired.gateway.addr);
    sim.set_faults(
        ApiFaults::default(),
        WebhookFaults {
            duplicate_probability: 1.0,
            reorder_probability: 1.0,
            delay_ms: 0,
        },
    );
    let processor = common::RunningProcessor::spawn(config, |c, t| async move {
        flywheel::sync::orders_to_erp::run(&c, t).await
    });
    let status_processor = common::RunningProcessor::spawn(config, |c, t| async move {
        flywheel::sync::status_to_shop::run(&c, &c.shops[0].clone(), t).await
    });

    sim.stock_every_level(100);
    let ids = sim.place_orders(3, true);
    let (shipped, shop_cancelled, erp_cancelled) = (ids[0], ids[1], ids[2]);
    let shop_order = sim.shop().state.lock().orders[&shipped].clone();
    let erp = &env.erp;
    let order_state = |id: u64| async move {
        erp.query(
            "SELECT o.state, (SELECT count(*) FROM sale_order_line l WHERE l.order_id = o.id),
                        p.email, o.amount_total::text
                 FROM sale_order o JOIN res_partner p ON p.id = o.partner_id
                 WHERE o.channel = 'demo' AND o.shop_order_id = $1",
            &[&id.to_string()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, i64>(1),
                r.get::<_, Option<String>>(2),
                r.get::<_, String>(3),
            )
        })
        .collect::<Vec<_>>()
    };
    for id in &ids {
        wait_for("the order in the ERP, paid", T, || async {
            order_state(*id)
                .await
                .first()
                .is_some_and(|o| o.0 == "sale")
        })
        .await;
    }
    // Its trace names the webhooks that fed it.
    let (_, story) = common::trace(config, "order", &format!("demo/{shipped}")).await;
    assert!(
        story["events"]
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("webhook ")))),
        "{story}"
    );
    let rows = order_state(shipped).await;
    assert_eq!(rows.len(), 1, "one sale_order for one shop order");
    assert_eq!(
        rows[0].1,
        shop_order.line_items.len() as i64,
        "every line, once"
    );
    assert_eq!(rows[0].2.as_deref(), Some(shop_order.email.as_str()));
    assert_eq!(rows[0].3, shop_order.total_price());

    // Cancelled in the shop → cancelled in the ERP.
    let r: serde_json::Value = reqwest::Client::new()
        .post(sim.graphql_url())
        .header("X-Shopify-Access-Token", &sim.config.access_token)
        .json(&json!({"query": "mutation($id: ID!) { orderCancel(orderId: $id, reason: CUSTOMER, restock: true) { userErrors { message } } }",
                      "variables": {"id": format!("gid://shopify/Order/{shop_cancelled}")}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["data"]["orderCancel"]["userErrors"], json!([]));
    wait_for("the cancellation in the ERP", T, || async {
        order_state(shop_cancelled)
            .await
            .first()
            .is_some_and(|o| o.0 == "cancel")
    })
    .await;
    assert_eq!(order_state(shop_cancelled).await.len(), 1);

    // Shipped in the ERP → fulfilled in the shop, with carrier and tracking.
    env.ship("demo", shipped, "JJD0099887766").await;
    // Cancelled in the ERP → cancelled in the shop.
    env.erp
        .execute(
            "UPDATE sale_order SET state = 'cancel' WHERE channel = 'demo' AND shop_order_id = $1",
            &[&erp_cancelled.to_string()],
        )
        .await
        .unwrap();
    let shop_order_of = |id: u64| sim.shop().state.lock().orders[&id].clone();
    wait_for("the shipment fulfilled in the shop", T, || async {
        shop_order_of(shipped).fulfillment_status.as_deref() == Some("fulfilled")
    })
    .await;
    let fulfilled = shop_order_of(shipped);
    assert_eq!(fulfilled.fulfillments.len(), 1, "fulfilled once");
    assert_eq!(
        fulfilled.fulfillments[0].tracking_number.as_deref(),
        Some("JJD0099887766")
    );
    assert_eq!(
        fulfilled.fulfillments[0].tracking_company.as_deref(),
        Some("DHL")
    );
    wait_for("the ERP cancellation in the shop", T, || async {
        shop_order_of(erp_cancelled).cancelled_at.is_some()
    })
    .await;

    // No echoes: the ERP writes of the order processor (creating all three
    // orders, cancelling the second) were not captured; only the ERP's own
    // changes (the shipment, the ERP cancellation) became status events.
    let mut statuses = env.reader("erp.order_status.v1");
    statuses.read_until(T, |r| r.len() >= 2).await;
    let statuses = statuses.drain(Duration::from_secs(2)).await;
    let seen: Vec<(String, Option<&str>)> = statuses
        .iter()
        .map(|r| (r.key.clone(), r.str("status")))
        .collect();
    assert_eq!(
        seen.len(),
        2,
        "exactly the two ERP-side changes, no echo of Flywheel's writes: {seen:?}"
    );
    assert!(seen.contains(&(format!("demo/{shipped}"), Some("shipped"))));
    assert!(seen.contains(&(format!("demo/{erp_cancelled}"), Some("cancelled"))));
    let shipped_rec = statuses
        .iter()
        .find(|r| r.str("status") == Some("shipped"))
        .unwrap();
    assert_eq!(shipped_rec.str("tracking_ref"), Some("JJD0099887766"));
    assert_eq!(shipped_rec.str("carrier"), Some("DHL"));

    // An order with a SKU the ERP does not know: dead-lettered, nothing written.
    let body = serde_json::to_vec(&json!({"id": 777001, "updated_at": "2026-11-23T10:00:00Z",
        "email": "x@example.com", "financial_status": "paid", "total_price": "5.00",
        "line_items": [{"id": 1, "sku": "SKU-000001", "quantity": 1, "price": "2.50"},
                       {"id": 2, "sku": "NOT-IN-ERP", "quantity": 1, "price": "2.50"}]}))
    .unwrap();
    let status = common::post_shopify_order(&callback, SECRET, "unknown-sku-1", body).await;
    assert_eq!(status, 200);
    let mut dlq = env.reader("flywheel.dlq.v1");
    let letters = dlq
        .read_until(T, |r| {
            r.iter()
                .any(|d| d.str("error_class") == Some("unknown_sku"))
        })
        .await;
    let letter = letters
        .iter()
        .find(|d| d.str("error_class") == Some("unknown_sku"))
        .unwrap();
    assert!(letter.str("reason").unwrap().contains("NOT-IN-ERP"));
    assert_eq!(letter.str("stage"), Some("processor.order_in"));
    let written: i64 = env
        .erp
        .query_one(
            "SELECT count(*) FROM sale_order WHERE shop_order_id = '777001'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, 0, "never a half-written order");

    processor.stop().await;
    status_processor.stop().await;
    source.stop().await;
    wired.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shopify_order_whose_webhooks_were_lost_reaches_the_erp_through_the_poll() {
    let env = TestEnv::new("order_poll_shopify", small()).await;
    // No webhook subscriptions at all: every order webhook is lost.
    let sim = common::start_shop(20).await;
    flywheel::bus::topics::ensure_topics(&env.config.kafka, &["shop.orders.v1"])
        .await
        .expect("the orders topic");
    let config = common::processor_config(&env, &sim, "order_poll_shopify");
    let orders_in = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::orders_to_erp::run(&c, t).await
    });
    let poll = common::RunningProcessor::order_poll(&config);
    sim.stock_every_level(100);
    let first = sim.place_order_for("SKU-000004", 2).expect("an order");
    let second = sim.place_order_for("SKU-000009", 1).expect("an order");
    wait_for("both orders in the ERP", T, || async {
        env.order_states("demo", first).await.len() == 1
            && env.order_states("demo", second).await.len() == 1
    })
    .await;
    // Polled again and again, each is in the ERP once with its lines.
    let lines: i64 = env
        .erp
        .query_one(
            "SELECT count(*) FROM sale_order_line l JOIN sale_order o ON o.id = l.order_id
             WHERE o.channel = 'demo' AND o.shop_order_id IN ($1, $2)",
            &[&first.to_string(), &second.to_string()],
        )
        .await
        .expect("counting lines")
        .get(0);
    assert_eq!(lines, 2);
    poll.stop().await;
    orders_in.stop().await;
}

/// More orders changed in one second (a bulk edit) than a page holds: the
/// poll pages on by the listing's cursor; paging by the last `updated_at`
/// cannot move past a full page of one second, and the rest went unread.
#[tokio::test(flavor = "multi_thread")]
async fn the_shopify_poll_reads_past_a_full_page_of_orders_changed_in_one_second() {
    use flywheel::shop::shopify::admin_api::AdminApi;
    use flywheel::shop::shopify::order_poll::ShopifyOrderFeed;

    let sim = common::start_shop(20).await;
    sim.stock_every_level(1_000);
    let mut placed = sim.place_orders(300, true);
    assert_eq!(placed.len(), 300, "the shop takes every order");
    placed.sort_unstable();
    const BULK_EDIT: &str = "2026-03-02T10:00:00+01:00";
    for order in sim.shop().state.lock().orders.values_mut() {
        order.updated_at = BULK_EDIT.into();
    }
    let mut shop = flywheel::config::ShopConfig::local_default();
    shop.admin_url = sim.graphql_url();
    shop.access_token = flywheel::config::Secret(sim.config.access_token.clone());
    let api = AdminApi::for_shop(&shop, "order_poll").expect("a client");
    let since = "2026-03-02T08:59:00Z".parse().expect("a time");
    let (read, pages) = common::read_listing(&mut ShopifyOrderFeed(api), since).await;
    assert_eq!(pages, 2, "250 and 50");
    let mut ids: Vec<u64> = read.iter().filter_map(|o| o["id"].as_u64()).collect();
    ids.sort_unstable();
    assert_eq!(ids, placed, "every order, each once");
}

/// The poll feeds each page of the listing before it reads the next: a shop
/// that fails part-way through a long listing has still had the pages before
/// the failure fed (collected first, they were all dropped with the error,
/// poll after poll, and a day's lookback over a busy shop was held in memory
/// at once), and the next poll reads the rest from where the cursor was.
#[tokio::test(flavor = "multi_thread")]
async fn the_poll_feeds_each_page_before_it_reads_the_next() {
    let env = TestEnv::new("order_poll_pages", small()).await;
    let sim = common::start_shop(20).await;
    sim.stock_every_level(1_000);
    let mut placed = sim.place_orders(300, true);
    assert_eq!(placed.len(), 300, "the shop takes every order");
    placed.sort_unstable();
    // One second for all: the listing's pages go by id, 250 and then 50.
    let edited = (chrono::Utc::now() - chrono::Duration::seconds(30)).to_rfc3339();
    for order in sim.shop().state.lock().orders.values_mut() {
        order.updated_at = edited.clone();
    }
    flywheel::bus::topics::ensure_topics(&env.config.kafka, &["shop.orders.v1"])
        .await
        .expect("the orders topic");
    let mut config = common::processor_config(&env, &sim, "order_poll_pages");
    // A shop name of its own: the poll's metrics are per shop.
    config.shops[0].name = "paging".into();
    let polled_metric = |name: &str| common::metric(name, &[("shop", "paging")]);
    sim.set_faults(
        ApiFaults {
            later_pages_unavailable: true,
            ..Default::default()
        },
        WebhookFaults::default(),
    );
    let polled_ids = |records: &[common::Rec]| -> std::collections::BTreeSet<u64> {
        records
            .iter()
            .filter_map(|r| r.key.rsplit_once('/')?.1.parse().ok())
            .collect()
    };
    // It retries the second page (the shop says 503), and after giving up
    // restarts from its cursor, until stopped.
    let failing = common::RunningProcessor::supervised_order_poll(&config);
    let mut orders = env.reader("shop.orders.v1");
    let read = orders.read_until(T, |r| polled_ids(r).len() >= 250).await;
    let first_page: std::collections::BTreeSet<u64> = placed[..250].iter().copied().collect();
    assert_eq!(polled_ids(read), first_page, "the first page, and only it");
    wait_for("the second page refused", T, || async {
        sim.stats()["api"]["injected_errors"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert!(polled_metric("flywheel_order_poll_orders_total") >= 250.0);
    assert_eq!(
        polled_metric("flywheel_order_poll_last_success_timestamp_seconds"),
        0.0,
        "no poll has read the listing to the end"
    );
    failing.stop().await;

    sim.set_faults(ApiFaults::default(), WebhookFaults::default());
    let poll = common::RunningProcessor::order_poll(&config);
    let read = orders.read_until(T, |r| polled_ids(r).len() >= 300).await;
    assert_eq!(
        polled_ids(read),
        placed.iter().copied().collect(),
        "the rest, read again from the old cursor"
    );
    wait_for("a poll read to the end", T, || async {
        polled_metric("flywheel_order_poll_last_success_timestamp_seconds") > 0.0
    })
    .await;
    poll.stop().await;
}

/// A poll that cannot succeed as configured (here the shop refuses its
/// token) is a net that failed, never a reason to stop the shop's
/// processors: it does not end, tries again every ten intervals, and its
/// last-success metric stays where it was (the alert's cue).
#[tokio::test(flavor = "multi_thread")]
async fn an_order_poll_the_shop_refuses_tries_again_later_and_does_not_end() {
    let sim = common::start_shop(20).await;
    let config = polled_shop_config(&sim, "refused", "not-the-token").await;
    let poll = common::RunningProcessor::supervised_order_poll(&config);
    let refused = || sim.stats()["api"]["unauthorized"].as_u64().unwrap_or(0);
    wait_for("the first poll refused", T, || async { refused() >= 1 }).await;
    wait_for("a poll tried again after the refusal", T, || async {
        refused() >= 2
    })
    .await;
    assert_eq!(
        common::metric(
            "flywheel_order_poll_last_success_timestamp_seconds",
            &[("shop", "refused")]
        ),
        0.0
    );
    // Panics if the poll had ended on its own.
    poll.stop().await;
}

/// A poll restarted after a transient failure reads on from where the last
/// complete poll ended. Before, each restart started from the whole lookback
/// (24 h), so a shop failing now and then had its day of orders read and fed
/// again at every failure.
#[tokio::test(flavor = "multi_thread")]
async fn a_poll_restarted_after_a_failure_reads_on_from_the_last_complete_one() {
    let sim = common::start_shop(20).await;
    sim.stock_every_level(1_000);
    assert_eq!(sim.place_orders(300, true).len(), 300);
    let two_hours_ago = (chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339();
    for order in sim.shop().state.lock().orders.values_mut() {
        order.updated_at = two_hours_ago.clone();
    }
    sim.place_order_for("SKU-000004", 1)
        .expect("a recent order");
    let config = polled_shop_config(&sim, "restarted", &sim.config.access_token).await;
    let poll = common::RunningProcessor::supervised_order_poll(&config);
    let labels = [("shop", "restarted")];
    let fed = || common::metric("flywheel_order_poll_orders_total", &labels);
    let last_success = || {
        common::metric(
            "flywheel_order_poll_last_success_timestamp_seconds",
            &labels,
        )
    };
    wait_for("the lookback read", T, || async { fed() >= 301.0 }).await;

    // The shop answers 503 until the poll gives up and its role restarts.
    sim.set_faults(
        ApiFaults {
            error_probability: 1.0,
            ..Default::default()
        },
        WebhookFaults::default(),
    );
    wait_for("the poll restarted", T, || async {
        common::metric(
            "flywheel_role_restarts_total",
            &[("role", "order_poll.restarted")],
        ) >= 1.0
    })
    .await;
    sim.set_faults(ApiFaults::default(), WebhookFaults::default());
    let (before, since) = (fed(), last_success());
    wait_for("a complete poll after the restart", T, || async {
        last_success() > since
    })
    .await;
    assert!(
        fed() - before < 300.0,
        "read on from the cursor, not the lookback: {} fed after the restart",
        fed() - before
    );
    poll.stop().await;
}

/// Kafka only (its own topic prefix, the orders topic made), and one shop:
/// `sim`, named `name`, reached with `token`.
async fn polled_shop_config(sim: &shopsim::ShopSim, name: &str, token: &str) -> Config {
    let mut config = common::kafka_only_config(&format!("order_poll_{name}")).await;
    flywheel::bus::topics::ensure_topics(&config.kafka, &["shop.orders.v1"])
        .await
        .expect("the orders topic");
    let mut shop = flywheel::config::ShopConfig::local_default();
    shop.name = name.into();
    shop.admin_url = sim.graphql_url();
    shop.access_token = flywheel::config::Secret(token.into());
    config.shops = vec![shop];
    config
}

/// A crash can leave two fulfilments of one level done before either's
/// repair: the shop then counts both shipments twice (the stock processor had
/// written the ERP's value after both). The repair puts the level back to
/// the written value whatever it was short by, once; a level at or above it,
/// or a shipment newer than the last write, is left alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_level_short_by_two_shipments_is_put_back_once() {
    use flywheel::shop::platform::{Shipped, StockLevelReader};
    use flywheel::shop::shopify::catalog::ShopCatalog;
    use flywheel::shop::shopify::inventory::ShopifyInventory;
    use flywheel::sync::state::StateDb;
    use flywheel::sync::status_to_shop::{AfterFulfil, DoubleCountRepair};

    let env = TestEnv::new("double_count", small()).await;
    let sim = common::start_shop(20).await;
    let config = common::processor_config(&env, &sim, "double_count");
    let api = || {
        flywheel::shop::admin_api::AdminApi::for_shop(&config.shops[0], "test")
            .expect("a Shopify client")
    };
    let mut inventory = ShopifyInventory {
        catalog: ShopCatalog::in_memory(api()),
    };
    let item = inventory.items(&["SKU-000004"]).await.expect("items")["SKU-000004"].clone();
    let location = inventory
        .location("WH1")
        .await
        .expect("locations")
        .expect("WH1");
    // The stock processor wrote 78 at version 100: the ERP after both shipments.
    let mut state = StateDb::connect(&config).await.expect("the state database");
    let written = [(item.as_str(), location.as_str(), 78, 100)];
    state.intend_levels("demo", &written).await.expect("intend");
    state
        .confirm_levels("demo", &written)
        .await
        .expect("confirm");
    let set_level = |on_hand: i64| {
        let mut st = sim.shop().state.lock();
        let (i, l) = (
            st.variant_by_sku("SKU-000004")
                .expect("variant")
                .inventory_item_id,
            st.location_by_name("WH1").expect("WH1").id,
        );
        let level = st.levels.get_mut(&(i, l)).expect("level");
        level.available = on_hand;
        level.committed = 0;
    };
    // Both fulfilments (3 units each) landed after that write.
    set_level(72);
    let mut repair = DoubleCountRepair::new(
        ShopifyInventory {
            catalog: ShopCatalog::in_memory(api()),
        },
        StateDb::connect(&config).await.expect("the state database"),
    );
    let shipped = [Shipped {
        sku: "SKU-000004".into(),
        location: location.clone(),
        units: 3,
    }];
    let on_hand = || {
        let st = sim.shop().state.lock();
        let (i, l) = (
            st.variant_by_sku("SKU-000004")
                .expect("variant")
                .inventory_item_id,
            st.location_by_name("WH1").expect("WH1").id,
        );
        st.levels[&(i, l)].on_hand()
    };
    repair
        .after_fulfil("demo", &shipped, 90)
        .await
        .expect("the first shipment's repair");
    assert_eq!(on_hand(), 78, "put back by both shipments");
    repair
        .after_fulfil("demo", &shipped, 95)
        .await
        .expect("the second shipment's repair");
    assert_eq!(on_hand(), 78, "not put back twice");
    // A shipment after the last write: its fulfilment is the shop's only count.
    set_level(75);
    repair
        .after_fulfil("demo", &shipped, 101)
        .await
        .expect("a newer shipment");
    assert_eq!(on_hand(), 75);
}
