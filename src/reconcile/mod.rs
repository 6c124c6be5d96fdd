//! Knowing the shops are in sync: `flywheel reconcile` compares the ERP's
//! truth for every key with what each shop shows now, after the same mapping
//! the processors apply, and repairs drift through the normal path.
//!
//! The ERP's truth is read inside one consistent snapshot
//! (`erp::source::read_truth`), as events the source would produce at that
//! snapshot's stream position. A repair produces the drifted keys' events to
//! their ERP topics: the processors apply them like any other change
//! (version-guarded, idempotent, rate-limited, counted), and the version
//! orders them exactly against the stream — a change the ERP made after the
//! snapshot wins, so a repair never writes an older value over a newer one.
//!
//! Shops are read through their platforms (`shop::platform`), one module per
//! entity here: `stock` (levels on Shopify, counts on WooCommerce), `price`,
//! and `orders` (the other way round: shop orders the ERP lacks, fed into
//! `shop.orders.v1` again). The comparison itself is pure (`compare`).

pub mod compare;
pub mod continuous;
pub mod orders;
pub mod price;
pub mod stock;
pub mod trace;

use std::collections::HashMap;

use apache_avro::types::Value;

use crate::bus::BusError;
use crate::bus::avro::AvroCodec;
use crate::bus::producer::{EventProducer, OutRecord};
use crate::config::{Config, Platform, ShopConfig};
use crate::erp::source::SourceError;
use crate::shop::admin_api::AdminApi;
use crate::shop::shopify::catalog::ShopCatalog;
use crate::shop::shopify::export::CatalogExport;
use crate::shop::shopify::inventory::ShopifyInventory;
use crate::shop::shopify::prices::ShopifyPrices;
use crate::shop::woocommerce::WooClient;
use crate::sync::apply_loop::SyncError;
use crate::sync::state::StateDb;
use compare::EntityReport;

/// The label reconciliation's shop clients carry in the API metrics.
const CLIENT: &str = "reconcile";

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("reading the ERP: {0}")]
    Erp(#[from] SourceError),
    #[error("shop `{shop}`: {source}")]
    Shop { shop: String, source: SyncError },
    #[error("producing repairs: {0}")]
    Bus(#[from] BusError),
    #[error("state database: {0}")]
    State(#[from] crate::sync::state::StateError),
    #[error("a reading task ended: {0}")]
    Task(String),
    #[error("no shop named `{0}` is configured ([[shops]])")]
    UnknownShop(String),
    #[error(
        "the ERP's `{entity}` events do not decode: {reason}; the connector's topic schema and this build disagree"
    )]
    Undecodable { entity: String, reason: String },
}

impl ReconcileError {
    fn shop(shop: &ShopConfig, source: SyncError) -> Self {
        ReconcileError::Shop {
            shop: shop.name.clone(),
            source,
        }
    }

    /// Whether a later attempt can succeed without an operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            ReconcileError::Erp(e) => e.is_retryable(),
            ReconcileError::Shop { source, .. } => source.is_retryable(),
            ReconcileError::Bus(e) => e.is_retryable(),
            ReconcileError::State(e) => e.is_retryable(),
            ReconcileError::Task(_) => true,
            ReconcileError::UnknownShop(_) | ReconcileError::Undecodable { .. } => false,
        }
    }
}

/// What can be reconciled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entity {
    Stock,
    Price,
}

impl Entity {
    pub const ALL: [Entity; 2] = [Entity::Stock, Entity::Price];

    /// The topic its ERP events are in.
    pub fn topic(self) -> &'static str {
        match self {
            Entity::Stock => crate::bus::topics::ERP_STOCK,
            Entity::Price => crate::bus::topics::ERP_PRICE,
        }
    }

    /// The ERP entity (connector) name.
    pub fn name(self) -> &'static str {
        match self {
            Entity::Stock => crate::sync::stock_to_shop::ENTITY,
            Entity::Price => crate::sync::price_to_shop::ENTITY,
        }
    }
}

/// One run of reconciliation.
#[derive(Clone, Debug)]
pub struct Request {
    /// One shop by name; every configured shop when `None`.
    pub shop: Option<String>,
    pub entities: Vec<Entity>,
    /// Produce the drifted keys' ERP events again.
    pub repair: bool,
    /// The share (0–1] of each shop's API rate budget the comparison may use.
    pub budget_share: f64,
    /// Also compare the shop orders changed within this lookback.
    pub orders_lookback: Option<std::time::Duration>,
}

/// One ERP event of the truth, decoded as the processors decode it.
#[derive(Clone, Debug)]
pub struct TruthRecord {
    /// Position in the entity's records (what a repair produces).
    pub index: usize,
    pub key: String,
    pub value: Value,
}

/// Compares (and with `repair`, repairs) every requested shop and entity.
pub async fn reconcile(
    config: &Config,
    request: &Request,
) -> Result<Vec<EntityReport>, ReconcileError> {
    let shops: Vec<&ShopConfig> = match &request.shop {
        None => config.shops.iter().collect(),
        Some(name) => vec![
            config
                .shops
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| ReconcileError::UnknownShop(name.clone()))?,
        ],
    };
    let names: Vec<&str> = request.entities.iter().map(|e| e.name()).collect();
    // Orders alone need no snapshot of the ERP (nor its replication slot).
    let truth = if names.is_empty() {
        None
    } else {
        let truth = crate::erp::source::read_truth(config, &names, None).await?;
        tracing::info!(version = %truth.version, "read the ERP's truth");
        Some(truth)
    };
    let mut decoded: HashMap<&str, (Vec<TruthRecord>, &[OutRecord])> = HashMap::new();
    for (entity, records) in truth.iter().flat_map(|t| &t.records) {
        decoded.insert(entity.as_str(), (decode_all(entity, records)?, records));
    }
    let producer = if request.repair {
        Some(EventProducer::new(&config.kafka, CLIENT)?)
    } else {
        None
    };
    let mut state = None;
    let mut reports = Vec::new();
    for shop in shops {
        // A bulk export serves every entity of the shop: read once.
        let mut export = None;
        for entity in &request.entities {
            let (truth, records) = decoded
                .get(entity.name())
                .map(|(t, r)| (t.as_slice(), *r))
                .unwrap_or_default();
            let (mut report, repairs) = compare_one(
                config,
                shop,
                *entity,
                truth,
                request.budget_share,
                &mut state,
                &mut export,
            )
            .await?;
            if let Some(producer) = &producer {
                for drifted in &report.drifted {
                    for &i in repairs.get(&drifted.key).into_iter().flatten() {
                        producer.send(records[i].clone()).await?;
                    }
                    report.repaired += 1;
                }
            }
            reports.push(report);
        }
        if let Some(lookback) = request.orders_lookback {
            let since =
                chrono::Utc::now() - chrono::Duration::from_std(lookback).unwrap_or_default();
            if state.is_none() {
                state = Some(StateDb::connect(config).await?);
            }
            let Some(db) = state.as_mut() else {
                unreachable!("connected just above")
            };
            let (mut report, again) = compare_orders(shop, db, since, request.budget_share).await?;
            if let Some(producer) = &producer {
                let codec = AvroCodec::for_topic(crate::shop::mapping::SHOP_ORDERS)
                    .map_err(BusError::from)?;
                report.repaired +=
                    crate::shop::order_poll::produce_all(producer, codec, &again, "reconcile")
                        .await?;
            }
            reports.push(report);
        }
    }
    Ok(reports)
}

/// The orders of `shop` changed since `since` against the applied versions.
async fn compare_orders(
    shop: &ShopConfig,
    state: &mut StateDb,
    since: chrono::DateTime<chrono::Utc>,
    budget_share: f64,
) -> Result<(EntityReport, Vec<crate::shop::mapping::ShopOrderEvent>), ReconcileError> {
    use crate::shop::shopify::order_poll::ShopifyOrderFeed;
    use crate::shop::woocommerce::order_poll::WooOrderFeed;
    match shop.platform {
        Platform::Shopify => {
            let api = AdminApi::for_shop(shop, CLIENT)
                .map_err(|e| ReconcileError::shop(shop, e.into()))?;
            let mut feed = ShopifyOrderFeed(api.with_budget_share(budget_share));
            orders::compare(&mut feed, state, shop, since).await
        }
        Platform::Woocommerce => {
            let mut feed = WooOrderFeed(woo_client(shop, budget_share)?);
            orders::compare(&mut feed, state, shop, since).await
        }
    }
}

/// A Shopify catalog held to `budget_share` of the shop's budget.
fn shopify_catalog(shop: &ShopConfig, budget_share: f64) -> Result<ShopCatalog, ReconcileError> {
    let api = AdminApi::for_shop(shop, CLIENT).map_err(|e| ReconcileError::shop(shop, e.into()))?;
    Ok(ShopCatalog::in_memory(api.with_budget_share(budget_share)))
}

/// A WooCommerce client held to `budget_share` of the shop's configured rate
/// (WooCommerce publishes no budget of its own).
fn woo_client(shop: &ShopConfig, budget_share: f64) -> Result<WooClient, ReconcileError> {
    let share = budget_share.clamp(0.001, 1.0);
    let held_to_share = ShopConfig {
        requests_per_second: shop.requests_per_second * share,
        burst: ((shop.burst as f64 * share).floor() as u32).max(1),
        ..shop.clone()
    };
    WooClient::for_shop(&held_to_share, CLIENT).map_err(|e| ReconcileError::shop(shop, e.into()))
}

/// How long a bulk export may take before the comparison gives up (Shopify
/// exports a large catalogue in minutes).
const BULK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Compares one entity of one shop. A Shopify shop compared on
/// `reconcile.bulk_above_keys` keys or more is read through one bulk export
/// (`export`, read on first use and kept for the shop's other entities),
/// which also names the shop's SKUs the ERP lacks.
#[allow(clippy::too_many_arguments)]
async fn compare_one(
    config: &Config,
    shop: &ShopConfig,
    entity: Entity,
    truth: &[TruthRecord],
    budget_share: f64,
    state: &mut Option<StateDb>,
    export: &mut Option<CatalogExport>,
) -> Result<(EntityReport, HashMap<String, Vec<usize>>), ReconcileError> {
    let err = |e: SyncError| ReconcileError::shop(shop, e);
    let shopify = || shopify_catalog(shop, budget_share);
    if shop.platform == Platform::Shopify && truth.len() >= config.reconcile.bulk_above_keys {
        if export.is_none() {
            let api = AdminApi::for_shop(shop, CLIENT).map_err(|e| err(e.into()))?;
            let read = CatalogExport::read(&api.with_budget_share(budget_share), BULK_PATIENCE)
                .await
                .map_err(|e| err(e.into()))?;
            *export = Some(read);
        }
        let Some(export) = export.as_mut() else {
            unreachable!("read just above")
        };
        let (mut report, repair) = match entity {
            Entity::Stock => stock::compare_levels(export, shop, truth).await?,
            Entity::Price => price::compare(export, shop, truth).await?,
        };
        let known: std::collections::HashSet<&str> = truth
            .iter()
            .map(|r| r.key.split('/').next().unwrap_or(&r.key))
            .collect();
        report.missing_in_erp = export
            .skus()
            .filter(|sku| !known.contains(sku))
            .map(str::to_owned)
            .collect();
        report.missing_in_erp.sort();
        return Ok((report, repair));
    }
    let woo = || woo_client(shop, budget_share);
    match (entity, shop.platform) {
        (Entity::Stock, Platform::Shopify) => {
            let mut platform = ShopifyInventory {
                catalog: shopify()?,
            };
            stock::compare_levels(&mut platform, shop, truth).await
        }
        (Entity::Stock, Platform::Woocommerce) => {
            if state.is_none() {
                let db = StateDb::connect(config).await.map_err(|e| err(e.into()))?;
                *state = Some(db);
            }
            let Some(state) = state.as_mut() else {
                unreachable!("connected just above")
            };
            stock::compare_counts(&mut woo()?, state, shop, truth).await
        }
        (Entity::Price, Platform::Shopify) => {
            let mut platform = ShopifyPrices {
                catalog: shopify()?,
            };
            price::compare(&mut platform, shop, truth).await
        }
        (Entity::Price, Platform::Woocommerce) => price::compare(&mut woo()?, shop, truth).await,
    }
}

fn decode_all(entity: &str, records: &[OutRecord]) -> Result<Vec<TruthRecord>, ReconcileError> {
    let undecodable = |reason: String| ReconcileError::Undecodable {
        entity: entity.to_owned(),
        reason,
    };
    records
        .iter()
        .enumerate()
        .map(|(index, r)| {
            let codec = AvroCodec::for_topic(r.topic).map_err(|e| undecodable(e.to_string()))?;
            let value = codec
                .decode(&r.payload)
                .map_err(|e| undecodable(e.to_string()))?;
            Ok(TruthRecord {
                index,
                key: r.key.clone(),
                value,
            })
        })
        .collect()
}

/// 0 in sync, 1 drift, as `flywheel reconcile` exits (2, could not
/// compare, is an error).
pub fn exit_status(reports: &[EntityReport]) -> u8 {
    if reports.iter().all(EntityReport::is_in_sync) {
        0
    } else {
        1
    }
}

/// A summary line per shop and entity, then each drifted and missing key.
pub fn render_table(reports: &[EntityReport]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:>9} {:>9} {:>8} {:>8} {:>10} {:>9}",
        "shop", "entity", "compared", "in sync", "drifted", "missing", "not in ERP", "repaired"
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:>9} {:>9} {:>8} {:>8} {:>10} {:>9}",
            r.shop,
            r.entity,
            r.compared,
            r.in_sync,
            r.drifted.len(),
            r.missing_in_shop.len(),
            r.missing_in_erp.len(),
            r.repaired
        );
    }
    for r in reports {
        for d in &r.drifted {
            let _ = writeln!(
                out,
                "drifted  {} {} {}: ERP {} / shop {}",
                r.shop, r.entity, d.key, d.erp, d.shop
            );
        }
        for key in &r.missing_in_shop {
            let _ = writeln!(
                out,
                "missing  {} {} {key}: not in the shop",
                r.shop, r.entity
            );
        }
        for key in &r.missing_in_erp {
            let _ = writeln!(
                out,
                "missing  {} {} {key}: not in the ERP",
                r.shop, r.entity
            );
        }
    }
    out
}
