//! `flywheel source`: the ERP source for the configured database kind. Today
//! that is PostgreSQL (`erp::postgres`); a binlog source for MariaDB/MySQL
//! will sit beside it behind this entry point.

pub use super::postgres::source::{SourceError, run, run_with_retries};
