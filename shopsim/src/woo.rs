//! The WooCommerce mode: a WooCommerce REST API v3 shop (`/wp-json/wc/v3/…`)
//! for Flywheel's tests and demo, with what matters to a sync:
//!
//! - basic auth with the consumer key and secret (401 otherwise);
//! - products with SKUs (simple products, `manage_stock`, `stock_quantity`,
//!   `regular_price`, `sale_price`), found by `?sku=a,b`, and, with
//!   `variations_per_product`, SKUs that are variations of a variable
//!   product (found by `?sku=` too, with their `parent_id`, as WooCommerce
//!   does);
//! - `POST products/batch` and `POST products/<id>/variations/batch` with
//!   WooCommerce's limit of 100 items per request (a variation is written
//!   through its parent's endpoint only);
//! - orders (`GET orders?modified_after=…`, `GET`/`PUT orders/<id>`) and their
//!   notes (`GET`/`POST orders/<id>/notes`);
//! - a request rate limit answered with 429 and `Retry-After`;
//! - webhooks signed the WooCommerce way (`X-WC-Webhook-*`, base64
//!   HMAC-SHA256 of the body), delivered once without retries, and a webhook
//!   disabled after 5 failed deliveries in a row, as WooCommerce does;
//! - the same fault injection as the Shopify mode, and `/_sim/state`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cost::LeakyBucket;
use crate::server::ApiFaults;
use crate::state::Seed;

/// WooCommerce's `woocommerce_rest_batch_items_limit`.
pub const BATCH_LIMIT: usize = 100;
/// WooCommerce's `woocommerce_max_webhook_delivery_failures`.
pub const MAX_DELIVERY_FAILURES: u32 = 5;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct WooConfig {
    pub consumer_key: String,
    pub consumer_secret: String,
    /// The secret webhooks are signed with.
    pub webhook_secret: String,
    /// Requests answered per second on average, and the burst above it;
    /// beyond that 429 with `Retry-After`.
    pub requests_per_second: f64,
    pub burst: f64,
    pub seed: Seed,
    /// Delivery URLs of `order.created` / `order.updated` webhooks.
    pub order_webhooks: Vec<String>,
    /// 0: every SKU is a simple product; n: SKUs come n at a time as the
    /// variations of one variable product (which has no SKU of its own).
    pub variations_per_product: usize,
}

impl Default for WooConfig {
    fn default() -> Self {
        WooConfig {
            consumer_key: "ck_flywheel_local".into(),
            consumer_secret: "cs_flywheel_local".into(),
            webhook_secret: "flywheel-woo-secret".into(),
            requests_per_second: 25.0,
            burst: 50.0,
            seed: crate::catalog::demo_seed(100, 1),
            order_webhooks: Vec::new(),
            variations_per_product: 0,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct WooProduct {
    pub id: u64,
    /// The variable product of a variation; 0 for a product.
    pub parent_id: u64,
    pub sku: String,
    pub regular_price: String,
    pub sale_price: String,
    pub manage_stock: bool,
    pub stock_quantity: Option<i64>,
    pub date_modified_gmt: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct WooLine {
    pub id: u64,
    pub product_id: u64,
    /// The variation sold, 0 for a simple product.
    pub variation_id: u64,
    pub sku: String,
    pub quantity: i64,
    pub price: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct WooNote {
    pub id: u64,
    pub note: String,
    pub customer_note: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct WooOrder {
    pub id: u64,
    pub status: String,
    pub currency: String,
    pub email: String,
    pub date_created_gmt: String,
    pub date_modified_gmt: String,
    pub line_items: Vec<WooLine>,
    pub notes: Vec<WooNote>,
}

/// A webhook subscription: where, and how many deliveries failed in a row.
#[derive(Clone, Debug, Serialize)]
pub struct WooWebhook {
    pub id: u64,
    pub delivery_url: String,
    pub status: String,
    pub failures: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct WooState {
    next_id: u64,
    /// The last timestamp handed out (seconds since the epoch).
    clock: u64,
    pub products: BTreeMap<u64, WooProduct>,
    pub orders: BTreeMap<u64, WooOrder>,
    pub webhooks: Vec<WooWebhook>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct WooStats {
    pub requests: u64,
    pub unauthorized: u64,
    pub throttled: u64,
    pub batch_requests: u64,
    pub batch_items: u64,
    pub oversized_batches: u64,
    pub injected_errors: u64,
    pub deliveries: u64,
    pub failed_deliveries: u64,
}

impl WooState {
    fn new(seed: &Seed, variations_per_product: usize) -> WooState {
        let mut s = WooState {
            next_id: 100,
            ..Default::default()
        };
        let mut parent_id = 0;
        for (n, (sku, price)) in seed.products.iter().enumerate() {
            if variations_per_product > 0 && n % variations_per_product == 0 {
                parent_id = s.new_id();
                let now = s.now();
                s.products.insert(
                    parent_id,
                    WooProduct {
                        id: parent_id,
                        parent_id: 0,
                        sku: String::new(),
                        regular_price: String::new(),
                        sale_price: String::new(),
                        manage_stock: false,
                        stock_quantity: None,
                        date_modified_gmt: now,
                    },
                );
            }
            let id = s.new_id();
            let now = s.now();
            s.products.insert(
                id,
                WooProduct {
                    id,
                    parent_id,
                    sku: sku.clone(),
                    regular_price: price.clone(),
                    sale_price: String::new(),
                    manage_stock: true,
                    stock_quantity: Some(seed.initial_available),
                    date_modified_gmt: now,
                },
            );
        }
        s
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The time of a change in WooCommerce's `*_gmt` format: the wall clock
    /// in whole seconds, as WooCommerce stamps it, so changes made within one
    /// second share a timestamp (never going back).
    fn now(&mut self) -> String {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.clock = wall.max(self.clock);
        gmt(self.clock)
    }

    pub fn product_by_sku(&self, sku: &str) -> Option<&WooProduct> {
        self.products
            .values()
            .find(|p| !p.sku.is_empty() && p.sku == sku)
    }

    /// Deletes the product or variation with `sku` for good and creates it
    /// again under a new id (a merchant's re-import): a client that mapped
    /// the SKU to the old id is refused with `…_invalid_id`. Returns (old id,
    /// new id).
    pub fn replace_product(&mut self, sku: &str) -> Option<(u64, u64)> {
        let old = self.product_by_sku(sku)?.id;
        let mut product = self.products.remove(&old)?;
        product.id = self.new_id();
        product.date_modified_gmt = self.now();
        let new = product.id;
        self.products.insert(new, product);
        Some((old, new))
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` since the epoch (UTC; Howard Hinnant's
/// days-to-civil).
fn gmt(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn product_json(p: &WooProduct) -> Value {
    let price = if p.sale_price.is_empty() {
        &p.regular_price
    } else {
        &p.sale_price
    };
    json!({
        "id": p.id, "name": p.sku, "sku": p.sku, "parent_id": p.parent_id,
        "type": if p.parent_id != 0 { "variation" } else if p.sku.is_empty() { "variable" } else { "simple" },
        "price": price, "regular_price": p.regular_price, "sale_price": p.sale_price,
        "manage_stock": p.manage_stock, "stock_quantity": p.stock_quantity,
        "stock_status": if p.stock_quantity.unwrap_or(0) > 0 { "instock" } else { "outofstock" },
        "date_modified_gmt": p.date_modified_gmt,
    })
}

fn order_json(o: &WooOrder) -> Value {
    let total: f64 = o
        .line_items
        .iter()
        .map(|l| l.price * l.quantity as f64)
        .sum();
    json!({
        "id": o.id, "number": o.id.to_string(), "status": o.status, "currency": o.currency,
        "date_created_gmt": o.date_created_gmt, "date_modified_gmt": o.date_modified_gmt,
        "total": format!("{total:.2}"), "customer_id": 0,
        "billing": {"email": o.email, "first_name": "Woo", "last_name": "Buyer"},
        "shipping": {"first_name": "Woo", "last_name": "Buyer"},
        "line_items": o.line_items.iter().map(|l| json!({
            "id": l.id, "product_id": l.product_id, "variation_id": l.variation_id, "sku": l.sku,
            "quantity": l.quantity, "price": l.price,
            "total": format!("{:.2}", l.price * l.quantity as f64),
        })).collect::<Vec<_>>(),
    })
}

struct WooApp {
    config: WooConfig,
    state: Mutex<WooState>,
    bucket: Mutex<LeakyBucket>,
    faults: Mutex<ApiFaults>,
    stats: Mutex<WooStats>,
    http: reqwest::Client,
    /// An order to change right after the next order listing is answered.
    change_after_listing: Mutex<Option<u64>>,
}

/// A running WooCommerce simulator. Dropping it stops the server.
pub struct WooSim {
    pub addr: SocketAddr,
    pub config: WooConfig,
    app: Arc<WooApp>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for WooSim {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl WooSim {
    pub async fn start(config: WooConfig, listen: SocketAddr) -> std::io::Result<WooSim> {
        let mut state = WooState::new(&config.seed, config.variations_per_product);
        for url in &config.order_webhooks {
            let id = state.new_id();
            state.webhooks.push(WooWebhook {
                id,
                delivery_url: url.clone(),
                status: "active".into(),
                failures: 0,
            });
        }
        let app = Arc::new(WooApp {
            bucket: Mutex::new(LeakyBucket::new(config.burst, config.requests_per_second)),
            config: config.clone(),
            state: Mutex::new(state),
            faults: Mutex::default(),
            stats: Mutex::default(),
            change_after_listing: Mutex::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .map_err(std::io::Error::other)?,
        });
        let api = "/wp-json/wc/v3";
        let router = Router::new()
            .route(&format!("{api}/products"), get(list_products))
            .route(&format!("{api}/products/batch"), post(batch_products))
            .route(
                &format!("{api}/products/{{id}}/variations/batch"),
                post(batch_variations),
            )
            .route(&format!("{api}/orders"), get(list_orders))
            .route(
                &format!("{api}/orders/{{id}}"),
                get(get_order).put(put_order),
            )
            .route(
                &format!("{api}/orders/{{id}}/notes"),
                post(add_note).get(list_notes),
            )
            .route("/_sim/state", get(sim_state))
            .route("/_sim/faults", post(sim_faults))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(app.clone());
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "woo simulator stopped");
            }
        });
        Ok(WooSim {
            addr,
            config,
            app,
            server,
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state(&self) -> parking_lot::MutexGuard<'_, WooState> {
        self.app.state.lock()
    }

    pub fn stats(&self) -> WooStats {
        self.app.stats.lock().clone()
    }

    pub fn set_faults(&self, faults: ApiFaults) {
        *self.app.faults.lock() = faults;
    }

    /// Changes order `id` (its `date_modified_gmt` moves to now) right after
    /// the next `GET orders` is answered: an order that changes while a
    /// client pages through the listing, moving from a page it has read to
    /// one it has not.
    pub fn change_order_after_next_listing(&self, id: u64) {
        *self.app.change_after_listing.lock() = Some(id);
    }

    /// SKU → stock quantity of every product or variation with a SKU.
    pub fn stock(&self) -> BTreeMap<String, Option<i64>> {
        self.state()
            .products
            .values()
            .filter(|p| !p.sku.is_empty())
            .map(|p| (p.sku.clone(), p.stock_quantity))
            .collect()
    }

    /// SKU → (regular price, sale price) of every product or variation with a SKU.
    pub fn prices(&self) -> BTreeMap<String, (String, String)> {
        self.state()
            .products
            .values()
            .filter(|p| !p.sku.is_empty())
            .map(|p| {
                (
                    p.sku.clone(),
                    (p.regular_price.clone(), p.sale_price.clone()),
                )
            })
            .collect()
    }

    /// Places a paid (`processing`) order of `quantity` × `sku`, taking it
    /// from stock, and sends `order.created`; `None` for an unknown SKU or
    /// too little stock.
    pub async fn place_order(&self, sku: &str, quantity: i64) -> Option<u64> {
        let order = {
            let mut st = self.app.state.lock();
            let product = st.product_by_sku(sku)?.clone();
            if product.manage_stock && product.stock_quantity.unwrap_or(0) < quantity {
                return None;
            }
            let (id, line_id, now) = (st.new_id(), st.new_id(), st.now());
            if let Some(p) = st.products.get_mut(&product.id) {
                p.stock_quantity = p.stock_quantity.map(|q| q - quantity);
            }
            let order = WooOrder {
                id,
                status: "processing".into(),
                currency: "EUR".into(),
                email: format!("woo{}@example.com", fastrand::u32(1..10_000)),
                date_created_gmt: now.clone(),
                date_modified_gmt: now,
                line_items: vec![WooLine {
                    id: line_id,
                    product_id: if product.parent_id != 0 {
                        product.parent_id
                    } else {
                        product.id
                    },
                    variation_id: if product.parent_id != 0 {
                        product.id
                    } else {
                        0
                    },
                    sku: sku.into(),
                    quantity,
                    price: product.regular_price.parse().unwrap_or(0.0),
                }],
                notes: Vec::new(),
            };
            st.orders.insert(id, order.clone());
            order
        };
        deliver(&self.app, "order.created", &order_json(&order)).await;
        Some(order.id)
    }
}

/// Sends one webhook to every active subscription, once: WooCommerce does not
/// retry, and disables a webhook after `MAX_DELIVERY_FAILURES` in a row.
async fn deliver(app: &WooApp, topic: &str, body: &Value) {
    let hooks: Vec<WooWebhook> = app
        .state
        .lock()
        .webhooks
        .iter()
        .filter(|w| w.status == "active")
        .cloned()
        .collect();
    let raw = body.to_string();
    let signature = crate::webhooks::sign(&app.config.webhook_secret, raw.as_bytes());
    let (resource, event) = topic.split_once('.').unwrap_or((topic, ""));
    for hook in hooks {
        let delivery_id = app.state.lock().new_id();
        let sent = app
            .http
            .post(&hook.delivery_url)
            .header("content-type", "application/json")
            .header("X-WC-Webhook-Source", "http://woo.flywheel.test/")
            .header("X-WC-Webhook-Topic", topic)
            .header("X-WC-Webhook-Resource", resource)
            .header("X-WC-Webhook-Event", event)
            .header("X-WC-Webhook-Signature", &signature)
            .header("X-WC-Webhook-ID", hook.id.to_string())
            .header("X-WC-Webhook-Delivery-ID", delivery_id.to_string())
            .body(raw.clone())
            .send()
            .await;
        let ok = sent.is_ok_and(|r| r.status().is_success());
        {
            // One lock at a time: `sim_state` takes state, then stats.
            let mut stats = app.stats.lock();
            stats.deliveries += 1;
            if !ok {
                stats.failed_deliveries += 1;
            }
        }
        let mut st = app.state.lock();
        if let Some(w) = st.webhooks.iter_mut().find(|w| w.id == hook.id) {
            if ok {
                w.failures = 0;
            } else {
                w.failures += 1;
                if w.failures >= MAX_DELIVERY_FAILURES {
                    w.status = "disabled".into();
                }
            }
        }
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({"code": code, "message": message, "data": {"status": status.as_u16()}}).to_string(),
    )
        .into_response()
}

fn invalid_json() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "rest_invalid_json",
        "Invalid JSON body passed.",
    )
}

fn no_such_order() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "woocommerce_rest_shop_order_invalid_id",
        "Invalid ID.",
    )
}

/// Basic auth, the rate limit and injected faults. `Err` is the response.
async fn gate(app: &WooApp, headers: &HeaderMap) -> Result<(), Box<Response>> {
    app.stats.lock().requests += 1;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            app.config.consumer_key, app.config.consumer_secret
        ))
    );
    let given = headers.get("authorization").and_then(|v| v.to_str().ok());
    if given != Some(expected.as_str()) {
        app.stats.lock().unauthorized += 1;
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "woocommerce_rest_cannot_view",
            "Sorry, you cannot list resources.",
        )));
    }
    let wait = app
        .bucket
        .lock()
        .try_take_at(1.0, std::time::Instant::now());
    if let Err(wait_secs) = wait {
        app.stats.lock().throttled += 1;
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "Too many requests.",
        );
        let secs = wait_secs.ceil().max(1.0) as u64;
        if let Ok(v) = secs.to_string().parse() {
            r.headers_mut().insert("retry-after", v);
        }
        return Err(Box::new(r));
    }
    let f = app.faults.lock().clone();
    if f.latency_ms > 0 && fastrand::f64() < f.latency_probability {
        tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
    }
    if fastrand::f64() < f.error_probability {
        app.stats.lock().injected_errors += 1;
        return Err(Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable.",
        )));
    }
    Ok(())
}

fn ok(body: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn list_products(
    State(app): State<Arc<WooApp>>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(r) = gate(&app, &headers).await {
        return *r;
    }
    let skus: Option<Vec<&str>> = q.get("sku").map(|s| s.split(',').collect());
    let per_page: usize = q
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(10)
        .min(100);
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let st = app.state.lock();
    let found: Vec<Value> = st
        .products
        .values()
        .filter(|p| match &skus {
            Some(s) => !p.sku.is_empty() && s.contains(&p.sku.as_str()),
            // Listed without a SKU filter, variations stay under their parent.
            None => p.parent_id == 0,
        })
        .skip(per_page * page.saturating_sub(1))
        .take(per_page)
        .map(product_json)
        .collect();
    ok(Value::Array(found))
}

#[derive(Deserialize)]
struct Batch {
    #[serde(default)]
    create: Vec<Value>,
    #[serde(default)]
    update: Vec<Value>,
    #[serde(default)]
    delete: Vec<Value>,
}

async fn batch_products(
    State(app): State<Arc<WooApp>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    batch(&app, &headers, 0, &body).await
}

async fn batch_variations(
    State(app): State<Arc<WooApp>>,
    Path(parent): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if parent == 0 {
        return no_such_product();
    }
    batch(&app, &headers, parent, &body).await
}

fn no_such_product() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "woocommerce_rest_product_invalid_id",
        "Invalid ID.",
    )
}

/// A batch of updates to the products (`parent` 0) or to the variations of
/// product `parent`: an item of the other kind is refused as an invalid id.
async fn batch(app: &WooApp, headers: &HeaderMap, parent: u64, body: &Bytes) -> Response {
    if let Err(r) = gate(app, headers).await {
        return *r;
    }
    let Ok(batch) = serde_json::from_slice::<Batch>(body) else {
        return invalid_json();
    };
    let items = batch.create.len() + batch.update.len() + batch.delete.len();
    if items > BATCH_LIMIT {
        app.stats.lock().oversized_batches += 1;
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "woocommerce_rest_request_entity_too_large",
            &format!("Unable to accept more than {BATCH_LIMIT} items for this request."),
        );
    }
    {
        let mut stats = app.stats.lock();
        stats.batch_requests += 1;
        stats.batch_items += items as u64;
    }
    let mut updated = Vec::new();
    let mut st = app.state.lock();
    for u in &batch.update {
        let Some(id) = u.get("id").and_then(Value::as_u64) else {
            updated.push(json!({"id": 0, "error": {"code": "woocommerce_rest_product_invalid_id", "message": "Invalid ID.", "data": {"status": 400}}}));
            continue;
        };
        let now = st.now();
        let Some(p) = st.products.get_mut(&id).filter(|p| p.parent_id == parent) else {
            updated.push(json!({"id": id, "error": {"code": "woocommerce_rest_product_invalid_id", "message": "Invalid ID.", "data": {"status": 400}}}));
            continue;
        };
        if let Some(m) = u.get("manage_stock").and_then(Value::as_bool) {
            p.manage_stock = m;
        }
        if let Some(q) = u.get("stock_quantity").and_then(Value::as_i64) {
            p.stock_quantity = Some(q);
        }
        if let Some(r) = u.get("regular_price").and_then(Value::as_str) {
            p.regular_price = r.into();
        }
        if let Some(s) = u.get("sale_price").and_then(Value::as_str) {
            p.sale_price = s.into();
        }
        p.date_modified_gmt = now;
        updated.push(product_json(p));
    }
    ok(json!({"create": [], "update": updated, "delete": []}))
}

async fn list_orders(
    State(app): State<Arc<WooApp>>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(r) = gate(&app, &headers).await {
        return *r;
    }
    let after = q.get("modified_after").cloned().unwrap_or_default();
    // WordPress takes an array parameter as a comma-separated list too.
    let ignored = app.faults.lock().ignore_exclude;
    let exclude: Vec<u64> = q
        .get("exclude")
        .filter(|_| !ignored)
        .map(|ids| {
            ids.split(',')
                .filter_map(|id| id.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let per_page: usize = q
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(10)
        .min(100);
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    // As WordPress: an offset replaces the page's.
    let skip = q
        .get("offset")
        .and_then(|o| o.parse().ok())
        .unwrap_or(per_page * page.saturating_sub(1));
    let mut st = app.state.lock();
    // Timestamps share one format: text order is time order. Oldest change
    // first, as `orderby=modified&order=asc` asks.
    let mut matching: Vec<&WooOrder> = st
        .orders
        .values()
        .filter(|o| o.date_modified_gmt.as_str() > after.as_str() && !exclude.contains(&o.id))
        .collect();
    matching.sort_by(|a, b| (&a.date_modified_gmt, a.id).cmp(&(&b.date_modified_gmt, b.id)));
    let found: Vec<Value> = matching
        .into_iter()
        .skip(skip)
        .take(per_page)
        .map(order_json)
        .collect();
    if let Some(id) = app.change_after_listing.lock().take() {
        let now = st.now();
        if let Some(order) = st.orders.get_mut(&id) {
            order.date_modified_gmt = now;
        }
    }
    ok(Value::Array(found))
}

async fn get_order(
    State(app): State<Arc<WooApp>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    if let Err(r) = gate(&app, &headers).await {
        return *r;
    }
    match app.state.lock().orders.get(&id) {
        Some(o) => ok(order_json(o)),
        None => no_such_order(),
    }
}

async fn put_order(
    State(app): State<Arc<WooApp>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    body: Bytes,
) -> Response {
    if let Err(r) = gate(&app, &headers).await {
        return *r;
    }
    let Ok(update) = serde_json::from_slice::<Value>(&body) else {
        return invalid_json();
    };
    let order = {
        let mut st = app.state.lock();
        let now = st.now();
        let Some(o) = st.orders.get_mut(&id) else {
            return no_such_order();
        };
        if let Some(status) = update.get("status").and_then(Value::as_str) {
            o.status = status.into();
        }
        o.date_modified_gmt = now;
        o.clone()
    };
    let body = order_json(&order);
    deliver(&app, "order.updated", &body).await;
    ok(body)
}

async fn add_note(
    State(app): State<Arc<WooApp>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    body: Bytes,
) -> Response {
    if let Err(r) = gate(&app, &headers).await {
        return *r;
    }
    let Ok(note) = serde_json::from_slice::<Value>(&body) else {
        return invalid_json();
    };
    let mut st = app.state.lock();
    let note_id = st.new_id();
    let Some(o) = st.orders.get_mut(&id) else {
        return no_such_order();
    };
    let n = WooNote {
        id: note_id,
        note: note
            .get("note")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        customer_note: note
            .get("customer_note")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    o.notes.push(n.clone());
    ok(json!({"id": n.id, "note": n.note, "customer_note": n.customer_note}))
}

async fn list_notes(
    State(app): State<Arc<WooApp>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    if let Err(r) = gate(&app, &headers).await {
        return *r;
    }
    match app.state.lock().orders.get(&id) {
        Some(o) => ok(json!(o.notes)),
        None => no_such_order(),
    }
}

async fn sim_state(State(app): State<Arc<WooApp>>) -> Response {
    let stats = app.stats.lock().clone();
    let st = app.state.lock();
    ok(json!({
        "products": st.products.values().map(product_json).collect::<Vec<_>>(),
        "orders": st.orders.values().map(|o| {
            let mut v = order_json(o);
            v["notes"] = json!(o.notes);
            v
        }).collect::<Vec<_>>(),
        "webhooks": st.webhooks,
        "stats": stats,
    }))
}

async fn sim_faults(State(app): State<Arc<WooApp>>, body: Bytes) -> Response {
    match serde_json::from_slice::<ApiFaults>(&body) {
        Ok(f) => {
            *app.faults.lock() = f;
            ok(json!({"ok": true}))
        }
        Err(e) => error(StatusCode::BAD_REQUEST, "invalid", &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_never_go_back_share_seconds_and_sort_as_text() {
        let mut s = WooState::default();
        let mut last = String::new();
        let mut shared = 0;
        for _ in 0..10_000 {
            let t = s.now();
            assert!(t >= last, "{t} after {last}");
            shared += usize::from(t == last);
            last = t;
        }
        assert!(shared > 0, "changes within one second share its timestamp");
    }

    #[test]
    fn gmt_formats_civil_dates() {
        assert_eq!(gmt(0), "1970-01-01T00:00:00");
        assert_eq!(gmt(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(gmt(1_795_000_000), "2026-11-18T11:06:40");
    }
}
