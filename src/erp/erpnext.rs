//! What ERPNext's application does when a document is submitted that Flywheel
//! must repeat when it writes ERPNext's tables itself (the order writer, the
//! demo ERP).

use mysql_async::prelude::Queryable;

/// Sets `tabBin.reserved_qty` (and `projected_qty`) from the undelivered
/// quantities of submitted, open sales orders, as ERPNext's
/// `update_reserved_qty` recomputes them: for the given items (all when
/// `None`). Recomputing rather than adding makes it safe to repeat.
pub async fn recompute_reserved(
    conn: &mut impl Queryable,
    items: Option<&[String]>,
) -> Result<(), mysql_async::Error> {
    let filter = match items {
        Some([]) => return Ok(()),
        Some(_) => {
            "AND b.item_code IN (SELECT value FROM JSON_TABLE(?, '$[*]' COLUMNS (value VARCHAR(140) PATH '$')) AS j)"
        }
        None => "",
    };
    let sql = format!(
        "UPDATE `tabBin` b
         LEFT JOIN (
           SELECT soi.item_code, soi.warehouse, SUM(GREATEST(soi.qty - soi.delivered_qty, 0)) AS qty
           FROM `tabSales Order Item` soi
           JOIN `tabSales Order` so ON so.name = soi.parent
           WHERE so.docstatus = 1 AND so.status NOT IN ('Closed', 'Completed', 'On Hold')
           GROUP BY soi.item_code, soi.warehouse
         ) r ON r.item_code = b.item_code AND r.warehouse = b.warehouse
         SET b.reserved_qty = COALESCE(r.qty, 0),
             b.projected_qty = b.actual_qty + b.ordered_qty - COALESCE(r.qty, 0),
             b.modified = NOW(6)
         WHERE b.reserved_qty <> COALESCE(r.qty, 0) {filter}"
    );
    match items {
        Some(items) => {
            let json = serde_json::to_string(items).unwrap_or_else(|_| "[]".into());
            conn.exec_drop(sql, (json,)).await
        }
        None => conn.query_drop(sql).await,
    }
}
