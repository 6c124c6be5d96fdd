//! Continuous reconciliation in the processors role: every
//! `reconcile.interval_secs`, each shop is compared with the ERP using at most
//! `reconcile.budget_share` of its API budget, the drift is exported as
//! `flywheel_drift_keys{shop,entity}` and logged per key (never per value),
//! and with `reconcile.auto_repair` repaired through the processors.
//!
//! Among several workers, one compares each shop: the holder of a lease in
//! the state database (`sync::partition_leases`, one "partition" per shop),
//! which passes to another worker the moment its holder dies.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{GaugeVec, IntGaugeVec, Opts, register_gauge_vec, register_int_gauge_vec};
use tokio_util::sync::CancellationToken;

use super::{Entity, ReconcileError, Request, reconcile};
use crate::config::{Config, ShopConfig};
use crate::sync::apply_loop::SyncError;
use crate::sync::partition_leases::PartitionLeases;
use crate::sync::state::StateDb;

struct Metrics {
    drift: IntGaugeVec,
    last_success: GaugeVec,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics {
        drift: register_int_gauge_vec!(
            Opts::new(
                "flywheel_drift_keys",
                "Keys whose shop value differs from the ERP's (or the shop lacks) at the last reconciliation"
            ),
            &["shop", "entity"]
        )
        .expect("registering flywheel_drift_keys"),
        last_success: register_gauge_vec!(
            Opts::new(
                "flywheel_reconcile_last_success_timestamp_seconds",
                "When the last reconciliation of a shop completed (Unix seconds)"
            ),
            &["shop"]
        )
        .expect("registering flywheel_reconcile_last_success_timestamp_seconds"),
    })
}

/// Reconciles `shop` every `reconcile.interval_secs` until `shutdown`, while
/// this worker holds the shop's reconciliation lease. Failures are logged
/// and retried at the next interval: reconciliation is a net, never a reason
/// to stop the processors.
pub async fn run(config: &Config, shop: &ShopConfig, shutdown: CancellationToken) {
    let every = Duration::from_secs(config.reconcile.interval_secs);
    if every.is_zero() || shop.admin_url.is_empty() {
        return;
    }
    // Exported from the start, so an alert on its age sees a shop never reconciled.
    metrics().last_success.with_label_values(&[&shop.name]);
    let mut lease: Option<PartitionLeases> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match holds_lease(config, shop, &mut lease).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(shop = %shop.name, error = %e, "reconciliation lease unavailable; trying at the next interval");
                lease = None;
                continue;
            }
        }
        let request = Request {
            shop: Some(shop.name.clone()),
            entities: Entity::ALL.to_vec(),
            repair: config.reconcile.auto_repair,
            budget_share: config.reconcile.budget_share,
            // The processors' order poll is the continuous net for orders.
            orders_lookback: None,
        };
        let done = tokio::select! {
            () = shutdown.cancelled() => return,
            done = reconcile(config, &request) => done,
        };
        match done {
            Ok(reports) => {
                for r in &reports {
                    let drift = r.drifted.len() + r.missing_in_shop.len() + r.missing_in_erp.len();
                    metrics()
                        .drift
                        .with_label_values(&[&r.shop, &r.entity])
                        .set(drift as i64);
                    for d in &r.drifted {
                        tracing::warn!(shop = %r.shop, entity = %r.entity, key = %d.key, repaired = config.reconcile.auto_repair, "drift: the shop differs from the ERP");
                    }
                    for key in &r.missing_in_shop {
                        tracing::warn!(shop = %r.shop, entity = %r.entity, %key, "drift: the shop lacks this key");
                    }
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                metrics()
                    .last_success
                    .with_label_values(&[&shop.name])
                    .set(now.as_secs_f64());
                tracing::info!(shop = %shop.name, drifted = reports.iter().map(|r| r.drifted.len()).sum::<usize>(), "reconciled");
            }
            Err(e) => log_failure(shop, &e),
        }
    }
}

fn log_failure(shop: &ShopConfig, e: &ReconcileError) {
    if e.is_retryable() {
        tracing::warn!(shop = %shop.name, error = %e, "reconciliation failed; trying at the next interval");
    } else {
        tracing::error!(shop = %shop.name, error = %e, "reconciliation cannot run until this is fixed; trying at the next interval");
    }
}

/// Whether this worker is the one reconciling `shop` (taking the lease when free).
async fn holds_lease(
    config: &Config,
    shop: &ShopConfig,
    lease: &mut Option<PartitionLeases>,
) -> Result<bool, SyncError> {
    if lease.is_none() {
        let session = StateDb::connect(config).await?;
        let group =
            crate::bus::group::group_name(&config.processors, &format!("reconcile.{}", shop.name));
        let worker = config.processors.instance();
        *lease = Some(PartitionLeases::join(session, &group, 1, &worker).await?);
    }
    let Some(lease) = lease.as_mut() else {
        return Ok(false);
    };
    lease.rebalance(|_| Ok::<(), SyncError>(())).await?;
    Ok(lease.held().contains(&0))
}
