//! The long-lived roles of the binary, alone or several in one process
//! (`flywheel run --roles …`, `flywheel demo`). Each role is a worker that
//! restarts itself after transient failures; the first role to fail for good
//! stops the others, and a shutdown signal stops them all cleanly.

use std::net::SocketAddr;

use anyhow::Context;
use clap::ValueEnum;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use flywheel::config::Config;
use flywheel::ops;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// ERP logical replication → entity events in Kafka.
    Source,
    /// Shop webhooks → Kafka, acknowledged once durable.
    Gateway,
    /// Kafka → the shop (stock, prices, order status) and the ERP (orders).
    Processors,
}

pub const ALL: [Role; 3] = [Role::Source, Role::Gateway, Role::Processors];

/// What the started roles expose.
pub struct Started {
    pub gateway: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    tasks: JoinSet<anyhow::Result<()>>,
    expected: usize,
}

impl Started {
    /// Waits until every role has stopped; the first failure cancels the rest.
    pub async fn wait(mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut outcome = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            let r = joined.context("a role panicked").and_then(|r| r);
            if let Err(e) = r {
                if outcome.is_ok() {
                    outcome = Err(e);
                }
                shutdown.cancel();
            }
        }
        outcome
    }

    /// True while every role is still running.
    pub fn all_running(&self) -> bool {
        self.tasks.len() == self.expected
    }
}

/// Starts `roles` until `shutdown`. `/metrics`, `/healthz` and `/readyz` are
/// served on `metrics.listen` (and beside the webhooks when the gateway runs).
pub async fn start(
    config: &Config,
    roles: &[Role],
    shutdown: &CancellationToken,
) -> anyhow::Result<Started> {
    let readiness = ops::http::Readiness::default();
    let metrics = match config.metrics.addr()? {
        Some(addr) => Some(
            ops::http::serve(addr, readiness.clone(), shutdown.clone())
                .await
                .with_context(|| {
                    format!("serving /metrics on {addr} (set metrics.listen to change it)")
                })?,
        ),
        None => None,
    };
    let mut tasks = JoinSet::new();
    let mut gateway = None;
    for role in roles {
        let config = config.clone();
        let token = shutdown.clone();
        match role {
            Role::Source => {
                readiness.require(|| {
                    flywheel::erp::source_metrics::SourceMetrics::get()
                        .streaming
                        .get()
                        == 1
                });
                tasks.spawn(async move {
                    flywheel::erp::source::run_with_retries(&config, token)
                        .await
                        .context("source")
                });
            }
            Role::Gateway => {
                let running =
                    flywheel::shop::gateway::start(&config, ops::http::metrics_router(), token)
                        .await
                        .context("gateway")?;
                gateway = Some(running.addr);
                tasks.spawn(async move { running.done.await.context("gateway") });
            }
            Role::Processors => {
                use flywheel::sync::{
                    orders_to_erp, price_to_shop, shop_inventory, status_to_shop, stock_to_shop,
                };
                readiness.require(|| {
                    flywheel::sync::CONSUMED.iter().all(|(entity, _)| {
                        flywheel::sync::apply_loop::is_running(entity)
                            && !flywheel::sync::apply_loop::is_stalled(entity)
                    })
                });
                tokio::spawn(flywheel::ops::lag::export(
                    config.clone(),
                    std::time::Duration::from_secs(15),
                    token.clone(),
                ));
                tasks.spawn(async move {
                    tokio::try_join!(
                        stock_to_shop::run(&config, token.clone()),
                        price_to_shop::run(&config, token.clone()),
                        status_to_shop::run(&config, token.clone()),
                        orders_to_erp::run(&config, token.clone()),
                        shop_inventory::run(&config, token),
                    )
                    .context("processors")?;
                    Ok(())
                });
            }
        }
    }
    readiness.set(true);
    Ok(Started {
        gateway,
        metrics,
        expected: tasks.len(),
        tasks,
    })
}
