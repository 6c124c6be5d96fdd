//! Shopify Admin GraphQL client whose rate limit is a budget, not an error.
//!
//! The budget mirrors the shop's leaky bucket and is re-seeded from the
//! `throttleStatus` of every response (so it follows the plan's restore rate
//! and what other apps spend). A call first waits until its estimated cost
//! is there; a `THROTTLED` answer or a 429 is a wait too, never a failure.
//! 5xx, timeouts and connection errors back off exponentially with jitter; a
//! 401 fails at once (the token is wrong, retrying cannot help).
//!
//! Why not `governor` here: its quota cannot be re-seeded to a level the
//! server reports, and following the server is the point.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::{CounterVec, IntCounterVec, Opts, register_counter_vec, register_int_counter_vec};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum AdminApiError {
    #[error("the shop refused the access token (401); check the configured Admin API token")]
    Unauthorized,
    #[error("the shop answered with GraphQL errors: {0}")]
    GraphQl(String),
    #[error("the shop API failed {attempts} times in a row; last: {last}")]
    Unavailable { attempts: u32, last: String },
    #[error("the shop's answer is not GraphQL JSON: {0}")]
    Protocol(String),
    /// The TLS connection to the shop cannot be made (an untrusted or wrong
    /// certificate, an unreadable CA file): retrying cannot help.
    #[error(
        "TLS to the shop failed: {0}; check processors.shop_graphql_url, and set processors.shop_ca_file to a PEM file of the CA that signed the shop's certificate if it is not publicly trusted"
    )]
    Tls(String),
}

impl AdminApiError {
    /// Worth trying again later (as opposed to a request that can never work).
    pub fn is_transient(&self) -> bool {
        matches!(self, AdminApiError::Unavailable { .. })
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ThrottleStatus {
    pub maximum_available: f64,
    pub currently_available: f64,
    pub restore_rate: f64,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueryCost {
    pub requested_query_cost: f64,
    pub actual_query_cost: Option<f64>,
    pub throttle_status: ThrottleStatus,
}

/// A successful answer.
#[derive(Clone, Debug)]
pub struct GraphQlResponse {
    pub data: Value,
    pub cost: Option<QueryCost>,
}

/// The client-side mirror of the shop's bucket.
#[derive(Debug)]
pub struct CostBudget {
    maximum: f64,
    restore_rate: f64,
    available: f64,
    at: Instant,
}

impl CostBudget {
    /// Shopify's standard plan until the first response says otherwise.
    pub fn new(maximum: f64, restore_rate: f64) -> Self {
        CostBudget {
            maximum,
            restore_rate,
            available: maximum,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.available = (self.available + secs * self.restore_rate).min(self.maximum);
        self.at = now;
    }

    /// Reserves `cost` points; returns how long to wait before sending.
    pub fn reserve(&mut self, cost: f64, now: Instant) -> Duration {
        self.refill(now);
        let cost = cost.min(self.maximum);
        self.available -= cost;
        if self.available >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.available / self.restore_rate.max(0.001))
        }
    }

    /// Follows what the server reports.
    pub fn observe(&mut self, status: ThrottleStatus, now: Instant) {
        self.maximum = status.maximum_available.max(1.0);
        self.restore_rate = status.restore_rate.max(0.001);
        self.available = status.currently_available.min(self.maximum);
        self.at = now;
    }
}

struct ApiMetrics {
    requests: IntCounterVec,
    cost: CounterVec,
    throttle_wait: CounterVec,
}

/// Requests of `processor` the shop answered successfully, so far: a
/// processor that keeps getting answers is working, however slowly its batch
/// goes under the rate limit.
pub fn successful_requests(processor: &str) -> u64 {
    metrics()
        .requests
        .with_label_values(&[processor, "ok"])
        .get()
}

fn metrics() -> &'static ApiMetrics {
    static M: OnceLock<ApiMetrics> = OnceLock::new();
    const REGISTER: &str = "registering a shop API metric";
    M.get_or_init(|| ApiMetrics {
        requests: register_int_counter_vec!(
            Opts::new(
                "flywheel_shop_api_requests_total",
                "Shop Admin API requests by outcome"
            ),
            &["processor", "outcome"]
        )
        .expect(REGISTER),
        cost: register_counter_vec!(
            Opts::new(
                "flywheel_shop_api_cost_points_total",
                "Actual query cost charged by the shop"
            ),
            &["processor"]
        )
        .expect(REGISTER),
        throttle_wait: register_counter_vec!(
            Opts::new(
                "flywheel_shop_api_throttle_wait_seconds_total",
                "Seconds spent waiting for rate-limit budget (before sending, THROTTLED, 429)"
            ),
            &["processor"]
        )
        .expect(REGISTER),
    })
}

/// The HTTP client for the shop: HTTPS with rustls, server certificates
/// checked against the system's roots plus `extra_roots`.
fn http_client(extra_roots: Vec<reqwest::Certificate>) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tls_certs_merge(extra_roots)
        .build()
}

enum Answer {
    Done(GraphQlResponse),
    Throttled { requested: f64 },
    Failed(AdminApiError),
}

pub struct AdminApi {
    http: reqwest::Client,
    graphql_url: String,
    token: String,
    budget: Mutex<CostBudget>,
    max_attempts: u32,
    backoff_base: Duration,
    /// The `processor` label of this client's metrics.
    processor: &'static str,
}

impl AdminApi {
    /// `graphql_url` is the shop's `…/admin/api/<version>/graphql.json`.
    pub fn new(graphql_url: impl Into<String>, access_token: impl Into<String>) -> Self {
        let http = http_client(Vec::new()).expect("an HTTP client with timeouts and TLS");
        AdminApi::with_client(http, graphql_url.into(), access_token.into())
    }

    fn with_client(http: reqwest::Client, graphql_url: String, token: String) -> Self {
        AdminApi {
            http,
            graphql_url,
            token,
            budget: Mutex::new(CostBudget::new(1000.0, 100.0)),
            max_attempts: 8,
            backoff_base: Duration::from_millis(100),
            processor: "client",
        }
    }

    /// The client of one processor: its cost and waits are counted under `processor`.
    pub fn for_processor(mut self, processor: &'static str) -> Self {
        self.processor = processor;
        // Export the processor's series from the start (at 0), so rates and
        // alerts see them before the first wait.
        let m = metrics();
        m.throttle_wait.with_label_values(&[processor]);
        m.cost.with_label_values(&[processor]);
        self
    }

    /// The configured shop's client for `processor`, trusting the system's
    /// certificate authorities and those in `processors.shop_ca_file`.
    pub fn from_config(
        p: &crate::config::ProcessorsConfig,
        processor: &'static str,
    ) -> Result<Self, AdminApiError> {
        let mut extra_roots = Vec::new();
        if let Some(path) = &p.shop_ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                AdminApiError::Tls(format!(
                    "cannot read processors.shop_ca_file {}: {e}",
                    path.display()
                ))
            })?;
            extra_roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                AdminApiError::Tls(format!(
                    "processors.shop_ca_file {} holds no PEM certificates: {e}",
                    path.display()
                ))
            })?;
            if extra_roots.is_empty() {
                return Err(AdminApiError::Tls(format!(
                    "processors.shop_ca_file {} holds no PEM certificates",
                    path.display()
                )));
            }
        }
        let http = http_client(extra_roots)
            .map_err(|e| AdminApiError::Tls(format!("cannot build the HTTPS client: {e}")))?;
        let token = p.shop_access_token.0.clone();
        Ok(AdminApi::with_client(http, p.shop_graphql_url.clone(), token).for_processor(processor))
    }

    /// Attempts before a transient failure is reported (throttle waits do not count).
    pub fn with_retries(mut self, max_attempts: u32, backoff_base: Duration) -> Self {
        self.max_attempts = max_attempts.max(1);
        self.backoff_base = backoff_base;
        self
    }

    async fn wait(&self, d: Duration) {
        if !d.is_zero() {
            metrics()
                .throttle_wait
                .with_label_values(&[self.processor])
                .inc_by(d.as_secs_f64());
            tokio::time::sleep(d).await;
        }
    }

    /// Runs one query or mutation. `estimated_cost` is reserved from the budget
    /// first (use the query's requested cost; mutations cost 10).
    pub async fn execute(
        &self,
        query: &str,
        variables: Value,
        estimated_cost: f64,
    ) -> Result<GraphQlResponse, AdminApiError> {
        let m = metrics();
        let mut estimated_cost = estimated_cost;
        let body = json!({"query": query, "variables": variables});
        let mut failures = 0u32;
        loop {
            let wait = self.budget.lock().reserve(estimated_cost, Instant::now());
            self.wait(wait).await;
            let sent = self
                .http
                .post(&self.graphql_url)
                .header("X-Shopify-Access-Token", &self.token)
                .json(&body)
                .send()
                .await;
            let failure = match sent {
                Err(e) => match crate::tls_error::rustls_cause(&e) {
                    Some(cause) => {
                        m.requests
                            .with_label_values(&[self.processor, "error"])
                            .inc();
                        return Err(AdminApiError::Tls(format!("{}: {cause}", self.graphql_url)));
                    }
                    None => format!("request failed: {e}"),
                },
                Ok(r) if r.status().as_u16() == 401 => {
                    m.requests
                        .with_label_values(&[self.processor, "unauthorized"])
                        .inc();
                    return Err(AdminApiError::Unauthorized);
                }
                Ok(r) if r.status().as_u16() == 429 => {
                    m.requests
                        .with_label_values(&[self.processor, "throttled"])
                        .inc();
                    let retry_after = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(1.0);
                    self.wait(Duration::from_secs_f64(retry_after.max(0.0)))
                        .await;
                    continue;
                }
                Ok(r) if r.status().is_server_error() => format!("HTTP {}", r.status()),
                Ok(r) => match r.json::<Value>().await {
                    Err(e) => format!("unreadable answer: {e}"),
                    Ok(answer) => match self.interpret(answer) {
                        Answer::Done(response) => {
                            m.requests.with_label_values(&[self.processor, "ok"]).inc();
                            return Ok(response);
                        }
                        Answer::Throttled { requested } => {
                            // Wait for what the shop says the query costs.
                            estimated_cost = estimated_cost.max(requested);
                            continue;
                        }
                        Answer::Failed(e) => {
                            m.requests
                                .with_label_values(&[self.processor, "error"])
                                .inc();
                            return Err(e);
                        }
                    },
                },
            };
            m.requests
                .with_label_values(&[self.processor, "transient_error"])
                .inc();
            failures += 1;
            if failures >= self.max_attempts {
                return Err(AdminApiError::Unavailable {
                    attempts: failures,
                    last: failure,
                });
            }
            let base = self.backoff_base.as_secs_f64() * 2f64.powi(failures as i32 - 1);
            let jittered = base * (0.5 + fastrand::f64());
            tracing::debug!(%failure, attempt = failures, retry_in_ms = (jittered * 1000.0) as u64, "shop API call failed");
            tokio::time::sleep(Duration::from_secs_f64(jittered.min(30.0))).await;
        }
    }

    fn interpret(&self, answer: Value) -> Answer {
        let cost: Option<QueryCost> = answer
            .pointer("/extensions/cost")
            .and_then(|c| serde_json::from_value(c.clone()).ok());
        if let Some(c) = cost {
            self.budget
                .lock()
                .observe(c.throttle_status, Instant::now());
            if let Some(actual) = c.actual_query_cost {
                metrics()
                    .cost
                    .with_label_values(&[self.processor])
                    .inc_by(actual);
            }
        }
        if let Some(errors) = answer
            .get("errors")
            .and_then(Value::as_array)
            .filter(|e| !e.is_empty())
        {
            let throttled = errors.iter().any(|e| {
                e.pointer("/extensions/code").and_then(Value::as_str) == Some("THROTTLED")
            });
            if throttled {
                metrics()
                    .requests
                    .with_label_values(&[self.processor, "throttled"])
                    .inc();
                // The budget was re-seeded from the answer; the next reserve()
                // waits for the missing points.
                return Answer::Throttled {
                    requested: cost.map_or(0.0, |c| c.requested_query_cost),
                };
            }
            let messages: Vec<&str> = errors
                .iter()
                .filter_map(|e| e.get("message").and_then(Value::as_str))
                .collect();
            return Answer::Failed(AdminApiError::GraphQl(messages.join("; ")));
        }
        match answer.get("data") {
            Some(data) if !data.is_null() => Answer::Done(GraphQlResponse {
                data: data.clone(),
                cost,
            }),
            _ => Answer::Failed(AdminApiError::Protocol("no data and no errors".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_waits_for_points_and_follows_the_server() {
        let t0 = Instant::now();
        let mut b = CostBudget::new(100.0, 10.0);
        assert_eq!(b.reserve(60.0, t0), Duration::ZERO);
        // 40 left; 60 more means waiting 2 s for 20 points.
        assert_eq!(b.reserve(60.0, t0), Duration::from_secs(2));
        // The server says only 5 are there, restoring 50/s, bucket 1000.
        b.observe(
            ThrottleStatus {
                maximum_available: 1000.0,
                currently_available: 5.0,
                restore_rate: 50.0,
            },
            t0,
        );
        assert_eq!(b.reserve(55.0, t0), Duration::from_secs(1));
        // A cost above the bucket is capped, not an endless wait.
        let mut b = CostBudget::new(100.0, 100.0);
        assert_eq!(b.reserve(500.0, t0), Duration::ZERO);
    }
}
