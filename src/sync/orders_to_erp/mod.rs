//! `shop.orders.v1` → the ERP's sales orders, through the writer of the ERP's
//! database kind: `odoo` (PostgreSQL, `sale_order`) or `erpnext`
//! (MariaDB/MySQL, `tabSales Order`).
//!
//! Every writer gives the same guarantees, which are the contract here:
//! - one ERP transaction per order: its products must all exist by SKU, or
//!   the order is dead-lettered and nothing is written;
//! - the customer is matched by e-mail, or created;
//! - the order is unique on (channel, shop order id): a redelivery updates
//!   instead of duplicating, and lines are written only when it is created;
//! - its state only moves forward (draft → confirmed; cancelled and shipped
//!   are final), so a late, older update cannot undo a later one even past the
//!   version guard;
//! - the transaction is marked as Flywheel's own, so the source does not echo
//!   it back to the shop as a status change.

mod erpnext;
mod odoo;

use tokio_util::sync::CancellationToken;

use super::apply_loop::{self, Applier, Decoded, Outcome, Pending, SyncError};
use crate::config::{Config, ErpKind};
use crate::shop::mapping::{SHOP_ORDERS, ShopOrderEvent};

/// The ERP's writer, by database kind.
enum Writer {
    Odoo(odoo::OdooWriter),
    Erpnext(erpnext::ErpnextWriter),
}

pub struct OrdersToErp {
    writer: Writer,
}

/// Runs the order processor until `shutdown`.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), SyncError> {
    apply_loop::supervised(config, super::Lane::orders_in(), shutdown, || async {
        let writer = match config.erp.kind() {
            ErpKind::Postgres => Writer::Odoo(odoo::OdooWriter::connect(config).await?),
            ErpKind::Mysql => Writer::Erpnext(erpnext::ErpnextWriter::connect(config).await?),
        };
        Ok(OrdersToErp { writer })
    })
    .await
}

/// What an order's shop status asks of the ERP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OrderState {
    Draft,
    Confirmed,
    Cancelled,
}

impl OrderState {
    fn of(e: &ShopOrderEvent) -> OrderState {
        if e.cancelled_at.is_some() {
            OrderState::Cancelled
        } else if matches!(
            e.financial_status.as_deref(),
            Some("paid" | "partially_paid" | "authorized")
        ) {
            OrderState::Confirmed
        } else {
            OrderState::Draft
        }
    }
}

/// The dead letter of an order naming SKUs the ERP does not know.
fn unknown_skus(e: &ShopOrderEvent, unknown: &[&str]) -> Outcome {
    Outcome::DeadLetter {
        class: "unknown_sku",
        reason: format!(
            "order {} has SKUs the ERP does not know: {}; nothing was written",
            e.key,
            unknown.join(", ")
        ),
    }
}

/// A name for a customer the ERP does not know yet: first and last name,
/// else the e-mail, else one made from the order.
fn customer_name(e: &ShopOrderEvent, email: Option<&String>) -> String {
    let c = e.customer.clone().unwrap_or_default();
    let name = [c.first_name.as_deref(), c.last_name.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    if !name.is_empty() {
        return name;
    }
    email
        .cloned()
        .unwrap_or_else(|| format!("Shop customer {}", e.key))
}

/// The order's e-mail, or its customer's.
fn order_email(e: &ShopOrderEvent) -> Option<String> {
    e.email
        .clone()
        .or_else(|| e.customer.as_ref().and_then(|c| c.email.clone()))
}

impl Applier for OrdersToErp {
    const ENTITY: &'static str = "order_in";
    const TOPIC: &'static str = SHOP_ORDERS;
    type Event = ShopOrderEvent;

    fn decode(&self, v: &apache_avro::types::Value) -> Option<Decoded<ShopOrderEvent>> {
        let e: ShopOrderEvent = apache_avro::from_value(v).ok()?;
        Some(Decoded {
            key: e.key.clone(),
            version: (e.version, e.version_tiebreak.clone()),
            source_ts_micros: e.source_ts,
            event: e,
        })
    }

    async fn apply(
        &mut self,
        events: &[Pending<ShopOrderEvent>],
    ) -> Result<Vec<Outcome>, SyncError> {
        let mut outcomes = Vec::with_capacity(events.len());
        for p in events {
            let e = &p.event;
            let skus: Vec<String> = e.lines.iter().filter_map(|l| l.sku.clone()).collect();
            if skus.len() != e.lines.len() {
                outcomes.push(Outcome::DeadLetter {
                    class: "line_without_sku",
                    reason: format!(
                        "order {} has a line without a SKU; the ERP cannot book it",
                        e.key
                    ),
                });
                continue;
            }
            outcomes.push(match &mut self.writer {
                Writer::Odoo(w) => w.write(e, &skus).await?,
                Writer::Erpnext(w) => w.write(e, &skus).await?,
            });
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(financial: Option<&str>, cancelled: bool) -> ShopOrderEvent {
        ShopOrderEvent {
            key: "demo/1".into(),
            version: 1,
            version_tiebreak: String::new(),
            source_ts: 0,
            event_id: "w".into(),
            topic: "orders/create".into(),
            platform: "shopify".into(),
            channel: "demo".into(),
            order_id: "1".into(),
            order_name: None,
            email: None,
            currency: None,
            total_price: None,
            financial_status: financial.map(Into::into),
            fulfillment_status: None,
            cancelled_at: cancelled.then(|| "2026-11-23T10:00:00Z".into()),
            cancel_reason: None,
            created_at: None,
            updated_at: "2026-11-23T10:00:00Z".into(),
            customer: None,
            shipping_address: None,
            billing_address: None,
            lines: vec![],
            fulfillments: vec![],
        }
    }

    #[test]
    fn shop_status_maps_to_erp_state() {
        assert_eq!(
            OrderState::of(&event(Some("pending"), false)),
            OrderState::Draft
        );
        assert_eq!(
            OrderState::of(&event(Some("paid"), false)),
            OrderState::Confirmed
        );
        assert_eq!(
            OrderState::of(&event(Some("paid"), true)),
            OrderState::Cancelled
        );
        assert_eq!(OrderState::of(&event(None, false)), OrderState::Draft);
    }

    #[test]
    fn a_customer_without_a_name_is_named_by_email_or_order() {
        let e = event(None, false);
        assert_eq!(customer_name(&e, Some(&"a@b.c".to_owned())), "a@b.c");
        assert_eq!(customer_name(&e, None), "Shop customer demo/1");
    }
}
