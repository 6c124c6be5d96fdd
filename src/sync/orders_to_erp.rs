//! `shop.orders.v1` → the ERP's `sale_order` (Odoo-shaped).
//!
//! Each order is written in one transaction: its products must all exist by
//! SKU, or the order is dead-lettered and nothing is written. The customer is
//! matched by e-mail in `res_partner`, or created. The order is unique on
//! (channel, shop order id): a redelivery updates instead of duplicating, and
//! lines are written only when the order is created. Its state only moves
//! forward (draft → sale; cancel and done are final), so a late, older update
//! cannot undo a later one even past the version guard.

use std::collections::HashMap;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::apply_loop::{self, Applier, Decoded, Outcome, Pending, SyncError};
use crate::config::Config;
use crate::erp::postgres::capture::OWN_ORIGIN_PREFIX;
use crate::shop::mapping::{SHOP_ORDERS, ShopOrderEvent};

pub struct OrdersToErp {
    erp: Client,
}

/// Runs the order processor until `shutdown`.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), SyncError> {
    apply_loop::supervised(config, shutdown, || async {
        let erp = apply_loop::connect_db(config, &config.erp.dsn).await?;
        let origin = claim_replication_origin(&erp).await?;
        tracing::info!(%origin, "ERP writes carry Flywheel's replication origin, so capture skips them");
        Ok(OrdersToErp { erp })
    })
    .await
}

/// Marks every transaction of this session with a replication origin named
/// `flywheel…`: the source skips such transactions, so an order written here
/// does not come back through capture as a status change to send to the shop.
/// A session holds its origin exclusively, so concurrent writers take the
/// first free one of a few.
async fn claim_replication_origin(erp: &Client) -> Result<String, SyncError> {
    use tokio_postgres::error::SqlState;
    const WRITERS: usize = 16;
    for n in 0..WRITERS {
        let name = format!("{OWN_ORIGIN_PREFIX}.erp_writer.{n}");
        let claimed = async {
            erp.execute(
                "SELECT pg_replication_origin_create($1) WHERE pg_replication_origin_oid($1) IS NULL",
                &[&name],
            )
            .await?;
            erp.execute("SELECT pg_replication_origin_session_setup($1)", &[&name])
                .await
        }
        .await;
        match claimed {
            Ok(_) => return Ok(name),
            // In use by another writer, or created by one concurrently.
            Err(e)
                if e.code() == Some(&SqlState::OBJECT_IN_USE)
                    || e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
            {
                continue;
            }
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                return Err(SyncError::ErpPrivilege(
                    "the ERP role cannot use replication origins, which keep Flywheel's own \
                     writes from echoing back; as a superuser run: GRANT EXECUTE ON FUNCTION \
                     pg_replication_origin_create(text), pg_replication_origin_oid(text), \
                     pg_replication_origin_session_setup(text) TO <the erp.dsn user>"
                        .into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(SyncError::ErpPrivilege(format!(
        "all {WRITERS} of Flywheel's replication origins are in use: more order writers than \
         that run against this ERP"
    )))
}

/// The ERP state an order's shop status asks for.
fn erp_state(e: &ShopOrderEvent) -> &'static str {
    if e.cancelled_at.is_some() {
        "cancel"
    } else if matches!(
        e.financial_status.as_deref(),
        Some("paid" | "partially_paid" | "authorized")
    ) {
        "sale"
    } else {
        "draft"
    }
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
            outcomes.push(self.write(&p.event).await?);
        }
        Ok(outcomes)
    }
}

impl OrdersToErp {
    async fn write(&mut self, e: &ShopOrderEvent) -> Result<Outcome, SyncError> {
        let skus: Vec<String> = e.lines.iter().filter_map(|l| l.sku.clone()).collect();
        if skus.len() != e.lines.len() {
            return Ok(Outcome::DeadLetter {
                class: "line_without_sku",
                reason: format!(
                    "order {} has a line without a SKU; the ERP cannot book it",
                    e.key
                ),
            });
        }
        let tx = self.erp.transaction().await?;
        let products: HashMap<String, i32> = tx
            .query(
                "SELECT default_code, id FROM product_product WHERE default_code = ANY($1)",
                &[&skus],
            )
            .await?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let unknown: Vec<&String> = skus.iter().filter(|s| !products.contains_key(*s)).collect();
        if !unknown.is_empty() {
            tx.rollback().await?;
            return Ok(Outcome::DeadLetter {
                class: "unknown_sku",
                reason: format!(
                    "order {} has SKUs the ERP does not know: {}; nothing was written",
                    e.key,
                    unknown
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let email = e
            .email
            .clone()
            .or_else(|| e.customer.as_ref().and_then(|c| c.email.clone()));
        let partner: i32 = match &email {
            Some(mail) => {
                let found = tx
                    .query_opt(
                        "SELECT id FROM res_partner WHERE lower(email) = lower($1) ORDER BY id LIMIT 1",
                        &[mail],
                    )
                    .await?;
                match found {
                    Some(r) => r.get(0),
                    None => create_partner(&tx, e, Some(mail)).await?,
                }
            }
            None => create_partner(&tx, e, None).await?,
        };
        let state = erp_state(e);
        let row = tx
            .query_one(
                "INSERT INTO sale_order (name, partner_id, state, currency_id, amount_total, client_order_ref,
                                         channel, shop_order_id)
                 VALUES ($1, $2, $3, (SELECT id FROM res_currency WHERE name = $4),
                         coalesce($5::text, '0')::numeric, $6, $7, $8)
                 ON CONFLICT (channel, shop_order_id) DO UPDATE SET
                   state = CASE
                     WHEN sale_order.state IN ('done', 'cancel') THEN sale_order.state
                     WHEN excluded.state = 'cancel' THEN 'cancel'
                     WHEN sale_order.state = 'sale' THEN 'sale'
                     ELSE excluded.state END,
                   amount_total = excluded.amount_total,
                   write_date = now()
                 RETURNING id, (xmax = 0) AS created",
                &[
                    &format!("{}/{}", e.channel, e.order_name.clone().unwrap_or_else(|| e.order_id.clone())),
                    &partner,
                    &state,
                    &e.currency.clone().unwrap_or_else(|| "EUR".into()),
                    &e.total_price,
                    &e.order_name,
                    &e.channel,
                    &e.order_id,
                ],
            )
            .await?;
        let (order_id, created): (i32, bool) = (row.get(0), row.get(1));
        if created {
            for l in &e.lines {
                let sku = l.sku.as_deref().unwrap_or_default();
                tx.execute(
                    "INSERT INTO sale_order_line (order_id, product_id, name, product_uom_qty, price_unit)
                     VALUES ($1, $2, $3, $4::bigint::numeric, $5::text::numeric)",
                    &[&order_id, &products[sku], &l.title.clone().unwrap_or_else(|| sku.to_owned()), &l.quantity, &l.price],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(Outcome::Applied)
    }
}

/// A partner for a customer the ERP does not know yet.
async fn create_partner(
    tx: &tokio_postgres::Transaction<'_>,
    e: &ShopOrderEvent,
    email: Option<&String>,
) -> Result<i32, SyncError> {
    let c = e.customer.clone().unwrap_or_default();
    let a = e
        .shipping_address
        .clone()
        .or_else(|| e.billing_address.clone())
        .unwrap_or_default();
    let name = [c.first_name.as_deref(), c.last_name.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    let name = if name.is_empty() {
        email
            .cloned()
            .unwrap_or_else(|| format!("Shop customer {}", e.key))
    } else {
        name
    };
    Ok(tx
        .query_one(
            "INSERT INTO res_partner (name, email, street, city, zip, country_code)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[&name, &email, &a.address1, &a.city, &a.zip, &a.country_code],
        )
        .await?
        .get(0))
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
        assert_eq!(erp_state(&event(Some("pending"), false)), "draft");
        assert_eq!(erp_state(&event(Some("paid"), false)), "sale");
        assert_eq!(erp_state(&event(Some("paid"), true)), "cancel");
        assert_eq!(erp_state(&event(None, false)), "draft");
    }
}
