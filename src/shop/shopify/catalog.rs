//! What the processors need to know about the shop's catalogue: SKU → variant,
//! product and inventory item; location names → ids. Looked up on a miss and
//! cached for the life of the processor.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::admin_api::{AdminApi, AdminApiError};

#[derive(Clone, Debug)]
pub struct VariantRef {
    pub variant: String,
    pub product: String,
    pub inventory_item: String,
}

pub struct ShopCatalog {
    pub api: AdminApi,
    variants: HashMap<String, VariantRef>,
    locations: HashMap<String, String>,
}

impl ShopCatalog {
    pub fn new(api: AdminApi) -> Self {
        ShopCatalog {
            api,
            variants: HashMap::new(),
            locations: HashMap::new(),
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
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|s| !self.variants.contains_key(*s))
            .collect();
        let nodes = self
            .by_sku(&missing, "id sku product { id } inventoryItem { id }", 3.0)
            .await?;
        for v in &nodes {
            if let (Some(sku), Some(variant), Some(product), Some(item)) = (
                v["sku"].as_str(),
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
        Ok(wanted
            .into_iter()
            .filter_map(|s| self.variants.get(s).map(|v| (s.to_owned(), v.clone())))
            .collect())
    }

    /// The shop's current (price, compare-at price) of each SKU, read now (not
    /// cached: a merchant may have edited prices). Scalar fields cost nothing,
    /// so this costs about one point per SKU, a tenth of a mutation.
    pub async fn current_prices(
        &self,
        skus: &[&str],
    ) -> Result<HashMap<String, (Option<String>, Option<String>)>, AdminApiError> {
        let mut out = HashMap::new();
        for v in self.by_sku(skus, "sku price compareAtPrice", 1.0).await? {
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
            let r = self
                .api
                .execute(
                    &format!(
                        "query($q: String) {{ productVariants(first: 50, query: $q) {{ nodes {{ {fields} }} }} }}"
                    ),
                    json!({"q": filter}),
                    2.0 + 50.0 * points_per_node,
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
