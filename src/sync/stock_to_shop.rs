//! `erp.stock.v1` → the shop's inventory.
//!
//! Writes `max(0, available − safety_stock)` with `inventorySetQuantities`, ≤ 250
//! per call, an idempotency key derived from the keys and versions, and
//! `changeFromQuantity` from the last known level: cached, or the last confirmed
//! write (`written_levels`), or none for a level never written; re-read and
//! retried when the shop's quantity moved under us. SKUs the shop lacks are
//! dead letters.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::apply_loop::{self, Applier, Decoded, Outcome, Pending, SyncError};
use super::shop_catalog::ShopCatalog;
use super::written_levels;
use crate::bus::avro::{field, field_i64, field_str};
use crate::bus::topics::ERP_STOCK;
use crate::config::Config;
use crate::shop::admin_api::AdminApi;

#[derive(Clone, Debug)]
pub struct StockLevel {
    pub sku: String,
    pub warehouse: String,
    /// Whole units; 0 for a deleted entity.
    pub available: i64,
}

pub struct StockToShop {
    catalog: ShopCatalog,
    /// Flywheel's state database: what was written, to recognise echoes.
    state: tokio_postgres::Client,
    safety_stock: i64,
    warehouse_locations: BTreeMap<String, String>,
    /// (item, location) → last known available
    levels: HashMap<(String, String), i64>,
}

/// Runs the stock processor until `shutdown`.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), SyncError> {
    let p = &config.processors;
    apply_loop::supervised(config, shutdown, || async {
        let state = apply_loop::connect_db(config, &p.state_database(&config.erp)).await?;
        written_levels::open(&state).await?;
        Ok(StockToShop {
            state,
            catalog: ShopCatalog::new(AdminApi::from_config(p, <StockToShop as Applier>::ENTITY)?),
            safety_stock: p.safety_stock,
            warehouse_locations: p.warehouse_locations.clone(),
            levels: HashMap::new(),
        })
    })
    .await
}

impl Applier for StockToShop {
    const ENTITY: &'static str = "stock";
    const TOPIC: &'static str = ERP_STOCK;
    type Event = StockLevel;

    fn decode(&self, v: &apache_avro::types::Value) -> Option<Decoded<StockLevel>> {
        let deleted = matches!(
            field(v, "deleted"),
            Some(apache_avro::types::Value::Boolean(true))
        );
        let available = if deleted {
            0
        } else {
            // A decimal string; the shop counts whole units.
            field_str(v, "available")?.parse::<f64>().ok()?.floor() as i64
        };
        Some(Decoded {
            key: field_str(v, "key")?.to_owned(),
            version: (field_i64(v, "version")?, String::new()),
            source_ts_micros: field_i64(v, "source_ts")?,
            event: StockLevel {
                sku: field_str(v, "sku")?.to_owned(),
                warehouse: field_str(v, "warehouse")?.to_owned(),
                available,
            },
        })
    }

    async fn apply(&mut self, events: &[Pending<StockLevel>]) -> Result<Vec<Outcome>, SyncError> {
        let variants = self
            .catalog
            .variants(events.iter().map(|e| e.event.sku.as_str()))
            .await?;
        let mut outcomes = Vec::with_capacity(events.len());
        let mut writes = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let Some(v) = variants.get(&e.event.sku) else {
                outcomes.push(Outcome::DeadLetter {
                    class: "unknown_sku",
                    reason: format!("the shop has no variant with SKU `{}`", e.event.sku),
                });
                continue;
            };
            let name = self
                .warehouse_locations
                .get(&e.event.warehouse)
                .cloned()
                .unwrap_or_else(|| e.event.warehouse.clone());
            let location =
                self.catalog
                    .location(&name)
                    .await?
                    .ok_or_else(|| SyncError::UnknownLocation {
                        warehouse: e.event.warehouse.clone(),
                        location: name,
                    })?;
            outcomes.push(Outcome::Applied);
            let quantity = (e.event.available - self.safety_stock).max(0);
            writes.push((i, v.inventory_item.clone(), location, quantity));
        }
        for chunk in writes.chunks(250) {
            let keyed: Vec<(&Pending<StockLevel>, &str, &str, i64)> = chunk
                .iter()
                .map(|(i, item, loc, q)| (&events[*i], item.as_str(), loc.as_str(), *q))
                .collect();
            self.set_quantities(&keyed).await?;
        }
        Ok(outcomes)
    }
}

impl StockToShop {
    /// Reads the current `available` of (item, location) pairs into the cache.
    async fn read_levels(&mut self, pairs: &[(String, String)]) -> Result<(), SyncError> {
        for chunk in pairs.chunks(100) {
            let mut query = String::from("query {");
            for (i, (item, loc)) in chunk.iter().enumerate() {
                query.push_str(&format!(
                    " l{i}: inventoryItem(id: \"{item}\") {{ inventoryLevel(locationId: \"{loc}\") {{ quantities(names: [\"available\"]) {{ quantity }} }} }}"
                ));
            }
            query.push_str(" }");
            let r = self
                .catalog
                .api
                .execute(&query, Value::Null, 3.0 * chunk.len() as f64)
                .await?;
            for (i, pair) in chunk.iter().enumerate() {
                let q = r.data[format!("l{i}")]["inventoryLevel"]["quantities"][0]["quantity"]
                    .as_i64()
                    .ok_or_else(|| {
                        SyncError::ShopAnswer(format!("no level for {} at {}", pair.0, pair.1))
                    })?;
                self.levels.insert(pair.clone(), q);
            }
        }
        Ok(())
    }

    /// One `inventorySetQuantities` call (≤ 250), compare-before-write.
    async fn set_quantities(
        &mut self,
        chunk: &[(&Pending<StockLevel>, &str, &str, i64)],
    ) -> Result<(), SyncError> {
        let pairs: Vec<(String, String)> = chunk
            .iter()
            .map(|(_, i, l, _)| (i.to_string(), l.to_string()))
            .collect();
        // What we know of each level: the cache, else our record of the last
        // write. A write confirmed at this very version already landed (the
        // crash came before the version store was updated): skip it. An
        // unconfirmed one may or may not have landed: read the shop. A level
        // never written is set without a compare (nothing is known of it).
        let written = written_levels::load(&self.state, &pairs).await?;
        let mut uncertain: Vec<(String, String)> = Vec::new();
        let mut skip = std::collections::HashSet::new();
        for ((e, .., qty), pair) in chunk.iter().zip(&pairs) {
            if self.levels.contains_key(pair) {
                continue;
            }
            match written.get(pair) {
                Some(w) if w.confirmed && w.version == e.version.0 && w.quantity == *qty => {
                    skip.insert(pair.clone());
                }
                Some(w) if w.confirmed => {
                    self.levels.insert(pair.clone(), w.quantity);
                }
                Some(_) => uncertain.push(pair.clone()),
                None => {}
            }
        }
        self.read_levels(&uncertain).await?;
        let uncertain: std::collections::HashSet<_> = uncertain.into_iter().collect();
        for ((.., qty), pair) in chunk.iter().zip(&pairs) {
            let landed = written.get(pair).is_some_and(|w| w.quantity == *qty);
            if uncertain.contains(pair) && landed && self.levels.get(pair) == Some(qty) {
                skip.insert(pair.clone());
            }
        }
        let (chunk, pairs): (Vec<_>, Vec<_>) = chunk
            .iter()
            .zip(pairs)
            .filter(|(_, pair)| !skip.contains(pair))
            .map(|(c, p)| (*c, p))
            .unzip();
        if chunk.is_empty() {
            return Ok(());
        }
        // Same keys and versions → same key: re-sending after a crash is a no-op.
        let idempotency_key = {
            use std::hash::{DefaultHasher, Hash, Hasher};
            let mut h = DefaultHasher::new();
            for (e, ..) in &chunk {
                (&e.key, &e.version).hash(&mut h);
            }
            format!("flywheel-stock-{:016x}", h.finish())
        };
        // Recorded before writing: the shop's webhook for this write may arrive
        // before the answer does, and must already be recognised as our echo.
        let levels: Vec<(&str, &str, i64, i64)> = chunk
            .iter()
            .map(|(e, i, l, q)| (*i, *l, *q, e.version.0))
            .collect();
        written_levels::intend(&self.state, &levels).await?;
        for attempt in 0..3 {
            let quantities: Vec<Value> = chunk
                .iter()
                .zip(&pairs)
                .map(|((_, item, loc, qty), pair)| {
                    json!({"inventoryItemId": item, "locationId": loc, "quantity": qty,
                           "changeFromQuantity": self.levels.get(pair)})
                })
                .collect();
            let query = format!(
                "mutation($input: InventorySetQuantitiesInput!) {{ inventorySetQuantities(input: $input) @idempotent(key: \"{idempotency_key}-{attempt}\") {{ userErrors {{ code field message }} }} }}"
            );
            let input = json!({"input": {"name": "available", "reason": "correction",
                "referenceDocumentUri": "flywheel://erp/stock", "quantities": quantities}});
            let r = self.catalog.api.execute(&query, input, 10.0).await?;
            let errors = r.data["inventorySetQuantities"]["userErrors"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if errors.is_empty() {
                for ((.., qty), pair) in chunk.iter().zip(&pairs) {
                    self.levels.insert(pair.clone(), *qty);
                }
                written_levels::confirm(&self.state, &levels).await?;
                return Ok(());
            }
            if !errors
                .iter()
                .any(|e| e["code"] == "CHANGE_FROM_QUANTITY_STALE")
            {
                return Err(SyncError::ShopAnswer(format!(
                    "inventorySetQuantities: {}",
                    Value::Array(errors)
                )));
            }
            tracing::debug!(attempt, "shop quantity moved under us; re-reading");
            self.read_levels(&pairs).await?;
        }
        Err(SyncError::ShopAnswer(
            "quantities kept moving under us (3 stale attempts)".into(),
        ))
    }
}
