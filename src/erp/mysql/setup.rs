//! Start-up checks that print the exact fix, Flywheel's own tables on the
//! ERP's server (the stored source position and the echo marks), and reading
//! and storing the position.

use std::collections::HashMap;

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::binlog_pos::BinlogPos;
use super::capture::ECHO_MARK_TABLE;
use crate::config::ErpConfig;
use crate::mysql::{error_text, is_retryable, quote_ident};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{problem}\n  fix: {fix}")]
    Misconfigured { problem: String, fix: String },
    #[error("checking the ERP database: {}", error_text(.0))]
    Query(#[from] mysql_async::Error),
}

impl SetupError {
    pub fn is_retryable(&self) -> bool {
        match self {
            SetupError::Misconfigured { .. } => false,
            SetupError::Query(e) => is_retryable(e),
        }
    }
}

fn misconfigured(problem: impl Into<String>, fix: impl Into<String>) -> SetupError {
    SetupError::Misconfigured {
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// A server privilege error as the grant that fixes it.
fn denied(e: mysql_async::Error, what: &str, grant: &str) -> SetupError {
    match &e {
        mysql_async::Error::Server(s) if [1044, 1045, 1142, 1227].contains(&s.code) => {
            misconfigured(
                format!("the ERP user may not {what}: {}", error_text(&e)),
                grant.to_owned(),
            )
        }
        _ => SetupError::Query(e),
    }
}

/// Checks the server's binlog settings, Flywheel's replica id and privileges,
/// and that every trigger table exists. Returns the column names of the
/// trigger tables (`database.table` → columns in order), for servers whose
/// binlog does not name columns.
pub async fn check_prerequisites(
    conn: &mut Conn,
    erp: &ErpConfig,
    trigger_tables: &[String],
) -> Result<HashMap<String, Vec<String>>, SetupError> {
    let settings: Option<(String, String, String, u32)> = conn
        .query_first("SELECT @@GLOBAL.log_bin, @@GLOBAL.binlog_format, @@GLOBAL.binlog_row_image, @@GLOBAL.server_id")
        .await?;
    let Some((log_bin, format, image, server_id)) = settings else {
        return Err(misconfigured(
            "the server reported no binlog settings",
            "check the server",
        ));
    };
    if log_bin != "1" && !log_bin.eq_ignore_ascii_case("ON") {
        return Err(misconfigured(
            "the server does not write a binary log (log_bin is OFF), so there is nothing to replicate",
            "start the server with log_bin (my.cnf: [mariadbd] log_bin = binlog, binlog_format = ROW, binlog_row_image = FULL) and restart it",
        ));
    }
    if !format.eq_ignore_ascii_case("ROW") {
        return Err(misconfigured(
            format!("binlog_format is {format}: only row-based events carry the changed rows"),
            "SET GLOBAL binlog_format = 'ROW'; and binlog_format = ROW in my.cnf so it survives a restart (sessions already open keep their format until they reconnect)",
        ));
    }
    if !image.eq_ignore_ascii_case("FULL") {
        return Err(misconfigured(
            format!("binlog_row_image is {image}: rows events would lack the trigger columns"),
            "SET GLOBAL binlog_row_image = 'FULL'; and binlog_row_image = FULL in my.cnf",
        ));
    }
    if server_id == 0 {
        return Err(misconfigured(
            "the server's server_id is 0, and such a server refuses replicas",
            "SET GLOBAL server_id = 1; (any id unique among your servers) and server_id in my.cnf",
        ));
    }
    if server_id == erp.server_id {
        return Err(misconfigured(
            format!("erp.server_id {} is the server's own id", erp.server_id),
            "set erp.server_id (FLYWHEEL_ERP__SERVER_ID) to an id no server or other replica uses",
        ));
    }
    let _: Vec<mysql_async::Row> = conn.query("SHOW MASTER STATUS").await.map_err(|e| {
        denied(
            e,
            "read the binlog position",
            "GRANT REPLICATION CLIENT ON *.* TO <the erp.dsn user>; (MariaDB 10.5+: BINLOG MONITOR), and REPLICATION SLAVE for the stream",
        )
    })?;

    let mut columns: HashMap<String, Vec<String>> = HashMap::new();
    for table in trigger_tables {
        let (db, name) = table.split_once('.').unwrap_or(("", table));
        let cols: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (db, name),
            )
            .await?;
        if cols.is_empty() {
            return Err(misconfigured(
                format!(
                    "the connector's trigger table `{table}` does not exist (or the ERP user may not see it)"
                ),
                format!(
                    "point erp.dsn at the ERP database, fix the table name in the connector file, or GRANT SELECT ON `{db}`.* TO <the erp.dsn user>"
                ),
            ));
        }
        columns.insert(table.clone(), cols);
    }
    Ok(columns)
}

/// Creates Flywheel's database and tables on the ERP's server when missing.
pub async fn ensure_state_tables(conn: &mut Conn, state_db: &str) -> Result<(), SetupError> {
    let db = quote_ident(state_db);
    let grant = format!(
        "CREATE DATABASE {db}; GRANT ALL ON {db}.* TO <the erp.dsn user>; (or set erp.state_database to a database the user owns)"
    );
    for sql in [
        format!("CREATE DATABASE IF NOT EXISTS {db}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.source_state (\
               name VARCHAR(64) PRIMARY KEY, \
               binlog_file VARCHAR(255) NOT NULL, \
               binlog_pos BIGINT UNSIGNED NOT NULL, \
               updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)\
             ) ENGINE=InnoDB"
        ),
        // Flywheel's own ERP writes insert and delete a row here in their
        // transaction: the binlog shows the mark, the table stays empty.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{ECHO_MARK_TABLE} (\
               id BIGINT AUTO_INCREMENT PRIMARY KEY, \
               origin VARCHAR(64) NOT NULL\
             ) ENGINE=InnoDB"
        ),
    ] {
        conn.query_drop(&sql)
            .await
            .map_err(|e| denied(e, "create Flywheel's state tables", &grant))?;
    }
    Ok(())
}

/// The position the source stopped at, stored once its initial snapshot was
/// complete; `None` before that.
pub async fn stored_position(
    conn: &mut Conn,
    state_db: &str,
    name: &str,
) -> Result<Option<BinlogPos>, SetupError> {
    let row: Option<(String, u64)> = conn
        .exec_first(
            format!(
                "SELECT binlog_file, binlog_pos FROM {}.source_state WHERE name = ?",
                quote_ident(state_db)
            ),
            (name,),
        )
        .await?;
    Ok(row.map(|(file, pos)| BinlogPos::new(file, pos)))
}

pub async fn store_position(
    conn: &mut Conn,
    state_db: &str,
    name: &str,
    at: &BinlogPos,
) -> Result<(), mysql_async::Error> {
    conn.exec_drop(
        format!(
            "REPLACE INTO {}.source_state (name, binlog_file, binlog_pos) VALUES (?, ?, ?)",
            quote_ident(state_db)
        ),
        (name, &at.file, at.pos),
    )
    .await
}

/// The server's binlog files and their sizes, oldest first.
pub async fn binary_logs(conn: &mut Conn) -> Result<Vec<(String, u64)>, mysql_async::Error> {
    let rows: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOGS").await?;
    Ok(rows
        .into_iter()
        .filter_map(|mut r| Some((r.take::<String, _>(0)?, r.take::<u64, _>(1)?)))
        .collect())
}

/// Refuses to resume from a binlog file the server no longer has: the
/// changes in it are lost to replication, and skipping them silently would
/// leave the shops wrong.
pub async fn check_position_present(
    conn: &mut Conn,
    state_db: &str,
    name: &str,
    at: &BinlogPos,
) -> Result<(), SetupError> {
    let logs = binary_logs(conn).await?;
    if logs.iter().any(|(f, _)| *f == at.file) {
        return Ok(());
    }
    Err(misconfigured(
        format!(
            "the source stopped at {at}, but the server no longer has binlog file {} (purged; oldest now {}): changes since then cannot be replayed",
            at.file,
            logs.first().map_or("none", |(f, _)| f.as_str())
        ),
        format!(
            "re-snapshot: DELETE FROM {}.source_state WHERE name = '{name}'; then restart the source (it re-reads every key); and keep binlogs longer (binlog_expire_logs_seconds)",
            quote_ident(state_db)
        ),
    ))
}

/// Bytes of binlog written after `at`.
pub fn bytes_after(logs: &[(String, u64)], at: &BinlogPos) -> u64 {
    let mut after = false;
    let mut total = 0u64;
    for (file, size) in logs {
        if after {
            total += size;
        } else if *file == at.file {
            after = true;
            total += size.saturating_sub(at.pos);
        }
    }
    total
}

/// A MariaDB/MySQL identifier in backquotes.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_the_rest_of_the_file_and_every_later_one() {
        let logs = vec![
            ("b.000001".to_owned(), 1000),
            ("b.000002".to_owned(), 500),
            ("b.000003".to_owned(), 300),
        ];
        assert_eq!(
            bytes_after(&logs, &BinlogPos::new("b.000002", 200)),
            300 + 300
        );
        assert_eq!(bytes_after(&logs, &BinlogPos::new("b.000003", 300)), 0);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("fly`wheel"), "`fly``wheel`");
    }
}
