//! The ERP side. Shared by every kind of ERP database: connectors
//! (`connector`), committed transactions (`committed`), the seam to a
//! database's SQL (`model_queries`), entity models (`entity_model`), the
//! pipeline from transactions to acknowledged events (`pipeline`), the
//! source's metrics (`source_metrics`), the event version (`position`), the
//! snapshot's neutral half (`snapshot`), and the entry point `source`. One
//! folder per database kind: `postgres` (replication client, pgoutput decoder,
//! capture, slot, snapshot, source loop) and `mysql` (binlog capture, checks,
//! state tables, source loop). `demo_erp`: the Odoo-shaped demo ERP.

pub mod committed;
pub mod connector;
pub mod demo_erp;
pub mod demo_erpnext;
pub mod entity_model;
pub mod erpnext;
pub mod idle_floor;
pub mod model_queries;
pub mod mysql;
pub mod pipeline;
pub mod position;
pub mod postgres;
pub mod snapshot;
pub mod source;
pub mod source_metrics;
