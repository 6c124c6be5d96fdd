//! `flywheel source`: the ERP source for the configured database kind
//! (`erp.kind`: `erp::postgres` or `erp::mysql`), and the errors every source shares. Errors of one
//! database kind live in its folder and are classed retryable or final there.

use tokio_util::sync::CancellationToken;

use super::connector::ConnectorError;
use super::entity_model::ModelError;
use super::mysql::MysqlError;
use super::postgres::PostgresError;
use crate::bus::BusError;
use crate::config::{Config, ConfigError, ErpKind};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    #[error("ERP entity model: {0}")]
    Model(#[from] ModelError),
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error(transparent)]
    Mysql(#[from] MysqlError),
    #[error("Kafka: {0}")]
    Bus(#[from] BusError),
    #[error("the {0} task stopped unexpectedly")]
    TaskGone(&'static str),
}

impl SourceError {
    /// Whether trying again later can help (a server away, a slot briefly in
    /// use), as opposed to something an operator must fix first.
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Config(_) | SourceError::Connector(_) => false,
            SourceError::Model(ModelError::Invalid { .. }) => false,
            SourceError::Model(
                ModelError::Query { retryable, .. } | ModelError::Visibility { retryable, .. },
            ) => *retryable,
            SourceError::Postgres(e) => e.is_retryable(),
            SourceError::Mysql(e) => e.is_retryable(),
            SourceError::Bus(e) => e.is_retryable(),
            // A task gone is a symptom; its own error was reported first.
            SourceError::TaskGone(_) => true,
        }
    }
}

/// Runs the source until `shutdown` is cancelled or an error occurs.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), SourceError> {
    match config.erp.kind() {
        ErpKind::Postgres => super::postgres::source::run(config, shutdown).await,
        ErpKind::Mysql => super::mysql::source::run(config, shutdown).await,
    }
}

/// The ERP's truth for the entities `wanted` names (all when empty): every
/// key's event (or only the Kafka key `only`'s) at one consistent stream
/// position (`erp::snapshot::ErpTruth`).
pub async fn read_truth(
    config: &Config,
    wanted: &[&str],
    only: Option<&str>,
) -> Result<super::snapshot::ErpTruth, SourceError> {
    match config.erp.kind() {
        ErpKind::Postgres => super::postgres::source::read_truth(config, wanted, only).await,
        ErpKind::Mysql => super::mysql::source::read_truth(config, wanted, only).await,
    }
}

/// Runs the source as a long-lived worker (see [`crate::supervise`]): transient
/// failures restart it from its stored position.
pub async fn run_with_retries(
    config: &Config,
    shutdown: CancellationToken,
) -> Result<(), SourceError> {
    crate::supervise::with_restarts("source", &shutdown, SourceError::is_retryable, || {
        run(config, shutdown.clone())
    })
    .await
}
