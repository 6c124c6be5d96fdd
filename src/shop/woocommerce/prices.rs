//! WooCommerce prices: products and variations found by SKU and written
//! through the batch endpoints (`products`), with `regular_price` /
//! `sale_price`, read from the same listing. The ERP's compare-at ("was") price is WooCommerce's regular
//! price with the ERP's price as the sale price; without one, the regular
//! price is the ERP's and the sale price is cleared.
//!
//! WooCommerce has no idempotency keys and no compare-and-set: the processor
//! reads before writing and skips what already holds (see
//! `sync::price_to_shop`), and every write is absolute, so a replay writes
//! nothing twice.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::client::{WooClient, WooError};
use crate::shop::platform::{PricePlatform, PriceReader, PriceWrite, ShownPrice};

/// (price, compare-at) as the ERP would describe what a product shows.
fn shown(product: &Value) -> ShownPrice {
    let text = |f: &str| {
        product[f]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    match text("sale_price") {
        Some(sale) => (Some(sale), text("regular_price")),
        None => (text("regular_price"), None),
    }
}

/// The fields setting `w`.
fn update(w: &PriceWrite) -> Value {
    match &w.compare_at {
        Some(was) => json!({"regular_price": was, "sale_price": w.amount}),
        None => json!({"regular_price": w.amount, "sale_price": ""}),
    }
}

impl PriceReader for WooClient {
    type Error = WooError;

    async fn known(&mut self, skus: &[&str]) -> Result<HashSet<String>, WooError> {
        Ok(self.product_refs(skus).await?.into_keys().collect())
    }

    async fn current(&mut self, skus: &[&str]) -> Result<HashMap<String, ShownPrice>, WooError> {
        Ok(self
            .products_by_sku(skus)
            .await?
            .iter()
            .filter_map(|p| Some((p["sku"].as_str()?.to_owned(), shown(p))))
            .collect())
    }
}

impl PricePlatform for WooClient {
    async fn set(&mut self, prices: &[PriceWrite]) -> Result<Vec<Result<(), String>>, WooError> {
        let changes: Vec<(&str, Value)> =
            prices.iter().map(|w| (w.sku.as_str(), update(w))).collect();
        self.update_by_sku(&changes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_was_price_becomes_the_regular_price_under_a_sale() {
        let w = |amount: &str, was: Option<&str>| PriceWrite {
            sku: "S".into(),
            amount: amount.into(),
            compare_at: was.map(Into::into),
        };
        assert_eq!(
            update(&w("8.00", Some("10.00"))),
            json!({"regular_price": "10.00", "sale_price": "8.00"})
        );
        assert_eq!(
            update(&w("9.00", None)),
            json!({"regular_price": "9.00", "sale_price": ""})
        );
        // What the shop then shows reads back as what was written.
        let product = json!({"regular_price": "10.00", "sale_price": "8.00"});
        assert_eq!(shown(&product), (Some("8.00".into()), Some("10.00".into())));
        let product = json!({"regular_price": "9.00", "sale_price": ""});
        assert_eq!(shown(&product), (Some("9.00".into()), None));
    }
}
