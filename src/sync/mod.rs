//! Processors: consume Kafka topics and apply them to the other side,
//! idempotently and version-guarded. `apply_loop` is the loop they share;
//! each entity implements its `Applier`.

pub mod apply_loop;
pub mod orders_to_erp;
pub mod price_to_shop;
pub mod shop_catalog;
pub mod stock_to_shop;
pub mod version_store;
