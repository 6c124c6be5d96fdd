//! Flywheel's bookkeeping schema `flywheel`, in the ERP database (the source's
//! snapshot marker) and in the state database (applied versions, levels
//! written) — often the same database.

use tokio_postgres::Client;

/// Serialises the creation of Flywheel's tables in one database.
const DDL_LOCK: i64 = 0x666c_7977_6865_656c; // "flywheel"

/// Creates (or migrates) tables of the `flywheel` schema. Roles start
/// together, and concurrent `CREATE … IF NOT EXISTS` is not atomic in
/// PostgreSQL (the loser fails on a catalogue unique index), so creation is
/// serialised by an advisory lock. The lock is a session lock taken before
/// the DDL's transaction: a transaction that began before the other creator
/// committed may not see its catalogue rows and fail the same way. The
/// "already exists, skipping" notices of every start after the first are not
/// logged.
pub async fn create_tables(client: &Client, ddl: &str) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!("SELECT pg_advisory_lock({DDL_LOCK})"))
        .await?;
    let r = client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL client_min_messages = warning; {ddl}; COMMIT"
        ))
        .await;
    if r.is_err() {
        // Leave the session usable; the error is what matters.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    let unlocked = client
        .batch_execute(&format!("SELECT pg_advisory_unlock({DDL_LOCK})"))
        .await;
    r.and(unlocked)
}
