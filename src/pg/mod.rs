//! PostgreSQL plumbing shared by every role that talks to PostgreSQL (the
//! ERP source, the processors' state database, the operations commands): TLS
//! for every connection, operator-readable errors and their retry class, and
//! Flywheel's own bookkeeping schema.

pub mod error;
pub mod own_schema;
pub mod tls;
