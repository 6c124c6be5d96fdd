//! Shopify's orders for the order poll (`shop::order_poll`): Shopify retries
//! a failed webhook for a while, then drops it (and removes a subscription
//! that keeps failing). The REST Admin API lists orders in the webhook's own
//! shape (`GET orders.json?status=any&updated_at_min=…`, 250 per page), so the
//! gateway's mapping applies unchanged; the version is the order's
//! `updated_at`, as its webhook's.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::admin_api::{AdminApi, AdminApiError};
use crate::config::Platform;
use crate::shop::mapping::{self, Delivery, MappingError, ShopOrderEvent};
use crate::shop::order_poll::OrderFeed;

const PAGE: usize = 250;

pub struct ShopifyOrderFeed(pub AdminApi);

impl OrderFeed for ShopifyOrderFeed {
    type Error = AdminApiError;
    const SOURCE: &'static str = "shopify-poll";

    async fn changed_since(&mut self, since: DateTime<Utc>) -> Result<Vec<Value>, AdminApiError> {
        let mut out: Vec<Value> = Vec::new();
        let mut from = since;
        loop {
            let page = self
                .0
                .rest_get(
                    "orders.json",
                    &[
                        ("status", "any".into()),
                        ("updated_at_min", from.to_rfc3339()),
                        ("order", "updated_at asc".into()),
                        ("limit", PAGE.to_string()),
                    ],
                )
                .await?;
            let orders = page["orders"].as_array().cloned().unwrap_or_default();
            let full = orders.len() == PAGE;
            let last = orders.last().and_then(Self::changed_at);
            out.extend(orders);
            // The next page starts at the last change seen (repeats are
            // harmless); a full page all of one instant cannot move on.
            match last {
                Some(last) if full && last > from => from = last,
                _ => break,
            }
        }
        Ok(out)
    }

    fn changed_at(order: &Value) -> Option<DateTime<Utc>> {
        let text = order["updated_at"].as_str()?;
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    fn map(order: &Value, shop: &str) -> Result<ShopOrderEvent, MappingError> {
        let updated = order["updated_at"].as_str().unwrap_or_default();
        let delivery = Delivery {
            platform: Platform::Shopify,
            channel: shop.to_owned(),
            topic: "orders/updated".into(),
            webhook_id: "poll".into(),
            event_time: updated.to_owned(),
        };
        mapping::shopify_order(order, &delivery)
    }

    fn is_transient(e: &AdminApiError) -> bool {
        e.is_transient()
    }
}
