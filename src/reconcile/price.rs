//! Prices: the shop's own price list (in its currency) as the price
//! processor applies it (`sync::price_to_shop`), against what the shop shows.

use std::collections::{BTreeMap, HashMap};

use super::compare::{EntityReport, diff};
use super::{ReconcileError, TruthRecord};
use crate::config::ShopConfig;
use crate::shop::platform::{PriceReader, ShownPrice};
use crate::sync::apply_loop::SyncError;
use crate::sync::price_to_shop::{self, same_amount};

pub async fn compare<P>(
    platform: &mut P,
    shop: &ShopConfig,
    truth: &[TruthRecord],
) -> Result<(EntityReport, HashMap<String, Vec<usize>>), ReconcileError>
where
    P: PriceReader,
    SyncError: From<P::Error>,
{
    let shop_err = |e: P::Error| ReconcileError::shop(shop, SyncError::from(e));
    let mut expected: BTreeMap<String, ShownPrice> = BTreeMap::new();
    let mut repair: HashMap<String, Vec<usize>> = HashMap::new();
    for r in truth {
        let Some(d) = price_to_shop::decode(&r.value) else {
            continue;
        };
        let p = d.event;
        if p.price_list != shop.price_list || p.currency != shop.currency || p.amount.is_none() {
            continue;
        }
        expected.insert(p.sku.clone(), (p.amount, p.compare_at));
        repair.insert(p.sku, vec![r.index]);
    }
    let skus: Vec<&str> = expected.keys().map(String::as_str).collect();
    let known = platform.known(&skus).await.map_err(shop_err)?;
    let present: Vec<&str> = skus
        .iter()
        .copied()
        .filter(|s| known.contains(*s))
        .collect();
    let shown = platform.current(&present).await.map_err(shop_err)?;
    let report = diff(
        &shop.name,
        price_to_shop::ENTITY,
        &expected,
        &shown,
        |a, b| same_amount(&a.0, &b.0) && same_amount(&a.1, &b.1),
        |(amount, compare_at)| match (amount, compare_at) {
            (Some(a), Some(c)) => format!("{a} (was {c})"),
            (Some(a), None) => a.clone(),
            (None, _) => "none".to_owned(),
        },
    );
    Ok((report, repair))
}
