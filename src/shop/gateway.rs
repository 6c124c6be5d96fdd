//! `flywheel gateway`: shop webhooks into Kafka — verified, deduplicated,
//! durable before 200.
//!
//! Per request, in order: unknown shop → 404; body over the limit → 413;
//! missing or bad signature (over the raw bytes, every configured secret) → 401;
//! missing topic or webhook id → 400; a webhook id already in Kafka → 200
//! without producing; unsupported topic → 202, ignored; malformed JSON or a
//! missing required field → 400; Kafka down or slower than the deadline → 503.
//! Only when Kafka acknowledged the raw record and the canonical event is the
//! answer 200. Nothing rejected is produced anywhere.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use super::dedupe::DedupeStore;
use super::gateway_metrics::GatewayMetrics;
use super::mapping::{
    self, Delivery, Kind, MappingError, SHOP_CATALOG, SHOP_INVENTORY, SHOP_ORDERS,
    SHOP_WEBHOOKS_RAW,
};
use super::pruned_json;
use super::signature;
use crate::bus::BusError;
use crate::bus::avro::AvroCodec;
use crate::bus::producer::{EventProducer, OutRecord};
use crate::bus::topics::ensure_topics;
use crate::config::{Config, KafkaConfig, Platform};

pub const TOPICS: [&str; 4] = [SHOP_WEBHOOKS_RAW, SHOP_ORDERS, SHOP_INVENTORY, SHOP_CATALOG];

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("gateway.listen `{0}` is not an address")]
    Listen(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot open the dedupe file {path}: {source} (set gateway.dedupe_path)")]
    Dedupe {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bus(#[from] BusError),
}

struct Gateway {
    /// Shop name → its platform and webhook secrets.
    shops: HashMap<String, (Platform, Vec<String>)>,
    body_limit: usize,
    deadline: Duration,
    kafka: KafkaConfig,
    producer: RwLock<EventProducer>,
    ready: AtomicBool,
    /// Deliveries failed since the last success.
    delivery_failures: AtomicU64,
    dedupe: DedupeStore,
}

/// A running gateway: its address and how to stop it.
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub done: tokio::task::JoinHandle<()>,
}

/// Starts the gateway (HTTP server and readiness loop) until `shutdown`.
/// `extra` routes (e.g. `/metrics`) are served beside the webhook routes.
pub async fn start(
    config: &Config,
    extra: Router,
    shutdown: CancellationToken,
) -> Result<RunningGateway, GatewayError> {
    let g = &config.gateway;
    let addr: SocketAddr = g
        .listen
        .parse()
        .map_err(|_| GatewayError::Listen(g.listen.clone()))?;
    let dedupe = DedupeStore::open(&g.dedupe_path, Duration::from_secs(g.dedupe_window_secs))
        .map_err(|source| GatewayError::Dedupe {
            path: g.dedupe_path.display().to_string(),
            source,
        })?;
    // Records that miss the deadline are answered 503; do not let them linger
    // and land long after the shop was told to retry.
    let mut kafka = config.kafka.clone();
    kafka.message_timeout_ms = g.ack_deadline_ms;
    if let Err(e) = ensure_topics(&kafka, &TOPICS).await {
        tracing::warn!(error = %e, "could not create the gateway's topics yet; not ready until Kafka answers");
    }
    for shop in config.shops.iter().filter(|s| s.webhook_secrets.is_empty()) {
        tracing::warn!(
            shop = %shop.name,
            "shop has no webhook_secrets: the gateway refuses its webhooks (404); set them to accept its orders and inventory changes"
        );
    }
    let gateway = Arc::new(Gateway {
        // Only shops with a secret: their webhooks can be verified.
        shops: config
            .shops
            .iter()
            .filter(|s| !s.webhook_secrets.is_empty())
            .map(|s| (s.name.clone(), (s.platform, s.secrets())))
            .collect(),
        body_limit: g.body_limit_bytes,
        deadline: Duration::from_millis(g.ack_deadline_ms),
        producer: RwLock::new(EventProducer::new(&kafka, "gateway")?),
        kafka,
        ready: AtomicBool::new(false),
        delivery_failures: AtomicU64::new(0),
        dedupe,
    });
    GatewayMetrics::get();
    let router = Router::new()
        .route("/webhooks/shopify/{shop}", post(shopify))
        .route("/webhooks/woocommerce/{shop}", post(woocommerce))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(gateway.clone())
        .merge(extra);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| GatewayError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    tokio::spawn(readiness_loop(gateway.clone(), shutdown.clone()));
    let done = tokio::spawn(async move {
        let r = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "gateway server stopped");
        }
    });
    tracing::info!(%bound, shops = gateway.shops.len(), "webhook gateway listening");
    Ok(RunningGateway { addr: bound, done })
}

/// Ready = Kafka answers metadata and our topics exist. Re-creates topics a
/// broker lost, and rebuilds the producer after a fatal (idempotence) error.
async fn readiness_loop(g: Arc<Gateway>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let producer = match g.producer.read() {
            Ok(p) => p.clone(),
            Err(_) => return,
        };
        let topics = producer.topic_names(Duration::from_millis(1000)).await;
        // A broker that answers while deliveries keep failing (e.g. it restarted
        // without the idempotent producer's state): start a fresh producer. The
        // webhooks that failed were answered 503, so a late delivery of theirs
        // can only be a duplicate, which consumers skip.
        let stuck = topics.is_ok() && g.delivery_failures.load(Ordering::Relaxed) >= 2;
        if producer.fatal_error().is_some() || stuck {
            match EventProducer::new(&g.kafka, "gateway") {
                Ok(fresh) => {
                    tracing::warn!(stuck, "replaced the Kafka producer");
                    if let Ok(mut p) = g.producer.write() {
                        *p = fresh;
                    }
                    g.delivery_failures.store(0, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(error = %e, "cannot recreate the producer"),
            }
        }
        let ready = match topics {
            Ok(existing) => {
                let missing = TOPICS.iter().any(|t| !existing.contains(&g.kafka.topic(t)));
                !missing || ensure_topics(&g.kafka, &TOPICS).await.is_ok()
            }
            Err(_) => false,
        };
        if g.ready.swap(ready, Ordering::Relaxed) != ready {
            tracing::info!(ready, "gateway readiness changed");
        }
    }
}

async fn readyz(State(g): State<Arc<Gateway>>) -> Response {
    if g.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: Kafka is unreachable",
        )
            .into_response()
    }
}

async fn shopify(
    state: State<Arc<Gateway>>,
    shop: Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state, shop, headers, body, Platform::Shopify).await
}

async fn woocommerce(
    state: State<Arc<Gateway>>,
    shop: Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state, shop, headers, body, Platform::Woocommerce).await
}

/// The first of `names` present (Shopify sends `X-`-less names too).
fn header<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| headers.get(*n))
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

struct Outcome {
    status: StatusCode,
    /// A fixed reason, for the metric label and the log (never the body).
    reason: &'static str,
}

fn outcome(status: StatusCode, reason: &'static str) -> Outcome {
    Outcome { status, reason }
}

async fn handle(
    State(g): State<Arc<Gateway>>,
    Path(shop): Path<String>,
    headers: HeaderMap,
    body: Body,
    platform: Platform,
) -> Response {
    let o = process(&g, &shop, &headers, body, platform).await;
    let m = GatewayMetrics::get();
    m.requests
        .with_label_values(&[platform.as_str(), o.status.as_str()])
        .inc();
    match o.status {
        StatusCode::OK if o.reason == "accepted" => {}
        StatusCode::OK | StatusCode::ACCEPTED => {
            tracing::debug!(platform = platform.as_str(), %shop, reason = o.reason, "webhook answered without producing")
        }
        _ => {
            m.rejected
                .with_label_values(&[platform.as_str(), o.reason])
                .inc();
            tracing::warn!(platform = platform.as_str(), %shop, status = %o.status, reason = o.reason, "webhook rejected");
        }
    }
    (o.status, o.reason).into_response()
}

async fn process(
    g: &Gateway,
    shop: &str,
    headers: &HeaderMap,
    body: Body,
    platform: Platform,
) -> Outcome {
    let m = GatewayMetrics::get();
    let p = platform.as_str();
    let Some((_, secrets)) = g.shops.get(shop).filter(|(p, _)| *p == platform) else {
        return outcome(StatusCode::NOT_FOUND, "unknown_shop");
    };
    let Ok(raw) = axum::body::to_bytes(body, g.body_limit).await else {
        return outcome(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    };
    let (sig_names, topic_names, id_names): (&[&str], &[&str], &[&str]) = match platform {
        Platform::Shopify => (
            &["x-shopify-hmac-sha256", "shopify-hmac-sha256"],
            &["x-shopify-topic", "shopify-topic"],
            &["x-shopify-webhook-id", "shopify-webhook-id"],
        ),
        Platform::Woocommerce => (
            &["x-wc-webhook-signature"],
            &["x-wc-webhook-topic"],
            &["x-wc-webhook-delivery-id"],
        ),
    };
    // WooCommerce pings a new webhook with an unsigned form body; answer it or
    // it never activates.
    if platform == Platform::Woocommerce
        && header(headers, topic_names).is_none()
        && raw.starts_with(b"webhook_id=")
    {
        m.ignored.with_label_values(&[p]).inc();
        return outcome(StatusCode::OK, "ping");
    }
    let verified =
        header(headers, sig_names).is_some_and(|sig| signature::verify(secrets, &raw, sig));
    if !verified {
        m.verification_failures.with_label_values(&[p]).inc();
        return outcome(StatusCode::UNAUTHORIZED, "bad_signature");
    }
    let (Some(topic), Some(webhook_id)) = (header(headers, topic_names), header(headers, id_names))
    else {
        return outcome(StatusCode::BAD_REQUEST, "missing_headers");
    };
    let dedupe_key = format!("{shop}/{webhook_id}");
    if g.dedupe.contains(&dedupe_key) {
        m.duplicates.with_label_values(&[p]).inc();
        return outcome(StatusCode::OK, "duplicate");
    }
    let Some(kind) = mapping::kind_of(platform, topic) else {
        m.ignored.with_label_values(&[p]).inc();
        return outcome(StatusCode::ACCEPTED, "unsupported_topic");
    };
    // Only what the mapping reads is built; the rest is checked and skipped.
    let Ok(json) = pruned_json::parse(&raw, mapping::body_shape(platform, kind)) else {
        return outcome(StatusCode::BAD_REQUEST, "malformed_json");
    };
    let event_time = header(headers, &["x-shopify-triggered-at", "shopify-triggered-at"])
        .map(str::to_owned)
        .unwrap_or_else(|| mapping::event_time(chrono::Utc::now()));
    let delivery = Delivery {
        platform,
        channel: shop.to_owned(),
        topic: topic.to_owned(),
        webhook_id: webhook_id.to_owned(),
        event_time,
    };
    let mapped = canonical_record(kind, &json, &delivery);
    // The tree is not held across the awaits below.
    drop(json);
    let canonical = match mapped {
        Ok(r) => r,
        Err(CanonicalError::Mapping(e)) => {
            tracing::warn!(%shop, topic = %delivery.topic, error = %e, "webhook payload cannot be mapped");
            return outcome(StatusCode::BAD_REQUEST, "missing_fields");
        }
        Err(CanonicalError::Encode) => {
            return outcome(StatusCode::INTERNAL_SERVER_ERROR, "encode_failed");
        }
    };
    if !g.ready.load(Ordering::Relaxed) {
        return outcome(StatusCode::SERVICE_UNAVAILABLE, "kafka_unavailable");
    }
    let raw_out = raw_record(shop, platform, headers, &raw, &delivery);
    let producer = match g.producer.read() {
        Ok(p) => p.clone(),
        Err(_) => return outcome(StatusCode::SERVICE_UNAVAILABLE, "kafka_unavailable"),
    };
    let started = Instant::now();
    let sends = futures::future::try_join(producer.send(raw_out), async {
        match canonical {
            Some(record) => producer.send(record).await.map(Some),
            None => Ok(None),
        }
    });
    match tokio::time::timeout(g.deadline, sends).await {
        Ok(Ok(_)) => {
            g.delivery_failures.store(0, Ordering::Relaxed);
            m.produce_seconds.observe(started.elapsed().as_secs_f64());
            m.produced.with_label_values(&[p, kind_label(kind)]).inc();
            if let Err(e) = g.dedupe.record(&dedupe_key) {
                // The webhook is durable; a redelivery will only be a duplicate.
                tracing::warn!(error = %e, "could not remember a webhook id");
            }
            outcome(StatusCode::OK, "accepted")
        }
        Ok(Err(e)) => {
            g.delivery_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "Kafka refused a webhook; answering 503 so the shop retries");
            outcome(StatusCode::SERVICE_UNAVAILABLE, "kafka_unavailable")
        }
        Err(_) => {
            g.delivery_failures.fetch_add(1, Ordering::Relaxed);
            outcome(StatusCode::SERVICE_UNAVAILABLE, "kafka_too_slow")
        }
    }
}

fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Order => "order",
        Kind::Inventory => "inventory",
        Kind::Catalog => "catalog",
        Kind::RawOnly => "raw_only",
    }
}

enum CanonicalError {
    Mapping(MappingError),
    Encode,
}

fn canonical_record(
    kind: Kind,
    json: &pruned_json::Node<'_>,
    d: &Delivery,
) -> Result<Option<OutRecord>, CanonicalError> {
    let encode =
        |topic: &'static str, key: String, bytes: Result<Vec<u8>, crate::bus::avro::AvroError>| {
            bytes
                .map(|payload| {
                    Some(OutRecord {
                        topic,
                        key,
                        payload: payload.into(),
                        headers: vec![("flywheel.webhook.id", d.webhook_id.clone())],
                    })
                })
                .map_err(|e| {
                    tracing::error!(error = %e, "a canonical event does not fit its schema");
                    CanonicalError::Encode
                })
        };
    match kind {
        Kind::Order => {
            let event = match d.platform {
                Platform::Shopify => mapping::shopify_order(json, d),
                Platform::Woocommerce => mapping::woocommerce_order(json, d),
            }
            .map_err(CanonicalError::Mapping)?;
            let codec = AvroCodec::for_topic(SHOP_ORDERS).map_err(|_| CanonicalError::Encode)?;
            encode(SHOP_ORDERS, event.key.clone(), codec.encode_serde(&event))
        }
        Kind::Inventory => {
            let event = mapping::shopify_inventory(json, d).map_err(CanonicalError::Mapping)?;
            let codec = AvroCodec::for_topic(SHOP_INVENTORY).map_err(|_| CanonicalError::Encode)?;
            encode(
                SHOP_INVENTORY,
                event.key.clone(),
                codec.encode_serde(&event),
            )
        }
        Kind::Catalog => {
            let event = mapping::shopify_product(json, d).map_err(CanonicalError::Mapping)?;
            let codec = AvroCodec::for_topic(SHOP_CATALOG).map_err(|_| CanonicalError::Encode)?;
            encode(SHOP_CATALOG, event.key.clone(), codec.encode_serde(&event))
        }
        Kind::RawOnly => Ok(None),
    }
}

/// The webhook byte for byte, with the headers that matter (never the signature).
fn raw_record(
    shop: &str,
    platform: Platform,
    headers: &HeaderMap,
    raw: &Bytes,
    d: &Delivery,
) -> OutRecord {
    let mut kept = vec![
        ("flywheel.platform", platform.as_str().to_owned()),
        ("flywheel.shop", shop.to_owned()),
        ("flywheel.topic", d.topic.clone()),
        ("flywheel.webhook.id", d.webhook_id.clone()),
        ("flywheel.event.time", d.event_time.clone()),
    ];
    for name in [
        "x-shopify-shop-domain",
        "x-shopify-api-version",
        "x-shopify-event-id",
        "x-wc-webhook-source",
        "x-wc-webhook-resource",
        "x-wc-webhook-event",
    ] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            kept.push((name, v.to_owned()));
        }
    }
    OutRecord {
        topic: SHOP_WEBHOOKS_RAW,
        key: format!("{shop}/{}", d.webhook_id),
        payload: raw.clone(),
        headers: kept,
    }
}
