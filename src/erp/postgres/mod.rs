//! The PostgreSQL source: a walsender client (`replication`), our pgoutput
//! decoder (`pgoutput`), committed transactions of touched trigger rows
//! (`capture`), slot and start-up checks (`slot`), the connector's SQL
//! (`queries`), the wait for commits to become visible (`visibility`), and the
//! source loop with its initial snapshot (`source`). What every ERP source
//! shares — connectors, entity models, the pipeline, metrics — is in the
//! parent module; this module's errors are classed here.

pub mod capture;
pub mod lsn;
pub mod pgoutput;
pub mod queries;
pub mod replication;
pub mod slot;
pub mod source;
pub mod visibility;

use capture::CaptureError;
use lsn::Lsn;
use pgoutput::DecodeError;
use replication::ReplicationError;
use slot::SetupError;

use super::source::SourceError;
use crate::pg::error::{self as pg_error, db_error_text};

impl From<Lsn> for super::position::Position {
    fn from(lsn: Lsn) -> Self {
        super::position::Position(lsn.0)
    }
}

/// What can stop the PostgreSQL source, beside what every source shares.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("ERP database setup: {0}")]
    Setup(#[from] SetupError),
    #[error("ERP database: {}", db_error_text(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("replication stream: {0}")]
    Replication(#[from] ReplicationError),
    #[error("malformed pgoutput message at LSN {lsn}: {source}")]
    Decode { lsn: Lsn, source: DecodeError },
    #[error("unexpected pgoutput message at LSN {lsn}: {source}")]
    Capture { lsn: Lsn, source: CaptureError },
}

impl PostgresError {
    pub fn is_retryable(&self) -> bool {
        match self {
            PostgresError::Setup(SetupError::Misconfigured { .. }) => false,
            // A slot held by a walsender that has not noticed its client died
            // is released by `wal_sender_timeout`; a failed check query is a
            // server away, or gives its reason on the next try.
            PostgresError::Setup(SetupError::SlotBusy { .. } | SetupError::Query(_)) => true,
            PostgresError::Db(e) => pg_error::is_retryable(e),
            PostgresError::Replication(e) => match e {
                ReplicationError::Auth(_) | ReplicationError::Tls { .. } => false,
                ReplicationError::Connect { .. }
                | ReplicationError::Io(_)
                | ReplicationError::Closed
                // Server errors on the replication connection are mostly its
                // shutdown or a slot in use; a lasting one repeats with its text.
                | ReplicationError::Server { .. }
                | ReplicationError::Protocol(_) => true,
            },
            // The same bytes would arrive again: a decoder bug, not a hiccup.
            PostgresError::Decode { .. } | PostgresError::Capture { .. } => false,
        }
    }
}

impl From<tokio_postgres::Error> for SourceError {
    fn from(e: tokio_postgres::Error) -> Self {
        SourceError::Postgres(e.into())
    }
}

impl From<SetupError> for SourceError {
    fn from(e: SetupError) -> Self {
        SourceError::Postgres(e.into())
    }
}

impl From<ReplicationError> for SourceError {
    fn from(e: ReplicationError) -> Self {
        SourceError::Postgres(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::erp::entity_model::ModelError;

    #[test]
    fn a_malformed_message_names_its_lsn() {
        let source = pgoutput::decode(&bytes::Bytes::from_static(b"Z")).unwrap_err();
        let e = SourceError::from(PostgresError::Decode {
            lsn: Lsn(0x16_B374_D848),
            source,
        });
        let text = e.to_string();
        assert!(text.contains("at LSN 16/B374D848"), "{text}");
        assert!(text.contains("unknown message type 'Z'"), "{text}");
        assert!(!e.is_retryable());
    }

    #[test]
    fn operator_problems_are_final_and_outages_are_retried() {
        let misconfigured = SourceError::from(SetupError::Misconfigured {
            problem: "p".into(),
            fix: "f".into(),
        });
        assert!(!misconfigured.is_retryable());
        let busy = SourceError::from(SetupError::SlotBusy {
            problem: "p".into(),
            fix: "f".into(),
        });
        assert!(busy.is_retryable());
        assert!(SourceError::from(ReplicationError::Closed).is_retryable());
        assert!(!SourceError::from(ReplicationError::Auth("no".into())).is_retryable());
        let schema = SourceError::Model(ModelError::Invalid {
            entity: "stock".into(),
            reason: "r".into(),
        });
        assert!(!schema.is_retryable());
    }
}
