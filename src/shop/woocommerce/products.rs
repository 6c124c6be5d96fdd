//! WooCommerce products by SKU: looked up with `GET products?sku=a,b` (which
//! answers variations too, with their `parent_id`), cached, looked up again
//! on a miss; and written through the batch endpoints, at most 100 items per
//! call: a product through `products/batch`, a variation through its
//! parent's `products/<parent>/variations/batch`.

use std::collections::{BTreeMap, HashMap};

use reqwest::Method;
use serde_json::{Value, json};

use super::client::{WooClient, WooError};

/// WooCommerce's `woocommerce_rest_batch_items_limit`.
pub const BATCH_LIMIT: usize = 100;

/// Where a SKU lives in WooCommerce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProductRef {
    pub id: u64,
    /// The variable product of a variation; 0 for a product.
    pub parent: u64,
}

impl ProductRef {
    fn batch_path(self) -> String {
        match self.parent {
            0 => "products/batch".to_owned(),
            parent => format!("products/{parent}/variations/batch"),
        }
    }
}

impl WooClient {
    /// The products and variations with these SKUs, as the API lists them
    /// (100 per call); where each lives is remembered for the writes.
    pub async fn products_by_sku(&mut self, skus: &[&str]) -> Result<Vec<Value>, WooError> {
        let mut found = Vec::new();
        for chunk in skus.chunks(100) {
            let page = self
                .request(
                    Method::GET,
                    "products",
                    &[("sku", chunk.join(",")), ("per_page", "100".into())],
                    None,
                )
                .await?;
            found.extend(page.as_array().cloned().unwrap_or_default());
        }
        for p in &found {
            if let (Some(sku), Some(id)) = (p["sku"].as_str(), p["id"].as_u64()) {
                let parent = p["parent_id"].as_u64().unwrap_or(0);
                self.ids.insert(sku.to_owned(), ProductRef { id, parent });
            }
        }
        Ok(found)
    }

    /// SKU → where it lives, of those the shop has; misses are looked up.
    pub async fn product_refs(
        &mut self,
        skus: &[&str],
    ) -> Result<HashMap<String, ProductRef>, WooError> {
        let missing: Vec<&str> = skus
            .iter()
            .copied()
            .filter(|s| !self.ids.contains_key(*s))
            .collect();
        if !missing.is_empty() {
            self.products_by_sku(&missing).await?;
        }
        Ok(skus
            .iter()
            .filter_map(|s| self.ids.get(*s).map(|r| ((*s).to_owned(), *r)))
            .collect())
    }

    /// Applies `changes` (SKU, fields to set) through the batch endpoints;
    /// one outcome per change, in order: `Err(reason)` for a SKU the shop
    /// lacks or an item the shop refused.
    pub async fn update_by_sku(
        &mut self,
        changes: &[(&str, Value)],
    ) -> Result<Vec<Result<(), String>>, WooError> {
        let skus: Vec<&str> = changes.iter().map(|(sku, _)| *sku).collect();
        let refs = self.product_refs(&skus).await?;
        let mut outcomes: Vec<Result<(), String>> = changes
            .iter()
            .map(|(sku, _)| Err(format!("no product with SKU `{sku}`")))
            .collect();
        // One batch endpoint per parent; BTreeMap for a stable call order.
        let mut by_endpoint: BTreeMap<String, Vec<(usize, u64, Value)>> = BTreeMap::new();
        for (i, (sku, fields)) in changes.iter().enumerate() {
            let Some(r) = refs.get(*sku) else { continue };
            let mut item = fields.clone();
            item["id"] = json!(r.id);
            by_endpoint
                .entry(r.batch_path())
                .or_default()
                .push((i, r.id, item));
        }
        for (path, items) in by_endpoint {
            for chunk in items.chunks(BATCH_LIMIT) {
                let body =
                    json!({"update": chunk.iter().map(|(_, _, v)| v.clone()).collect::<Vec<_>>()});
                let answer = self.request(Method::POST, &path, &[], Some(&body)).await?;
                let updated = answer["update"].as_array().cloned().unwrap_or_default();
                for (i, id, _) in chunk {
                    let item = updated.iter().find(|u| u["id"].as_u64() == Some(*id));
                    outcomes[*i] = match item {
                        Some(u) if u.get("error").is_none() => Ok(()),
                        Some(u) => Err(format!("{path} refused it: {}", u["error"])),
                        None => Err(format!("{path} did not answer for it")),
                    };
                }
            }
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_variation_is_written_through_its_parent() {
        let product = ProductRef { id: 7, parent: 0 };
        let variation = ProductRef { id: 9, parent: 7 };
        assert_eq!(product.batch_path(), "products/batch");
        assert_eq!(variation.batch_path(), "products/7/variations/batch");
    }
}
