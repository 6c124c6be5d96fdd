//! Orders into ERPNext on MariaDB/MySQL: `tabSales Order` + `tabSales Order
//! Item` + `tabCustomer`, keyed by the custom fields `custom_channel` and
//! `custom_shop_order_id` (see `connectors/erpnext.toml`).
//!
//! MariaDB has no replication origins: each transaction inserts and deletes a
//! row of `flywheel.echo_marks`, and the source drops every transaction that
//! carries one. Submitting an order reserves stock in ERPNext (`tabBin`); that
//! is recomputed right after, in a transaction of its own, so the stock change
//! is captured and published like any other ERP change.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, TxOpts};

use super::{OrderState, customer_name, order_email, unknown_skus};
use crate::config::Config;
use crate::erp::erpnext::recompute_reserved;
use crate::erp::mysql::capture::ECHO_MARK_TABLE;
use crate::erp::mysql::setup::{self, SetupError};
use crate::mysql::quote_ident;
use crate::shop::mapping::ShopOrderEvent;
use crate::sync::apply_loop::{Outcome, SyncError};

/// The origin written with every echo mark.
const ORIGIN: &str = "flywheel.erp_writer";

pub struct ErpnextWriter {
    erp: Conn,
    /// `flywheel.echo_marks`, quoted.
    echo_marks: String,
    /// Stock Settings' default warehouse: where shop orders are fulfilled from.
    warehouse: Option<String>,
}

impl ErpnextWriter {
    pub async fn connect(config: &Config) -> Result<ErpnextWriter, SyncError> {
        let mut erp = Conn::new(config.erp.mysql_opts()?).await?;
        let state_db = &config.erp.state_database;
        setup::ensure_state_tables(&mut erp, state_db)
            .await
            .map_err(|e| match e {
                SetupError::Query(e) => SyncError::ErpMysql(e),
                e @ SetupError::Misconfigured { .. } => SyncError::ErpPrivilege(e.to_string()),
            })?;
        let warehouse: Option<String> = erp
            .query_first(
                "SELECT value FROM `tabSingles`
                 WHERE doctype = 'Stock Settings' AND field = 'default_warehouse'",
            )
            .await?;
        tracing::info!(
            warehouse = warehouse.as_deref().unwrap_or("none"),
            "ERP writes carry Flywheel's echo mark, so capture skips them"
        );
        Ok(ErpnextWriter {
            erp,
            echo_marks: format!("{}.{ECHO_MARK_TABLE}", quote_ident(state_db)),
            warehouse,
        })
    }

    /// Writes one order (every line has a SKU: checked by the caller).
    pub async fn write(
        &mut self,
        e: &ShopOrderEvent,
        skus: &[String],
    ) -> Result<Outcome, SyncError> {
        let wanted = OrderState::of(e);
        let warehouse = self.warehouse.clone();
        let mut tx = self.erp.start_transaction(TxOpts::default()).await?;
        tx.exec_drop(
            format!("INSERT INTO {} (origin) VALUES (?)", self.echo_marks),
            (ORIGIN,),
        )
        .await?;
        let known: Vec<String> = tx
            .exec(
                "SELECT item_code FROM `tabItem` WHERE item_code IN (
                   SELECT value FROM JSON_TABLE(?, '$[*]' COLUMNS (value VARCHAR(140) PATH '$')) AS j)",
                (serde_json::to_string(skus).unwrap_or_else(|_| "[]".into()),),
            )
            .await?;
        let unknown: Vec<&str> = skus
            .iter()
            .filter(|s| !known.contains(s))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            tx.rollback().await?;
            return Ok(unknown_skus(e, &unknown));
        }

        let existing: Option<(String, i64, String)> = tx
            .exec_first(
                "SELECT name, docstatus, status FROM `tabSales Order`
                 WHERE custom_channel = ? AND custom_shop_order_id = ? FOR UPDATE",
                (&e.channel, &e.order_id),
            )
            .await?;
        let (docstatus, status) = erpnext_state(wanted);
        match existing {
            Some((name, current, current_status)) => {
                // Forward only: cancelled, completed and closed orders are final.
                let is_final =
                    current == 2 || matches!(current_status.as_str(), "Completed" | "Closed");
                if !is_final && docstatus > current {
                    tx.exec_drop(
                        "UPDATE `tabSales Order` SET docstatus = ?, status = ?, modified = NOW(6)
                         WHERE name = ?",
                        (docstatus, status, &name),
                    )
                    .await?;
                    tx.exec_drop(
                        "UPDATE `tabSales Order Item` SET docstatus = ?, modified = NOW(6) WHERE parent = ?",
                        (docstatus, &name),
                    )
                    .await?;
                }
            }
            None => {
                let customer = find_or_create_customer(&mut tx, e).await?;
                create_order(
                    &mut tx,
                    e,
                    &customer,
                    warehouse.as_deref(),
                    docstatus,
                    status,
                )
                .await?;
            }
        }
        tx.exec_drop(
            format!(
                "DELETE FROM {} WHERE id = LAST_INSERT_ID()",
                self.echo_marks
            ),
            (),
        )
        .await?;
        tx.commit().await?;
        // ERPNext's own bookkeeping of the submit, captured like any change.
        recompute_reserved(&mut self.erp, Some(skus)).await?;
        Ok(Outcome::Applied)
    }
}

/// Inserts a new order and its lines.
async fn create_order(
    tx: &mut mysql_async::Transaction<'_>,
    e: &ShopOrderEvent,
    customer: &(String, String),
    warehouse: Option<&str>,
    docstatus: i64,
    status: &str,
) -> Result<(), SyncError> {
    let name = format!("SAL-ORD-{}-{}", e.channel, e.order_id);
    let address = e
        .shipping_address
        .clone()
        .or_else(|| e.billing_address.clone())
        .map(|a| {
            [a.address1, a.city, a.zip, a.country_code]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("\n")
        });
    tx.exec_drop(
            "INSERT INTO `tabSales Order` (name, naming_series, customer, customer_name, order_type,
                 transaction_date, delivery_date, po_no, currency, grand_total, set_warehouse, status,
                 docstatus, address_display, custom_channel, custom_shop_order_id, creation, modified)
             VALUES (?, 'SAL-ORD-.YYYY.-', ?, ?, 'Sales', CURDATE(), CURDATE(), ?, ?, ?, ?, ?, ?, ?, ?, ?,
                     NOW(6), NOW(6))",
            (
                &name,
                &customer.0,
                &customer.1,
                &e.order_name,
                e.currency.clone().unwrap_or_else(|| "EUR".into()),
                e.total_price.clone().unwrap_or_else(|| "0".into()),
                warehouse,
                status,
                docstatus,
                address,
                &e.channel,
                &e.order_id,
            ),
        )
        .await?;
    for (idx, l) in e.lines.iter().enumerate() {
        let sku = l.sku.clone().unwrap_or_default();
        let rate = l.price.clone();
        tx.exec_drop(
            "INSERT INTO `tabSales Order Item` (name, parent, idx, item_code, item_name, qty, rate,
                     amount, warehouse, docstatus, modified)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ? * ?, ?, ?, NOW(6))",
            (
                format!("{name}-{}", idx + 1),
                &name,
                idx + 1,
                &sku,
                l.title.clone().unwrap_or_else(|| sku.clone()),
                l.quantity,
                &rate,
                &rate,
                l.quantity,
                warehouse,
                docstatus,
            ),
        )
        .await?;
    }
    Ok(())
}

/// ERPNext's (docstatus, status) for an order state.
fn erpnext_state(state: OrderState) -> (i64, &'static str) {
    match state {
        OrderState::Draft => (0, "Draft"),
        OrderState::Confirmed => (1, "To Deliver and Bill"),
        OrderState::Cancelled => (2, "Cancelled"),
    }
}

/// The customer (name, customer_name) with the order's e-mail, or a new one.
async fn find_or_create_customer(
    tx: &mut mysql_async::Transaction<'_>,
    e: &ShopOrderEvent,
) -> Result<(String, String), SyncError> {
    let email = order_email(e);
    if let Some(mail) = &email {
        let found: Option<(String, String)> = tx
            .exec_first(
                "SELECT name, customer_name FROM `tabCustomer` WHERE LOWER(email_id) = LOWER(?)
                 ORDER BY creation, name LIMIT 1",
                (mail,),
            )
            .await?;
        if let Some(c) = found {
            return Ok(c);
        }
    }
    let customer_name = customer_name(e, email.as_ref());
    // ERPNext names a customer after its name and suffixes a clash.
    for name in [
        customer_name.clone(),
        format!("{customer_name} - {}", e.key),
    ] {
        tx.exec_drop(
            "INSERT IGNORE INTO `tabCustomer` (name, customer_name, email_id, creation, modified)
             VALUES (?, ?, ?, NOW(6), NOW(6))",
            (&name, &customer_name, &email),
        )
        .await?;
        if tx.affected_rows() == 1 {
            return Ok((name, customer_name));
        }
    }
    Err(SyncError::ErpPrivilege(format!(
        "could not name a new customer for order {}: `{customer_name}` and its suffixed form exist",
        e.key
    )))
}
