//! Operating Flywheel: the HTTP endpoint for `/metrics` and health. It observes
//! the other modules through the default Prometheus registry; none imports it.

pub mod http;
pub mod logging;
