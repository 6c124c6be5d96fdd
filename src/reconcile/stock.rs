//! Stock: what the ERP says each shop should show, through the stock
//! processors' own mapping (`sync::stock_to_shop`, `sync::stock_count_to_shop`),
//! against what the shop shows, read through its platform.

use std::collections::{BTreeMap, HashMap};

use super::compare::{EntityReport, diff};
use super::{ReconcileError, TruthRecord};
use crate::config::ShopConfig;
use crate::shop::platform::{StockCountPlatform, StockLevelReader};
use crate::sync::apply_loop::SyncError;
use crate::sync::state::{StateDb, StockPart};
use crate::sync::stock_count_to_shop::ErpStock;
use crate::sync::stock_to_shop::{self, StockLevel};

/// The ERP's stock records as `shop` sees them (its channel's reservations).
fn levels<'a>(truth: &'a [TruthRecord], shop: &ShopConfig) -> Vec<(StockLevel, &'a TruthRecord)> {
    truth
        .iter()
        .filter_map(|r| Some((stock_to_shop::decode(&r.value, &shop.name)?.event, r)))
        .collect()
}

/// A shop keeping levels per (item, location): one key per ERP stock key
/// (`SKU/warehouse`), its `on_hand` under the stock contract.
pub async fn compare_levels<P>(
    platform: &mut P,
    shop: &ShopConfig,
    truth: &[TruthRecord],
) -> Result<(EntityReport, HashMap<String, Vec<usize>>), ReconcileError>
where
    P: StockLevelReader,
    SyncError: From<P::Error>,
{
    let shop_err = |e: P::Error| ReconcileError::shop(shop, SyncError::from(e));
    let levels = levels(truth, shop);
    let skus: Vec<&str> = levels.iter().map(|(l, _)| l.sku.as_str()).collect();
    let items = platform.items(&skus).await.map_err(shop_err)?;
    let mut locations: HashMap<String, Option<String>> = HashMap::new();
    let mut expected = BTreeMap::new();
    let mut where_is: HashMap<(String, String), String> = HashMap::new();
    let mut repair: HashMap<String, Vec<usize>> = HashMap::new();
    for (level, record) in &levels {
        let name = shop.location_name(&level.warehouse);
        if !locations.contains_key(&name) {
            let id = platform.location(&name).await.map_err(shop_err)?;
            locations.insert(name.clone(), id);
        }
        expected.insert(record.key.clone(), level.shop_on_hand(shop.safety_stock));
        repair.insert(record.key.clone(), vec![record.index]);
        if let (Some(item), Some(Some(location))) = (items.get(&level.sku), locations.get(&name)) {
            where_is.insert((item.clone(), location.clone()), record.key.clone());
        }
    }
    let pairs: Vec<(String, String)> = where_is.keys().cloned().collect();
    let read = platform.on_hand(&pairs).await.map_err(shop_err)?;
    let shown: HashMap<String, i64> = read
        .into_iter()
        .filter_map(|(pair, q)| Some((where_is.get(&pair)?.clone(), q)))
        .collect();
    let report = diff(
        &shop.name,
        stock_to_shop::ENTITY,
        &expected,
        &shown,
        |a, b| a == b,
        i64::to_string,
    );
    Ok((report, repair))
}

/// A shop keeping one count per SKU: the count the stock count processor
/// would write now, its units held for sales the ERP has not reserved yet
/// (kept in the state database) included.
pub async fn compare_counts<P>(
    platform: &mut P,
    state: &mut StateDb,
    shop: &ShopConfig,
    truth: &[TruthRecord],
) -> Result<(EntityReport, HashMap<String, Vec<usize>>), ReconcileError>
where
    P: StockCountPlatform,
    SyncError: From<P::Error>,
{
    let levels = levels(truth, shop);
    let mut parts: BTreeMap<String, Vec<StockPart>> = BTreeMap::new();
    let mut repair: HashMap<String, Vec<usize>> = HashMap::new();
    for (level, record) in &levels {
        parts.entry(level.sku.clone()).or_default().push(StockPart {
            sku: level.sku.clone(),
            warehouse: level.warehouse.clone(),
            version: 0,
            sellable: level.on_hand - level.reserved_elsewhere,
            own_reserved: level.reserved_own,
        });
        repair
            .entry(level.sku.clone())
            .or_default()
            .push(record.index);
    }
    let skus: Vec<String> = parts.keys().cloned().collect();
    let written = state
        .load_counts(&shop.name, &skus)
        .await
        .map_err(|e| ReconcileError::shop(shop, SyncError::State(e)))?;
    let stocks_from =
        |w: &str| shop.warehouse_locations.is_empty() || shop.warehouse_locations.contains_key(w);
    let expected: BTreeMap<String, Option<i64>> = parts
        .iter()
        .map(|(sku, parts)| {
            let erp = ErpStock::sum(parts.iter(), stocks_from);
            let held = written.get(sku).map_or(0, |w| w.held);
            let count = (erp.sellable - erp.own_reserved - shop.safety_stock - held).max(0);
            (sku.clone(), Some(count))
        })
        .collect();
    let refs: Vec<&str> = skus.iter().map(String::as_str).collect();
    let shown: HashMap<String, Option<i64>> = platform
        .counts(&refs)
        .await
        .map_err(|e| ReconcileError::shop(shop, SyncError::from(e)))?;
    let report = diff(
        &shop.name,
        stock_to_shop::ENTITY,
        &expected,
        &shown,
        |a, b| a == b,
        |v| v.map_or_else(|| "not tracked".to_owned(), |n| n.to_string()),
    );
    Ok((report, repair))
}

/// What the stock processor last wrote for `sku` at `warehouse` in a shop
/// keeping levels (absent: never written, or the shop lacks the SKU or the
/// location).
pub async fn last_level_write<P>(
    platform: &mut P,
    state: &mut StateDb,
    shop: &ShopConfig,
    sku: &str,
    warehouse: &str,
) -> Result<Option<crate::sync::state::Written>, ReconcileError>
where
    P: StockLevelReader,
    SyncError: From<P::Error>,
{
    let shop_err = |e: P::Error| ReconcileError::shop(shop, SyncError::from(e));
    let items = platform.items(&[sku]).await.map_err(shop_err)?;
    let location = platform
        .location(&shop.location_name(warehouse))
        .await
        .map_err(shop_err)?;
    let (Some(item), Some(location)) = (items.get(sku), location) else {
        return Ok(None);
    };
    let pair = (item.clone(), location);
    let written = state
        .load_levels(&shop.name, std::slice::from_ref(&pair))
        .await
        .map_err(ReconcileError::State)?;
    Ok(written.get(&pair).copied())
}
