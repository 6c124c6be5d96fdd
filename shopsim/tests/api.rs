//! The simulator over real HTTP: GraphQL cost and throttling, idempotency and
//! compare-before-write, REST bucket, webhooks (signatures checked with a plain
//! HMAC computation here, retries, duplicates, reordering), orders.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use shopsim::{ApiFaults, ShopSim, SimConfig, WebhookFaults};
use tokio::sync::{Mutex, mpsc};

const T: Duration = Duration::from_secs(10);

async fn start(config: SimConfig) -> ShopSim {
    ShopSim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the simulator starts")
}

fn small(bucket: f64, restore: f64) -> SimConfig {
    SimConfig {
        bucket_size: bucket,
        restore_rate: restore,
        seed: shopsim::catalog::demo_seed(100, 3),
        delivery: shopsim::webhooks::DeliveryPolicy {
            retry_base_ms: 50,
            ..Default::default()
        },
        ..SimConfig::default()
    }
}

async fn gql(sim: &ShopSim, query: &str, variables: Value) -> Value {
    reqwest::Client::new()
        .post(sim.graphql_url())
        .header("X-Shopify-Access-Token", &sim.config.access_token)
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON body")
}

fn cost(resp: &Value) -> &Value {
    &resp["extensions"]["cost"]
}

fn available(resp: &Value) -> f64 {
    cost(resp)["throttleStatus"]["currentlyAvailable"]
        .as_f64()
        .unwrap()
}

/// (inventory item gid, location gid) of a SKU at WH1.
async fn item_and_location(sim: &ShopSim, sku: &str) -> (String, String) {
    let r = gql(
        sim,
        "query($q: String) { productVariants(first: 1, query: $q) { nodes { inventoryItem { id } } }
                             locations(first: 1) { nodes { id name } } }",
        json!({"q": format!("sku:{sku}")}),
    )
    .await;
    (
        r["data"]["productVariants"]["nodes"][0]["inventoryItem"]["id"]
            .as_str()
            .unwrap()
            .to_owned(),
        r["data"]["locations"]["nodes"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

const SET: &str = "mutation($input: InventorySetQuantitiesInput!) {
  inventorySetQuantities(input: $input) @idempotent(key: KEY) {
    inventoryAdjustmentGroup { id changes { name delta quantityAfterChange } }
    userErrors { code field message } } }";

fn set_mutation(key: &str) -> String {
    SET.replace("KEY", &format!("\"{key}\""))
}

fn set_input(item: &str, loc: &str, quantity: i64, change_from: Value) -> Value {
    json!({"input": {"name": "available", "reason": "correction",
        "quantities": [{"inventoryItemId": item, "locationId": loc, "quantity": quantity, "changeFromQuantity": change_from}]}})
}

async fn level(sim: &ShopSim, item: &str, loc: &str) -> i64 {
    let r = gql(
        sim,
        "query($i: ID!, $l: ID!) { inventoryItem(id: $i) { inventoryLevel(locationId: $l) { quantities(names: [\"available\"]) { quantity } } } }",
        json!({"i": item, "l": loc}),
    )
    .await;
    r["data"]["inventoryItem"]["inventoryLevel"]["quantities"][0]["quantity"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn cost_bucket_drain_restore_and_throttled() {
    let sim = start(small(100.0, 10.0)).await;
    let q = "{ productVariants(first: 50) { nodes { id } } }";
    let first = gql(&sim, q, Value::Null).await;
    assert_eq!(cost(&first)["requestedQueryCost"], 52);
    assert_eq!(cost(&first)["actualQueryCost"], 52, "50 variants came back");
    assert_eq!(cost(&first)["throttleStatus"]["maximumAvailable"], 100.0);
    assert_eq!(cost(&first)["throttleStatus"]["restoreRate"], 10.0);
    let left = available(&first);
    assert!((48.0..=49.0).contains(&left), "{left}");

    let throttled = gql(&sim, q, Value::Null).await;
    assert_eq!(throttled["errors"][0]["extensions"]["code"], "THROTTLED");
    assert!(throttled["data"].is_null());
    assert!(cost(&throttled)["actualQueryCost"].is_null());
    assert_eq!(sim.stats()["api"]["throttled"], 1);

    // Restored at 10/s: half a second later the 52 points are there again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = gql(&sim, q, Value::Null).await;
    assert!(again["errors"].is_null(), "{again}");

    // Requested 52, actual 3 (one variant): the difference is refunded.
    tokio::time::sleep(Duration::from_millis(5500)).await; // back to a full bucket
    let before = gql(&sim, "{ shop { name } }", Value::Null).await;
    let filtered = gql(
        &sim,
        "{ productVariants(first: 50, query: \"sku:SKU-000001\") { nodes { id } } }",
        Value::Null,
    )
    .await;
    assert_eq!(cost(&filtered)["requestedQueryCost"], 52);
    assert_eq!(cost(&filtered)["actualQueryCost"], 3);
    let spent = available(&before) - available(&filtered);
    assert!(
        (2.0..=3.0).contains(&spent),
        "charged {spent}, expected the actual cost 3"
    );

    // A query that can never fit is refused outright.
    let huge = gql(&sim, "{ productVariants(first: 250) { nodes { inventoryItem { inventoryLevels(first: 250) { nodes { id } } } } } }", Value::Null).await;
    assert_eq!(huge["errors"][0]["extensions"]["code"], "MAX_COST_EXCEEDED");

    // Mutations cost 10.
    let m = gql(&sim, "mutation { orderCancel(orderId: \"gid://shopify/Order/1\", reason: OTHER, restock: true) { userErrors { message } } }", Value::Null).await;
    assert_eq!(cost(&m)["requestedQueryCost"], 10);
}

#[tokio::test]
async fn idempotency_keys_and_compare_before_write() {
    let sim = start(small(1000.0, 1000.0)).await;
    let (item, loc) = item_and_location(&sim, "SKU-000007").await;

    let first = gql(
        &sim,
        &set_mutation("k1"),
        set_input(&item, &loc, 5, json!(0)),
    )
    .await;
    let payload = &first["data"]["inventorySetQuantities"];
    assert_eq!(payload["userErrors"], json!([]), "{first}");
    assert_eq!(
        payload["inventoryAdjustmentGroup"]["changes"][0]["delta"],
        5
    );
    assert_eq!(level(&sim, &item, &loc).await, 5);

    // Someone else moves it to 7; replaying k1 returns the first result and
    // does not write again.
    let other = gql(
        &sim,
        &set_mutation("k2"),
        set_input(&item, &loc, 7, json!(5)),
    )
    .await;
    assert_eq!(
        other["data"]["inventorySetQuantities"]["userErrors"],
        json!([])
    );
    let replay = gql(
        &sim,
        &set_mutation("k1"),
        set_input(&item, &loc, 5, json!(0)),
    )
    .await;
    assert_eq!(replay["data"]["inventorySetQuantities"], *payload);
    assert_eq!(level(&sim, &item, &loc).await, 7);

    // Same key, other input.
    let mismatch = gql(
        &sim,
        &set_mutation("k1"),
        set_input(&item, &loc, 6, json!(0)),
    )
    .await;
    assert_eq!(
        mismatch["data"]["inventorySetQuantities"]["userErrors"][0]["code"],
        "IDEMPOTENCY_KEY_PARAMETER_MISMATCH"
    );

    // Stale compare value: nothing is written, not even the valid quantity
    // in the same call.
    let (item2, _) = item_and_location(&sim, "SKU-000008").await;
    let both = json!({"input": {"name": "available", "reason": "correction", "quantities": [
        {"inventoryItemId": item2, "locationId": loc, "quantity": 9, "changeFromQuantity": 0},
        {"inventoryItemId": item, "locationId": loc, "quantity": 1, "changeFromQuantity": 3}]}});
    let stale = gql(&sim, &set_mutation("k3"), both).await;
    let err = &stale["data"]["inventorySetQuantities"]["userErrors"][0];
    assert_eq!(err["code"], "CHANGE_FROM_QUANTITY_STALE");
    assert_eq!(
        err["field"],
        json!(["input", "quantities", "1", "changeFromQuantity"])
    );
    assert_eq!(level(&sim, &item2, &loc).await, 0);
    assert_eq!(level(&sim, &item, &loc).await, 7);

    // changeFromQuantity must be given; an explicit null opts out.
    let missing = json!({"input": {"name": "available", "reason": "correction",
        "quantities": [{"inventoryItemId": item, "locationId": loc, "quantity": 2}]}});
    let r = gql(&sim, &set_mutation("k4"), missing).await;
    assert_eq!(
        r["data"]["inventorySetQuantities"]["userErrors"][0]["code"],
        "CHANGE_FROM_QUANTITY_REQUIRED"
    );
    let r = gql(
        &sim,
        &set_mutation("k5"),
        set_input(&item, &loc, 2, Value::Null),
    )
    .await;
    assert_eq!(r["data"]["inventorySetQuantities"]["userErrors"], json!([]));
    assert_eq!(level(&sim, &item, &loc).await, 2);

    // At most 250 quantities per call.
    let many: Vec<Value> = (0..251)
        .map(|_| json!({"inventoryItemId": item, "locationId": loc, "quantity": 1, "changeFromQuantity": null}))
        .collect();
    let r = gql(
        &sim,
        &set_mutation("k6"),
        json!({"input": {"name": "available", "reason": "x", "quantities": many}}),
    )
    .await;
    assert_eq!(
        r["errors"][0]["extensions"]["code"], "MAX_INPUT_SIZE_EXCEEDED",
        "{r}"
    );
}

#[tokio::test]
async fn concurrent_requests_with_one_key_are_refused() {
    let sim = Arc::new(start(small(1000.0, 1000.0)).await);
    sim.set_faults(
        ApiFaults {
            mutation_latency_ms: 300,
            ..Default::default()
        },
        WebhookFaults::default(),
    );
    let (item, loc) = item_and_location(&sim, "SKU-000009").await;
    let input = set_input(&item, &loc, 4, json!(0));
    let m = set_mutation("same");
    let (a, b) = tokio::join!(gql(&sim, &m, input.clone()), gql(&sim, &m, input.clone()));
    let codes: Vec<Value> = [a, b]
        .iter()
        .map(|r| r["data"]["inventorySetQuantities"]["userErrors"][0]["code"].clone())
        .collect();
    assert!(
        codes.contains(&json!("IDEMPOTENCY_CONCURRENT_REQUEST")),
        "{codes:?}"
    );
    assert!(
        codes.contains(&Value::Null),
        "one of them went through: {codes:?}"
    );
    assert_eq!(level(&sim, &item, &loc).await, 4);
}

#[tokio::test]
async fn pagination_follows_cursors() {
    let sim = start(small(1000.0, 1000.0)).await;
    let q = "query($after: String) { productVariants(first: 40, after: $after) {
        edges { cursor node { sku } } pageInfo { hasNextPage endCursor } } }";
    let mut after = Value::Null;
    let mut skus = Vec::new();
    loop {
        let r = gql(&sim, q, json!({"after": after})).await;
        let page = &r["data"]["productVariants"];
        for e in page["edges"].as_array().unwrap() {
            skus.push(e["node"]["sku"].as_str().unwrap().to_owned());
        }
        if !page["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            break;
        }
        after = page["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(skus.len(), 100);
    assert_eq!(skus.first().map(String::as_str), Some("SKU-000001"));
    assert_eq!(skus.last().map(String::as_str), Some("SKU-000100"));
}

/// `orders.json` pages as Shopify's REST API does: a `Link` to the next page
/// while there is one, whose `page_info` keeps the filter and takes no other.
#[tokio::test]
async fn rest_orders_page_by_link_cursor() {
    let sim = start(small(1000.0, 1000.0)).await;
    sim.stock_every_level(100);
    let mut placed = sim.place_orders(5, true);
    placed.sort_unstable();
    let client = reqwest::Client::new();
    let get = |url: String| {
        client
            .get(url)
            .header("X-Shopify-Access-Token", &sim.config.access_token)
            .send()
    };
    let first = format!(
        "{}/admin/api/2026-04/orders.json?status=any&updated_at_min=2000-01-01T00:00:00Z&limit=2",
        sim.base_url()
    );
    let mut url = Some(first.clone());
    let mut read = Vec::new();
    while let Some(u) = url.take() {
        let r = get(u).await.unwrap();
        assert_eq!(r.status(), 200);
        url = r.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            assert!(l.ends_with(">; rel=\"next\""), "{l}");
            l[1..l.find('>').unwrap()].to_owned()
        });
        let body: Value = r.json().await.unwrap();
        read.extend(
            body["orders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_u64().unwrap()),
        );
    }
    read.sort_unstable();
    assert_eq!(read, placed, "three pages, every order once");

    let r = get(first).await.unwrap();
    let next = r.headers()["link"].to_str().unwrap().to_owned();
    let next = &next[1..next.find('>').unwrap()];
    let mixed = get(format!("{next}&updated_at_min=2000-01-01T00:00:00Z"))
        .await
        .unwrap();
    assert_eq!(mixed.status(), 400, "page_info with another filter");
    let forged = get(format!(
        "{}/admin/api/2026-04/orders.json?page_info=x",
        sim.base_url()
    ))
    .await
    .unwrap();
    assert_eq!(forged.status(), 400, "a page_info the shop did not give");
}

#[tokio::test]
async fn rest_bucket_counts_requests_and_answers_429_with_retry_after() {
    let sim = start(small(1000.0, 1000.0)).await;
    let client = reqwest::Client::new();
    let url = format!("{}/admin/api/2026-04/products.json", sim.base_url());
    let mut last_limit = String::new();
    for _ in 0..40 {
        let r = client
            .get(&url)
            .header("X-Shopify-Access-Token", &sim.config.access_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        last_limit = r.headers()["x-shopify-shop-api-call-limit"]
            .to_str()
            .unwrap()
            .to_owned();
    }
    assert!(last_limit.ends_with("/40"), "{last_limit}");
    let over = client
        .get(&url)
        .header("X-Shopify-Access-Token", &sim.config.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), 429);
    let retry: f64 = over.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0.0 && retry <= 1.0, "Retry-After {retry}");
    assert_eq!(over.headers()["x-shopify-shop-api-call-limit"], "40/40");
}

#[tokio::test]
async fn wrong_token_is_401_and_injected_errors_are_503() {
    let sim = start(small(1000.0, 1000.0)).await;
    let r = reqwest::Client::new()
        .post(sim.graphql_url())
        .header("X-Shopify-Access-Token", "wrong")
        .json(&json!({"query": "{ shop { name } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    sim.set_faults(
        ApiFaults {
            latency_ms: 300,
            latency_probability: 1.0,
            ..Default::default()
        },
        WebhookFaults::default(),
    );
    let started = std::time::Instant::now();
    let slow = gql(&sim, "{ shop { name } }", Value::Null).await;
    assert!(slow["errors"].is_null());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "latency was not added"
    );
    sim.set_faults(
        ApiFaults {
            error_probability: 1.0,
            ..Default::default()
        },
        WebhookFaults::default(),
    );
    let r = reqwest::Client::new()
        .post(sim.graphql_url())
        .header("X-Shopify-Access-Token", &sim.config.access_token)
        .json(&json!({"query": "{ shop { name } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(sim.stats()["api"]["injected_errors"], 1);
}

// ------------------------------------------------------------- webhooks

#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

/// A webhook receiver that answers each request with the next status of
/// `statuses` (200 once they run out).
async fn receiver(statuses: Vec<u16>) -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let statuses = Arc::new(Mutex::new(statuses.into_iter()));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            let statuses = statuses.clone();
            async move {
                let _ = tx.send(Received { headers, body });
                StatusCode::from_u16(statuses.lock().await.next().unwrap_or(200)).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(T, rx.recv())
        .await
        .expect("a webhook within 10 s")
        .expect("receiver open")
}

async fn subscribe(sim: &ShopSim, topic: &str, addr: SocketAddr) {
    let r = gql(
        sim,
        "mutation($t: WebhookSubscriptionTopic!, $u: URL!) {
            webhookSubscriptionCreate(topic: $t, webhookSubscription: {uri: $u}) {
              webhookSubscription { id topic } userErrors { message } } }"
            .replace("WebhookSubscriptionTopic!", "String!")
            .replace("URL!", "String!")
            .as_str(),
        json!({"t": topic, "u": format!("http://{addr}/hook")}),
    )
    .await;
    assert_eq!(
        r["data"]["webhookSubscriptionCreate"]["userErrors"],
        json!([]),
        "{r}"
    );
}

fn hmac_b64(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn inventory_webhook_is_signed_and_shaped_like_shopify() {
    let sim = start(small(1000.0, 1000.0)).await;
    let (addr, mut rx) = receiver(vec![]).await;
    subscribe(&sim, "INVENTORY_LEVELS_UPDATE", addr).await;
    let (item, loc) = item_and_location(&sim, "SKU-000003").await;
    gql(
        &sim,
        &set_mutation("w1"),
        set_input(&item, &loc, 12, json!(0)),
    )
    .await;

    let w = next(&mut rx).await;
    let h = |k: &str| {
        w.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(
        h("x-shopify-hmac-sha256"),
        hmac_b64(&sim.config.webhook_secret, &w.body)
    );
    assert_ne!(
        h("x-shopify-hmac-sha256"),
        hmac_b64("another-secret", &w.body)
    );
    assert_eq!(h("x-shopify-topic"), "inventory_levels/update");
    assert_eq!(h("x-shopify-shop-domain"), sim.config.shop_domain);
    assert_eq!(h("x-shopify-api-version"), "2026-04");
    assert!(!h("x-shopify-webhook-id").is_empty());
    assert!(!h("x-shopify-event-id").is_empty());
    assert!(h("x-shopify-triggered-at").ends_with('Z'));
    let body: Value = serde_json::from_slice(&w.body).unwrap();
    assert_eq!(body["available"], 12);
    assert_eq!(
        format!("gid://shopify/InventoryItem/{}", body["inventory_item_id"]),
        item
    );
    assert_eq!(
        format!("gid://shopify/Location/{}", body["location_id"]),
        loc
    );
    assert!(body["updated_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn failed_deliveries_are_retried_with_the_same_webhook_id() {
    let sim = start(small(1000.0, 1000.0)).await;
    let (addr, mut rx) = receiver(vec![500, 503]).await;
    subscribe(&sim, "INVENTORY_LEVELS_UPDATE", addr).await;
    let (item, loc) = item_and_location(&sim, "SKU-000004").await;
    gql(
        &sim,
        &set_mutation("r1"),
        set_input(&item, &loc, 3, json!(0)),
    )
    .await;
    let attempts = [
        next(&mut rx).await,
        next(&mut rx).await,
        next(&mut rx).await,
    ];
    let ids: Vec<&str> = attempts
        .iter()
        .map(|a| a.headers["x-shopify-webhook-id"].to_str().unwrap())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    // The receiver saw the third attempt; the sender records its 200 just after.
    let deadline = tokio::time::Instant::now() + T;
    while sim.stats()["webhooks"]["delivered"] != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery never recorded: {}",
            sim.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sim.stats()["webhooks"]["failed_attempts"], 2);
}

#[tokio::test]
async fn injected_duplicates_and_reordering() {
    let sim = start(small(1000.0, 1000.0)).await;
    let (addr, mut rx) = receiver(vec![]).await;
    subscribe(&sim, "INVENTORY_LEVELS_UPDATE", addr).await;
    let (item, loc) = item_and_location(&sim, "SKU-000005").await;

    sim.set_faults(
        ApiFaults::default(),
        WebhookFaults {
            duplicate_probability: 1.0,
            ..Default::default()
        },
    );
    gql(
        &sim,
        &set_mutation("d1"),
        set_input(&item, &loc, 1, json!(0)),
    )
    .await;
    let (a, b) = (next(&mut rx).await, next(&mut rx).await);
    assert_eq!(
        a.headers["x-shopify-webhook-id"],
        b.headers["x-shopify-webhook-id"]
    );
    assert_eq!(a.body, b.body);

    sim.set_faults(
        ApiFaults::default(),
        WebhookFaults {
            reorder_probability: 1.0,
            ..Default::default()
        },
    );
    gql(
        &sim,
        &set_mutation("o1"),
        set_input(&item, &loc, 2, json!(1)),
    )
    .await;
    gql(
        &sim,
        &set_mutation("o2"),
        set_input(&item, &loc, 3, json!(2)),
    )
    .await;
    let first: Value = serde_json::from_slice(&next(&mut rx).await.body).unwrap();
    let second: Value = serde_json::from_slice(&next(&mut rx).await.body).unwrap();
    assert_eq!(
        (first["available"].clone(), second["available"].clone()),
        (json!(3), json!(2))
    );
    assert!(sim.stats()["webhooks"]["reordered"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn orders_are_created_fulfilled_and_cancelled_with_webhooks() {
    let sim = start(small(1000.0, 1000.0)).await;
    sim.stock_every_level(100);
    let (addr, mut rx) = receiver(vec![]).await;
    for t in ["ORDERS_CREATE", "ORDERS_FULFILLED", "ORDERS_CANCELLED"] {
        subscribe(&sim, t, addr).await;
    }
    let placed: Value = reqwest::Client::new()
        .post(format!("{}/_sim/orders", sim.base_url()))
        .json(&json!({"count": 2, "paid": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<u64> = placed["order_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    let mut created = Vec::new();
    for _ in 0..2 {
        let w = next(&mut rx).await;
        assert_eq!(w.headers["x-shopify-topic"], "orders/create");
        created.push(serde_json::from_slice::<Value>(&w.body).unwrap());
    }
    let o = &created[0];
    assert_eq!(o["financial_status"], "paid");
    assert!(o["fulfillment_status"].is_null());
    assert!(o["email"].as_str().unwrap().contains('@'));
    assert!(
        o["line_items"][0]["sku"]
            .as_str()
            .unwrap()
            .starts_with("SKU-")
    );
    assert!(o["line_items"][0]["quantity"].as_i64().unwrap() >= 1);
    assert!(o["line_items"][0]["price"].as_str().unwrap().contains('.'));
    assert!(o["customer"]["email"].is_string());
    assert!(o["shipping_address"]["city"].is_string());
    assert!(o["updated_at"].as_str().unwrap().ends_with('Z'));

    let r = gql(
        &sim,
        "mutation($f: FulfillmentInput!) { fulfillmentCreate(fulfillment: $f) {
            fulfillment { status trackingInfo { number company } } userErrors { message } } }",
        json!({"f": {"lineItemsByFulfillmentOrder": [{"fulfillmentOrderId": format!("gid://shopify/FulfillmentOrder/{}", ids[0])}],
                     "trackingInfo": {"number": "JD0001", "company": "DHL"}}}),
    )
    .await;
    assert_eq!(
        r["data"]["fulfillmentCreate"]["userErrors"],
        json!([]),
        "{r}"
    );
    let w = next(&mut rx).await;
    assert_eq!(w.headers["x-shopify-topic"], "orders/fulfilled");
    let body: Value = serde_json::from_slice(&w.body).unwrap();
    assert_eq!(body["fulfillment_status"], "fulfilled");
    assert_eq!(body["fulfillments"][0]["tracking_number"], "JD0001");
    assert_eq!(body["fulfillments"][0]["tracking_company"], "DHL");

    let r = gql(
        &sim,
        "query($id: ID!) { order(id: $id) { displayFulfillmentStatus fulfillments { trackingInfo { number } } } }",
        json!({"id": format!("gid://shopify/Order/{}", ids[0])}),
    )
    .await;
    assert_eq!(r["data"]["order"]["displayFulfillmentStatus"], "FULFILLED");
    assert_eq!(
        r["data"]["order"]["fulfillments"][0]["trackingInfo"][0]["number"],
        "JD0001"
    );

    let r = gql(
        &sim,
        "mutation($id: ID!) { orderCancel(orderId: $id, reason: CUSTOMER, restock: true) { job { done } orderCancelUserErrors { message } } }",
        json!({"id": format!("gid://shopify/Order/{}", ids[1])}),
    )
    .await;
    assert_eq!(r["data"]["orderCancel"]["job"]["done"], true, "{r}");
    let w = next(&mut rx).await;
    assert_eq!(w.headers["x-shopify-topic"], "orders/cancelled");
    let body: Value = serde_json::from_slice(&w.body).unwrap();
    assert!(body["cancelled_at"].is_string());
    assert_eq!(body["cancel_reason"], "customer");
}

#[tokio::test]
async fn price_updates_change_state_and_emit_products_update() {
    let sim = start(small(1000.0, 1000.0)).await;
    let (addr, mut rx) = receiver(vec![]).await;
    subscribe(&sim, "PRODUCTS_UPDATE", addr).await;
    let r = gql(
        &sim,
        "{ productVariants(first: 1, query: \"sku:SKU-000010\") { nodes { id product { id } } } }",
        Value::Null,
    )
    .await;
    let v = &r["data"]["productVariants"]["nodes"][0];
    let r = gql(
        &sim,
        "mutation($p: ID!, $v: [ProductVariantsBulkInput!]!) { productVariantsBulkUpdate(productId: $p, variants: $v) {
            productVariants { price compareAtPrice } userErrors { code message } } }",
        json!({"p": v["product"]["id"], "v": [{"id": v["id"], "price": "12.50", "compareAtPrice": "15.00"}]}),
    )
    .await;
    assert_eq!(
        r["data"]["productVariantsBulkUpdate"]["userErrors"],
        json!([]),
        "{r}"
    );
    assert_eq!(
        r["data"]["productVariantsBulkUpdate"]["productVariants"][0]["price"],
        "12.50"
    );
    let w = next(&mut rx).await;
    assert_eq!(w.headers["x-shopify-topic"], "products/update");
    let body: Value = serde_json::from_slice(&w.body).unwrap();
    assert_eq!(body["variants"][0]["sku"], "SKU-000010");
    assert_eq!(body["variants"][0]["price"], "12.50");
    assert_eq!(body["variants"][0]["compare_at_price"], "15.00");

    let state: Value = reqwest::get(format!("{}/_sim/state", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let p = state["prices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["sku"] == "SKU-000010")
        .unwrap();
    assert_eq!(p["price"], "12.50");
}

#[tokio::test]
async fn the_order_generator_places_orders_at_its_rate() {
    let sim = start(small(1000.0, 1000.0)).await;
    sim.stock_every_level(1_000_000);
    sim.start_order_generator(50.0);
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let state: Value = reqwest::get(format!("{}/_sim/state", sim.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if state["orders"].as_array().unwrap().len() >= 10 {
            // Placed orders commit stock: some level shows it.
            assert!(
                state["stock"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|l| l["committed"].as_i64().unwrap() > 0)
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than 10 orders after 10 s at 50/s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.stop_order_generator();
}

#[tokio::test]
async fn marking_a_pending_order_paid_emits_orders_paid() {
    let sim = start(small(1000.0, 1000.0)).await;
    let (addr, mut rx) = receiver(vec![]).await;
    subscribe(&sim, "ORDERS_PAID", addr).await;
    sim.stock_every_level(100);
    let id = sim.place_orders(1, false)[0];
    let mark = "mutation($id: ID!) { orderMarkAsPaid(input: {id: $id}) { order { displayFinancialStatus } userErrors { message } } }";
    let vars = json!({"id": format!("gid://shopify/Order/{id}")});
    let r = gql(&sim, mark, vars.clone()).await;
    assert_eq!(
        r["data"]["orderMarkAsPaid"]["order"]["displayFinancialStatus"], "PAID",
        "{r}"
    );
    let w = next(&mut rx).await;
    assert_eq!(w.headers["x-shopify-topic"], "orders/paid");
    let body: Value = serde_json::from_slice(&w.body).unwrap();
    assert_eq!(body["id"], id);
    assert_eq!(body["financial_status"], "paid");
    // Paying twice is a user error, not a second webhook.
    let again = gql(&sim, mark, vars).await;
    assert_eq!(
        again["data"]["orderMarkAsPaid"]["userErrors"][0]["message"],
        "the order is paid, not pending"
    );
}

#[tokio::test]
async fn an_order_for_more_than_is_available_is_refused() {
    let sim = start(small(1000.0, 1000.0)).await;
    // Nothing in stock: the shop does not sell.
    assert_eq!(sim.place_order_for("SKU-000001", 1), None);
    sim.stock_every_level(2);
    assert!(sim.place_order_for("SKU-000001", 2).is_some());
    // Both units are committed now; the third is not there.
    assert_eq!(sim.place_order_for("SKU-000001", 1), None);
    assert_eq!(sim.stats()["orders_refused_short"], 2);
    let st = sim.shop().state.lock();
    let level = st
        .levels
        .values()
        .find(|l| l.committed == 2)
        .expect("the committed level");
    assert_eq!((level.available, level.on_hand()), (0, 2));
}
