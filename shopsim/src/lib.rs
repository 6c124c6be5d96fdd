//! shopsim: a Shopify-compatible shop for Flywheel's tests, demo and benchmarks.
//!
//! - [`state`]: products, variants, inventory levels, orders;
//! - [`graphql`]: the Admin GraphQL API (async-graphql) incl. `@idempotent` and
//!   compare-before-write inventory;
//! - [`bulk`]: bulk query operations and their JSONL results;
//! - [`cost`]: calculated query cost and the leaky bucket;
//! - [`webhooks`]: subscriptions, signed deliveries with retries and faults;
//! - [`server`]: HTTP (GraphQL, REST-style, `/_sim/*`), fault injection,
//!   order generator; [`ShopSim::start`] runs it in-process on any port;
//! - [`woo`]: the WooCommerce REST API v3 mode ([`woo::WooSim`]).

pub mod bulk;
pub mod catalog;
pub mod cost;
pub mod graphql;
pub mod server;
pub mod state;
pub mod webhooks;
pub mod woo;

pub use server::{ApiFaults, ShopSim, SimConfig};
pub use webhooks::{Topic, WebhookFaults};
