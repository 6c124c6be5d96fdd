//! The ERP side. Shared by every kind of ERP database: connectors
//! (`connector`), entity models run on the connector's SQL (`entity_model`),
//! the source's metrics (`source_metrics`), the event version
//! (`position`), and the entry point `source`. One folder per database kind:
//! `postgres` (replication client, pgoutput decoder, capture, slot, snapshot,
//! source loop). `demo_erp`: the Odoo-shaped demo ERP.

pub mod connector;
pub mod demo_erp;
pub mod entity_model;
pub mod position;
pub mod postgres;
pub mod source;
pub mod source_metrics;
