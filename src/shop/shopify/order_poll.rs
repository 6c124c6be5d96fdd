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

/// Where a listing of Shopify's orders stands between pages.
pub enum ShopifyListing {
    First(DateTime<Utc>),
    /// The cursor of the last page's `Link`, not its last `updated_at`: a
    /// page can be all of one second (a bulk edit), and the next would then
    /// start past it.
    Next(reqwest::Url),
    Done,
}

impl OrderFeed for ShopifyOrderFeed {
    type Error = AdminApiError;
    type Listing = ShopifyListing;
    const SOURCE: &'static str = "shopify-poll";

    fn changed_since(&self, since: DateTime<Utc>) -> ShopifyListing {
        ShopifyListing::First(since)
    }

    async fn next_page(
        &mut self,
        listing: &mut ShopifyListing,
    ) -> Result<Option<Vec<Value>>, AdminApiError> {
        let mut page = match std::mem::replace(listing, ShopifyListing::Done) {
            ShopifyListing::First(since) => {
                let query = [
                    ("status", "any".into()),
                    ("updated_at_min", since.to_rfc3339()),
                    ("order", "updated_at asc".into()),
                    ("limit", PAGE.to_string()),
                ];
                self.0.rest_get("orders.json", &query).await?
            }
            ShopifyListing::Next(url) => self.0.rest_next_page(url).await?,
            ShopifyListing::Done => return Ok(None),
        };
        if let Some(next) = page.next {
            *listing = ShopifyListing::Next(next);
        }
        match page.body.get_mut("orders").map(Value::take) {
            Some(Value::Array(orders)) => Ok(Some(orders)),
            _ => Err(AdminApiError::Protocol(
                "GET orders.json answered without an `orders` list".into(),
            )),
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
