//! What the processors need to know about the shop's catalogue: SKU → variant,
//! product and inventory item; location names → ids. Looked up on a miss and
//! cached for the life of the processor. A miss of many SKUs at once (a first
//! full sync, a processor starting on a backlog) exports the whole catalogue
//! with one bulk query instead: a few points, where looking up 10,000 SKUs
//! costs 30,000 and five minutes of the shop's budget.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::admin_api::{AdminApi, AdminApiError};

#[derive(Clone, Debug)]
pub struct VariantRef {
    pub variant: String,
    pub product: String,
    pub inventory_item: String,
}

/// Misses of at least this many SKUs in one lookup export the catalogue.
const EXPORT_FROM_MISSES: usize = 100;
/// How long an export may take (Shopify exports a large catalogue in minutes).
const EXPORT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// The variants' fields the catalogue keeps, as one bulk query.
const EXPORT_QUERY: &str =
    "{ productVariants { edges { node { id sku product { id } inventoryItem { id } } } } }";

/// Every variant's prices, as one bulk query.
const PRICES_QUERY: &str = "{ productVariants { edges { node { sku price compareAtPrice } } } }";

pub struct ShopCatalog {
    pub api: AdminApi,
    variants: HashMap<String, VariantRef>,
    locations: HashMap<String, String>,
    exported: bool,
}

impl ShopCatalog {
    pub fn new(api: AdminApi) -> Self {
        ShopCatalog {
            api,
            variants: HashMap::new(),
            locations: HashMap::new(),
            exported: false,
        }
    }

    /// Every variant of the shop, from one bulk export (once per catalogue).
    async fn export(&mut self) -> Result<(), AdminApiError> {
        self.exported = true;
        let lines = super::bulk::run_query(&self.api, EXPORT_QUERY, EXPORT_PATIENCE).await?;
        for v in &lines {
            self.remember(v);
        }
        tracing::info!(
            variants = self.variants.len(),
            "exported the shop's catalogue in one bulk query"
        );
        Ok(())
    }

    fn remember(&mut self, v: &Value) {
        if let (Some(sku), Some(variant), Some(product), Some(item)) = (
            v["sku"].as_str().filter(|s| !s.is_empty()),
            v["id"].as_str(),
            v["product"]["id"].as_str(),
            v["inventoryItem"]["id"].as_str(),
        ) {
            self.variants.insert(
                sku.to_owned(),
                VariantRef {
                    variant: variant.to_owned(),
                    product: product.to_owned(),
                    inventory_item: item.to_owned(),
                },
            );
        }
    }

    /// The variant of each SKU the shop has; SKUs it lacks are absent.
    pub async fn variants<'a>(
        &mut self,
        skus: impl IntoIterator<Item = &'a str>,
    ) -> Result<HashMap<String, VariantRef>, AdminApiError> {
        let mut wanted: Vec<&str> = skus.into_iter().collect();
        wanted.sort();
        wanted.dedup();
        let missing = |known: &HashMap<String, VariantRef>| -> Vec<&str> {
            wanted
                .iter()
                .copied()
                .filter(|s| !known.contains_key(*s))
                .collect()
        };
        if !self.exported && missing(&self.variants).len() >= EXPORT_FROM_MISSES {
            self.export().await?;
        }
        // Still missing: created since the export, or not in the shop.
        let nodes = self
            .by_sku(
                &missing(&self.variants),
                "id sku product { id } inventoryItem { id }",
                3.0,
            )
            .await?;
        for v in &nodes {
            self.remember(v);
        }
        Ok(wanted
            .into_iter()
            .filter_map(|s| self.variants.get(s).map(|v| (s.to_owned(), v.clone())))
            .collect())
    }

    /// The shop's current (price, compare-at price) of each SKU, read now (not
    /// cached: a merchant may have edited prices). Scalar fields cost nothing,
    /// so this costs about one point per SKU, a tenth of a mutation; as many
    /// SKUs as would make an export are read with one bulk query instead.
    pub async fn current_prices(
        &self,
        skus: &[&str],
    ) -> Result<HashMap<String, (Option<String>, Option<String>)>, AdminApiError> {
        let nodes = if skus.len() >= EXPORT_FROM_MISSES {
            let wanted: std::collections::HashSet<&str> = skus.iter().copied().collect();
            let mut all = super::bulk::run_query(&self.api, PRICES_QUERY, EXPORT_PATIENCE).await?;
            all.retain(|v| v["sku"].as_str().is_some_and(|s| wanted.contains(s)));
            all
        } else {
            self.by_sku(skus, "sku price compareAtPrice", 1.0).await?
        };
        let mut out = HashMap::new();
        for v in nodes {
            if let Some(sku) = v["sku"].as_str() {
                let text = |f: &str| v[f].as_str().map(str::to_owned);
                out.insert(sku.to_owned(), (text("price"), text("compareAtPrice")));
            }
        }
        Ok(out)
    }

    /// The shop's variants with these SKUs (`fields` of each), 50 per query;
    /// `points_per_node` is the requested cost of one node's fields.
    async fn by_sku(
        &self,
        skus: &[&str],
        fields: &str,
        points_per_node: f64,
    ) -> Result<Vec<Value>, AdminApiError> {
        let mut nodes = Vec::new();
        for chunk in skus.chunks(50) {
            let filter = chunk
                .iter()
                .map(|s| format!("sku:'{s}'"))
                .collect::<Vec<_>>()
                .join(" OR ");
            // The requested cost counts `first` nodes: ask for no more than
            // are wanted, or a lookup of one SKU reserves the cost of 50.
            let first = chunk.len();
            let r = self
                .api
                .execute(
                    &format!(
                        "query($q: String) {{ productVariants(first: {first}, query: $q) {{ nodes {{ {fields} }} }} }}"
                    ),
                    json!({"q": filter}),
                    2.0 + first as f64 * points_per_node,
                )
                .await?;
            if let Some(found) = r.data["productVariants"]["nodes"].as_array() {
                nodes.extend(found.iter().cloned());
            }
        }
        Ok(nodes)
    }

    /// The id of the location named `name`.
    pub async fn location(&mut self, name: &str) -> Result<Option<String>, AdminApiError> {
        if !self.locations.contains_key(name) {
            let r = self
                .api
                .execute(
                    "{ locations(first: 250) { nodes { id name } } }",
                    Value::Null,
                    252.0,
                )
                .await?;
            for l in r.data["locations"]["nodes"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let (Some(id), Some(n)) = (l["id"].as_str(), l["name"].as_str()) {
                    self.locations.insert(n.to_owned(), id.to_owned());
                }
            }
        }
        Ok(self.locations.get(name).cloned())
    }
}
