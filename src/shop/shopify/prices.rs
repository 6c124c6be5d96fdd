//! Shopify prices: variants found by SKU (`catalog`), read with
//! `productVariants`, written with `productVariantsBulkUpdate`, one per
//! product: as calls while few products change (ten points each, at once),
//! as one bulk mutation when many do (a few points for all of them, however
//! many: a full sync of 10,000 products would otherwise spend 100,000 points,
//! over a quarter of an hour of a standard shop's whole budget).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Value, json};

use super::admin_api::{AdminApi, AdminApiError};
use super::catalog::{ShopCatalog, VariantRef};
use crate::shop::platform::{PricePlatform, PriceReader, PriceWrite, ShownPrice};

pub struct ShopifyPrices {
    pub catalog: ShopCatalog,
}

/// Writes to at least this many products go as one bulk mutation: their
/// calls would cost 500 points, five seconds of a standard shop's restore
/// rate, more than a bulk mutation takes to run.
const BULK_FROM_PRODUCTS: usize = 50;
/// Most prices gathered into one batch: a backlog (a first sync, a replay)
/// goes out as a few large bulk mutations rather than one per 250 prices,
/// each of which Shopify takes seconds to start and finish.
const BULK_BATCH_MAX: usize = 5_000;
/// How long a bulk price write may take (Shopify runs one in seconds to
/// minutes, after any other bulk mutation of the app).
const BULK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(15 * 60);
const UPDATE: &str = "mutation($p: ID!, $v: [ProductVariantsBulkInput!]!) {
    productVariantsBulkUpdate(productId: $p, variants: $v) { userErrors { field message code } } }";

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

    fn batch_max(&self, configured: usize) -> usize {
        configured.max(BULK_BATCH_MAX)
    }

    /// A write whose mapped variant or product is gone from the shop (the
    /// product was replaced before its webhook was applied) goes once more
    /// with the SKU looked up in the shop anew.
    async fn set(
        &mut self,
        prices: &[PriceWrite],
    ) -> Result<Vec<Result<(), String>>, AdminApiError> {
        let all: Vec<usize> = (0..prices.len()).collect();
        let variants = self
            .catalog
            .variants(prices.iter().map(|p| p.sku.as_str()))
            .await?;
        let mut outcomes = self.write(prices, &all, &variants).await?;
        let gone: Vec<usize> = (0..prices.len())
            .filter(|i| matches!(outcomes[*i], Written::Gone(_)))
            .collect();
        if !gone.is_empty() {
            let skus: Vec<&str> = gone.iter().map(|i| prices[*i].sku.as_str()).collect();
            let variants = self.catalog.look_up_again(&skus).await?;
            for (i, again) in gone.iter().zip(self.write(prices, &gone, &variants).await?) {
                outcomes[*i] = again;
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|w| match w {
                Written::Done => Ok(()),
                Written::Gone(reason) | Written::Refused(reason) => Err(reason),
            })
            .collect())
    }
}

/// What became of one price write.
enum Written {
    Done,
    /// The shop has no such product or variant (any more).
    Gone(String),
    Refused(String),
}

/// `productVariantsBulkUpdate`'s codes for a product or variant the shop
/// does not have.
const GONE_CODES: [&str; 2] = ["PRODUCT_DOES_NOT_EXIST", "PRODUCT_VARIANT_DOES_NOT_EXIST"];

impl ShopifyPrices {
    /// Writes `prices[i]` for each `i` of `which` to its variant in
    /// `variants`; one outcome per `which`.
    async fn write(
        &mut self,
        prices: &[PriceWrite],
        which: &[usize],
        variants: &HashMap<String, VariantRef>,
    ) -> Result<Vec<Written>, AdminApiError> {
        let mut outcomes: Vec<Written> = which
            .iter()
            .map(|i| {
                Written::Refused(format!(
                    "the shop has no variant with SKU `{}`",
                    prices[*i].sku
                ))
            })
            .collect();
        // product → [(outcome index, variant input)]
        let mut per_product: BTreeMap<String, Vec<(usize, Value)>> = BTreeMap::new();
        for (n, i) in which.iter().enumerate() {
            let p = &prices[*i];
            if let Some(v) = variants.get(&p.sku) {
                let input =
                    json!({"id": v.variant, "price": p.amount, "compareAtPrice": p.compare_at});
                per_product
                    .entry(v.product.clone())
                    .or_default()
                    .push((n, input));
            }
        }
        let per_product: Vec<(String, Vec<(usize, Value)>)> = per_product.into_iter().collect();
        let answers = if per_product.len() >= BULK_FROM_PRODUCTS {
            bulk_update(&self.catalog.api, &per_product).await?
        } else {
            let mut answers = Vec::with_capacity(per_product.len());
            for (product, updates) in &per_product {
                let inputs: Vec<Value> = updates.iter().map(|(_, v)| v.clone()).collect();
                let r = self
                    .catalog
                    .api
                    .execute(UPDATE, json!({"p": product, "v": inputs}), 10.0)
                    .await?;
                answers.push(Ok(r.data["productVariantsBulkUpdate"]["userErrors"].clone()));
            }
            answers
        };
        for ((_, updates), answer) in per_product.iter().zip(answers) {
            for (n, _) in updates {
                outcomes[*n] = match &answer {
                    Ok(Value::Array(errors)) if !errors.is_empty() => {
                        let reason = format!(
                            "productVariantsBulkUpdate refused: {}",
                            Value::Array(errors.clone())
                        );
                        let gone = errors
                            .iter()
                            .all(|e| GONE_CODES.iter().any(|c| e["code"] == *c));
                        if gone {
                            Written::Gone(reason)
                        } else {
                            Written::Refused(reason)
                        }
                    }
                    Ok(_) => Written::Done,
                    Err(reason) => Written::Refused(reason.clone()),
                };
            }
        }
        Ok(outcomes)
    }
}

/// One bulk mutation of `productVariantsBulkUpdate`, a line per product;
/// each product's `userErrors`, or the GraphQL errors of its line.
async fn bulk_update(
    api: &AdminApi,
    per_product: &[(String, Vec<(usize, Value)>)],
) -> Result<Vec<Result<Value, String>>, AdminApiError> {
    let lines: Vec<Value> = per_product
        .iter()
        .map(|(product, updates)| {
            let inputs: Vec<&Value> = updates.iter().map(|(_, v)| v).collect();
            json!({"p": product, "v": inputs})
        })
        .collect();
    let results = super::bulk::run_mutation(api, UPDATE, &lines, BULK_PATIENCE).await?;
    tracing::info!(
        products = lines.len(),
        "prices written with one bulk mutation"
    );
    // A product without a result line may or may not be written: the whole
    // batch goes again (writes are absolute), never a dead letter.
    if let Some(n) = results.iter().position(Value::is_null) {
        return Err(AdminApiError::Unavailable {
            attempts: 1,
            last: format!("the bulk mutation's result has no line {n}"),
        });
    }
    Ok(results
        .into_iter()
        .map(|line| match line.get("errors") {
            Some(errors) => Err(format!("the bulk mutation's line failed: {errors}")),
            None => Ok(line["data"]["productVariantsBulkUpdate"]["userErrors"].clone()),
        })
        .collect())
}
