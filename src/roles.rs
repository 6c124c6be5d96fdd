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

/// A shop's processors that end for good (refused credentials, an untrusted
/// certificate, a setting that cannot work) stop that shop only: the error is
/// logged with the shop, its processors stay down (not ready, alerting), and
/// the other shops go on until shutdown.
async fn this_shop_only<T>(
    shop: &str,
    shutdown: &CancellationToken,
    ended: anyhow::Result<T>,
) -> anyhow::Result<()> {
    if let Err(e) = ended {
        tracing::error!(
            shop,
            error = format!("{e:#}"),
            "this shop's processors stopped for good; the other shops go on: fix what the error names, then restart"
        );
        shutdown.cancelled().await;
    }
    Ok(())
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
    ops::memory::spawn_trim(shutdown.clone());
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
                use flywheel::shop::order_poll;
                use flywheel::sync::{
                    lanes, orders_to_erp, price_to_shop, shop_catalog, shop_inventory,
                    status_to_shop, stock_to_shop,
                };
                let all = lanes(&config);
                readiness.require(move || {
                    all.iter().all(|lane| {
                        flywheel::sync::apply_loop::is_running(lane)
                            && !flywheel::sync::apply_loop::is_stalled(lane)
                    })
                });
                tokio::spawn(flywheel::ops::lag::export(
                    config.clone(),
                    std::time::Duration::from_secs(15),
                    token.clone(),
                ));
                for shop in config.shops.clone() {
                    let (config, token) = (config.clone(), token.clone());
                    tokio::spawn(async move {
                        flywheel::reconcile::continuous::run(&config, &shop, token).await
                    });
                }
                // Each shop's processors run on their own: a shop that is
                // throttled, down or misconfigured never holds another back.
                for shop in config.shops.clone() {
                    let (config, token) = (config.clone(), token.clone());
                    match shop.platform {
                        flywheel::config::Platform::Shopify => {
                            tasks.spawn(async move {
                                let sync = async {
                                    tokio::try_join!(
                                        stock_to_shop::run(&config, &shop, token.clone()),
                                        price_to_shop::run(&config, &shop, token.clone()),
                                        status_to_shop::run(&config, &shop, token.clone()),
                                        shop_inventory::run(&config, &shop, token.clone()),
                                        shop_catalog::run(&config, &shop, token.clone()),
                                    )
                                    .map_err(anyhow::Error::from)
                                };
                                let poll = async {
                                    order_poll::run_supervised(&config, &shop, token.clone()).await;
                                    Ok(())
                                };
                                let ended = tokio::try_join!(sync, poll)
                                    .with_context(|| format!("processors of shop `{}`", shop.name));
                                this_shop_only(&shop.name, &token, ended).await
                            });
                        }
                        flywheel::config::Platform::Woocommerce if shop.admin_url.is_empty() => {
                            tracing::info!(shop = %shop.name, "no admin_url: only this shop's webhooks are taken");
                        }
                        flywheel::config::Platform::Woocommerce => {
                            tasks.spawn(async move {
                                let poll =
                                    order_poll::run_supervised(&config, &shop, token.clone());
                                let stock = async {
                                    stock_to_shop::run(&config, &shop, token.clone())
                                        .await
                                        .map_err(anyhow::Error::from)
                                };
                                let prices = async {
                                    price_to_shop::run(&config, &shop, token.clone())
                                        .await
                                        .map_err(anyhow::Error::from)
                                };
                                let status = async {
                                    status_to_shop::run(&config, &shop, token.clone())
                                        .await
                                        .map_err(anyhow::Error::from)
                                };
                                let ended = tokio::try_join!(stock, prices, status, async {
                                    poll.await;
                                    Ok(())
                                })
                                .with_context(|| format!("processors of shop `{}`", shop.name));
                                this_shop_only(&shop.name, &token, ended).await
                            });
                        }
                    }
                }
                tasks.spawn(async move {
                    orders_to_erp::run(&config, token)
                        .await
                        .context("processors: orders into the ERP")
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
