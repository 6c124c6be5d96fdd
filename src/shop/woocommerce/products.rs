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
    /// lacks or an item the shop refused. An item refused as an invalid id
    /// (deleted, and maybe created again under its SKU since it was looked
    /// up) has its SKU looked up anew and goes once more.
    pub async fn update_by_sku(
        &mut self,
        changes: &[(&str, Value)],
    ) -> Result<Vec<Result<(), String>>, WooError> {
        let all: Vec<usize> = (0..changes.len()).collect();
        let mut outcomes = self.update_once(changes, &all).await?;
        let gone: Vec<usize> = all
            .into_iter()
            .filter(|i| matches!(outcomes[*i], Updated::Gone(_)))
            .collect();
        if !gone.is_empty() {
            for i in &gone {
                self.ids.remove(changes[*i].0);
            }
            tracing::info!(
                shop = %self.shop,
                skus = ?gone.iter().map(|i| changes[*i].0).collect::<Vec<_>>(),
                "the shop no longer has the products these SKUs were mapped to; looking them up again"
            );
            for (i, again) in gone.iter().zip(self.update_once(changes, &gone).await?) {
                outcomes[*i] = again;
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|u| match u {
                Updated::Done => Ok(()),
                Updated::Gone(reason) | Updated::Refused(reason) => Err(reason),
            })
            .collect())
    }

    /// Applies `changes[i]` for each `i` of `which`; one outcome per `which`.
    async fn update_once(
        &mut self,
        changes: &[(&str, Value)],
        which: &[usize],
    ) -> Result<Vec<Updated>, WooError> {
        let skus: Vec<&str> = which.iter().map(|i| changes[*i].0).collect();
        let refs = self.product_refs(&skus).await?;
        let mut outcomes: Vec<Updated> = skus
            .iter()
            .map(|sku| Updated::Refused(format!("no product with SKU `{sku}`")))
            .collect();
        // One batch endpoint per parent; BTreeMap for a stable call order.
        let mut by_endpoint: BTreeMap<String, Vec<(usize, u64, Value)>> = BTreeMap::new();
        for (n, i) in which.iter().enumerate() {
            let (sku, fields) = &changes[*i];
            let Some(r) = refs.get(*sku) else { continue };
            let mut item = fields.clone();
            item["id"] = json!(r.id);
            by_endpoint
                .entry(r.batch_path())
                .or_default()
                .push((n, r.id, item));
        }
        for (path, items) in by_endpoint {
            for chunk in items.chunks(BATCH_LIMIT) {
                let body =
                    json!({"update": chunk.iter().map(|(_, _, v)| v.clone()).collect::<Vec<_>>()});
                let answer = self.request(Method::POST, &path, &[], Some(&body)).await?;
                let updated = answer["update"].as_array().cloned().unwrap_or_default();
                for (n, id, _) in chunk {
                    let item = updated.iter().find(|u| u["id"].as_u64() == Some(*id));
                    outcomes[*n] = match item {
                        Some(u) if u.get("error").is_none() => Updated::Done,
                        Some(u) => {
                            let reason = format!("{path} refused it: {}", u["error"]);
                            // `woocommerce_rest_{product,product_variation}_invalid_id`
                            let gone = u["error"]["code"]
                                .as_str()
                                .is_some_and(|c| c.ends_with("_invalid_id"));
                            if gone {
                                Updated::Gone(reason)
                            } else {
                                Updated::Refused(reason)
                            }
                        }
                        None => Updated::Refused(format!("{path} did not answer for it")),
                    };
                }
            }
        }
        Ok(outcomes)
    }
}

/// What became of one item of a batch update.
enum Updated {
    Done,
    /// The shop has no item with the id the SKU was mapped to.
    Gone(String),
    Refused(String),
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
