//! The shop side: the webhook gateway (signature checks, deduplication,
//! mapping to canonical events). The Admin API client comes with the processors.

pub mod dedupe;
pub mod gateway;
pub mod gateway_metrics;
pub mod mapping;
pub mod signature;
