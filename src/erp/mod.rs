//! The ERP side: replication client, pgoutput decoder, capture of touched rows,
//! slot and publication, connector models, snapshot, the source loop, and the
//! demo ERP.

pub mod capture;
pub mod connector;
pub mod demo_erp;
pub mod entity_model;
pub mod lsn;
pub mod pgoutput;
pub mod replication;
pub mod slot;
pub mod snapshot;
pub mod source;
pub mod source_metrics;
pub mod visibility;
