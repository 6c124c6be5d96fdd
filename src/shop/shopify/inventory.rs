//! Shopify inventory as a `StockLevelPlatform`: inventory items and locations
//! from the catalogue, `on_hand` read per level (≤ 100 per query) and set with
//! `inventorySetQuantities` (`changeFromQuantity` as the compare, an
//! `@idempotent` key).

use std::collections::HashMap;

use serde_json::{Value, json};

use super::admin_api::AdminApiError;
use super::catalog::ShopCatalog;
use crate::shop::platform::{OnHandWrite, SetOnHand, StockLevelPlatform, StockLevelReader};

/// What Shopify charges for a mutation.
const MUTATION_COST: f64 = 10.0;

pub struct ShopifyInventory {
    pub catalog: ShopCatalog,
}

impl StockLevelReader for ShopifyInventory {
    type Error = AdminApiError;

    async fn items(&mut self, skus: &[&str]) -> Result<HashMap<String, String>, AdminApiError> {
        Ok(self
            .catalog
            .variants(skus.iter().copied())
            .await?
            .into_iter()
            .map(|(sku, v)| (sku, v.inventory_item))
            .collect())
    }

    async fn location(&mut self, name: &str) -> Result<Option<String>, AdminApiError> {
        self.catalog.location(name).await
    }

    async fn on_hand(
        &mut self,
        pairs: &[(String, String)],
    ) -> Result<HashMap<(String, String), i64>, AdminApiError> {
        let mut levels = HashMap::new();
        for chunk in pairs.chunks(100) {
            let mut query = String::from("query {");
            for (i, (item, loc)) in chunk.iter().enumerate() {
                query.push_str(&format!(
                    " l{i}: inventoryItem(id: \"{item}\") {{ inventoryLevel(locationId: \"{loc}\") {{ quantities(names: [\"on_hand\"]) {{ quantity }} }} }}"
                ));
            }
            query.push_str(" }");
            let r = self
                .catalog
                .api
                .execute(&query, Value::Null, 3.0 * chunk.len() as f64)
                .await?;
            for (i, pair) in chunk.iter().enumerate() {
                if let Some(q) =
                    r.data[format!("l{i}")]["inventoryLevel"]["quantities"][0]["quantity"].as_i64()
                {
                    levels.insert(pair.clone(), q);
                }
            }
        }
        Ok(levels)
    }
}

impl StockLevelPlatform for ShopifyInventory {
    async fn look_up_again(
        &mut self,
        skus: &[&str],
    ) -> Result<HashMap<String, String>, AdminApiError> {
        Ok(self
            .catalog
            .look_up_again(skus)
            .await?
            .into_iter()
            .map(|(sku, v)| (sku, v.inventory_item))
            .collect())
    }

    fn ready_in(&self) -> std::time::Duration {
        self.catalog.api.time_until(MUTATION_COST)
    }

    async fn set_on_hand(
        &mut self,
        writes: &[OnHandWrite],
        key: &str,
    ) -> Result<SetOnHand, AdminApiError> {
        let quantities: Vec<Value> = writes
            .iter()
            .map(|w| {
                json!({"inventoryItemId": w.item, "locationId": w.location, "quantity": w.on_hand,
                       "changeFromQuantity": w.compare})
            })
            .collect();
        let query = format!(
            "mutation($input: InventorySetQuantitiesInput!) {{ inventorySetQuantities(input: $input) @idempotent(key: \"{key}\") {{ userErrors {{ code field message }} }} }}"
        );
        let input = json!({"input": {"name": "on_hand", "reason": "correction",
            "referenceDocumentUri": "flywheel://erp/stock", "quantities": quantities}});
        let r = self
            .catalog
            .api
            .execute(&query, input, MUTATION_COST)
            .await?;
        let errors = r.data["inventorySetQuantities"]["userErrors"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let all = |code: &str| errors.iter().all(|e| e["code"] == code);
        Ok(if errors.is_empty() {
            SetOnHand::Done
        } else if all("IDEMPOTENCY_CONCURRENT_REQUEST") {
            SetOnHand::InProgress
        } else if errors.iter().any(|e| e["code"] == "INVALID_INVENTORY_ITEM") {
            SetOnHand::UnknownItem
        } else if errors
            .iter()
            .all(|e| e["code"] == "CHANGE_FROM_QUANTITY_STALE")
        {
            SetOnHand::Stale
        } else {
            SetOnHand::Refused(format!(
                "the shop refused inventorySetQuantities: {}",
                Value::Array(errors)
            ))
        })
    }
}
