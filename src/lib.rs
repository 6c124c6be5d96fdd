//! Flywheel: change-data-capture between an ERP and online shops.
//!
//! Data flows one way: `erp` (source) → `bus` (Kafka) → processors → sinks.
//! `ops` observes through the metrics registry; `local_infra` starts throwaway
//! servers for the demo, tests and benchmarks. See docs/architecture.md.

pub mod bus;
pub mod config;
pub mod erp;
pub mod local_infra;
pub mod mysql;
pub mod ops;
pub mod pg;
pub mod reconcile;
pub mod shop;
pub mod supervise;
pub mod sync;
pub mod tls_error;
