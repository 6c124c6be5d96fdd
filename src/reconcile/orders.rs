//! Orders: every shop order created or changed within the lookback, read
//! through the platform's order feed (`shop::order_poll::OrderFeed`, mapped as
//! the gateway maps its webhook), against what the order processor applied.
//!
//! "What the ERP has" is the order processor's applied version per order
//! (`sync::state`): it is stored after the ERP transaction commits, so it can
//! lag the ERP after a crash but never lead it. An order it lacks, or holds at
//! an older version, is fed into `shop.orders.v1` again by a repair — at worst
//! a no-op, since the processor's version guard and its forward-only,
//! idempotent ERP writes make a repeat harmless.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use super::ReconcileError;
use super::compare::{Drifted, EntityReport};
use crate::config::ShopConfig;
use crate::shop::mapping::{ShopOrderEvent, event_time};
use crate::shop::order_poll::{OrderFeed, polled};
use crate::sync::Lane;
use crate::sync::apply_loop::SyncError;
use crate::sync::state::{StateDb, Version};

/// The entity name orders are reported under.
pub const ENTITY: &str = "orders";

/// Compares the shop's orders changed since `since` with the applied
/// versions; returns the report and the orders a repair feeds again.
pub async fn compare<F>(
    feed: &mut F,
    state: &mut StateDb,
    shop: &ShopConfig,
    since: DateTime<Utc>,
) -> Result<(EntityReport, Vec<ShopOrderEvent>), ReconcileError>
where
    F: OrderFeed,
    SyncError: From<F::Error>,
{
    let read_at = event_time(Utc::now());
    let shop_error = |e| ReconcileError::shop(shop, SyncError::from(e));
    // Mapped page by page: the events are what is compared and fed again,
    // the orders' bodies need not outlive their page.
    let mut listing = feed.changed_since(since);
    let mut events: BTreeMap<String, ShopOrderEvent> = BTreeMap::new();
    while let Some(orders) = feed.next_page(&mut listing).await.map_err(shop_error)? {
        for order in &orders {
            match polled::<F>(order, &shop.name, &read_at) {
                // The newest change of an order listed twice (paging overlap).
                Ok(e) => {
                    if events
                        .get(&e.key)
                        .is_none_or(|have| have.version < e.version)
                    {
                        events.insert(e.key.clone(), e);
                    }
                }
                Err(e) => {
                    tracing::warn!(shop = %shop.name, order = %order["id"], error = %e, "an order does not map; left out of the comparison");
                }
            }
        }
    }
    let keys: Vec<String> = events.keys().cloned().collect();
    let applied = state
        .load_versions(&Lane::orders_in().name(), &keys)
        .await
        .map_err(ReconcileError::State)?;
    let (report, feed_again) = classify(&shop.name, events, &applied);
    Ok((report, feed_again))
}

/// Pure: each order in sync (applied at its change time or later), older in the
/// ERP (drifted, both versions shown) or missing in the ERP.
fn classify(
    shop: &str,
    events: BTreeMap<String, ShopOrderEvent>,
    applied: &HashMap<String, Version>,
) -> (EntityReport, Vec<ShopOrderEvent>) {
    let mut report = EntityReport {
        shop: shop.to_owned(),
        entity: ENTITY.to_owned(),
        compared: events.len(),
        ..EntityReport::default()
    };
    let mut feed_again = Vec::new();
    for (key, e) in events {
        // The change time alone: a read's tiebreak (its own time) outranks
        // the webhook already applied for the same change.
        match applied.get(&key) {
            Some(a) if a.0 >= e.version => {
                report.in_sync += 1;
                continue;
            }
            Some(a) => report.drifted.push(Drifted {
                key,
                erp: format!("version {}", a.0),
                shop: format!("version {}", e.version),
            }),
            None => report.missing_in_erp.push(key),
        }
        feed_again.push(e);
    }
    (report, feed_again)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(key: &str, version: i64) -> ShopOrderEvent {
        serde_json::from_value(serde_json::json!({
            "key": key, "version": version, "version_tiebreak": "", "source_ts": 0,
            "event_id": "", "topic": "orders/updated", "platform": "shopify",
            "channel": "s", "order_id": key, "updated_at": "", "lines": [], "fulfillments": []
        }))
        .expect("a minimal order event")
    }

    #[test]
    fn orders_applied_at_their_version_are_in_sync_the_rest_fed_again() {
        let events: BTreeMap<String, ShopOrderEvent> = [
            order("s/1", 10),
            order("s/2", 20),
            order("s/3", 30),
            order("s/4", 40),
        ]
        .into_iter()
        .map(|e| (e.key.clone(), e))
        .collect();
        let applied: HashMap<String, Version> = [
            ("s/1".to_owned(), (10, String::new())),
            ("s/2".to_owned(), (25, String::new())),
            ("s/3".to_owned(), (29, String::new())),
        ]
        .into();
        let (report, again) = classify("s", events, &applied);
        assert_eq!(report.compared, 4);
        assert_eq!(report.in_sync, 2);
        assert_eq!(
            report.drifted,
            vec![Drifted {
                key: "s/3".into(),
                erp: "version 29".into(),
                shop: "version 30".into()
            }]
        );
        assert_eq!(report.missing_in_erp, vec!["s/4".to_owned()]);
        let keys: Vec<&str> = again.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["s/3", "s/4"]);
    }

    #[test]
    fn an_order_read_after_its_webhook_was_applied_is_in_sync() {
        let mut read = order("s/1", 10);
        read.version_tiebreak = "2026-11-18T11:06:41.000Z/poll".into();
        let events = BTreeMap::from([(read.key.clone(), read)]);
        let applied = HashMap::from([(
            "s/1".to_owned(),
            (10, "2026-11-18T11:06:40.100Z/9".to_owned()),
        )]);
        let (report, again) = classify("s", events, &applied);
        assert_eq!(report.in_sync, 1);
        assert!(again.is_empty());
    }
}
