//! Processors: consume Kafka topics and apply them to the other side,
//! idempotently and version-guarded.

pub mod stock_to_shop;
pub mod version_store;
