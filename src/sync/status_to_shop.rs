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
use super::shop_catalog::ShopCatalog;
use super::written_levels;
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
    catalog: ShopCatalog,
    /// Flywheel's state database: the levels the stock processor wrote.
    state: tokio_postgres::Client,
    channel: String,
}

/// Runs the order status processor until `shutdown`.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), SyncError> {
    let p = &config.processors;
    apply_loop::supervised(config, shutdown, || async {
        let state = apply_loop::connect_db(config, &p.state_database(&config.erp)).await?;
        written_levels::open(&state).await?;
        Ok(StatusToShop {
            catalog: ShopCatalog::new(AdminApi::from_config(p, <StatusToShop as Applier>::ENTITY)?),
            state,
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
    /// Where the open fulfillment order ships from.
    location: Option<String>,
    /// (SKU, quantity) of its lines.
    lines: Vec<(String, i64)>,
}

const ORDER_QUERY: &str = "query($id: ID!) { order(id: $id) { id cancelledAt displayFulfillmentStatus \
     fulfillmentOrders(first: 10) { nodes { id status assignedLocation { location { id } } } } \
     lineItems(first: 100) { nodes { sku quantity } } } }";

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
                    Some("shipped") => self.fulfil(e, p.version.0).await?,
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
            .catalog
            .api
            .execute(ORDER_QUERY, json!({"id": order_gid(e)}), 5.0)
            .await?;
        let o = &r.data["order"];
        if o.is_null() {
            return Ok(None);
        }
        let open = o["fulfillmentOrders"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|fo| matches!(fo["status"].as_str(), Some("OPEN" | "IN_PROGRESS")));
        let lines = o["lineItems"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| Some((l["sku"].as_str()?.to_owned(), l["quantity"].as_i64()?)))
            .collect();
        Ok(Some(ShopOrder {
            cancelled: !o["cancelledAt"].is_null(),
            fulfilled: o["displayFulfillmentStatus"] == "FULFILLED",
            open_fulfillment_order: open.and_then(|fo| fo["id"].as_str().map(str::to_owned)),
            location: open.and_then(|fo| {
                fo["assignedLocation"]["location"]["id"]
                    .as_str()
                    .map(str::to_owned)
            }),
            lines,
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

    async fn fulfil(&mut self, e: &OrderStatus, version: i64) -> Result<Outcome, SyncError> {
        let Some(order) = self.read(e).await? else {
            return Ok(Self::missing(e));
        };
        if order.fulfilled {
            // Fulfilled but this shipment not recorded as applied: a crash
            // came between the fulfilment and the check below (or the
            // merchant fulfilled it by hand). The check is a compare-and-set,
            // so running it again changes nothing when it was done.
            self.undo_double_count(&order, version).await?;
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
        let Some(fulfillment_order) = order.open_fulfillment_order.clone() else {
            return Ok(Outcome::DeadLetter {
                class: "conflict",
                reason: format!(
                    "order {} has no open fulfillment order in the shop",
                    e.shop_order_id
                ),
            });
        };
        let r = self
            .catalog
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
        let fulfilled_now = r.data["fulfillmentCreate"]["userErrors"]
            .as_array()
            .is_none_or(|errors| errors.is_empty());
        let outcome = self
            .settle(e, &r.data["fulfillmentCreate"], |o| o.fulfilled)
            .await?;
        if fulfilled_now {
            self.undo_double_count(&order, version).await?;
        }
        Ok(outcome)
    }

    /// A fulfilment takes the shipped units off the shop's `on_hand`. The ERP
    /// took them off its own stock in the same transaction that shipped the
    /// order (version `shipped_at_version`), and if the stock processor wrote
    /// that already (its last write to the level carries a version at least
    /// this one), the shop now counts the shipment twice. Then, and only if the
    /// level is exactly the written value minus the shipped units (a
    /// compare-and-set), it is put back to the written value. In the other
    /// order — fulfilment first — the stock processor's own compare fails,
    /// it re-reads and writes the right number, and nothing is done here.
    async fn undo_double_count(
        &mut self,
        order: &ShopOrder,
        shipped_at_version: i64,
    ) -> Result<(), SyncError> {
        let Some(location) = order.location.clone() else {
            return Ok(());
        };
        let variants = self
            .catalog
            .variants(order.lines.iter().map(|(sku, _)| sku.as_str()))
            .await?;
        let mut shipped: std::collections::BTreeMap<String, i64> = Default::default();
        for (sku, qty) in &order.lines {
            if let Some(v) = variants.get(sku) {
                *shipped.entry(v.inventory_item.clone()).or_default() += qty;
            }
        }
        let pairs: Vec<(String, String)> = shipped
            .keys()
            .map(|item| (item.clone(), location.clone()))
            .collect();
        let written = written_levels::load(&self.state, &pairs).await?;
        let quantities: Vec<Value> = pairs
            .iter()
            .filter_map(|pair| {
                let w = written.get(pair)?;
                (w.version >= shipped_at_version).then(|| {
                    json!({"inventoryItemId": pair.0, "locationId": pair.1,
                           "quantity": w.quantity, "changeFromQuantity": w.quantity - shipped[&pair.0]})
                })
            })
            .collect();
        // One level per call: each compare stands alone.
        for q in quantities {
            let r = self
                .catalog
                .api
                .execute(
                    "mutation($input: InventorySetQuantitiesInput!) { inventorySetQuantities(input: $input) { userErrors { code message } } }",
                    json!({"input": {"name": "on_hand", "reason": "correction",
                        "referenceDocumentUri": "flywheel://erp/shipment", "quantities": [q]}}),
                    10.0,
                )
                .await?;
            let errors = &r.data["inventorySetQuantities"]["userErrors"];
            if errors.as_array().is_some_and(|e| e.is_empty()) {
                tracing::debug!(level = %q, "shipment was counted twice in the shop; on_hand restored");
            } else {
                // Stale: the level is not the double-counted one; nothing to undo.
                tracing::debug!(level = %q, answer = %errors, "no double count to undo");
            }
        }
        Ok(())
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
            .catalog
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
