//! Everything about the replication slot and publication that must hold before
//! streaming: server settings, privileges, replica identities, the publication,
//! the slot's health, and whether its initial snapshot completed.
//!
//! Every check that fails says what the operator must change.

use tokio_postgres::Client;

use super::lsn::Lsn;
use super::replication::quote_ident;
use crate::pg::error::db_error_text;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{problem}\n  fix: {fix}")]
    Misconfigured { problem: String, fix: String },
    /// The slot is held by another connection: after a crash its walsender may
    /// hold it until `wal_sender_timeout`, so this is worth waiting out.
    #[error("{problem}\n  fix: {fix}")]
    SlotBusy { problem: String, fix: String },
    #[error("checking the ERP database failed: {0}")]
    Query(String),
}

impl From<tokio_postgres::Error> for SetupError {
    fn from(e: tokio_postgres::Error) -> Self {
        SetupError::Query(db_error_text(&e))
    }
}

fn misconfigured(problem: impl Into<String>, fix: impl Into<String>) -> SetupError {
    SetupError::Misconfigured {
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Server and role prerequisites for logical replication of `tables`.
pub async fn check_prerequisites(
    client: &Client,
    tables: &[(String, Vec<String>)],
) -> Result<(), SetupError> {
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
    if wal_level != "logical" {
        return Err(misconfigured(
            format!("wal_level is `{wal_level}`, logical replication needs `logical`"),
            "run `ALTER SYSTEM SET wal_level = logical;` as a superuser and restart PostgreSQL",
        ));
    }
    let row = client
        .query_one(
            "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let (user, can_replicate): (String, bool) = (row.get(0), row.get(1));
    if !can_replicate {
        return Err(misconfigured(
            format!("role `{user}` may not start replication"),
            format!(
                "run `ALTER ROLE {} WITH REPLICATION;` as a superuser",
                quote_ident(&user)
            ),
        ));
    }
    for (table, columns) in tables {
        let row = client
            .query_opt(
                "SELECT c.relreplident::text, has_table_privilege(c.oid, 'SELECT'),
                        ARRAY(SELECT a.attname::text FROM pg_index i
                              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                              WHERE i.indrelid = c.oid
                                AND ((c.relreplident = 'd' AND i.indisprimary)
                                  OR (c.relreplident = 'i' AND i.indisreplident)))
                 FROM pg_class c WHERE c.oid = to_regclass($1)",
                &[table],
            )
            .await?
            .ok_or_else(|| {
                misconfigured(
                    format!("the connector is triggered by table `{table}`, which does not exist"),
                    "point erp.dsn at the ERP database, or fix the table name in the connector file",
                )
            })?;
        let (identity, can_select, identity_columns): (String, bool, Vec<String>) =
            (row.get(0), row.get(1), row.get(2));
        if !can_select {
            return Err(misconfigured(
                format!("role `{user}` may not read `{table}`"),
                format!("run `GRANT SELECT ON {table} TO {};`", quote_ident(&user)),
            ));
        }
        let covered = identity == "f" || columns.iter().all(|c| identity_columns.contains(c));
        if !covered {
            return Err(misconfigured(
                format!(
                    "deletes on `{table}` would not carry the columns the connector needs ({}); \
                     its replica identity only has [{}]",
                    columns.join(", "),
                    identity_columns.join(", ")
                ),
                format!("run `ALTER TABLE {table} REPLICA IDENTITY FULL;`"),
            ));
        }
    }
    Ok(())
}

/// Creates the publication over `tables`, or adds the tables it lacks.
pub async fn ensure_publication(
    client: &Client,
    name: &str,
    tables: &[String],
) -> Result<(), SetupError> {
    let exists = client
        .query_opt(
            "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await?;
    let list = tables.join(", ");
    match exists {
        None => {
            let sql = format!("CREATE PUBLICATION {} FOR TABLE {list}", quote_ident(name));
            client.batch_execute(&sql).await.map_err(|e| {
                misconfigured(
                    format!("cannot create publication `{name}`: {}", db_error_text(&e)),
                    format!("run `{sql};` as the tables' owner or a superuser"),
                )
            })?;
            tracing::info!(publication = name, tables = %list, "created publication");
        }
        Some(row) => {
            let all_ops: bool = row.get(0);
            if !all_ops {
                return Err(misconfigured(
                    format!("publication `{name}` does not publish every operation"),
                    format!(
                        "run `ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate');`",
                        quote_ident(name)
                    ),
                ));
            }
            let published: Vec<String> = client
                .query(
                    "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1",
                    &[&name],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let missing: Vec<&String> = tables.iter().filter(|t| !published.contains(t)).collect();
            if !missing.is_empty() {
                let add = missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!("ALTER PUBLICATION {} ADD TABLE {add}", quote_ident(name));
                client.batch_execute(&sql).await.map_err(|e| {
                    misconfigured(
                        format!("publication `{name}` lacks {add}: {}", db_error_text(&e)),
                        format!("run `{sql};` as the publication's owner"),
                    )
                })?;
                tracing::info!(publication = name, tables = %add, "added tables to publication");
            }
        }
    }
    Ok(())
}

/// What to do with the slot at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// No slot: create it and take the initial snapshot.
    Missing,
    /// The slot exists and its snapshot completed: stream from `confirmed_flush`.
    Ready { confirmed_flush: Lsn },
    /// The slot exists but its snapshot never completed (a crash mid-snapshot):
    /// drop it and start over, so no key is left out.
    SnapshotIncomplete,
}

const STATE_DDL: &str = "CREATE SCHEMA IF NOT EXISTS flywheel;
     CREATE TABLE IF NOT EXISTS flywheel.source_snapshot (
       slot_name    text PRIMARY KEY,
       snapshot_lsn pg_lsn NOT NULL,
       completed_at timestamptz NOT NULL DEFAULT now())";

/// Inspects the slot: exists, healthy, ours, not in use, snapshot done.
pub async fn inspect_slot(client: &Client, slot: &str) -> Result<SlotState, SetupError> {
    crate::pg::own_schema::create_tables(client, STATE_DDL).await.map_err(|e| {
        misconfigured(
            format!(
                "cannot create Flywheel's bookkeeping schema `flywheel`: {}",
                db_error_text(&e)
            ),
            "grant CREATE on the database to Flywheel's role (`GRANT CREATE ON DATABASE … TO …;`)",
        )
    })?;
    let row = client
        .query_opt(
            "SELECT plugin::text, database::text = current_database(), active, active_pid,
                    coalesce(wal_status, ''), confirmed_flush_lsn::text
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    let Some(row) = row else {
        return Ok(SlotState::Missing);
    };
    let (plugin, same_db, active, pid, wal_status, flush): (
        Option<String>,
        Option<bool>,
        bool,
        Option<i32>,
        String,
        Option<String>,
    ) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    let drop_sql = format!("SELECT pg_drop_replication_slot('{slot}');");
    if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
        return Err(misconfigured(
            format!(
                "slot `{slot}` exists but is not a pgoutput slot of this database (plugin {plugin:?})"
            ),
            format!("choose another erp.slot, or drop it with `{drop_sql}`"),
        ));
    }
    if active {
        return Err(SetupError::SlotBusy {
            problem: format!(
                "slot `{slot}` is in use by backend pid {}: another source is streaming from it \
                 (or a crashed one's connection has not timed out yet)",
                pid.unwrap_or(0)
            ),
            fix: "stop the other `flywheel source`, or give this one its own erp.slot".into(),
        });
    }
    if wal_status == "lost" {
        return Err(misconfigured(
            format!("slot `{slot}` lost WAL it still needed (max_slot_wal_keep_size was exceeded)"),
            format!(
                "changes were missed: drop the slot with `{drop_sql}`; the next start takes a fresh snapshot"
            ),
        ));
    }
    let done = client
        .query_opt(
            "SELECT 1 FROM flywheel.source_snapshot WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .is_some();
    if !done {
        return Ok(SlotState::SnapshotIncomplete);
    }
    let confirmed_flush = flush
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| SetupError::Query(format!("slot `{slot}` has no confirmed_flush_lsn")))?;
    Ok(SlotState::Ready { confirmed_flush })
}

pub async fn drop_slot(client: &Client, slot: &str) -> Result<(), SetupError> {
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await?;
    client
        .execute(
            "DELETE FROM flywheel.source_snapshot WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(())
}

pub async fn mark_snapshot_done(client: &Client, slot: &str, lsn: Lsn) -> Result<(), SetupError> {
    client
        .execute(
            "INSERT INTO flywheel.source_snapshot (slot_name, snapshot_lsn) VALUES ($1, $2::text::pg_lsn)
             ON CONFLICT (slot_name) DO UPDATE SET snapshot_lsn = excluded.snapshot_lsn, completed_at = now()",
            &[&slot, &lsn.to_string()],
        )
        .await?;
    Ok(())
}

/// Bytes of WAL the slot holds back (server WAL position − confirmed flush).
pub async fn slot_lag_bytes(
    client: &Client,
    slot: &str,
) -> Result<Option<i64>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .and_then(|r| r.get(0)))
}

/// Writes a non-transactional logical message. It flows through the slot even
/// when no published table changes, so the source can confirm and the slot
/// advances instead of pinning WAL.
pub async fn emit_heartbeat(client: &Client) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_logical_emit_message(false, 'flywheel.heartbeat', now()::text)",
            &[],
        )
        .await
        .map(|_| ())
}
