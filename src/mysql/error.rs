//! Operator-readable MariaDB/MySQL errors and their retry class.

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
