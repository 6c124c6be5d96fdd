//! HTTP plumbing every shop platform's client shares: the HTTPS client
//! (rustls; the system's CAs plus the shop's `ca_file`), and the request
//! metrics, labelled per processor and shop, that the stall watch and the
//! dashboards read whatever the platform.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{CounterVec, IntCounterVec, Opts, register_counter_vec, register_int_counter_vec};

use crate::config::ShopConfig;

pub struct ApiMetrics {
    pub requests: IntCounterVec,
    pub cost: CounterVec,
    pub throttle_wait: CounterVec,
}

/// Counts time `processor` spent gathering a batch because the shop's budget
/// could not yet afford its write. That wait replaces the one the write would
/// have spent before sending, so it is a throttle wait like the calls' own:
/// without it a shop held at its rate limit would show none.
pub fn record_budget_wait(processor: &str, shop: &str, waited: Duration) {
    if !waited.is_zero() {
        metrics()
            .throttle_wait
            .with_label_values(&[processor, shop])
            .inc_by(waited.as_secs_f64());
    }
}

/// Requests of `processor` the shop answered successfully, so far: a
/// processor that keeps getting answers is working, however slowly its batch
/// goes under the rate limit.
pub fn successful_requests(processor: &str, shop: &str) -> u64 {
    metrics()
        .requests
        .with_label_values(&[processor, shop, "ok"])
        .get()
}

pub fn metrics() -> &'static ApiMetrics {
    static M: OnceLock<ApiMetrics> = OnceLock::new();
    const REGISTER: &str = "registering a shop API metric";
    M.get_or_init(|| ApiMetrics {
        requests: register_int_counter_vec!(
            Opts::new(
                "flywheel_shop_api_requests_total",
                "Shop Admin API requests by outcome"
            ),
            &["processor", "shop", "outcome"]
        )
        .expect(REGISTER),
        cost: register_counter_vec!(
            Opts::new(
                "flywheel_shop_api_cost_points_total",
                "Actual query cost charged by the shop"
            ),
            &["processor", "shop"]
        )
        .expect(REGISTER),
        throttle_wait: register_counter_vec!(
            Opts::new(
                "flywheel_shop_api_throttle_wait_seconds_total",
                "Seconds spent waiting for rate-limit budget (gathering a batch or before sending, THROTTLED, 429)"
            ),
            &["processor", "shop"]
        )
        .expect(REGISTER),
    })
}

/// The HTTP client for the shop: HTTPS with rustls, server certificates
/// checked against the system's roots plus `extra_roots`.
pub fn http_client_with(
    extra_roots: Vec<reqwest::Certificate>,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tls_certs_merge(extra_roots)
        .build()
}

/// `shop`'s HTTPS client: the system's certificate authorities and those in
/// its `ca_file`. The error says which file and why.
pub fn http_client(shop: &ShopConfig) -> Result<reqwest::Client, String> {
    let mut extra_roots = Vec::new();
    if let Some(path) = &shop.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            format!(
                "cannot read the ca_file of shop `{}`, {}: {e}",
                shop.name,
                path.display()
            )
        })?;
        extra_roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            format!(
                "the ca_file of shop `{}`, {}, holds no PEM certificates: {e}",
                shop.name,
                path.display()
            )
        })?;
        if extra_roots.is_empty() {
            return Err(format!(
                "the ca_file of shop `{}`, {}, holds no PEM certificates",
                shop.name,
                path.display()
            ));
        }
    }
    http_client_with(extra_roots).map_err(|e| format!("cannot build the HTTPS client: {e}"))
}
