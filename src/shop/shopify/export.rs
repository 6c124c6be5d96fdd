//! A whole Shopify catalogue read at once through a bulk query (`bulk`):
//! every variant with its price and its `on_hand` at every location. A
//! read-only view of the shop, as of the export, for reconciliation: it
//! answers the reading halves of the platform traits (`StockLevelReader`,
//! `PriceReader`) from memory, so the comparison is the same code whether
//! the shop was read page by page or in bulk.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::time::Duration;

use serde_json::Value;

use super::admin_api::{AdminApi, AdminApiError};
use crate::shop::platform::{PriceReader, ShownPrice, StockLevelReader};

/// Two connections, nested once: within Shopify's bulk query limits.
pub const QUERY: &str = r#"{ productVariants { edges { node { id sku price compareAtPrice inventoryItem { id inventoryLevels { edges { node { id location { id name } quantities(names: ["on_hand"]) { name quantity } } } } } } } } }"#;

#[derive(Clone, Debug, PartialEq)]
struct Variant {
    inventory_item: String,
    price: ShownPrice,
}

#[derive(Debug, Default)]
pub struct CatalogExport {
    /// SKU → its variant (variants without a SKU cannot be synced: left out).
    variants: HashMap<String, Variant>,
    /// Location name → id, of locations that stock anything.
    locations: HashMap<String, String>,
    /// (inventory item, location) → on_hand.
    on_hand: HashMap<(String, String), i64>,
}

impl CatalogExport {
    /// Exports the shop's catalogue (waits for the bulk query, within `patience`).
    pub async fn read(api: &AdminApi, patience: Duration) -> Result<Self, AdminApiError> {
        let lines = super::bulk::run_query(api, QUERY, patience).await?;
        Ok(CatalogExport::from_lines(&lines))
    }

    /// The export from the bulk result's lines: variants, then each level
    /// after its variant, naming it in `__parentId`.
    pub fn from_lines(lines: &[Value]) -> Self {
        let mut export = CatalogExport::default();
        // variant id → inventory item, for the levels that follow
        let mut items: HashMap<&str, &str> = HashMap::new();
        for line in lines {
            match line.get("__parentId").and_then(Value::as_str) {
                None => {
                    let (Some(id), Some(item)) =
                        (line["id"].as_str(), line["inventoryItem"]["id"].as_str())
                    else {
                        continue;
                    };
                    items.insert(id, item);
                    let Some(sku) = line["sku"].as_str().filter(|s| !s.is_empty()) else {
                        continue;
                    };
                    let text = |v: &Value| v.as_str().map(str::to_owned);
                    export.variants.insert(
                        sku.to_owned(),
                        Variant {
                            inventory_item: item.to_owned(),
                            price: (text(&line["price"]), text(&line["compareAtPrice"])),
                        },
                    );
                }
                Some(parent) => {
                    let (Some(item), Some(location), Some(name)) = (
                        items.get(parent),
                        line["location"]["id"].as_str(),
                        line["location"]["name"].as_str(),
                    ) else {
                        continue;
                    };
                    export
                        .locations
                        .insert(name.to_owned(), location.to_owned());
                    let on_hand = line["quantities"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|q| q["name"] == "on_hand")
                        .and_then(|q| q["quantity"].as_i64());
                    if let Some(q) = on_hand {
                        export
                            .on_hand
                            .insert(((*item).to_owned(), location.to_owned()), q);
                    }
                }
            }
        }
        export
    }

    /// Every SKU the shop has.
    pub fn skus(&self) -> impl Iterator<Item = &str> {
        self.variants.keys().map(String::as_str)
    }
}

impl StockLevelReader for CatalogExport {
    type Error = Infallible;

    async fn items(&mut self, skus: &[&str]) -> Result<HashMap<String, String>, Infallible> {
        Ok(skus
            .iter()
            .filter_map(|s| {
                Some((
                    (*s).to_owned(),
                    self.variants.get(*s)?.inventory_item.clone(),
                ))
            })
            .collect())
    }

    async fn location(&mut self, name: &str) -> Result<Option<String>, Infallible> {
        Ok(self.locations.get(name).cloned())
    }

    async fn on_hand(
        &mut self,
        pairs: &[(String, String)],
    ) -> Result<HashMap<(String, String), i64>, Infallible> {
        Ok(pairs
            .iter()
            .filter_map(|p| Some((p.clone(), *self.on_hand.get(p)?)))
            .collect())
    }
}

impl PriceReader for CatalogExport {
    type Error = Infallible;

    async fn known(&mut self, skus: &[&str]) -> Result<HashSet<String>, Infallible> {
        Ok(skus
            .iter()
            .filter(|s| self.variants.contains_key(**s))
            .map(|s| (*s).to_owned())
            .collect())
    }

    async fn current(&mut self, skus: &[&str]) -> Result<HashMap<String, ShownPrice>, Infallible> {
        Ok(skus
            .iter()
            .filter_map(|s| Some(((*s).to_owned(), self.variants.get(*s)?.price.clone())))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn variants_and_their_levels_are_read_from_the_lines() {
        let lines = vec![
            json!({"id": "V1", "sku": "A", "price": "9.50", "compareAtPrice": null,
                   "inventoryItem": {"id": "I1"}}),
            json!({"id": "L1", "location": {"id": "P1", "name": "WH1"},
                   "quantities": [{"name": "on_hand", "quantity": 7}], "__parentId": "V1"}),
            json!({"id": "V2", "sku": "", "price": "1.00", "inventoryItem": {"id": "I2"}}),
            json!({"id": "L2", "location": {"id": "P2", "name": "WH2"},
                   "quantities": [{"name": "on_hand", "quantity": 3}], "__parentId": "V2"}),
        ];
        let mut export = CatalogExport::from_lines(&lines);
        assert_eq!(export.skus().collect::<Vec<_>>(), ["A"]);
        assert_eq!(
            export.items(&["A", "B"]).await.unwrap_or_default(),
            HashMap::from([("A".to_owned(), "I1".to_owned())])
        );
        assert_eq!(export.location("WH2").await, Ok(Some("P2".to_owned())));
        let pairs = [
            ("I1".to_owned(), "P1".to_owned()),
            ("I2".to_owned(), "P2".to_owned()),
            ("I1".to_owned(), "P2".to_owned()),
        ];
        let on_hand = export.on_hand(&pairs).await.unwrap_or_default();
        assert_eq!(on_hand.len(), 2);
        assert_eq!(on_hand[&pairs[0]], 7);
        assert_eq!(on_hand[&pairs[1]], 3);
        assert_eq!(
            export.current(&["A"]).await.unwrap_or_default()["A"],
            (Some("9.50".to_owned()), None)
        );
    }
}
