//! `erp.order_status.v1` → the shop's orders.
//!
//! A shipped ERP order becomes a fulfillment with the carrier and tracking
//! number; a cancelled one an `orderCancel`. Draft and confirmed need nothing in
//! the shop (the order came from there). Each write first reads the order, so it
//! is idempotent against the shop's own state: an order already fulfilled or
//! already cancelled counts as applied, and a replay or duplicate changes nothing.
//! A status the shop cannot take (shipping an order the shop cancelled) is a
//! conflict for a person: it goes to the dead-letter topic with the reason.

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::apply_loop::{self, Applier, Decoded, Outcome, Pending, SyncError};
use crate::bus::avro::{field, field_i64, field_str};
use crate::bus::topics::ERP_ORDER_STATUS;
use crate::config::Config;
use crate::shop::admin_api::AdminApi;

#[derive(Clone, Debug)]
pub struct OrderStatus {
    pub channel: String,
    pub shop_order_id: String,
    /// `draft`, `confirmed`, `shipped` or `cancelled`; `None` when deleted.
    pub status: Option<String>,
    pub carrier: Option<String>,
    pub tracking_ref: Option<String>,
}

pub struct StatusToShop {
    api: AdminApi,
    channel: String,
}

/// Runs the order status processor until `shutdown`.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), SyncError> {
    let p = &config.processors;
    apply_loop::supervised(config, shutdown, || async {
        Ok(StatusToShop {
            api: AdminApi::from_config(p, <StatusToShop as Applier>::ENTITY)?,
            channel: p.shop_channel.clone(),
        })
    })
    .await
}

/// The shop's view of one order, as far as status goes.
struct ShopOrder {
    cancelled: bool,
    fulfilled: bool,
    open_fulfillment_order: Option<String>,
}

const ORDER_QUERY: &str = "query($id: ID!) { order(id: $id) { id cancelledAt displayFulfillmentStatus \
     fulfillmentOrders(first: 10) { nodes { id status } } } }";

impl Applier for StatusToShop {
    const ENTITY: &'static str = "order_status";
    const TOPIC: &'static str = ERP_ORDER_STATUS;
    type Event = OrderStatus;

    fn decode(&self, v: &apache_avro::types::Value) -> Option<Decoded<OrderStatus>> {
        let deleted = matches!(
            field(v, "deleted"),
            Some(apache_avro::types::Value::Boolean(true))
        );
        let opt = |name| field_str(v, name).map(str::to_owned);
        Some(Decoded {
            key: field_str(v, "key")?.to_owned(),
            version: (field_i64(v, "version")?, String::new()),
            source_ts_micros: field_i64(v, "source_ts")?,
            event: OrderStatus {
                channel: field_str(v, "channel")?.to_owned(),
                shop_order_id: field_str(v, "shop_order_id")?.to_owned(),
                status: if deleted { None } else { opt("status") },
                carrier: opt("carrier"),
                tracking_ref: opt("tracking_ref"),
            },
        })
    }

    async fn apply(&mut self, events: &[Pending<OrderStatus>]) -> Result<Vec<Outcome>, SyncError> {
        let mut outcomes = Vec::with_capacity(events.len());
        for p in events {
            let e = &p.event;
            let outcome = if e.channel != self.channel {
                Outcome::NotApplicable
            } else {
                match e.status.as_deref() {
                    Some("shipped") => self.fulfil(e).await?,
                    Some("cancelled") => self.cancel(e).await?,
                    _ => Outcome::NotApplicable,
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }
}

fn order_gid(e: &OrderStatus) -> String {
    format!("gid://shopify/Order/{}", e.shop_order_id)
}

impl StatusToShop {
    async fn read(&self, e: &OrderStatus) -> Result<Option<ShopOrder>, SyncError> {
        let r = self
            .api
            .execute(ORDER_QUERY, json!({"id": order_gid(e)}), 3.0)
            .await?;
        let o = &r.data["order"];
        if o.is_null() {
            return Ok(None);
        }
        let open = o["fulfillmentOrders"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|fo| matches!(fo["status"].as_str(), Some("OPEN" | "IN_PROGRESS")))
            .and_then(|fo| fo["id"].as_str().map(str::to_owned));
        Ok(Some(ShopOrder {
            cancelled: !o["cancelledAt"].is_null(),
            fulfilled: o["displayFulfillmentStatus"] == "FULFILLED",
            open_fulfillment_order: open,
        }))
    }

    fn missing(e: &OrderStatus) -> Outcome {
        Outcome::DeadLetter {
            class: "unknown_order",
            reason: format!(
                "the shop has no order {} (channel {})",
                e.shop_order_id, e.channel
            ),
        }
    }

    async fn fulfil(&self, e: &OrderStatus) -> Result<Outcome, SyncError> {
        let Some(order) = self.read(e).await? else {
            return Ok(Self::missing(e));
        };
        if order.fulfilled {
            return Ok(Outcome::Applied);
        }
        if order.cancelled {
            return Ok(Outcome::DeadLetter {
                class: "conflict",
                reason: format!(
                    "the ERP shipped order {} but the shop has cancelled it; settle it by hand",
                    e.shop_order_id
                ),
            });
        }
        let Some(fulfillment_order) = order.open_fulfillment_order else {
            return Ok(Outcome::DeadLetter {
                class: "conflict",
                reason: format!(
                    "order {} has no open fulfillment order in the shop",
                    e.shop_order_id
                ),
            });
        };
        let r = self
            .api
            .execute(
                "mutation($f: FulfillmentInput!) { fulfillmentCreate(fulfillment: $f) { fulfillment { id } userErrors { field message } } }",
                json!({"f": {
                    "lineItemsByFulfillmentOrder": [{"fulfillmentOrderId": fulfillment_order}],
                    "trackingInfo": {"number": e.tracking_ref, "company": e.carrier},
                    "notifyCustomer": true,
                }}),
                10.0,
            )
            .await?;
        self.settle(e, &r.data["fulfillmentCreate"], |o| o.fulfilled)
            .await
    }

    async fn cancel(&self, e: &OrderStatus) -> Result<Outcome, SyncError> {
        let Some(order) = self.read(e).await? else {
            return Ok(Self::missing(e));
        };
        if order.cancelled {
            return Ok(Outcome::Applied);
        }
        if order.fulfilled {
            return Ok(Outcome::DeadLetter {
                class: "conflict",
                reason: format!(
                    "the ERP cancelled order {} but the shop has fulfilled it; settle it by hand",
                    e.shop_order_id
                ),
            });
        }
        let r = self
            .api
            .execute(
                "mutation($id: ID!) { orderCancel(orderId: $id, reason: OTHER, restock: true, refund: true, notifyCustomer: true, staffNote: \"cancelled in the ERP\") { userErrors { field message } } }",
                json!({"id": order_gid(e)}),
                10.0,
            )
            .await?;
        self.settle(e, &r.data["orderCancel"], |o| o.cancelled)
            .await
    }

    /// A mutation's user errors: if the order is in the wanted state anyway
    /// (someone else got there first), that is applied; otherwise a dead letter.
    async fn settle(
        &self,
        e: &OrderStatus,
        payload: &Value,
        done: impl Fn(&ShopOrder) -> bool,
    ) -> Result<Outcome, SyncError> {
        let errors = payload["userErrors"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if errors.is_empty() {
            return Ok(Outcome::Applied);
        }
        if self.read(e).await?.is_some_and(|o| done(&o)) {
            return Ok(Outcome::Applied);
        }
        Ok(Outcome::DeadLetter {
            class: "shop_rejected",
            reason: format!(
                "the shop refused order {}'s status `{}`: {}",
                e.shop_order_id,
                e.status.as_deref().unwrap_or("deleted"),
                Value::Array(errors)
            ),
        })
    }
}
