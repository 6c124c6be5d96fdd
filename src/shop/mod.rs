//! The shop side: the webhook gateway (signature checks, deduplication,
//! mapping to canonical events) and the Admin API client the processors use.

pub mod admin_api;
pub mod dedupe;
pub mod gateway;
pub mod gateway_metrics;
pub mod mapping;
pub mod signature;
