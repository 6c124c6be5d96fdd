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

/// Whether trying again later can help: a connection lost or refused, a
/// server shutting down, a serialization failure. Not: a certificate that
/// does not verify, refused credentials (SQLSTATE class 28), a database that
/// does not exist (3D), or SQL the server rejects — a missing table or
/// column, a privilege revoked (class 42): those wait for an operator.
pub fn is_retryable(e: &tokio_postgres::Error) -> bool {
    if crate::tls_error::rustls_cause(e).is_some() {
        return false;
    }
    match e.code() {
        Some(code) => !matches!(&code.code()[..2], "28" | "3D" | "42"),
        None => true,
    }
}
