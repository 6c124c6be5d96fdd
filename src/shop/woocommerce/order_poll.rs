//! WooCommerce's orders for the order poll (`shop::order_poll`): WooCommerce
//! delivers a webhook once (no retries), disables it after a few failed
//! deliveries, and builds its body at delivery time, so its orders are polled
//! (`GET orders?modified_after=…`, oldest first, 100 per page, each page
//! starting where the last one ended). A polled order carries the version
//! of its webhook (`date_modified_gmt`); the poller gives it its tiebreak.

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

/// Orders per page (WooCommerce's maximum).
const PAGE: usize = 100;

/// At most this many ids go in `exclude` (about 4 KB of URL; servers refuse
/// request lines of about 8 KB).
const MAX_EXCLUDED: usize = 500;

/// The query of the page of orders changed after `after` (whole seconds),
/// without the ones of the last second `read` already: excluded by id, and
/// beyond [`MAX_EXCLUDED`] of them skipped by `offset` (a second with that
/// many changed orders is paged by position past them, as all pages were
/// before).
fn page_query(after: DateTime<Utc>, read: &[u64]) -> Vec<(&'static str, String)> {
    let mut query = vec![
        ("modified_after", gmt(after)),
        ("orderby", "modified".into()),
        ("order", "asc".into()),
        ("per_page", PAGE.to_string()),
        // `modified_after` compares in the site's zone unless told.
        ("dates_are_gmt", "true".into()),
    ];
    let excluded = &read[..read.len().min(MAX_EXCLUDED)];
    if !excluded.is_empty() {
        let ids: Vec<String> = excluded.iter().map(u64::to_string).collect();
        query.push(("exclude", ids.join(",")));
    }
    if read.len() > excluded.len() {
        query.push(("offset", (read.len() - excluded.len()).to_string()));
    }
    query
}

pub struct WooOrderFeed(pub WooClient);

/// Where a listing of WooCommerce's orders stands between pages.
///
/// Paged by key, not by page number: a page number is an offset, and an
/// order that changes while the listing is read moves from a page already
/// read to the end, shifting an unread one onto the read page (lost, as the
/// next poll starts past it). So each page starts at the second the last one
/// ended in (`modified_after` is exclusive: a second earlier) without the
/// orders of that second already read.
pub struct WooListing {
    after: DateTime<Utc>,
    read_in_last_second: Vec<u64>,
    done: bool,
}

impl OrderFeed for WooOrderFeed {
    type Error = WooError;
    type Listing = WooListing;
    const SOURCE: &'static str = "woocommerce-poll";

    fn changed_since(&self, since: DateTime<Utc>) -> WooListing {
        WooListing {
            after: since - chrono::Duration::seconds(1),
            read_in_last_second: Vec::new(),
            done: false,
        }
    }

    async fn next_page(
        &mut self,
        listing: &mut WooListing,
    ) -> Result<Option<Vec<Value>>, WooError> {
        if listing.done {
            return Ok(None);
        }
        listing.done = true;
        let query = page_query(listing.after, &listing.read_in_last_second);
        let Value::Array(orders) = self.0.request(Method::GET, "orders", &query, None).await?
        else {
            return Err(self.protocol("the answer is not a list of orders"));
        };
        // Paging by key rests on the order asked for: a site that lists
        // orders another way would have later pages skipped silently.
        if !oldest_change_first(&orders) {
            return Err(self.protocol(
                "the orders are not listed oldest change first, which the order poll pages by",
            ));
        }
        let full = orders.len() == PAGE;
        let last_second = orders.last().and_then(Self::changed_at);
        let mut moved_on = false;
        if let Some(last) = last_second {
            if last - chrono::Duration::seconds(1) > listing.after {
                listing.after = last - chrono::Duration::seconds(1);
                listing.read_in_last_second.clear();
            }
            for id in orders
                .iter()
                .filter(|o| Self::changed_at(o) == Some(last))
                .filter_map(|o| o["id"].as_u64())
            {
                if !listing.read_in_last_second.contains(&id) {
                    listing.read_in_last_second.push(id);
                    moved_on = true;
                }
            }
        }
        if full && moved_on {
            listing.done = false;
        } else if full && last_second.is_some() {
            // A full page of orders already read: the site ignores
            // `exclude`, and asking again would bring the same page. What
            // lies past it is not read, so the poll has not succeeded.
            return Err(self.protocol(
                "a full page of orders already read came again despite `exclude`, so the poll cannot page past one second's orders",
            ));
        }
        Ok(Some(orders))
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

impl WooOrderFeed {
    fn protocol(&self, detail: &str) -> WooError {
        WooError::Protocol {
            shop: self.0.shop.clone(),
            what: "GET orders?orderby=modified&order=asc".into(),
            detail: detail.into(),
        }
    }
}

/// Whether `orders` are listed oldest change first (an order without a
/// readable change time is passed over).
fn oldest_change_first(orders: &[Value]) -> bool {
    let times: Vec<DateTime<Utc>> = orders.iter().filter_map(WooOrderFeed::changed_at).collect();
    times.windows(2).all(|t| t[0] <= t[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_sorted_some_other_way_is_told_apart() {
        let at = |t: &str| serde_json::json!({"date_modified_gmt": t});
        let sorted = [
            at("2026-03-02T10:00:00"),
            at("2026-03-02T10:00:00"),
            at("2026-03-02T10:00:01"),
        ];
        assert!(oldest_change_first(&sorted));
        assert!(oldest_change_first(&[
            at("2026-03-02T10:00:01"),
            at("not a time"),
            at("2026-03-02T10:00:02")
        ]));
        assert!(!oldest_change_first(&[
            at("2026-03-02T10:00:01"),
            at("2026-03-02T10:00:00")
        ]));
        assert!(oldest_change_first(&[]));
    }

    #[test]
    fn a_page_excludes_what_was_read_of_its_second_and_skips_past_the_most_it_can_name() {
        let after: DateTime<Utc> = "2026-03-02T09:59:59Z".parse().unwrap();
        let param = |q: &[(&str, String)], name: &str| {
            q.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
        };
        let first = page_query(after, &[]);
        assert_eq!(
            param(&first, "modified_after").as_deref(),
            Some("2026-03-02T09:59:59")
        );
        assert_eq!(param(&first, "exclude"), None);
        assert_eq!(param(&first, "offset"), None);
        let some = page_query(after, &[7, 9]);
        assert_eq!(param(&some, "exclude").as_deref(), Some("7,9"));
        assert_eq!(param(&some, "offset"), None);
        let many: Vec<u64> = (1..=537).collect();
        let most = page_query(after, &many);
        let excluded = param(&most, "exclude").unwrap();
        assert_eq!(excluded.split(',').count(), MAX_EXCLUDED);
        assert!(excluded.starts_with("1,2,") && excluded.ends_with(",500"));
        assert_eq!(param(&most, "offset").as_deref(), Some("37"));
    }
}
