//! The MariaDB/MySQL source: binlog coordinates (`binlog_pos`), committed
//! transactions of touched trigger rows from row-based binlog events
//! (`capture`), the connector's SQL (`queries`), start-up checks and Flywheel's
//! own state on the server (`setup`), the row images of a rows event with only
//! the trigger columns as text (`row_image`), and the source loop with its initial
//! snapshot (`source`). The binlog stream itself (COM_BINLOG_DUMP and event
//! framing) is `mysql_async`'s; what the events mean to Flywheel is ours.
//! What every ERP source shares is in the parent module; this module's errors
//! are classed here.

pub mod binlog_pos;
pub mod binlog_value;
pub mod capture;
pub mod queries;
pub mod row_image;
pub mod setup;
pub mod source;

use binlog_pos::BinlogPos;
use capture::CaptureError;
use setup::SetupError;

use super::source::SourceError;
use crate::mysql::{error_text, is_retryable};

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
