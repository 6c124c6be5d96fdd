//! Shopify order status as an `OrderStatusPlatform`: the order read with its
//! fulfillment orders and lines; shipped becomes a `fulfillmentCreate` on the
//! open fulfillment order with carrier and tracking (the customer notified);
//! cancelled an `orderCancel` (restock, refund). A mutation the shop refuses
//! while the order is in the wanted state anyway (someone got there first)
//! counts as done.

use serde_json::{Value, json};

use super::admin_api::AdminApiError;
use super::catalog::ShopCatalog;
use crate::shop::platform::{OrderState, OrderStatusPlatform, Shipped};

pub struct ShopifyOrders {
    pub catalog: ShopCatalog,
    /// The order `state` just read, for the `shipped_from` and `fulfil` that
    /// follow it in the same step (each read costs API points).
    last_read: Option<(String, ShopOrder)>,
}

impl ShopifyOrders {
    pub fn new(catalog: ShopCatalog) -> ShopifyOrders {
        ShopifyOrders {
            catalog,
            last_read: None,
        }
    }
}

/// The shop's view of one order, as far as status goes.
#[derive(Clone)]
struct ShopOrder {
    state: OrderState,
    open_fulfillment_order: Option<String>,
    /// Where the order ships (or shipped) from.
    location: Option<String>,
    /// (SKU, quantity) of its lines.
    lines: Vec<(String, i64)>,
}

const ORDER_QUERY: &str = "query($id: ID!) { order(id: $id) { id cancelledAt displayFulfillmentStatus \
     fulfillmentOrders(first: 10) { nodes { id status assignedLocation { location { id } } } } \
     lineItems(first: 100) { nodes { sku quantity } } } }";

fn order_gid(order_id: &str) -> String {
    format!("gid://shopify/Order/{order_id}")
}

impl ShopifyOrders {
    async fn read(&self, order_id: &str) -> Result<Option<ShopOrder>, AdminApiError> {
        let r = self
            .catalog
            .api
            .execute(ORDER_QUERY, json!({"id": order_gid(order_id)}), 5.0)
            .await?;
        let o = &r.data["order"];
        if o.is_null() {
            return Ok(None);
        }
        let orders: Vec<&Value> = o["fulfillmentOrders"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        let open = orders
            .iter()
            .find(|fo| matches!(fo["status"].as_str(), Some("OPEN" | "IN_PROGRESS")));
        let shipping = open.or_else(|| {
            orders
                .iter()
                .find(|fo| fo["status"].as_str() == Some("CLOSED"))
        });
        let lines = o["lineItems"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| Some((l["sku"].as_str()?.to_owned(), l["quantity"].as_i64()?)))
            .collect();
        let state = if !o["cancelledAt"].is_null() {
            OrderState::Cancelled
        } else if o["displayFulfillmentStatus"] == "FULFILLED" {
            OrderState::Fulfilled
        } else {
            OrderState::Open
        };
        Ok(Some(ShopOrder {
            state,
            open_fulfillment_order: open.and_then(|fo| fo["id"].as_str().map(str::to_owned)),
            location: shipping.and_then(|fo| {
                fo["assignedLocation"]["location"]["id"]
                    .as_str()
                    .map(str::to_owned)
            }),
            lines,
        }))
    }

    /// The order as `state` just read it, else read now.
    async fn recent(&mut self, order_id: &str) -> Result<Option<ShopOrder>, AdminApiError> {
        match &self.last_read {
            Some((id, order)) if id == order_id => Ok(Some(order.clone())),
            _ => self.read(order_id).await,
        }
    }

    /// A mutation's user errors: none, or the order in the wanted state
    /// anyway, is done; otherwise the shop's words.
    async fn settle(
        &self,
        order_id: &str,
        payload: &Value,
        wanted: OrderState,
    ) -> Result<Result<(), String>, AdminApiError> {
        let errors = payload["userErrors"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if errors.is_empty() {
            return Ok(Ok(()));
        }
        if self
            .read(order_id)
            .await?
            .is_some_and(|o| o.state == wanted)
        {
            return Ok(Ok(()));
        }
        Ok(Err(Value::Array(errors).to_string()))
    }
}

impl OrderStatusPlatform for ShopifyOrders {
    type Error = AdminApiError;

    async fn state(&mut self, order_id: &str) -> Result<Option<OrderState>, AdminApiError> {
        let order = self.read(order_id).await?;
        let state = order.as_ref().map(|o| o.state);
        self.last_read = order.map(|o| (order_id.to_owned(), o));
        Ok(state)
    }

    async fn fulfil(
        &mut self,
        order_id: &str,
        carrier: Option<&str>,
        tracking: Option<&str>,
    ) -> Result<Result<(), String>, AdminApiError> {
        let Some(order) = self.recent(order_id).await? else {
            return Ok(Err("the shop has no such order".into()));
        };
        self.last_read = None;
        let Some(fulfillment_order) = order.open_fulfillment_order else {
            return Ok(Err("the order has no open fulfillment order".into()));
        };
        let r = self
            .catalog
            .api
            .execute(
                "mutation($f: FulfillmentInput!) { fulfillmentCreate(fulfillment: $f) { fulfillment { id } userErrors { field message } } }",
                json!({"f": {
                    "lineItemsByFulfillmentOrder": [{"fulfillmentOrderId": fulfillment_order}],
                    "trackingInfo": {"number": tracking, "company": carrier},
                    "notifyCustomer": true,
                }}),
                10.0,
            )
            .await?;
        self.settle(
            order_id,
            &r.data["fulfillmentCreate"],
            OrderState::Fulfilled,
        )
        .await
    }

    async fn cancel(&mut self, order_id: &str) -> Result<Result<(), String>, AdminApiError> {
        self.last_read = None;
        let r = self
            .catalog
            .api
            .execute(
                "mutation($id: ID!) { orderCancel(orderId: $id, reason: OTHER, restock: true, refund: true, notifyCustomer: true, staffNote: \"cancelled in the ERP\") { userErrors { field message } } }",
                json!({"id": order_gid(order_id)}),
                10.0,
            )
            .await?;
        self.settle(order_id, &r.data["orderCancel"], OrderState::Cancelled)
            .await
    }

    /// A fulfilment takes the order's lines off `on_hand` at the location its
    /// fulfillment order ships from.
    async fn shipped_from(&mut self, order_id: &str) -> Result<Vec<Shipped>, AdminApiError> {
        let Some(order) = self.recent(order_id).await? else {
            return Ok(Vec::new());
        };
        let Some(location) = order.location else {
            return Ok(Vec::new());
        };
        Ok(order
            .lines
            .into_iter()
            .map(|(sku, units)| Shipped {
                sku,
                location: location.clone(),
                units,
            })
            .collect())
    }
}
