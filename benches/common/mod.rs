//! What the benchmarks share: knobs from the environment, a database client.

#![allow(dead_code)]

use tokio_postgres::Client;

pub mod cpu;

/// The value of environment variable `name`, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A client whose connection runs on the current runtime.
pub async fn connect(dsn: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    c
}

/// (sku, warehouse, what the shop should show) for every pair of the demo ERP.
pub const ERP_STOCK: &str = "SELECT p.default_code, w.code,
        greatest(floor(coalesce(sum(q.quantity - q.reserved_quantity), 0)), 0)::bigint
    FROM product_product p CROSS JOIN stock_warehouse w
    JOIN stock_location vl ON vl.id = w.view_location_id
    LEFT JOIN stock_location l ON l.usage = 'internal' AND l.parent_path LIKE vl.parent_path || '%'
    LEFT JOIN stock_quant q ON q.location_id = l.id AND q.product_id = p.id
    GROUP BY 1, 2";

/// "ratio median M× over N rounds (range a–b×: each round's)" for a bench's
/// repeated rounds; `ratios` is sorted in place.
pub fn ratio_summary(ratios: &mut [f64]) -> String {
    ratios.sort_by(f64::total_cmp);
    let n = ratios.len();
    if n == 0 {
        return "no rounds".into();
    }
    let median = if n % 2 == 1 {
        ratios[n / 2]
    } else {
        (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
    };
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    format!(
        "ratio median {median:.2}x over {n} rounds (range {:.2}-{:.2}x: {})",
        ratios[0],
        ratios[n - 1],
        each.join(", ")
    )
}
