//! Operating Flywheel: the HTTP endpoint for `/metrics` and health, and the
//! heap's upkeep (`memory`). It observes
//! the other modules through the default Prometheus registry; none imports it.

pub mod dlq;
pub mod http;
pub mod lag;
pub mod logging;
pub mod memory;
pub mod quantiles;
pub mod replay;
