//! WooCommerce stock: one `stock_quantity` per product or variation, read
//! from the SKU listing and written with `manage_stock` on through the batch
//! endpoints (`products`).

use std::collections::HashMap;

use serde_json::{Value, json};

use super::client::{WooClient, WooError};
use crate::shop::platform::StockCountPlatform;

impl StockCountPlatform for WooClient {
    type Error = WooError;

    async fn counts(&mut self, skus: &[&str]) -> Result<HashMap<String, Option<i64>>, WooError> {
        Ok(self
            .products_by_sku(skus)
            .await?
            .iter()
            .filter_map(|p| {
                let tracked = p["manage_stock"].as_bool() == Some(true);
                let count = p["stock_quantity"].as_i64().filter(|_| tracked);
                Some((p["sku"].as_str()?.to_owned(), count))
            })
            .collect())
    }

    async fn set_counts(
        &mut self,
        counts: &[(String, i64)],
    ) -> Result<Vec<Result<(), String>>, WooError> {
        let changes: Vec<(&str, Value)> = counts
            .iter()
            .map(|(sku, q)| {
                (
                    sku.as_str(),
                    json!({"manage_stock": true, "stock_quantity": q}),
                )
            })
            .collect();
        self.update_by_sku(&changes).await
    }
}
