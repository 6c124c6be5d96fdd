//! The HTTP side: the GraphQL endpoint with cost accounting and throttling, the
//! REST-style endpoints with their request bucket, fault injection, the order
//! generator, and `/_sim/*` for tests to inspect and steer the shop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cost::{LeakyBucket, actual_cost, requested_cost};
use crate::graphql::{Shop, ShopSchema, build_schema};
use crate::state::{Seed, ShopState, now_rfc3339};
use crate::webhooks::{API_VERSION, DeliveryPolicy, Topic, WebhookFaults, WebhookSender};

/// How the simulated shop behaves. Every field has a default.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    pub shop_domain: String,
    /// Expected `X-Shopify-Access-Token`.
    pub access_token: String,
    /// The app secret webhooks are signed with.
    pub webhook_secret: String,
    /// GraphQL bucket (Shopify standard plan: 1000 points, 100/s).
    pub bucket_size: f64,
    pub restore_rate: f64,
    /// REST bucket (40 requests leaking 2/s).
    pub rest_bucket_size: f64,
    pub rest_leak_rate: f64,
    pub seed: Seed,
    /// (topic, callback URL) subscriptions at start.
    pub subscriptions: Vec<(Topic, String)>,
    pub delivery: DeliveryPolicy,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            shop_domain: "flywheel-demo.myshopify.com".into(),
            access_token: "shpat_flywheel_local".into(),
            webhook_secret: "flywheel-local-secret".into(),
            bucket_size: 1000.0,
            restore_rate: 100.0,
            rest_bucket_size: 40.0,
            rest_leak_rate: 2.0,
            seed: crate::catalog::demo_seed(100, 3),
            subscriptions: Vec::new(),
            delivery: DeliveryPolicy::default(),
        }
    }
}

/// API faults, each with a probability in [0, 1].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiFaults {
    pub latency_ms: u64,
    pub latency_probability: f64,
    /// Answer 503 without doing anything.
    pub error_probability: f64,
    /// Hold the request past any client's patience (30 s), doing nothing.
    pub timeout_probability: f64,
    /// Extra processing time inside inventory and price mutations (to overlap
    /// requests that share an idempotency key, or kill a worker mid-write).
    pub mutation_latency_ms: u64,
    /// How long a bulk operation runs before its result is ready (Shopify
    /// takes seconds to minutes).
    pub bulk_latency_ms: u64,
    /// Answer as API versions before 2026-01 do: no `bulkOperation(id:)`.
    pub no_bulk_operation_by_id: bool,
    /// Every bulk operation ends FAILED (`INTERNAL_SERVER_ERROR`).
    pub bulk_failure: bool,
    /// Answer 503 to every page of a REST listing after the first (a
    /// request with `page_info`): a shop that fails part-way through.
    pub later_pages_unavailable: bool,
    /// WooCommerce: list orders ignoring `exclude`, as a site whose plugin
    /// rewrites the query might.
    pub ignore_exclude: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApiStats {
    pub graphql_requests: u64,
    pub rest_requests: u64,
    pub unauthorized: u64,
    pub throttled: u64,
    pub rest_throttled: u64,
    /// Sum of actual query cost charged.
    pub cost_used: u64,
    pub injected_errors: u64,
    pub injected_timeouts: u64,
    /// Count per top-level GraphQL field (e.g. `inventorySetQuantities`).
    pub operations: std::collections::BTreeMap<String, u64>,
}

struct App {
    shop: Arc<Shop>,
    schema: ShopSchema,
    config: SimConfig,
    bucket: Mutex<LeakyBucket>,
    rest_bucket: Mutex<LeakyBucket>,
    faults: Mutex<ApiFaults>,
    stats: Mutex<ApiStats>,
    started: Instant,
}

/// A running simulator. Dropping it stops the server.
pub struct ShopSim {
    pub addr: SocketAddr,
    pub config: SimConfig,
    app: Arc<App>,
    server: tokio::task::JoinHandle<()>,
    generator: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for ShopSim {
    fn drop(&mut self) {
        self.server.abort();
        if let Some(g) = self.generator.lock().take() {
            g.abort();
        }
    }
}

impl ShopSim {
    /// Starts the simulator on `listen` (port 0 for a free one).
    pub async fn start(config: SimConfig, listen: SocketAddr) -> std::io::Result<ShopSim> {
        let webhooks = WebhookSender::start(
            config.webhook_secret.clone(),
            config.shop_domain.clone(),
            config.delivery.clone(),
        );
        let state = ShopState::new(&config.seed);
        let (bulk, bulk_jobs) = crate::bulk::BulkOps::new();
        let bulk = Arc::new(bulk);
        let shop = Arc::new(Shop {
            state: Mutex::new(state),
            webhooks,
            idempotency: Mutex::default(),
            shop_domain: config.shop_domain.clone(),
            mutation_latency: Mutex::new(Duration::ZERO),
            no_bulk_operation_by_id: Default::default(),
            bulk: bulk.clone(),
        });
        for (topic, url) in &config.subscriptions {
            let id = shop.state.lock().new_id();
            shop.webhooks.subscribe(id, *topic, url.clone());
        }
        let app = Arc::new(App {
            schema: build_schema(shop.clone()),
            shop,
            bucket: Mutex::new(LeakyBucket::new(config.bucket_size, config.restore_rate)),
            rest_bucket: Mutex::new(LeakyBucket::new(
                config.rest_bucket_size,
                config.rest_leak_rate,
            )),
            faults: Mutex::default(),
            stats: Mutex::default(),
            config: config.clone(),
            started: Instant::now(),
        });
        let api = format!("/admin/api/{API_VERSION}");
        let router = Router::new()
            .route(&format!("{api}/graphql.json"), post(graphql))
            .route(&format!("{api}/products.json"), get(rest_products))
            .route(
                &format!("{api}/inventory_levels.json"),
                get(rest_inventory_levels),
            )
            .route(
                &format!("{api}/inventory_levels/set.json"),
                post(rest_set_inventory),
            )
            .route(&format!("{api}/orders/{{id}}"), get(rest_order))
            .route(&format!("{api}/orders.json"), get(rest_orders))
            .route("/_sim/bulk/{file}", get(bulk_file))
            .route(
                "/_sim/staged-uploads",
                post(staged_upload).layer(axum::extract::DefaultBodyLimit::max(
                    crate::bulk::MAX_UPLOAD_BYTES + 64 * 1024,
                )),
            )
            .route("/_sim/state", get(sim_state))
            .route("/_sim/stats", get(sim_stats))
            .route("/_sim/faults", post(sim_faults))
            .route("/_sim/orders", post(sim_orders))
            .route("/_sim/webhooks", post(sim_subscribe))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(app.clone());
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        bulk.set_base_url(format!("http://{addr}"));
        let runner = crate::bulk::run(app.schema.clone(), bulk, bulk_jobs, now_rfc3339);
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, router);
            tokio::select! {
                served = serve => if let Err(e) = served {
                    tracing::error!(error = %e, "shopsim server stopped");
                },
                // Runs while the shop lives (it holds the job sender).
                () = runner => {}
            }
        });
        tracing::info!(%addr, shop = %config.shop_domain, "shop simulator listening");
        Ok(ShopSim {
            addr,
            config,
            app,
            server,
            generator: Mutex::new(None),
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn graphql_url(&self) -> String {
        format!("{}/admin/api/{API_VERSION}/graphql.json", self.base_url())
    }

    pub fn shop(&self) -> &Arc<Shop> {
        &self.app.shop
    }

    pub fn set_faults(&self, api: ApiFaults, webhooks: WebhookFaults) {
        *self.app.shop.mutation_latency.lock() = Duration::from_millis(api.mutation_latency_ms);
        self.app.shop.no_bulk_operation_by_id.store(
            api.no_bulk_operation_by_id,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.app
            .shop
            .bulk
            .set_latency(Duration::from_millis(api.bulk_latency_ms));
        self.app.shop.bulk.set_failing(api.bulk_failure);
        *self.app.faults.lock() = api;
        *self.app.shop.webhooks.faults.lock() = webhooks;
    }

    pub fn stats(&self) -> Value {
        stats_json(&self.app)
    }

    /// How many GraphQL operations with this root field (`productVariants`,
    /// `inventorySetQuantities`, …) the shop answered.
    pub fn operations(&self, name: &str) -> u64 {
        self.app
            .stats
            .lock()
            .operations
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// Places `count` random orders now; returns their ids.
    pub fn place_orders(&self, count: u32, paid: bool) -> Vec<u64> {
        (0..count)
            .filter_map(|_| place_random_order(&self.app.shop, paid))
            .collect()
    }

    /// Sets every level's `available` to `units` (nothing committed changes):
    /// a shop with stock to sell, for tests that place orders.
    pub fn stock_every_level(&self, units: i64) {
        for level in self.app.shop.state.lock().levels.values_mut() {
            level.available = units;
        }
    }

    /// Places one paid order of `quantity` × `sku` at the shop's first
    /// location; `None` when the SKU is unknown or not enough is available.
    pub fn place_order_for(&self, sku: &str, quantity: i64) -> Option<u64> {
        let (id, emitted) = {
            let mut st = self.app.shop.state.lock();
            let variant = st.variant_by_sku(sku)?.id;
            let location = *st.locations.keys().next()?;
            let email = format!("buyer{}@example.com", fastrand::u32(1..10_000));
            st.place_order(&[(variant, quantity)], &email, location, true)?
        };
        for e in emitted {
            self.app.shop.webhooks.emit(e.topic, &e.payload);
        }
        Some(id)
    }

    /// The merchant deletes the product of `sku` and creates a new one with
    /// the same SKU and price (new variant, new inventory item, `available`
    /// at every location), as `products/delete` and `products/create` tell.
    /// Returns (old inventory item, new inventory item).
    pub fn replace_product(&self, sku: &str, available: i64) -> Option<(u64, u64)> {
        let webhooks = &self.app.shop.webhooks;
        // The deletion's webhook is stamped (X-Shopify-Triggered-At, its
        // version) as it happens, before the new product exists, as Shopify
        // does: stamped after the new product, a busy machine gave the
        // deletion the later version, and whichever lane applied it first
        // decided whether the new product's mapping was kept.
        let old = {
            let mut st = self.app.shop.state.lock();
            let old = st.variant_by_sku(sku)?.clone();
            st.delete_product(old.product_id);
            old
        };
        webhooks.emit(
            Topic::ProductsDelete,
            &serde_json::json!({"id": old.product_id}),
        );
        let (new_item, created) = {
            let mut st = self.app.shop.state.lock();
            let new_item = st.add_product(sku, &old.price, available);
            let product = st.variant_by_item(new_item)?.product_id;
            (new_item, st.product_payload(product))
        };
        webhooks.emit(Topic::ProductsCreate, &created);
        let old_item = old.inventory_item_id;
        Some((old_item, new_item))
    }

    /// Places orders at `per_second` until stopped (replaces a running generator).
    pub fn start_order_generator(&self, per_second: f64) {
        let shop = self.app.shop.clone();
        let every = Duration::from_secs_f64(1.0 / per_second.max(0.001));
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                place_random_order(&shop, true);
            }
        });
        if let Some(old) = self.generator.lock().replace(handle) {
            old.abort();
        }
    }

    pub fn stop_order_generator(&self) {
        if let Some(g) = self.generator.lock().take() {
            g.abort();
        }
    }
}

/// One order of 1–3 random lines, committed at the shop's first location
/// (its default fulfilment location, where the ERP's orders ship from too);
/// `None` when a line is short.
pub fn place_random_order(shop: &Shop, paid: bool) -> Option<u64> {
    let (lines, location) = {
        let st = shop.state.lock();
        let variants: Vec<u64> = st.variants.keys().copied().collect();
        let locations: Vec<u64> = st.locations.keys().copied().collect();
        if variants.is_empty() || locations.is_empty() {
            return None;
        }
        let n = fastrand::usize(1..=3);
        let lines: Vec<(u64, i64)> = (0..n)
            .map(|_| {
                (
                    variants[fastrand::usize(..variants.len())],
                    fastrand::i64(1..=3),
                )
            })
            .collect();
        (lines, locations[0])
    };
    let email = format!("buyer{}@example.com", fastrand::u32(1..10_000));
    let (id, emitted) = shop
        .state
        .lock()
        .place_order(&lines, &email, location, paid)?;
    for e in emitted {
        shop.webhooks.emit(e.topic, &e.payload);
    }
    Some(id)
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Checks the token and applies injected faults. `Err` is the response to send.
async fn gate(app: &App, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let token = headers
        .get("x-shopify-access-token")
        .and_then(|v| v.to_str().ok());
    if token != Some(app.config.access_token.as_str()) {
        app.stats.lock().unauthorized += 1;
        return Err(Box::new(json_response(
            StatusCode::UNAUTHORIZED,
            json!({"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}),
        )));
    }
    let f = app.faults.lock().clone();
    if f.latency_ms > 0 && fastrand::f64() < f.latency_probability {
        tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
    }
    if fastrand::f64() < f.timeout_probability {
        app.stats.lock().injected_timeouts += 1;
        tokio::time::sleep(Duration::from_secs(30)).await;
        return Err(Box::new(json_response(
            StatusCode::GATEWAY_TIMEOUT,
            json!({"errors": "timeout"}),
        )));
    }
    if fastrand::f64() < f.error_probability {
        app.stats.lock().injected_errors += 1;
        return Err(Box::new(json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"errors": "Service Unavailable (injected)"}),
        )));
    }
    Ok(())
}

fn throttle_status(app: &App, available: f64) -> Value {
    json!({
        "maximumAvailable": app.config.bucket_size,
        "currentlyAvailable": available.floor(),
        "restoreRate": app.config.restore_rate,
    })
}

async fn graphql(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = gate(&app, &headers).await {
        return *r;
    }
    app.stats.lock().graphql_requests += 1;
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"errors": [{"message": format!("invalid request body: {e}")}]}),
            );
        }
    };
    let variables = serde_json::to_value(&request.variables).unwrap_or(Value::Null);
    let doc = match async_graphql::parser::parse_query(&request.query) {
        Ok(d) => d,
        // Let the schema report the syntax error in GraphQL's own shape.
        Err(_) => {
            let resp = app.schema.execute(request).await;
            return json_response(
                StatusCode::OK,
                serde_json::to_value(&resp).unwrap_or(Value::Null),
            );
        }
    };
    let requested = requested_cost(&doc, request.operation_name.as_deref(), &variables);
    let is_mutation = request.query.trim_start().starts_with("mutation");
    if requested as f64 > app.config.bucket_size {
        let available = app.bucket.lock().available_at(Instant::now());
        return json_response(
            StatusCode::OK,
            json!({
                "errors": [{"message": format!("Query cost is {requested}, which exceeds the single query max cost limit ({}).", app.config.bucket_size), "extensions": {"code": "MAX_COST_EXCEEDED", "cost": requested, "maxCost": app.config.bucket_size}}],
                "extensions": {"cost": {"requestedQueryCost": requested, "actualQueryCost": null, "throttleStatus": throttle_status(&app, available)}},
            }),
        );
    }
    let taken = app
        .bucket
        .lock()
        .try_take_at(requested as f64, Instant::now());
    if taken.is_err() {
        app.stats.lock().throttled += 1;
        let available = app.bucket.lock().available_at(Instant::now());
        return json_response(
            StatusCode::OK,
            json!({
                "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"}}],
                "extensions": {"cost": {"requestedQueryCost": requested, "actualQueryCost": null, "throttleStatus": throttle_status(&app, available)}},
            }),
        );
    }
    let response = app.schema.execute(request).await;
    let mut body = serde_json::to_value(&response).unwrap_or(Value::Null);
    let data = body.get("data").cloned().unwrap_or(Value::Null);
    let actual = actual_cost(&data, is_mutation).min(requested);
    let available = {
        let mut b = app.bucket.lock();
        b.refund((requested - actual) as f64);
        b.available_at(Instant::now())
    };
    {
        let mut stats = app.stats.lock();
        stats.cost_used += actual;
        if let Value::Object(top) = &data {
            for k in top.keys() {
                *stats.operations.entry(k.clone()).or_default() += 1;
            }
        }
    }
    body["extensions"] = json!({"cost": {
        "requestedQueryCost": requested,
        "actualQueryCost": actual,
        "throttleStatus": throttle_status(&app, available),
    }});
    json_response(StatusCode::OK, body)
}

/// The REST bucket: 429 with `Retry-After` when full, the call-limit header always.
fn rest_gate(app: &App) -> Result<String, Box<Response>> {
    app.stats.lock().rest_requests += 1;
    let mut bucket = app.rest_bucket.lock();
    let now = Instant::now();
    match bucket.try_take_at(1.0, now) {
        Ok(()) => {
            let used = (app.config.rest_bucket_size - bucket.available_at(now)).ceil() as i64;
            Ok(format!("{used}/{}", app.config.rest_bucket_size as i64))
        }
        Err(wait) => {
            drop(bucket);
            app.stats.lock().rest_throttled += 1;
            let limit = format!("{0}/{0}", app.config.rest_bucket_size as i64);
            Err(Box::new((
                StatusCode::TOO_MANY_REQUESTS,
                [
                    ("content-type", "application/json".to_string()),
                    ("retry-after", format!("{:.1}", wait.max(0.1))),
                    ("x-shopify-shop-api-call-limit", limit),
                ],
                json!({"errors": "Exceeded 2 calls per second for api client. Reduce request rates to resume uninterrupted service."}).to_string(),
            )
                .into_response()))
        }
    }
}

async fn rest<F: FnOnce(&App) -> (StatusCode, Value)>(
    app: Arc<App>,
    headers: HeaderMap,
    f: F,
) -> Response {
    rest_paged(app, headers, |app| {
        let (status, body) = f(app);
        (status, body, None)
    })
    .await
}

/// [`rest`] for a listing that pages: `f` also returns the URL of the next
/// page, sent as `Link: <…>; rel="next"` as Shopify does.
async fn rest_paged<F: FnOnce(&App) -> (StatusCode, Value, Option<String>)>(
    app: Arc<App>,
    headers: HeaderMap,
    f: F,
) -> Response {
    if let Err(r) = gate(&app, &headers).await {
        return *r;
    }
    let limit = match rest_gate(&app) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let (status, body, next) = f(&app);
    let mut response = (
        status,
        [
            ("content-type", "application/json".to_string()),
            ("x-shopify-shop-api-call-limit", limit),
        ],
        body.to_string(),
    )
        .into_response();
    if let Some(link) = next.and_then(|url| format!("<{url}>; rel=\"next\"").parse().ok()) {
        response.headers_mut().insert("link", link);
    }
    response
}

async fn rest_products(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    rest(app, headers, |app| {
        let st = app.shop.state.lock();
        let products: Vec<Value> = st
            .products
            .keys()
            .map(|id| st.product_payload(*id))
            .collect();
        (StatusCode::OK, json!({"products": products}))
    })
    .await
}

#[derive(Deserialize)]
struct LevelsQuery {
    inventory_item_ids: Option<String>,
    location_ids: Option<String>,
}

async fn rest_inventory_levels(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<LevelsQuery>,
) -> Response {
    rest(app, headers, move |app| {
        let ids = |s: &Option<String>| -> Option<Vec<u64>> {
            s.as_ref()
                .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        };
        let (items, locs) = (ids(&q.inventory_item_ids), ids(&q.location_ids));
        let st = app.shop.state.lock();
        let levels: Vec<Value> = st
            .levels
            .keys()
            .filter(|(i, l)| {
                items.as_ref().is_none_or(|v| v.contains(i))
                    && locs.as_ref().is_none_or(|v| v.contains(l))
            })
            .map(|(i, l)| st.inventory_level_payload(*i, *l))
            .collect();
        (StatusCode::OK, json!({"inventory_levels": levels}))
    })
    .await
}

#[derive(Deserialize)]
struct SetLevel {
    location_id: u64,
    inventory_item_id: u64,
    available: i64,
}

async fn rest_set_inventory(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Result<SetLevel, _> = serde_json::from_slice(&body);
    rest(app, headers, move |app| {
        let Ok(set) = parsed else {
            return (
                StatusCode::BAD_REQUEST,
                json!({"errors": "location_id, inventory_item_id and available are required"}),
            );
        };
        let payload = {
            let mut st = app.shop.state.lock();
            let Some(level) = st.levels.get_mut(&(set.inventory_item_id, set.location_id)) else {
                return (StatusCode::NOT_FOUND, json!({"errors": "Not Found"}));
            };
            level.available = set.available;
            st.inventory_level_payload(set.inventory_item_id, set.location_id)
        };
        app.shop
            .webhooks
            .emit(Topic::InventoryLevelsUpdate, &payload);
        (StatusCode::OK, json!({"inventory_level": payload}))
    })
    .await
}

async fn rest_order(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    rest(app, headers, move |app| {
        let id: u64 = id.trim_end_matches(".json").parse().unwrap_or(0);
        let st = app.shop.state.lock();
        match st.orders.contains_key(&id) {
            true => (StatusCode::OK, json!({"order": st.order_payload(id)})),
            false => (StatusCode::NOT_FOUND, json!({"errors": "Not Found"})),
        }
    })
    .await
}

#[derive(Deserialize)]
struct OrdersQuery {
    updated_at_min: Option<String>,
    limit: Option<usize>,
    page_info: Option<String>,
}

/// Where a page of `orders.json` ends: the last order's change time (µs) and
/// id, the position the next page starts after. Opaque to clients, as
/// Shopify's `page_info` is.
fn orders_cursor(at: &chrono::DateTime<chrono::FixedOffset>, id: u64) -> String {
    format!("{}-{id}", at.timestamp_micros())
}

fn parse_orders_cursor(text: &str) -> Option<(i64, u64)> {
    let (at, id) = text.split_once('-')?;
    Some((at.parse().ok()?, id.parse().ok()?))
}

/// `GET orders.json?status=any&updated_at_min=…&limit=…`, oldest change
/// first (the order Shopify's REST API lists them in is by id; a client
/// asking `order=updated_at asc` gets this order there), paged by cursor:
/// a full page with more behind it links the next (`page_info`, which keeps
/// the first request's filter and takes no other parameter than `limit`).
async fn rest_orders(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<OrdersQuery>,
) -> Response {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    rest_paged(app, headers, move |app| {
        if q.page_info.is_some() && app.faults.lock().later_pages_unavailable {
            app.stats.lock().injected_errors += 1;
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"errors": "Service Unavailable"}),
                None,
            );
        }
        let after = match q.page_info.as_deref().map(parse_orders_cursor) {
            None => None,
            Some(Some(_)) if q.updated_at_min.is_some() => {
                return (
                    StatusCode::BAD_REQUEST,
                    json!({"errors": {"page_info": "page_info cannot be combined with other filters than limit and fields"}}),
                    None,
                );
            }
            Some(Some(position)) => Some(position),
            Some(None) => {
                return (
                    StatusCode::BAD_REQUEST,
                    json!({"errors": {"page_info": "Invalid value."}}),
                    None,
                );
            }
        };
        let min = q
            .updated_at_min
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let limit = q.limit.unwrap_or(50).clamp(1, 250);
        let st = app.shop.state.lock();
        let mut found: Vec<(chrono::DateTime<chrono::FixedOffset>, u64)> = st
            .orders
            .values()
            .filter_map(|o| {
                Some((
                    chrono::DateTime::parse_from_rfc3339(&o.updated_at).ok()?,
                    o.id,
                ))
            })
            .filter(|(at, _)| min.is_none_or(|m| *at >= m))
            .filter(|(at, id)| after.is_none_or(|a| (at.timestamp_micros(), *id) > a))
            .collect();
        found.sort();
        let next = (found.len() > limit).then(|| {
            let (at, id) = found[limit - 1];
            format!(
                "http://{host}/admin/api/{API_VERSION}/orders.json?limit={limit}&page_info={}",
                orders_cursor(&at, id)
            )
        });
        let orders: Vec<Value> = found
            .iter()
            .take(limit)
            .map(|(_, id)| st.order_payload(*id))
            .collect();
        (StatusCode::OK, json!({"orders": orders}), next)
    })
    .await
}

/// Current stock, prices and orders, for tests to compare with the ERP.
async fn sim_state(State(app): State<Arc<App>>) -> Response {
    let st = app.shop.state.lock();
    let stock: Vec<Value> = st
        .levels
        .iter()
        .filter_map(|((item, loc), level)| {
            let v = st.variant_by_item(*item)?;
            let l = st.locations.get(loc)?;
            Some(json!({"sku": v.sku, "location": l.name, "inventory_item_id": item, "location_id": loc,
                        "available": level.available, "on_hand": level.on_hand(), "committed": level.committed}))
        })
        .collect();
    let prices: Vec<Value> = st
        .variants
        .values()
        .map(|v| json!({"sku": v.sku, "variant_id": v.id, "product_id": v.product_id, "price": v.price, "compare_at_price": v.compare_at_price}))
        .collect();
    let orders: Vec<Value> = st.orders.keys().map(|id| st.order_payload(*id)).collect();
    json_response(
        StatusCode::OK,
        json!({"stock": stock, "prices": prices, "orders": orders}),
    )
}

fn stats_json(app: &App) -> Value {
    let available = app.bucket.lock().available_at(Instant::now());
    json!({
        "api": *app.stats.lock(),
        "throttle_status": throttle_status(app, available),
        "webhooks": *app.shop.webhooks.stats.lock(),
        "orders_refused_short": app.shop.state.lock().refused_orders,
        "uptime_seconds": app.started.elapsed().as_secs_f64(),
    })
}

async fn sim_stats(State(app): State<Arc<App>>) -> Response {
    json_response(StatusCode::OK, stats_json(&app))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FaultsBody {
    api: ApiFaults,
    webhooks: WebhookFaults,
}

async fn sim_faults(State(app): State<Arc<App>>, body: Bytes) -> Response {
    match serde_json::from_slice::<FaultsBody>(&body) {
        Ok(f) => {
            *app.shop.mutation_latency.lock() = Duration::from_millis(f.api.mutation_latency_ms);
            app.shop.no_bulk_operation_by_id.store(
                f.api.no_bulk_operation_by_id,
                std::sync::atomic::Ordering::Relaxed,
            );
            app.shop
                .bulk
                .set_latency(Duration::from_millis(f.api.bulk_latency_ms));
            app.shop.bulk.set_failing(f.api.bulk_failure);
            *app.faults.lock() = f.api;
            *app.shop.webhooks.faults.lock() = f.webhooks;
            json_response(StatusCode::OK, json!({"ok": true}))
        }
        Err(e) => json_response(StatusCode::BAD_REQUEST, json!({"error": e.to_string()})),
    }
}

#[derive(Deserialize)]
#[serde(default)]
struct OrdersBody {
    count: u32,
    paid: bool,
}

impl Default for OrdersBody {
    fn default() -> Self {
        OrdersBody {
            count: 1,
            paid: true,
        }
    }
}

async fn sim_orders(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let req: OrdersBody = serde_json::from_slice(&body).unwrap_or_default();
    let ids: Vec<u64> = (0..req.count)
        .filter_map(|_| place_random_order(&app.shop, req.paid))
        .collect();
    json_response(StatusCode::OK, json!({"order_ids": ids}))
}

#[derive(Deserialize)]
struct SubscribeBody {
    topic: String,
    callback_url: String,
}

async fn sim_subscribe(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<SubscribeBody>(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "topic and callback_url are required"}),
        );
    };
    let Some(topic) = Topic::parse(&req.topic) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("unsupported topic {}", req.topic)}),
        );
    };
    let id = app.shop.state.lock().new_id();
    let sub = app.shop.webhooks.subscribe(id, topic, req.callback_url);
    json_response(
        StatusCode::OK,
        json!({"id": sub.id, "topic": topic.as_str()}),
    )
}

/// A staged upload (Shopify's is a signed storage bucket, no token needed): a
/// multipart form with the staged parameters, `key` among them, then `file`.
async fn staged_upload(
    State(app): State<Arc<App>>,
    mut form: axum::extract::Multipart,
) -> Response {
    let bad = |message: String| json_response(StatusCode::BAD_REQUEST, json!({"error": message}));
    let mut key = None;
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return bad(format!("malformed multipart form: {e}")),
        };
        match field.name() {
            Some("key") => match field.text().await {
                Ok(k) => key = Some(k),
                Err(e) => return bad(format!("unreadable key: {e}")),
            },
            Some("file") => {
                let Some(key) = key.take() else {
                    return bad("`file` must come after the staged parameters".into());
                };
                let text = match field.text().await {
                    Ok(t) => t,
                    Err(e) => return bad(format!("unreadable file: {e}")),
                };
                if text.len() > crate::bulk::MAX_UPLOAD_BYTES {
                    return json_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        json!({"error": "EntityTooLarge"}),
                    );
                }
                return if app.shop.bulk.store_upload(&key, text) {
                    (StatusCode::CREATED, "").into_response()
                } else {
                    json_response(
                        StatusCode::FORBIDDEN,
                        json!({"error": format!("no upload was staged at {key}")}),
                    )
                };
            }
            // Content-Type, success_action_status, …: what storage checks.
            _ => {}
        }
    }
    bad("no `file` field".into())
}

/// A bulk operation's result file (Shopify serves it from signed storage, no
/// token needed): `/_sim/bulk/<id>.jsonl`.
async fn bulk_file(State(app): State<Arc<App>>, Path(file): Path<String>) -> Response {
    let text = file
        .strip_suffix(".jsonl")
        .and_then(|id| id.parse::<u64>().ok())
        .and_then(|id| app.shop.bulk.file(id));
    match text {
        Some(text) => (
            StatusCode::OK,
            [("content-type", "application/jsonl")],
            text.to_string(),
        )
            .into_response(),
        None => json_response(StatusCode::NOT_FOUND, json!({"errors": "Not Found"})),
    }
}
