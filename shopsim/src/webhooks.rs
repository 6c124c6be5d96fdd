//! Webhooks out: subscriptions, Shopify's headers and HMAC signature, delivery
//! with timeouts and retries, and injected faults (duplicates, reordering, delay).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::state::now_rfc3339;

pub const API_VERSION: &str = "2026-04";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Topic {
    #[serde(rename = "orders/create")]
    OrdersCreate,
    #[serde(rename = "orders/updated")]
    OrdersUpdated,
    #[serde(rename = "orders/paid")]
    OrdersPaid,
    #[serde(rename = "orders/cancelled")]
    OrdersCancelled,
    #[serde(rename = "orders/fulfilled")]
    OrdersFulfilled,
    #[serde(rename = "inventory_levels/update")]
    InventoryLevelsUpdate,
    #[serde(rename = "products/create")]
    ProductsCreate,
    #[serde(rename = "products/update")]
    ProductsUpdate,
    #[serde(rename = "products/delete")]
    ProductsDelete,
}

impl Topic {
    pub const ALL: [Topic; 9] = [
        Topic::OrdersCreate,
        Topic::OrdersUpdated,
        Topic::OrdersPaid,
        Topic::OrdersCancelled,
        Topic::OrdersFulfilled,
        Topic::InventoryLevelsUpdate,
        Topic::ProductsCreate,
        Topic::ProductsUpdate,
        Topic::ProductsDelete,
    ];

    /// The header / REST form, e.g. `orders/create`.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::OrdersCreate => "orders/create",
            Topic::OrdersUpdated => "orders/updated",
            Topic::OrdersPaid => "orders/paid",
            Topic::OrdersCancelled => "orders/cancelled",
            Topic::OrdersFulfilled => "orders/fulfilled",
            Topic::InventoryLevelsUpdate => "inventory_levels/update",
            Topic::ProductsCreate => "products/create",
            Topic::ProductsUpdate => "products/update",
            Topic::ProductsDelete => "products/delete",
        }
    }

    /// The GraphQL enum form, e.g. `ORDERS_CREATE`.
    pub fn graphql_name(self) -> String {
        self.as_str().replace('/', "_").to_uppercase()
    }

    pub fn parse(s: &str) -> Option<Topic> {
        Topic::ALL
            .into_iter()
            .find(|t| t.as_str() == s || t.graphql_name() == s)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Subscription {
    pub id: u64,
    pub topic: Topic,
    pub callback_url: String,
}

/// Faults applied to deliveries, each with a probability in [0, 1].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookFaults {
    /// Deliver the same webhook (same webhook id) twice.
    pub duplicate_probability: f64,
    /// Hold a webhook back and deliver it after the next one.
    pub reorder_probability: f64,
    /// Wait this long before each delivery.
    pub delay_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct DeliveryPolicy {
    pub connect_timeout_ms: u64,
    pub total_timeout_ms: u64,
    /// Attempts per webhook before giving up (Shopify: 8, over hours).
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt.
    pub retry_base_ms: u64,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            connect_timeout_ms: 1_000,
            total_timeout_ms: 5_000,
            max_attempts: 8,
            retry_base_ms: 200,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WebhookStats {
    /// Webhooks handed to delivery (one per subscription and event).
    pub queued: u64,
    /// HTTP attempts, including retries and injected duplicates.
    pub attempts: u64,
    pub delivered: u64,
    pub failed_attempts: u64,
    /// Webhooks dropped after `max_attempts`.
    pub abandoned: u64,
    pub duplicated: u64,
    pub reordered: u64,
}

/// base64(HMAC-SHA256(secret, body)), the `X-Shopify-Hmac-Sha256` value.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A random id in UUID form.
pub fn new_uuid() -> String {
    let v = fastrand::u128(..);
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[derive(Clone, Debug)]
struct Delivery {
    topic: Topic,
    url: String,
    body: Arc<Vec<u8>>,
    webhook_id: String,
    event_id: String,
    triggered_at: String,
}

/// Queues and delivers webhooks in the background.
#[derive(Clone)]
pub struct WebhookSender {
    tx: mpsc::UnboundedSender<Delivery>,
    pub subscriptions: Arc<Mutex<Vec<Subscription>>>,
    pub faults: Arc<Mutex<WebhookFaults>>,
    pub stats: Arc<Mutex<WebhookStats>>,
}

impl WebhookSender {
    pub fn start(secret: String, shop_domain: String, policy: DeliveryPolicy) -> WebhookSender {
        let (tx, rx) = mpsc::unbounded_channel();
        let sender = WebhookSender {
            tx,
            subscriptions: Arc::default(),
            faults: Arc::default(),
            stats: Arc::default(),
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(policy.connect_timeout_ms))
            .timeout(Duration::from_millis(policy.total_timeout_ms))
            .build()
            .expect("an HTTP client with timeouts");
        tokio::spawn(dispatch(
            rx,
            Arc::new(Deliverer {
                client,
                secret,
                shop_domain,
                policy,
                stats: sender.stats.clone(),
                in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            }),
            sender.faults.clone(),
            sender.stats.clone(),
        ));
        sender
    }

    pub fn subscribe(&self, id: u64, topic: Topic, callback_url: String) -> Subscription {
        let sub = Subscription {
            id,
            topic,
            callback_url,
        };
        self.subscriptions.lock().push(sub.clone());
        sub
    }

    /// Queues `payload` for every subscription to `topic`.
    pub fn emit(&self, topic: Topic, payload: &serde_json::Value) {
        let urls: Vec<String> = self
            .subscriptions
            .lock()
            .iter()
            .filter(|s| s.topic == topic)
            .map(|s| s.callback_url.clone())
            .collect();
        if urls.is_empty() {
            return;
        }
        let body = Arc::new(serde_json::to_vec(payload).unwrap_or_default());
        let event_id = new_uuid();
        let triggered_at = now_rfc3339();
        for url in urls {
            self.stats.lock().queued += 1;
            let _ = self.tx.send(Delivery {
                topic,
                url,
                body: body.clone(),
                webhook_id: new_uuid(),
                event_id: event_id.clone(),
                triggered_at: triggered_at.clone(),
            });
        }
    }
}

async fn dispatch(
    mut rx: mpsc::UnboundedReceiver<Delivery>,
    deliverer: Arc<Deliverer>,
    faults: Arc<Mutex<WebhookFaults>>,
    stats: Arc<Mutex<WebhookStats>>,
) {
    let mut held: Option<Delivery> = None;
    while let Some(d) = rx.recv().await {
        let f = faults.lock().clone();
        if f.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(f.delay_ms)).await;
        }
        if held.is_none() && fastrand::f64() < f.reorder_probability {
            stats.lock().reordered += 1;
            held = Some(d);
            // Deliver it after the next one; if none comes soon, deliver anyway.
            match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
                Ok(Some(next)) => {
                    deliverer.clone().spawn(next, &f);
                    if let Some(h) = held.take() {
                        // Give the overtaking webhook a head start, so the two
                        // really arrive out of order.
                        let (d, f) = (deliverer.clone(), f.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            d.spawn(h, &f);
                        });
                    }
                }
                Ok(None) => {
                    if let Some(h) = held.take() {
                        deliverer.clone().spawn(h, &f);
                    }
                    return;
                }
                Err(_) => {
                    if let Some(h) = held.take() {
                        deliverer.clone().spawn(h, &f);
                    }
                }
            }
            continue;
        }
        deliverer.clone().spawn(d, &f);
    }
}

/// Deliveries in flight at once, to all endpoints. Shopify delivers a burst
/// (a bulk price update fires a `products/update` per product) over a bounded
/// number of connections, not one per webhook at the same instant.
const MAX_IN_FLIGHT: usize = 64;

struct Deliverer {
    client: reqwest::Client,
    secret: String,
    shop_domain: String,
    policy: DeliveryPolicy,
    stats: Arc<Mutex<WebhookStats>>,
    in_flight: tokio::sync::Semaphore,
}

impl Deliverer {
    fn spawn(self: Arc<Self>, d: Delivery, faults: &WebhookFaults) {
        let duplicate = fastrand::f64() < faults.duplicate_probability;
        if duplicate {
            self.stats.lock().duplicated += 1;
            let again = self.clone();
            let d2 = d.clone();
            tokio::spawn(async move { again.deliver(d2).await });
        }
        tokio::spawn(async move { self.deliver(d).await });
    }

    async fn deliver(&self, d: Delivery) {
        let hmac = sign(&self.secret, &d.body);
        for attempt in 1..=self.policy.max_attempts {
            let Ok(permit) = self.in_flight.acquire().await else {
                return;
            };
            self.stats.lock().attempts += 1;
            let result = self
                .client
                .post(&d.url)
                .header("Content-Type", "application/json")
                .header("X-Shopify-Topic", d.topic.as_str())
                .header("X-Shopify-Hmac-Sha256", &hmac)
                .header("X-Shopify-Shop-Domain", &self.shop_domain)
                .header("X-Shopify-Webhook-Id", &d.webhook_id)
                .header("X-Shopify-Event-Id", &d.event_id)
                .header("X-Shopify-Triggered-At", &d.triggered_at)
                .header("X-Shopify-API-Version", API_VERSION)
                .body(d.body.as_ref().clone())
                .send()
                .await;
            drop(permit);
            match result {
                Ok(r) if r.status().is_success() => {
                    self.stats.lock().delivered += 1;
                    return;
                }
                Ok(r) => {
                    tracing::debug!(url = %d.url, status = %r.status(), attempt, "webhook refused");
                }
                Err(e) => {
                    tracing::debug!(url = %d.url, error = %e, attempt, "webhook delivery failed");
                }
            }
            self.stats.lock().failed_attempts += 1;
            if attempt < self.policy.max_attempts {
                let backoff = self
                    .policy
                    .retry_base_ms
                    .saturating_mul(1 << (attempt - 1).min(16));
                tokio::time::sleep(Duration::from_millis(backoff)).await;
            }
        }
        self.stats.lock().abandoned += 1;
        tracing::warn!(url = %d.url, topic = d.topic.as_str(), "webhook abandoned after all attempts");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_have_both_spellings() {
        for t in Topic::ALL {
            assert_eq!(Topic::parse(t.as_str()), Some(t));
            assert_eq!(Topic::parse(&t.graphql_name()), Some(t));
        }
        assert_eq!(
            Topic::InventoryLevelsUpdate.graphql_name(),
            "INVENTORY_LEVELS_UPDATE"
        );
    }

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            base64::engine::general_purpose::STANDARD.encode([
                0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95,
                0x75, 0xc7, 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9,
                0x64, 0xec, 0x38, 0x43
            ])
        );
    }
}
