//! `erp.price.v1` → the shop's variant prices.
//!
//! Only the price list configured as the shop's (`processors.shop_price_list`,
//! in `processors.shop_currency`) is applied; other lists are not applicable to
//! this shop. Updates are grouped per product into one
//! `productVariantsBulkUpdate` each, after reading the shop's current prices
//! (cheap: scalars cost nothing) and leaving out those it already shows. A
//! deleted price leaves the shop's price as it is (a variant always has one).

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::apply_loop::{self, Applier, Decoded, Outcome, Pending, SyncError};
use super::shop_catalog::ShopCatalog;
use crate::bus::avro::{field, field_i64, field_str};
use crate::bus::topics::ERP_PRICE;
use crate::config::Config;
use crate::shop::admin_api::AdminApi;

#[derive(Clone, Debug)]
pub struct Price {
    pub sku: String,
    pub price_list: String,
    pub currency: String,
    /// `None` when the ERP deleted the price.
    pub amount: Option<String>,
    pub compare_at: Option<String>,
}

pub struct PriceToShop {
    catalog: ShopCatalog,
    price_list: String,
    currency: String,
}

/// Runs the price processor until `shutdown`.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), SyncError> {
    let p = &config.processors;
    apply_loop::supervised(config, shutdown, || async {
        Ok(PriceToShop {
            catalog: ShopCatalog::new(AdminApi::from_config(p, <PriceToShop as Applier>::ENTITY)?),
            price_list: p.shop_price_list.clone(),
            currency: p.shop_currency.clone(),
        })
    })
    .await
}

/// Decimal strings equal as amounts ("50" = "50.00"); both absent is equal.
fn same_amount(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(x), Ok(y)) => (x - y).abs() < 0.000_5,
            _ => a == b,
        },
        _ => false,
    }
}

impl Applier for PriceToShop {
    const ENTITY: &'static str = "price";
    const TOPIC: &'static str = ERP_PRICE;
    type Event = Price;

    fn decode(&self, v: &apache_avro::types::Value) -> Option<Decoded<Price>> {
        let deleted = matches!(
            field(v, "deleted"),
            Some(apache_avro::types::Value::Boolean(true))
        );
        Some(Decoded {
            key: field_str(v, "key")?.to_owned(),
            version: (field_i64(v, "version")?, String::new()),
            source_ts_micros: field_i64(v, "source_ts")?,
            event: Price {
                sku: field_str(v, "sku")?.to_owned(),
                price_list: field_str(v, "price_list")?.to_owned(),
                currency: field_str(v, "currency")?.to_owned(),
                amount: if deleted {
                    None
                } else {
                    field_str(v, "amount").map(str::to_owned)
                },
                compare_at: field_str(v, "compare_at").map(str::to_owned),
            },
        })
    }

    async fn apply(&mut self, events: &[Pending<Price>]) -> Result<Vec<Outcome>, SyncError> {
        let mut outcomes: Vec<Outcome> = vec![Outcome::NotApplicable; events.len()];
        let ours: Vec<usize> = (0..events.len())
            .filter(|&i| {
                let e = &events[i].event;
                e.price_list == self.price_list && e.currency == self.currency && e.amount.is_some()
            })
            .collect();
        let variants = self
            .catalog
            .variants(ours.iter().map(|&i| events[i].event.sku.as_str()))
            .await?;
        let known: Vec<&str> = ours
            .iter()
            .map(|&i| events[i].event.sku.as_str())
            .filter(|sku| variants.contains_key(*sku))
            .collect();
        let current = self.catalog.current_prices(&known).await?;
        // product → [(event index, variant input)]
        let mut per_product: BTreeMap<String, Vec<(usize, Value)>> = BTreeMap::new();
        for &i in &ours {
            let e = &events[i].event;
            let Some(v) = variants.get(&e.sku) else {
                outcomes[i] = Outcome::DeadLetter {
                    class: "unknown_sku",
                    reason: format!("the shop has no variant with SKU `{}`", e.sku),
                };
                continue;
            };
            if let Some((price, compare_at)) = current.get(&e.sku)
                && same_amount(price, &e.amount)
                && same_amount(compare_at, &e.compare_at)
            {
                // Compare before write: the shop already shows it (e.g. after
                // a crash, or a shop seeded from the ERP). A mutation saved.
                outcomes[i] = Outcome::Observed("unchanged");
                continue;
            }
            let input = json!({"id": v.variant, "price": e.amount, "compareAtPrice": e.compare_at});
            per_product
                .entry(v.product.clone())
                .or_default()
                .push((i, input));
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
                    Outcome::Applied
                } else {
                    Outcome::DeadLetter {
                        class: "shop_rejected",
                        reason: format!(
                            "productVariantsBulkUpdate refused: {}",
                            Value::Array(errors.clone())
                        ),
                    }
                };
            }
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::same_amount;

    #[test]
    fn amounts_compare_as_decimals() {
        let s = |v: &str| Some(v.to_owned());
        assert!(same_amount(&s("50"), &s("50.00")));
        assert!(same_amount(&None, &None));
        assert!(!same_amount(&s("50.00"), &s("50.01")));
        assert!(!same_amount(&s("50.00"), &None));
    }
}
