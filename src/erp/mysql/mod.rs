//! The MariaDB/MySQL source: binlog coordinates (`binlog_pos`), committed
//! transactions of touched trigger rows from row-based binlog events
//! (`capture`), the connector's SQL (`queries`), start-up checks and Flywheel's
//! own state on the server (`setup`), and the source loop with its initial
//! snapshot (`source`). The binlog stream itself (COM_BINLOG_DUMP and event
//! framing) is `mysql_async`'s; what the events mean to Flywheel is ours.
//! What every ERP source shares is in the parent module; this module's errors
//! are classed here.

pub mod binlog_pos;
pub mod binlog_value;
pub mod capture;
pub mod queries;
pub mod setup;
pub mod source;

use binlog_pos::BinlogPos;
use capture::CaptureError;
use setup::SetupError;

use super::source::SourceError;

/// What can stop the MariaDB/MySQL source, beside what every source shares.
#[derive(Debug, thiserror::Error)]
pub enum MysqlError {
    #[error("ERP database setup: {0}")]
    Setup(#[from] SetupError),
    #[error("ERP database: {}", error_text(.0))]
    Db(#[from] mysql_async::Error),
    #[error("binlog stream at {at}: {}", error_text(.source))]
    Stream {
        at: BinlogPos,
        source: mysql_async::Error,
    },
    #[error(
        "binlog stream at {at}: no event and no heartbeat for {silent_secs} s; the connection is presumed dead"
    )]
    Silent { at: BinlogPos, silent_secs: u64 },
    #[error("unexpected binlog event at {at}: {source}")]
    Capture { at: BinlogPos, source: CaptureError },
}

impl MysqlError {
    pub fn is_retryable(&self) -> bool {
        match self {
            MysqlError::Setup(e) => e.is_retryable(),
            MysqlError::Db(e) | MysqlError::Stream { source: e, .. } => is_retryable(e),
            MysqlError::Silent { .. } => true,
            // The same bytes would arrive again: a decoder bug or an
            // unsupported server setting, not a hiccup.
            MysqlError::Capture { .. } => false,
        }
    }
}

/// MariaDB/MySQL server error codes that an operator must act on; every other
/// server error (lock waits, deadlocks, shutdowns, too many connections) is
/// worth another try.
const FINAL_SERVER_ERRORS: &[u16] = &[
    1044, // ER_DBACCESS_DENIED_ERROR
    1045, // ER_ACCESS_DENIED_ERROR
    1049, // ER_BAD_DB_ERROR
    1054, // ER_BAD_FIELD_ERROR
    1064, // ER_PARSE_ERROR
    1142, // ER_TABLEACCESS_DENIED_ERROR
    1146, // ER_NO_SUCH_TABLE
    1227, // ER_SPECIFIC_ACCESS_DENIED_ERROR
    1236, // ER_MASTER_FATAL_ERROR_READING_BINLOG (e.g. a purged file)
    1698, // ER_ACCESS_DENIED_NO_PASSWORD_ERROR
];

/// Whether another try can help: connections lost and servers away are
/// retried; refused credentials, missing objects and broken SQL are final.
pub fn is_retryable(e: &mysql_async::Error) -> bool {
    match e {
        mysql_async::Error::Io(_) | mysql_async::Error::Other(_) => true,
        mysql_async::Error::Server(s) => !FINAL_SERVER_ERRORS.contains(&s.code),
        // The driver's own errors: a connection or pool in a bad state is
        // retried; a protocol surprise would repeat.
        mysql_async::Error::Driver(d) => matches!(
            d,
            mysql_async::DriverError::ConnectionClosed | mysql_async::DriverError::PoolDisconnected
        ),
        mysql_async::Error::Url(_) => false,
    }
}

/// The server's message with its code, or the driver's.
pub fn error_text(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => {
            format!("{} (error {}, SQLSTATE {})", s.message, s.code, s.state)
        }
        other => other.to_string(),
    }
}

impl From<mysql_async::Error> for SourceError {
    fn from(e: mysql_async::Error) -> Self {
        SourceError::Mysql(e.into())
    }
}

impl From<SetupError> for SourceError {
    fn from(e: SetupError) -> Self {
        SourceError::Mysql(e.into())
    }
}
