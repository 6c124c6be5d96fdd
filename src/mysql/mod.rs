//! MariaDB/MySQL plumbing shared by every role that talks to MariaDB or MySQL
//! (the ERP source, the ERPNext order writer, the processors' state database,
//! the operations commands): connection options from a DSN, operator-readable
//! errors and their retry class, identifier quoting.

mod error;

pub use error::{error_text, is_retryable};

/// `mysql://` or `mariadb://`: a DSN naming a MariaDB/MySQL server.
pub fn is_mysql_dsn(dsn: &str) -> bool {
    dsn.starts_with("mysql://") || dsn.starts_with("mariadb://")
}

/// Connection options from a `mysql://` or `mariadb://` URL; `setting` names
/// the configuration key in the error. The URL may hold a password: the
/// error never shows the value.
pub fn opts(setting: &str, dsn: &str) -> Result<mysql_async::Opts, String> {
    let url = match dsn.strip_prefix("mariadb://") {
        Some(rest) => format!("mysql://{rest}"),
        None => dsn.to_owned(),
    };
    mysql_async::Opts::from_url(&url).map_err(|e| {
        format!(
            "{setting} is not a mysql://user:password@host:port/database URL ({})",
            match e {
                mysql_async::UrlError::UnsupportedScheme { .. } => "unsupported scheme",
                mysql_async::UrlError::Parse(_) => "does not parse",
                _ => "invalid option",
            }
        )
    })
}

/// A quoted identifier: `` `name` `` with backquotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_names_the_setting_never_the_password() {
        let err = opts("processors.state_dsn", "mysql://u:s3cret@h:notaport/db").unwrap_err();
        assert!(err.contains("processors.state_dsn"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let ok = opts("erp.dsn", "mariadb://u:p@127.0.0.1:3307/erp").unwrap();
        assert_eq!(ok.db_name(), Some("erp"));
        assert_eq!(ok.tcp_port(), 3307);
    }
}
