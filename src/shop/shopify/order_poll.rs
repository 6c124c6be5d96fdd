//! Shopify's orders for the order poll (`shop::order_poll`): Shopify retries
//! a failed webhook for a while, then drops it (and removes a subscription
//! that keeps failing). The REST Admin API lists orders in the webhook's own
//! shape (`GET orders.json?status=any&updated_at_min=…`, 250 per page, paged
//! by the cursor of each page's `Link`), so the gateway's mapping applies
//! unchanged; the version is the order's `updated_at`, as its webhook's.

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
        let mut page = self
            .0
            .rest_get(
                "orders.json",
                &[
                    ("status", "any".into()),
                    ("updated_at_min", since.to_rfc3339()),
                    ("order", "updated_at asc".into()),
                    ("limit", PAGE.to_string()),
                ],
            )
            .await?;
        let mut out: Vec<Value> = Vec::new();
        loop {
            if let Some(Value::Array(orders)) = page.body.get_mut("orders").map(Value::take) {
                out.extend(orders);
            }
            // The cursor, not the last `updated_at`: a page can be all of
            // one second (a bulk edit), and the next then starts past it.
            match page.next {
                Some(next) => page = self.0.rest_next_page(next).await?,
                None => return Ok(out),
            }
        }
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
