//! The shop's catalogue mapping (SKU → variant, product, inventory item), kept
//! in the state database: one mapping per shop, shared by every processor of
//! the shop and kept across restarts.
//!
//! Two halves: [`StoredCatalog`], the [`CatalogStore`] the Shopify clients
//! of the processors read and fill (on a miss, from a lookup or an export);
//! and the catalogue processor, which applies `shop.catalog.v1` (the shop's
//! `products/create`, `products/update` and `products/delete` webhooks), so a
//! variant created, deleted or given another SKU in the shop is mapped anew
//! without a lookup, and a SKU whose variant is gone is not written to.

use std::collections::HashMap;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::Lane;
use super::apply_loop::{self, Applier, Decoded, Outcome, Pending, SyncError};
use super::state::{CatalogEntry, StateDb, StateError, numeric_id};
use crate::config::{Config, ShopConfig};
use crate::shop::admin_api::AdminApi;
use crate::shop::mapping::{SHOP_CATALOG, ShopCatalogEvent};
use crate::shop::shopify::catalog::{
    CatalogStore, CatalogStoreError, ShopCatalog, VariantRef, gid,
};

/// `shop`'s mapping in the state database.
pub struct StoredCatalog {
    state: StateDb,
    shop: String,
}

impl StoredCatalog {
    /// A Shopify catalogue of `shop`, for `processor`'s calls, whose mapping
    /// is the shop's stored one (on its own state database session).
    pub async fn for_shop(
        config: &Config,
        shop: &ShopConfig,
        processor: &'static str,
    ) -> Result<ShopCatalog, SyncError> {
        let store = StoredCatalog {
            state: StateDb::connect(config).await?,
            shop: shop.name.clone(),
        };
        Ok(ShopCatalog::new(
            AdminApi::for_shop(shop, processor)?,
            Box::new(store),
        ))
    }
}

fn store_error(e: StateError) -> CatalogStoreError {
    CatalogStoreError {
        retryable: e.is_retryable(),
        reason: e.to_string(),
    }
}

impl CatalogStore for StoredCatalog {
    fn load<'a>(
        &'a mut self,
        skus: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, VariantRef>, CatalogStoreError>> {
        Box::pin(async move {
            let entries = self
                .state
                .load_catalog(&self.shop, skus)
                .await
                .map_err(store_error)?;
            Ok(entries
                .into_iter()
                .map(|e| {
                    let v = VariantRef {
                        variant: gid("ProductVariant", &e.variant),
                        product: gid("Product", &e.product),
                        inventory_item: gid("InventoryItem", &e.inventory_item),
                    };
                    (e.sku, v)
                })
                .collect())
        })
    }

    fn store<'a>(
        &'a mut self,
        version: i64,
        variants: &'a [(String, VariantRef)],
    ) -> BoxFuture<'a, Result<(), CatalogStoreError>> {
        Box::pin(async move {
            let entries: Vec<CatalogEntry> = variants
                .iter()
                .map(|(sku, v)| CatalogEntry {
                    sku: sku.clone(),
                    variant: numeric_id(&v.variant).to_owned(),
                    product: numeric_id(&v.product).to_owned(),
                    inventory_item: numeric_id(&v.inventory_item).to_owned(),
                })
                .collect();
            self.state
                .store_catalog(&self.shop, version, &entries)
                .await
                .map_err(store_error)
        })
    }

    fn forget<'a>(
        &'a mut self,
        version: i64,
        skus: &'a [String],
    ) -> BoxFuture<'a, Result<(), CatalogStoreError>> {
        Box::pin(async move {
            self.state
                .forget_catalog(&self.shop, version, skus)
                .await
                .map_err(store_error)
        })
    }

    fn exported(&mut self) -> BoxFuture<'_, Result<bool, CatalogStoreError>> {
        Box::pin(async move {
            self.state
                .catalog_exported(&self.shop)
                .await
                .map_err(store_error)
        })
    }

    fn mark_exported(&mut self) -> BoxFuture<'_, Result<(), CatalogStoreError>> {
        Box::pin(async move {
            self.state
                .mark_catalog_exported(&self.shop)
                .await
                .map_err(store_error)
        })
    }
}

/// The catalogue processor of one shop.
pub struct CatalogFromShop {
    state: StateDb,
    channel: String,
}

/// Runs `shop`'s catalogue processor until `shutdown`.
pub async fn run(
    config: &Config,
    shop: &ShopConfig,
    shutdown: CancellationToken,
) -> Result<(), SyncError> {
    let lane = Lane::for_shop(CatalogFromShop::ENTITY, CatalogFromShop::TOPIC, &shop.name);
    apply_loop::supervised(config, lane, shutdown, || async {
        Ok(CatalogFromShop {
            state: StateDb::connect(config).await?,
            channel: shop.name.clone(),
        })
    })
    .await
}

impl Applier for CatalogFromShop {
    const ENTITY: &'static str = "catalog";
    const TOPIC: &'static str = SHOP_CATALOG;
    type Event = ShopCatalogEvent;

    fn decode(&self, v: &apache_avro::types::Value) -> Option<Decoded<ShopCatalogEvent>> {
        let e: ShopCatalogEvent = apache_avro::from_value(v).ok()?;
        Some(Decoded {
            key: e.key.clone(),
            version: (e.version, e.version_tiebreak.clone()),
            source_ts_micros: e.source_ts,
            event: e,
        })
    }

    async fn apply(
        &mut self,
        events: &[Pending<ShopCatalogEvent>],
    ) -> Result<Vec<Outcome>, SyncError> {
        let mut outcomes = Vec::with_capacity(events.len());
        for p in events {
            let e = &p.event;
            if e.channel != self.channel {
                outcomes.push(Outcome::NotApplicable);
                continue;
            }
            // A variant without a SKU or an inventory item cannot be
            // written to by SKU; its SKU (if any) counts as gone.
            let entries: Vec<CatalogEntry> = e
                .variants
                .iter()
                .filter_map(|v| {
                    Some(CatalogEntry {
                        sku: v.sku.clone()?,
                        variant: v.variant_id.clone(),
                        product: e.product_id.clone(),
                        inventory_item: v.inventory_item_id.clone()?,
                    })
                })
                .collect();
            self.state
                .store_product(&self.channel, &e.product_id, e.version, &entries)
                .await?;
            outcomes.push(Outcome::Applied);
        }
        Ok(outcomes)
    }
}
