//! The shop side: the webhook gateway (signature checks, deduplication,
//! mapping to canonical events), and one folder per platform the processors
//! write to (`shopify`, `woocommerce`), each behind the traits of `platform`.

pub mod api;
pub mod dedupe;
pub mod gateway;
pub mod gateway_metrics;
pub mod mapping;
pub mod order_poll;
pub mod platform;
pub mod pruned_json;
pub mod shopify;
pub mod signature;
pub mod woocommerce;

pub use shopify::admin_api;
