//! Operator-readable PostgreSQL errors: tokio-postgres displays a server
//! error as just "db error" and a connection failure without its cause
//! ("error connecting to server"); the message, detail, hint and cause say
//! what to fix.

/// The server's message (with detail and hint), or the failure with its cause.
pub fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = db.message().to_owned();
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!(" hint: {h}"));
            }
            s
        }
        None => match (
            crate::tls_error::rustls_cause(e),
            std::error::Error::source(e),
        ) {
            (Some(tls), _) => {
                format!("{e}: {tls} (check erp.tls_ca_file, and the DSN's host and sslmode)")
            }
            (None, Some(cause)) => format!("{e}: {cause}"),
            (None, None) => e.to_string(),
        },
    }
}
