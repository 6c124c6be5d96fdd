//! Operator-readable PostgreSQL errors: tokio-postgres displays a server
//! error as just "db error"; the message, detail and hint say what to fix.

/// The server's message (with detail and hint) rather than tokio-postgres' "db error".
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
        None => e.to_string(),
    }
}
