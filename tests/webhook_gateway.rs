//! The webhook gateway against a real broker and real HTTP.

mod common;

use std::time::Duration;

use common::{Rec, TopicReader, kafka_only_config, wait_for};
use flywheel::bus::avro::AvroCodec;
use flywheel::config::{Config, Platform, Secret, ShopConfig};
use flywheel::shop::gateway;
use flywheel::shop::mapping::{ShopInventoryEvent, ShopOrderEvent};
use flywheel::shop::signature::sign;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);
const SECRET: &str = "current-secret";
const OLD_SECRET: &str = "old-secret";
const WOO_SECRET: &str = "woo-secret";

struct Gw {
    url: String,
    config: Config,
    token: CancellationToken,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

fn gateway_config(mut config: Config, dir: &std::path::Path) -> Config {
    config.gateway.listen = "127.0.0.1:0".into();
    config.gateway.body_limit_bytes = 16 * 1024;
    config.gateway.dedupe_path = dir.join("seen.log");
    config.shops = vec![
        ShopConfig {
            name: "demo".into(),
            platform: Platform::Shopify,
            webhook_secrets: vec![Secret(OLD_SECRET.into()), Secret(SECRET.into())],
            ..ShopConfig::local_default()
        },
        ShopConfig {
            name: "woo".into(),
            platform: Platform::Woocommerce,
            webhook_secrets: vec![Secret(WOO_SECRET.into())],
            ..ShopConfig::local_default()
        },
    ];
    config
}

async fn start_gateway(config: Config, dir: Option<tempfile::TempDir>) -> Gw {
    let token = CancellationToken::new();
    let running = gateway::start(
        &config,
        flywheel::ops::http::metrics_router(),
        token.clone(),
    )
    .await
    .expect("the gateway starts");
    let url = format!("http://{}", running.addr);
    let gw = Gw {
        url,
        config,
        token,
        _dir: dir,
    };
    wait_for("the gateway to be ready", T, || async {
        reqwest::get(format!("{}/readyz", gw.url))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    gw
}

async fn new_gateway(name: &str) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let config = gateway_config(kafka_only_config(name).await, dir.path());
    start_gateway(config, Some(dir)).await
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

/// POSTs a Shopify webhook; `signature` None signs `body` with SECRET.
async fn shopify(
    gw: &Gw,
    shop: &str,
    topic: &str,
    id: &str,
    body: &[u8],
    signature: Option<String>,
) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/webhooks/shopify/{shop}", gw.url))
        .header("Content-Type", "application/json")
        .header("X-Shopify-Topic", topic)
        .header(
            "X-Shopify-Hmac-Sha256",
            signature.unwrap_or_else(|| sign(SECRET, body)),
        )
        .header("X-Shopify-Shop-Domain", "demo.myshopify.com")
        .header("X-Shopify-Webhook-Id", id)
        .header("X-Shopify-Triggered-At", "2026-11-23T16:05:41.000Z")
        .header("X-Shopify-API-Version", "2026-04")
        .body(body.to_vec())
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

fn reader(gw: &Gw, topic: &str) -> TopicReader {
    TopicReader::new(&gw.config.kafka, &gw.config.kafka.topic(topic), topic)
}

fn order(r: &Rec) -> ShopOrderEvent {
    AvroCodec::for_topic("shop.orders.v1")
        .unwrap()
        .decode_serde(&r.payload)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_webhook_lands_once_even_when_redelivered_and_after_a_restart() {
    // The dedupe file must outlive the first gateway instance.
    let dir = tempfile::tempdir().unwrap();
    let config = gateway_config(kafka_only_config("gw_once").await, dir.path());
    let gw = start_gateway(config, None).await;
    let body = fixture("shopify_orders_create.json");
    assert_eq!(
        shopify(&gw, "demo", "orders/create", "wh-1", &body, None).await,
        200
    );

    let mut orders = reader(&gw, "shop.orders.v1");
    let mut raw = reader(&gw, "shop.webhooks.raw.v1");
    orders.read_until(T, |r| !r.is_empty()).await;
    raw.read_until(T, |r| !r.is_empty()).await;
    let e = order(&orders.records[0]);
    assert_eq!(e.key, "demo/820982911946154508");
    assert_eq!(e.topic, "orders/create");
    assert_eq!(e.event_id, "wh-1");
    assert_eq!(e.email.as_deref(), Some("jon@example.com"));
    assert_eq!(e.total_price.as_deref(), Some("403.00"));
    assert_eq!(e.financial_status.as_deref(), Some("voided"));
    assert_eq!(e.lines.len(), 2);
    assert_eq!(e.lines[1].sku.as_deref(), Some("IPOD2008BLACK"));
    assert_eq!(e.lines[1].price, "199.00");
    assert_eq!(
        e.customer.as_ref().unwrap().last_name.as_deref(),
        Some("Smith")
    );
    assert_eq!(
        e.shipping_address.as_ref().unwrap().city.as_deref(),
        Some("Shippington")
    );
    assert_eq!(
        e.version,
        flywheel::shop::mapping::micros("2026-11-23T16:05:40Z").unwrap()
    );
    // The raw record is the body byte for byte, with the delivery's headers.
    assert_eq!(raw.records[0].payload, body);
    assert_eq!(raw.records[0].headers["flywheel.topic"], "orders/create");
    assert!(!raw.records[0].headers.contains_key("x-shopify-hmac-sha256"));

    // The same delivery again: 200, nothing new.
    assert_eq!(
        shopify(&gw, "demo", "orders/create", "wh-1", &body, None).await,
        200
    );
    // And after a restart of the gateway (same dedupe file).
    let config = gw.config.clone();
    drop(gw);
    let gw = start_gateway(config, None).await;
    assert_eq!(
        shopify(&gw, "demo", "orders/create", "wh-1", &body, None).await,
        200
    );
    // A sentinel: once it is in, anything the redeliveries produced would be too.
    assert_eq!(
        shopify(&gw, "demo", "orders/create", "wh-2", &body, None).await,
        200
    );
    orders
        .read_until(T, |r| r.iter().any(|x| order(x).event_id == "wh-2"))
        .await;
    orders.drain(Duration::from_millis(500)).await;
    raw.read_until(T, |r| r.len() >= 2).await;
    raw.drain(Duration::from_millis(500)).await;
    let ids: Vec<String> = orders.records.iter().map(|r| order(r).event_id).collect();
    assert_eq!(ids, vec!["wh-1", "wh-2"]);
    assert_eq!(raw.records.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_the_right_status_and_nothing_is_enqueued() {
    let gw = new_gateway("gw_reject").await;
    let body = fixture("shopify_orders_create.json");
    let tampered = String::from_utf8(body.clone())
        .unwrap()
        .replace("403.00", "0.01")
        .into_bytes();
    // (what, shop, body, signature (None = valid), expected status)
    type Case<'a> = (&'a str, &'a str, Vec<u8>, Option<String>, u16);
    let cases: Vec<Case> = vec![
        (
            "bad signature",
            "demo",
            body.clone(),
            Some("AAAA".into()),
            401,
        ),
        (
            "no signature",
            "demo",
            body.clone(),
            Some(String::new()),
            401,
        ),
        (
            "tampered body",
            "demo",
            tampered,
            Some(sign(SECRET, &body)),
            401,
        ),
        (
            "wrong secret",
            "demo",
            body.clone(),
            Some(sign("guess", &body)),
            401,
        ),
        ("unknown shop", "nope", body.clone(), None, 404),
        (
            "woo shop on the shopify route",
            "woo",
            body.clone(),
            None,
            404,
        ),
        ("oversize", "demo", vec![b' '; 20 * 1024], None, 413),
        ("malformed JSON", "demo", b"{\"id\": 1,".to_vec(), None, 400),
        (
            "missing updated_at",
            "demo",
            br#"{"id": 1, "line_items": []}"#.to_vec(),
            None,
            400,
        ),
    ];
    for (i, (what, shop, b, sig, want)) in cases.into_iter().enumerate() {
        let got = shopify(&gw, shop, "orders/create", &format!("bad-{i}"), &b, sig).await;
        assert_eq!(got, want, "{what}");
    }
    assert_eq!(
        shopify(
            &gw,
            "demo",
            "carts/create",
            "ignored-1",
            br#"{"id": 1}"#,
            None
        )
        .await,
        202,
        "unsupported topic"
    );
    // A rotated-out secret still verifies while it is configured.
    let sentinel = shopify(
        &gw,
        "demo",
        "orders/create",
        "sentinel",
        &body,
        Some(sign(OLD_SECRET, &body)),
    )
    .await;
    assert_eq!(sentinel, 200);

    for topic in ["shop.orders.v1", "shop.webhooks.raw.v1"] {
        let mut r = reader(&gw, topic);
        r.read_until(T, |r| !r.is_empty()).await;
        r.drain(Duration::from_millis(500)).await;
        assert_eq!(r.records.len(), 1, "{topic} holds only the sentinel");
        assert_eq!(r.records[0].headers["flywheel.webhook.id"], "sentinel");
    }
    let mut inv = reader(&gw, "shop.inventory.v1");
    inv.drain(Duration::from_millis(300)).await;
    assert!(inv.records.is_empty());

    let metrics = reqwest::get(format!("{}/metrics", gw.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("flywheel_gateway_verification_failures_total{platform=\"shopify\"}"));
    assert!(
        metrics
            .contains("flywheel_gateway_rejected_total{platform=\"shopify\",reason=\"too_large\"}")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_order_updates_keep_versions_that_order_them() {
    let gw = new_gateway("gw_order").await;
    let update = |updated_at: &str, status: &str| {
        serde_json::to_vec(
            &json!({"id": 5001, "updated_at": updated_at, "financial_status": status,
            "line_items": [{"id": 1, "sku": "SKU-000001", "quantity": 1, "price": "10.00"}]}),
        )
        .unwrap()
    };
    // The newer update arrives first.
    let newer = update("2026-11-23T10:00:05Z", "paid");
    let older = update("2026-11-23T10:00:01Z", "pending");
    assert_eq!(
        shopify(&gw, "demo", "orders/updated", "u-2", &newer, None).await,
        200
    );
    assert_eq!(
        shopify(&gw, "demo", "orders/updated", "u-1", &older, None).await,
        200
    );
    let mut orders = reader(&gw, "shop.orders.v1");
    orders.read_until(T, |r| r.len() >= 2).await;
    let events: Vec<ShopOrderEvent> = orders.records.iter().map(order).collect();
    assert_eq!(
        events[0].key, events[1].key,
        "one key: one partition, arrival order kept"
    );
    assert_eq!(events[0].financial_status.as_deref(), Some("paid"));
    // A version guard applies the newest and skips the late older one.
    let newest = events
        .iter()
        .max_by_key(|e| (e.version, e.version_tiebreak.clone()))
        .unwrap();
    assert_eq!(newest.financial_status.as_deref(), Some("paid"));
    assert!(events[0].version > events[1].version);
}

#[tokio::test(flavor = "multi_thread")]
async fn woocommerce_orders_are_verified_and_mapped() {
    let gw = new_gateway("gw_woo").await;
    let body = fixture("woocommerce_order_created.json");
    let post = |sig: String, topic: Option<&'static str>, b: Vec<u8>| {
        let mut req = reqwest::Client::new()
            .post(format!("{}/webhooks/woocommerce/woo", gw.url))
            .header("X-WC-Webhook-Signature", sig)
            .header("X-WC-Webhook-Delivery-ID", "woo-d-1")
            .header("X-WC-Webhook-Source", "https://shop.example/")
            .body(b);
        if let Some(t) = topic {
            req = req.header("X-WC-Webhook-Topic", t);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        post(sign("wrong", &body), Some("order.created"), body.clone()).await,
        401
    );
    // WooCommerce's activation ping: unsigned form body, answered 200.
    assert_eq!(
        post(String::new(), None, b"webhook_id=12".to_vec()).await,
        200
    );
    assert_eq!(
        post(sign(WOO_SECRET, &body), Some("order.created"), body.clone()).await,
        200
    );
    let mut orders = reader(&gw, "shop.orders.v1");
    orders.read_until(T, |r| !r.is_empty()).await;
    let e = order(&orders.records[0]);
    assert_eq!(e.key, "woo/727");
    assert_eq!(e.platform, "woocommerce");
    assert_eq!(e.financial_status.as_deref(), Some("paid"));
    assert_eq!(e.email.as_deref(), Some("john.doe@example.com"));
    assert_eq!(e.lines[0].sku.as_deref(), Some("SKU-000001"));
    assert_eq!(e.lines[0].quantity, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shop_simulator_s_webhooks_for_every_topic_are_accepted() {
    let gw = new_gateway("gw_sim").await;
    let callback = format!("{}/webhooks/shopify/demo", gw.url);
    let sim = shopsim::ShopSim::start(
        shopsim::SimConfig {
            webhook_secret: SECRET.into(),
            subscriptions: shopsim::Topic::ALL
                .iter()
                .map(|t| (*t, callback.clone()))
                .collect(),
            seed: shopsim::catalog::demo_seed(20, 2),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    sim.stock_every_level(100);
    let ids = sim.place_orders(2, true);
    let client = reqwest::Client::new();
    let gql = |query: &str, variables: Value| {
        client
            .post(sim.graphql_url())
            .header("X-Shopify-Access-Token", &sim.config.access_token)
            .json(&json!({"query": query, "variables": variables}))
            .send()
    };
    gql(
        "mutation($f: FulfillmentInput!) { fulfillmentCreate(fulfillment: $f) { userErrors { message } } }",
        json!({"f": {"lineItemsByFulfillmentOrder": [{"fulfillmentOrderId": format!("gid://shopify/FulfillmentOrder/{}", ids[0])}],
                     "trackingInfo": {"number": "T-1", "company": "UPS"}}}),
    )
    .await
    .unwrap();
    gql(
        "mutation($id: ID!) { orderCancel(orderId: $id, reason: CUSTOMER, restock: true) { userErrors { message } } }",
        json!({"id": format!("gid://shopify/Order/{}", ids[1])}),
    )
    .await
    .unwrap();

    let want = [
        "orders/create",
        "orders/paid",
        "orders/fulfilled",
        "orders/updated",
        "orders/cancelled",
    ];
    let mut orders = reader(&gw, "shop.orders.v1");
    orders
        .read_until(T, |r| {
            let topics: Vec<String> = r.iter().map(|x| order(x).topic).collect();
            want.iter().all(|w| topics.iter().any(|t| t == w))
        })
        .await;
    let fulfilled = orders
        .records
        .iter()
        .map(order)
        .find(|e| e.topic == "orders/fulfilled")
        .unwrap();
    assert_eq!(fulfilled.fulfillment_status.as_deref(), Some("fulfilled"));
    assert_eq!(
        fulfilled.fulfillments[0].tracking_number.as_deref(),
        Some("T-1")
    );
    let cancelled = orders
        .records
        .iter()
        .map(order)
        .find(|e| e.topic == "orders/cancelled")
        .unwrap();
    assert!(cancelled.cancelled_at.is_some());

    let mut inventory = reader(&gw, "shop.inventory.v1");
    inventory.read_until(T, |r| !r.is_empty()).await;
    let level: ShopInventoryEvent = AvroCodec::for_topic("shop.inventory.v1")
        .unwrap()
        .decode_serde(&inventory.records[0].payload)
        .unwrap();
    assert!(level.key.starts_with("demo/"));
    assert!(level.available.is_some());

    // Everything the simulator delivered was accepted: none rejected.
    wait_for("all webhooks delivered", T, || async {
        let s = sim.stats();
        s["webhooks"]["delivered"] == s["webhooks"]["queued"]
    })
    .await;
    assert_eq!(sim.stats()["webhooks"]["failed_attempts"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_away_means_503_and_not_ready_then_200_again_with_nothing_lost() {
    // Its own broker: this test stops it.
    let mut broker = flywheel::local_infra::LocalBroker::start()
        .await
        .expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway_config(Config::default(), dir.path());
    broker.configure(&mut config.kafka);
    config.kafka.partitions = 1;
    let gw = start_gateway(config, Some(dir)).await;
    let body = fixture("shopify_orders_create.json");
    assert_eq!(
        shopify(&gw, "demo", "orders/create", "before", &body, None).await,
        200
    );

    broker.stop();
    let readyz = || async {
        reqwest::get(format!("{}/readyz", gw.url))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    wait_for("/readyz to turn 503", T, || async { readyz().await == 503 }).await;
    assert_eq!(
        shopify(&gw, "demo", "orders/create", "during", &body, None).await,
        503
    );

    // The broker comes back (empty: tansu's memory storage); the gateway
    // re-creates its topics, turns ready, and the shop's retry lands.
    broker.restart().await.expect("broker restart");
    wait_for("/readyz to turn 200", Duration::from_secs(60), || async {
        readyz().await == 200
    })
    .await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        // Shopify retries a 503; so do we, until the producer has reconnected.
        match shopify(&gw, "demo", "orders/create", "during", &body, None).await {
            200 => break,
            503 => assert!(
                tokio::time::Instant::now() < deadline,
                "still 503 after the broker returned"
            ),
            other => panic!("unexpected status {other}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut raw = reader(&gw, "shop.webhooks.raw.v1");
    raw.read_until(T, |r| {
        r.iter()
            .any(|x| x.headers["flywheel.webhook.id"] == "during")
    })
    .await;
    let mut orders = reader(&gw, "shop.orders.v1");
    orders
        .read_until(T, |r| r.iter().any(|x| order(x).event_id == "during"))
        .await;
}
