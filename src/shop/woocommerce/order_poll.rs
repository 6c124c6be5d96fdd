//! WooCommerce's orders for the order poll (`shop::order_poll`): WooCommerce
//! delivers a webhook once (no retries), disables it after a few failed
//! deliveries, and builds its body at delivery time, so its orders are polled
//! (`GET orders?modified_after=…`, oldest first, 100 per page). A polled order
//! carries the version of its webhook (`date_modified_gmt`) and a tiebreak of
//! that time alone, so polling one order again produces an identical version.

use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::Method;
use serde_json::Value;

use super::client::{WooClient, WooError};
use crate::config::Platform;
use crate::shop::mapping::{self, Delivery, MappingError, ShopOrderEvent};
use crate::shop::order_poll::OrderFeed;

/// `YYYY-MM-DDTHH:MM:SS` (UTC), WooCommerce's `*_gmt` format.
fn gmt(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

pub struct WooOrderFeed(pub WooClient);

impl OrderFeed for WooOrderFeed {
    type Error = WooError;
    const SOURCE: &'static str = "woocommerce-poll";

    async fn changed_since(&mut self, since: DateTime<Utc>) -> Result<Vec<Value>, WooError> {
        // `modified_after` is exclusive: start a second earlier.
        let after = gmt(since - chrono::Duration::seconds(1));
        let mut out = Vec::new();
        for page in 1.. {
            let batch = self
                .0
                .request(
                    Method::GET,
                    "orders",
                    &[
                        ("modified_after", after.clone()),
                        ("orderby", "modified".into()),
                        ("order", "asc".into()),
                        ("per_page", "100".into()),
                        ("page", page.to_string()),
                        // `modified_after` compares in the site's zone unless told.
                        ("dates_are_gmt", "true".into()),
                    ],
                    None,
                )
                .await?;
            let orders = batch.as_array().cloned().unwrap_or_default();
            let full = orders.len() == 100;
            out.extend(orders);
            if !full {
                break;
            }
        }
        Ok(out)
    }

    fn changed_at(order: &Value) -> Option<DateTime<Utc>> {
        let text = order["date_modified_gmt"].as_str()?;
        NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
            .ok()
            .map(|t| t.and_utc())
    }

    fn map(order: &Value, shop: &str) -> Result<ShopOrderEvent, MappingError> {
        let modified = order["date_modified_gmt"].as_str().unwrap_or_default();
        let delivery = Delivery {
            platform: Platform::Woocommerce,
            channel: shop.to_owned(),
            topic: "order.updated".into(),
            webhook_id: "poll".into(),
            // The change's own time (the event's source time); the poller
            // makes the tiebreak its read's time.
            event_time: modified.to_owned(),
        };
        mapping::woocommerce_order(order, &delivery)
    }

    fn is_transient(e: &WooError) -> bool {
        e.is_transient()
    }
}
