//! The safety net under every platform's order webhooks: a webhook can be
//! lost (WooCommerce delivers once and disables a failing webhook; Shopify
//! gives up after retries and removes the subscription; a gateway can be down
//! longer than either retries). So each shop's changed orders are also polled
//! (`OrderFeed`, one per platform) and fed into `shop.orders.v1` exactly as
//! the gateway maps their webhooks: a lost webhook costs one poll interval,
//! not an order.
//!
//! A polled order carries the version its webhook carries (its last change
//! time), so finding it again — or after its webhook — is harmless: the order
//! processor's version guard and its forward-only, idempotent ERP writes make
//! a repeat a no-op. The cursor is kept in memory, across the poll's own
//! restarts after a failure: after the process starts, the poller looks back
//! `reconcile.orders_lookback_secs`. Each poll starts a little before the
//! newest change it saw (`OVERLAP`), since several orders can share a
//! timestamp.

use std::future::Future;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{GaugeVec, IntCounterVec, Opts, register_gauge_vec, register_int_counter_vec};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::bus::BusError;
use crate::bus::avro::AvroCodec;
use crate::bus::producer::{EventProducer, OutRecord};
use crate::config::{Config, Platform, ShopConfig};
use crate::shop::mapping::{self, MappingError, SHOP_ORDERS, ShopOrderEvent};
use crate::shop::shopify::admin_api::AdminApi;
use crate::shop::shopify::order_poll::ShopifyOrderFeed;
use crate::shop::woocommerce::WooClient;
use crate::shop::woocommerce::order_poll::WooOrderFeed;

/// How much before the newest seen change each poll starts again.
const OVERLAP: Duration = Duration::from_secs(2);

struct Metrics {
    /// When a poll of the shop last read its listing to the end: the net
    /// under lost webhooks holds while this keeps moving.
    last_success: GaugeVec,
    fed: IntCounterVec,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics {
        last_success: register_gauge_vec!(
            Opts::new(
                "flywheel_order_poll_last_success_timestamp_seconds",
                "When the last poll of a shop's changed orders read them all (Unix seconds)"
            ),
            &["shop"]
        )
        .expect("registering flywheel_order_poll_last_success_timestamp_seconds"),
        fed: register_int_counter_vec!(
            Opts::new(
                "flywheel_order_poll_orders_total",
                "Orders the poll fed into shop.orders.v1 (most are found again, a no-op there)"
            ),
            &["shop"]
        )
        .expect("registering flywheel_order_poll_orders_total"),
    })
}

/// A shop's orders as its platform lists them.
///
/// Contract:
/// - `changed_since` starts a listing (it sends nothing) of every order
///   changed at or after `since`; `next_page` reads (never writes) its next
///   page, `None` past the last. Across its pages the listing holds every
///   such order (none skipped when orders change while it pages; repeats
///   are harmless, the order among them is not relied on), each in the shape
///   of the platform's order webhook body, so `map` is the gateway's own
///   mapping. A page at a time, so a long lookback over a busy shop holds one
///   page in memory, not the shop's day. After an error, the listing is
///   started again.
/// - `changed_at` is the change time `map` takes the version from.
pub trait OrderFeed: Send {
    type Error: std::error::Error + Send + Sync + 'static;
    /// Where a listing stands between pages.
    type Listing: Send;
    /// The `flywheel.source` header of polled records.
    const SOURCE: &'static str;

    fn changed_since(&self, since: DateTime<Utc>) -> Self::Listing;

    fn next_page(
        &mut self,
        listing: &mut Self::Listing,
    ) -> impl Future<Output = Result<Option<Vec<Value>>, Self::Error>> + Send;

    fn changed_at(order: &Value) -> Option<DateTime<Utc>>;

    /// The order as the gateway maps the platform's webhook of it.
    fn map(order: &Value, shop: &str) -> Result<ShopOrderEvent, MappingError>;

    /// Whether a failed read is worth trying again later.
    fn is_transient(e: &Self::Error) -> bool;
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("polling the shop's orders: {source}")]
    Shop {
        source: Box<dyn std::error::Error + Send + Sync>,
        transient: bool,
    },
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl PollError {
    pub fn is_retryable(&self) -> bool {
        match self {
            PollError::Shop { transient, .. } => *transient,
            PollError::Bus(e) => e.is_retryable(),
        }
    }
}

/// How many poll intervals a poll that failed for good waits before trying
/// again.
const AFTER_DEFINITE_FAILURE: u32 = 10;

/// `shop`'s order poll as the processors role runs it, until `shutdown`:
/// restarted after transient failures (`supervise::with_restarts`), and after
/// one that cannot succeed as configured (credentials refused, a site whose
/// listing it cannot page) logged and tried again every
/// [`AFTER_DEFINITE_FAILURE`] intervals. The poll is a net under lost
/// webhooks, never a reason to stop the shop's stock, prices and statuses;
/// `flywheel_order_poll_last_success_timestamp_seconds` stops moving, and
/// its alert says so.
pub async fn run_supervised(config: &Config, shop: &ShopConfig, shutdown: CancellationToken) {
    let role = format!("order_poll.{}", shop.name);
    let wait = Duration::from_secs(shop.order_poll_secs.max(1)) * AFTER_DEFINITE_FAILURE;
    // Kept across restarts: a failed poll is read again from where the last
    // complete one ended, not the whole lookback.
    let cursor = Mutex::new(start_of_lookback(config));
    loop {
        let ended =
            crate::supervise::with_restarts(&role, &shutdown, PollError::is_retryable, || {
                run_from(config, shop, &cursor, shutdown.clone())
            })
            .await;
        let Err(e) = ended else { return };
        tracing::error!(
            shop = %shop.name,
            error = %e,
            retry_in_s = wait.as_secs(),
            "the order poll cannot succeed as configured: orders whose webhooks are lost do not reach the ERP until what the error names is fixed; the shop's other processors go on"
        );
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Polls `shop` (its platform's feed) every `order_poll_secs` until
/// `shutdown`, from `reconcile.orders_lookback_secs` back.
pub async fn run_for_shop(
    config: &Config,
    shop: &ShopConfig,
    shutdown: CancellationToken,
) -> Result<(), PollError> {
    run_from(
        config,
        shop,
        &Mutex::new(start_of_lookback(config)),
        shutdown,
    )
    .await
}

fn start_of_lookback(config: &Config) -> DateTime<Utc> {
    let lookback = Duration::from_secs(config.reconcile.orders_lookback_secs);
    Utc::now() - chrono::Duration::from_std(lookback).unwrap_or_default()
}

/// Polls `shop` every `order_poll_secs` until `shutdown`, from `cursor`,
/// which it moves past each complete poll.
async fn run_from(
    config: &Config,
    shop: &ShopConfig,
    cursor: &Mutex<DateTime<Utc>>,
    shutdown: CancellationToken,
) -> Result<(), PollError> {
    let every = Duration::from_secs(shop.order_poll_secs);
    let setup = |e: Box<dyn std::error::Error + Send + Sync>| PollError::Shop {
        source: e,
        transient: false,
    };
    match shop.platform {
        Platform::Shopify => {
            let api = AdminApi::for_shop(shop, "order_poll").map_err(|e| setup(Box::new(e)))?;
            run(config, shop, ShopifyOrderFeed(api), every, cursor, shutdown).await
        }
        Platform::Woocommerce => {
            let client = WooClient::for_shop(shop, "order_poll").map_err(|e| setup(Box::new(e)))?;
            run(config, shop, WooOrderFeed(client), every, cursor, shutdown).await
        }
    }
}

/// Polls `shop` through `feed` every `every` until `shutdown`, producing what
/// it finds from `cursor` on.
async fn run<F: OrderFeed>(
    config: &Config,
    shop: &ShopConfig,
    mut feed: F,
    every: Duration,
    cursor: &Mutex<DateTime<Utc>>,
    shutdown: CancellationToken,
) -> Result<(), PollError> {
    let producer = EventProducer::new(&config.kafka, "order-poll")?;
    let codec = AvroCodec::for_topic(SHOP_ORDERS).map_err(BusError::from)?;
    let overlap = chrono::Duration::from_std(OVERLAP).unwrap_or_default();
    // Exported from the start, so an alert on its age sees a shop never polled.
    let last_success = metrics().last_success.with_label_values(&[&shop.name]);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        // Stopping drops a poll part-way: what it fed is fed again by the
        // next one, from the same cursor.
        let from = *cursor.lock().unwrap_or_else(PoisonError::into_inner);
        let newest = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            newest = poll_once(&producer, codec, &mut feed, &shop.name, from) => newest?,
        };
        if let Some(n) = newest
            && n - overlap > from
        {
            *cursor.lock().unwrap_or_else(PoisonError::into_inner) = n - overlap;
        }
        last_success.set(Utc::now().timestamp_millis() as f64 / 1000.0);
    }
}

/// Feeds every order of `feed` changed since `cursor`, a page at a time,
/// each page before the next is read; returns the newest change among them.
/// The caller moves the cursor only once all are fed, since a platform's
/// pages need not follow change time.
async fn poll_once<F: OrderFeed>(
    producer: &EventProducer,
    codec: &AvroCodec,
    feed: &mut F,
    shop: &str,
    cursor: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, PollError> {
    let read_at = mapping::event_time(Utc::now());
    let shop_error = |e: F::Error| PollError::Shop {
        transient: F::is_transient(&e),
        source: Box::new(e),
    };
    let mut listing = feed.changed_since(cursor);
    let mut found = 0;
    let mut newest: Option<DateTime<Utc>> = None;
    while let Some(orders) = feed.next_page(&mut listing).await.map_err(shop_error)? {
        found += orders.len();
        let mut events = Vec::with_capacity(orders.len());
        for order in &orders {
            let Some(changed) = F::changed_at(order) else {
                continue;
            };
            match polled::<F>(order, shop, &read_at) {
                Ok(event) => events.push(event),
                Err(e) => {
                    tracing::warn!(shop, order = %order["id"], error = %e, "a polled order does not map; left out");
                }
            }
            newest = newest.max(Some(changed));
        }
        let fed = produce_all(producer, codec, &events, F::SOURCE).await?;
        metrics().fed.with_label_values(&[shop]).inc_by(fed as u64);
    }
    tracing::debug!(shop, found, %cursor, "polled the shop's orders");
    Ok(newest)
}

/// `order` as `F` maps it, read at `read_at` (an [`mapping::event_time`]
/// taken before the read): what the poller and reconciliation feed into
/// `shop.orders.v1`. Its version is its change time, which platforms stamp
/// in whole seconds; two changes of one second differ only in the tiebreak,
/// which for a webhook is when it was sent. What a read returns is newer
/// than every webhook sent before it and older than any sent after it, so
/// the read's time is its tiebreak. With the change time there (as before),
/// a poll in the second of two changes could outrank the second one's
/// webhook (WooCommerce: always), and that change never reached the ERP.
/// The price: an order polled again is applied again, a no-op.
pub fn polled<F: OrderFeed>(
    order: &Value,
    shop: &str,
    read_at: &str,
) -> Result<ShopOrderEvent, MappingError> {
    let mut event = F::map(order, shop)?;
    event.version_tiebreak = format!("{read_at}/poll");
    Ok(event)
}

/// Feeds shop orders into `shop.orders.v1` as the gateway would: all
/// enqueued, then every acknowledgement awaited (one batch, not a round
/// trip each); returns how many.
pub async fn produce_all<'a>(
    producer: &EventProducer,
    codec: &AvroCodec,
    events: impl IntoIterator<Item = &'a ShopOrderEvent>,
    source: &'static str,
) -> Result<usize, BusError> {
    let mut acks = Vec::new();
    for event in events {
        let payload = codec.encode_serde(event).map_err(BusError::from)?;
        acks.push(
            producer
                .enqueue(OutRecord {
                    topic: SHOP_ORDERS,
                    key: event.key.clone(),
                    payload: payload.into(),
                    headers: vec![("flywheel.source", source.into())],
                })
                .await?,
        );
    }
    let produced = acks.len();
    for ack in acks {
        ack.await?;
    }
    Ok(produced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shop::mapping::{Delivery, woocommerce_order};
    use crate::shop::woocommerce::order_poll::WooOrderFeed;
    use crate::sync::state::Version;

    /// An order completed within the second of a poll that still saw it
    /// processing: the completion's webhook, sent after the read, must
    /// outrank the poll, and one sent before it must not.
    #[test]
    fn a_poll_outranks_the_webhooks_sent_before_its_read_and_no_later_one() {
        let order = serde_json::json!({"id": 7, "date_modified_gmt": "2026-11-18T11:06:40",
            "status": "completed", "line_items": []});
        let version = |e: ShopOrderEvent| -> Version { (e.version, e.version_tiebreak) };
        let read_at = mapping::event_time("2026-11-18T11:06:40.300Z".parse().unwrap());
        let polled = version(polled::<WooOrderFeed>(&order, "s", &read_at).unwrap());
        let sent_at = |time: &str| {
            let d = Delivery {
                platform: Platform::Woocommerce,
                channel: "s".into(),
                topic: "order.updated".into(),
                webhook_id: "9".into(),
                event_time: mapping::event_time(time.parse().unwrap()),
            };
            version(woocommerce_order(&order, &d).unwrap())
        };
        assert!(sent_at("2026-11-18T11:06:40.100Z") < polled);
        assert!(sent_at("2026-11-18T11:06:40.700Z") > polled);
        // The same second's change time, so the versions tie there.
        assert_eq!(sent_at("2026-11-18T11:06:40.700Z").0, polled.0);
    }
}
