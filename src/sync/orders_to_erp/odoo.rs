//! Orders into an Odoo-shaped ERP on PostgreSQL: `sale_order` + lines +
//! `res_partner`, in a session holding a `flywheel…` replication origin so
//! the source skips these transactions.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::{OrderState, customer_name, order_email, unknown_skus};
use crate::config::Config;
use crate::erp::postgres::capture::OWN_ORIGIN_PREFIX;
use crate::shop::mapping::ShopOrderEvent;
use crate::sync::apply_loop::{self, Outcome, SyncError};

pub struct OdooWriter {
    erp: Client,
}

impl OdooWriter {
    pub async fn connect(config: &Config) -> Result<OdooWriter, SyncError> {
        let erp = apply_loop::connect_erp_postgres(config).await?;
        let origin = claim_replication_origin(&erp).await?;
        tracing::info!(%origin, "ERP writes carry Flywheel's replication origin, so capture skips them");
        Ok(OdooWriter { erp })
    }
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

impl OdooWriter {
    /// Writes one order (every line has a SKU: checked by the caller).
    pub async fn write(
        &mut self,
        e: &ShopOrderEvent,
        skus: &[String],
    ) -> Result<Outcome, SyncError> {
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
        let unknown: Vec<&str> = skus
            .iter()
            .filter(|s| !products.contains_key(*s))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            tx.rollback().await?;
            return Ok(unknown_skus(e, &unknown));
        }
        let email = order_email(e);
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
        let state = match OrderState::of(e) {
            OrderState::Draft => "draft",
            OrderState::Confirmed => "sale",
            OrderState::Cancelled => "cancel",
        };
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
    let a = e
        .shipping_address
        .clone()
        .or_else(|| e.billing_address.clone())
        .unwrap_or_default();
    let name = customer_name(e, email);
    Ok(tx
        .query_one(
            "INSERT INTO res_partner (name, email, street, city, zip, country_code)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[&name, &email, &a.address1, &a.city, &a.zip, &a.country_code],
        )
        .await?
        .get(0))
}
