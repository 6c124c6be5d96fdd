//! Shopify prices: variants found by SKU (`catalog`), read with
//! `productVariants`, written with one `productVariantsBulkUpdate` per product.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Value, json};

use super::admin_api::AdminApiError;
use super::catalog::ShopCatalog;
use crate::shop::platform::{PricePlatform, PriceReader, PriceWrite, ShownPrice};

pub struct ShopifyPrices {
    pub catalog: ShopCatalog,
}

impl PriceReader for ShopifyPrices {
    type Error = AdminApiError;

    async fn known(&mut self, skus: &[&str]) -> Result<HashSet<String>, AdminApiError> {
        Ok(self
            .catalog
            .variants(skus.iter().copied())
            .await?
            .into_keys()
            .collect())
    }

    async fn current(
        &mut self,
        skus: &[&str],
    ) -> Result<HashMap<String, ShownPrice>, AdminApiError> {
        self.catalog.current_prices(skus).await
    }
}

impl PricePlatform for ShopifyPrices {
    fn ready_in(&self) -> std::time::Duration {
        // One productVariantsBulkUpdate (a mutation) per product.
        self.catalog.api.time_until(10.0)
    }

    async fn set(
        &mut self,
        prices: &[PriceWrite],
    ) -> Result<Vec<Result<(), String>>, AdminApiError> {
        let variants = self
            .catalog
            .variants(prices.iter().map(|p| p.sku.as_str()))
            .await?;
        let mut outcomes: Vec<Result<(), String>> = prices
            .iter()
            .map(|p| Err(format!("the shop has no variant with SKU `{}`", p.sku)))
            .collect();
        // product → [(write index, variant input)]
        let mut per_product: BTreeMap<String, Vec<(usize, Value)>> = BTreeMap::new();
        for (i, p) in prices.iter().enumerate() {
            if let Some(v) = variants.get(&p.sku) {
                let input =
                    json!({"id": v.variant, "price": p.amount, "compareAtPrice": p.compare_at});
                per_product
                    .entry(v.product.clone())
                    .or_default()
                    .push((i, input));
            }
        }
        for (product, updates) in per_product {
            let inputs: Vec<Value> = updates.iter().map(|(_, v)| v.clone()).collect();
            let r = self
                .catalog
                .api
                .execute(
                    "mutation($p: ID!, $v: [ProductVariantsBulkInput!]!) {
                        productVariantsBulkUpdate(productId: $p, variants: $v) { userErrors { field message } } }",
                    json!({"p": product, "v": inputs}),
                    10.0,
                )
                .await?;
            let errors = r.data["productVariantsBulkUpdate"]["userErrors"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for (i, _) in updates {
                outcomes[i] = if errors.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "productVariantsBulkUpdate refused: {}",
                        Value::Array(errors.clone())
                    ))
                };
            }
        }
        Ok(outcomes)
    }
}
