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

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};

pub use crate::shop::api::successful_requests;
use crate::shop::api::{http_client_with, metrics};

#[derive(Debug, thiserror::Error)]
pub enum AdminApiError {
    #[error("the shop refused the access token (401); check access_token of its [[shops]] entry")]
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
        "TLS to the shop failed: {0}; check the shop's admin_url in [[shops]], and set its ca_file to a PEM file of the CA that signed the shop's certificate if it is not publicly trusted"
    )]
    Tls(String),
    #[error(transparent)]
    CatalogStore(#[from] super::catalog::CatalogStoreError),
}

impl AdminApiError {
    /// Worth trying again later (as opposed to a request that can never work).
    pub fn is_transient(&self) -> bool {
        match self {
            AdminApiError::Unavailable { .. } => true,
            AdminApiError::CatalogStore(e) => e.retryable,
            AdminApiError::Unauthorized
            | AdminApiError::GraphQl(_)
            | AdminApiError::Protocol(_)
            | AdminApiError::Tls(_) => false,
        }
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

    /// How long until `cost` points are available (nothing reserved).
    pub fn time_until(&mut self, cost: f64, now: Instant) -> Duration {
        self.refill(now);
        let short = cost.min(self.maximum) - self.available;
        if short <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(short / self.restore_rate.max(0.001))
        }
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

    /// A share of the shop's bucket: fills at `share` of its restore rate, up
    /// to `share` of its size, following the plan the server reports
    /// (`follow_share`) but not its level, which everyone's calls move.
    fn share_of(&self, share: f64) -> Self {
        CostBudget::new(self.maximum * share, self.restore_rate * share)
    }

    fn follow_share(&mut self, status: &ThrottleStatus, share: f64, now: Instant) {
        self.refill(now);
        self.maximum = (status.maximum_available * share).max(1.0);
        self.restore_rate = (status.restore_rate * share).max(0.001);
        self.available = self.available.min(self.maximum);
    }

    /// Follows what the server reports.
    pub fn observe(&mut self, status: ThrottleStatus, now: Instant) {
        self.maximum = status.maximum_available.max(1.0);
        self.restore_rate = status.restore_rate.max(0.001);
        self.available = status.currently_available.min(self.maximum);
        self.at = now;
    }
}

/// How long a 429 asks us to wait (`Retry-After`, seconds; 1 s when absent).
fn retry_after(r: &reqwest::Response) -> Duration {
    let secs = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs.clamp(0.0, 60.0))
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
    /// A client held to a share of the shop's budget (reconciliation), and
    /// that share; `None`: the whole budget.
    share: Option<(f64, Mutex<CostBudget>)>,
    max_attempts: u32,
    backoff_base: Duration,
    /// The `processor` and `shop` labels of this client's metrics.
    processor: &'static str,
    shop: String,
}

impl AdminApi {
    /// `graphql_url` is the shop's `…/admin/api/<version>/graphql.json`.
    pub fn new(graphql_url: impl Into<String>, access_token: impl Into<String>) -> Self {
        let http = http_client_with(Vec::new()).expect("an HTTP client with timeouts and TLS");
        AdminApi::with_client(http, graphql_url.into(), access_token.into())
    }

    fn with_client(http: reqwest::Client, graphql_url: String, token: String) -> Self {
        AdminApi {
            http,
            graphql_url,
            token,
            budget: Mutex::new(CostBudget::new(1000.0, 100.0)),
            share: None,
            max_attempts: 8,
            backoff_base: Duration::from_millis(100),
            processor: "client",
            shop: String::new(),
        }
    }

    /// The client of one processor for one shop: its cost and waits are
    /// counted under `processor` and `shop`.
    pub fn for_processor(mut self, processor: &'static str, shop: &str) -> Self {
        self.processor = processor;
        self.shop = shop.to_owned();
        // Export the processor's series from the start (at 0), so rates and
        // alerts see them before the first wait.
        let m = metrics();
        m.throttle_wait.with_label_values(&[processor, shop]);
        m.cost.with_label_values(&[processor, shop]);
        self
    }

    /// `shop`'s client for `processor`, trusting the system's certificate
    /// authorities and those in the shop's `ca_file`.
    pub fn for_shop(
        shop: &crate::config::ShopConfig,
        processor: &'static str,
    ) -> Result<Self, AdminApiError> {
        let http = crate::shop::api::http_client(shop).map_err(AdminApiError::Tls)?;
        let token = shop.access_token.0.clone();
        Ok(AdminApi::with_client(http, shop.admin_url.clone(), token)
            .for_processor(processor, &shop.name))
    }

    /// Holds this client to `share` (0–1] of the shop's rate budget, so it
    /// never competes with the processors' live writes.
    pub fn with_budget_share(mut self, share: f64) -> Self {
        let share = share.clamp(0.001, 1.0);
        if share < 1.0 {
            let budget = self.budget.lock().share_of(share);
            self.share = Some((share, Mutex::new(budget)));
        }
        self
    }

    /// The first page of a REST Admin API listing (`path` relative to the API
    /// version, e.g. `orders.json`): for what GraphQL has no webhook-shaped
    /// answer to. Further pages come from [`Self::rest_next_page`]. The REST
    /// bucket is separate from the GraphQL budget; a 429 waits its
    /// `Retry-After`, 5xx and connection errors back off as GraphQL calls do.
    pub async fn rest_get(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<RestPage, AdminApiError> {
        let url = match self.graphql_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{path}"),
            None => {
                return Err(AdminApiError::Protocol(format!(
                    "admin_url {} has no path",
                    self.graphql_url
                )));
            }
        };
        let url = reqwest::Url::parse_with_params(&url, query)
            .map_err(|e| AdminApiError::Protocol(format!("{url}: {e}")))?;
        self.rest_page(url).await
    }

    /// The page a [`RestPage::next`] links to. Shopify pages by cursor: the
    /// link's `page_info` keeps the first request's filters and order, so a
    /// listing is read to its end even when more than a page of its rows
    /// share one sort value (orders changed in one second), and a row that
    /// changes while it is read moves behind the cursor instead of shifting
    /// the rows after it. The token goes with the request, so a link to
    /// anywhere but the shop's own Admin API is refused.
    pub async fn rest_next_page(&self, next: reqwest::Url) -> Result<RestPage, AdminApiError> {
        let ours = reqwest::Url::parse(&self.graphql_url)
            .map_err(|e| AdminApiError::Protocol(format!("admin_url {}: {e}", self.graphql_url)))?;
        if next.origin() != ours.origin() {
            return Err(AdminApiError::Protocol(format!(
                "the shop linked a next page on another host ({}); not following it with the access token",
                next.origin().ascii_serialization()
            )));
        }
        self.rest_page(next).await
    }

    async fn rest_page(&self, url: reqwest::Url) -> Result<RestPage, AdminApiError> {
        let response = self.get(url.clone(), true).await?;
        let next = response
            .headers()
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(next_link)
            .map(|link| {
                reqwest::Url::parse(link).map_err(|e| {
                    AdminApiError::Protocol(format!("{url}: a next-page link {link:?}: {e}"))
                })
            })
            .transpose()?;
        let body = response
            .json()
            .await
            .map_err(|e| AdminApiError::Protocol(format!("{url}: {e}")))?;
        Ok(RestPage { body, next })
    }

    /// Downloads a bulk operation's result file. Its URL is signed storage,
    /// not the Admin API: no token is sent, and it costs nothing.
    pub async fn download(&self, url: &str) -> Result<String, AdminApiError> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| AdminApiError::Protocol(format!("{url}: {e}")))?;
        self.get(parsed, false)
            .await?
            .text()
            .await
            .map_err(|e| AdminApiError::Protocol(format!("{url}: {e}")))
    }

    /// Uploads `body` to a staged target (`stagedUploadsCreate`): a multipart
    /// form of the target's `parameters`, then the file. The target is signed
    /// storage, not the Admin API: no token, no cost. Retried as [`Self::send`].
    pub async fn upload_staged(
        &self,
        url: &str,
        parameters: &[(String, String)],
        filename: &str,
        body: &str,
    ) -> Result<(), AdminApiError> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| AdminApiError::Protocol(format!("{url}: {e}")))?;
        self.send(parsed, false, |http, url| {
            let mut form = reqwest::multipart::Form::new();
            for (name, value) in parameters {
                form = form.text(name.clone(), value.clone());
            }
            let file = reqwest::multipart::Part::text(body.to_owned())
                .file_name(filename.to_owned())
                .mime_str("text/jsonl")
                .map_err(|e| AdminApiError::Protocol(format!("multipart file part: {e}")))?;
            Ok(http.post(url).multipart(form.part("file", file)))
        })
        .await
        .map(drop)
    }

    /// One GET; see [`Self::send`].
    async fn get(
        &self,
        url: reqwest::Url,
        with_token: bool,
    ) -> Result<reqwest::Response, AdminApiError> {
        self.send(url, with_token, |http, url| Ok(http.get(url)))
            .await
    }

    /// One request built afresh by `build` for each attempt, `with_token` for
    /// the Admin API itself: a 429 waits its `Retry-After`, 5xx and connection
    /// errors back off as GraphQL calls do; any other answer that is not a
    /// success is final (403: a scope the app lacks; 404: nothing there, or a
    /// result file past its seven days).
    async fn send(
        &self,
        url: reqwest::Url,
        with_token: bool,
        build: impl Fn(&reqwest::Client, reqwest::Url) -> Result<reqwest::RequestBuilder, AdminApiError>,
    ) -> Result<reqwest::Response, AdminApiError> {
        let mut failures = 0u32;
        loop {
            let mut request = build(&self.http, url.clone())?;
            if with_token {
                request = request.header("X-Shopify-Access-Token", &self.token);
            }
            let failure = match request.send().await {
                Err(e) => match crate::tls_error::rustls_cause(&e) {
                    Some(cause) => return Err(AdminApiError::Tls(format!("{url}: {cause}"))),
                    None => format!("request failed: {e}"),
                },
                Ok(r) if with_token && r.status().as_u16() == 401 => {
                    return Err(AdminApiError::Unauthorized);
                }
                Ok(r) if r.status().as_u16() == 429 => {
                    self.wait(retry_after(&r)).await;
                    continue;
                }
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r) if r.status().is_server_error() => format!("{url} answered {}", r.status()),
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    return Err(AdminApiError::Protocol(format!(
                        "{url} answered {status}: {text}"
                    )));
                }
            };
            self.back_off(&mut failures, failure).await?;
        }
    }

    /// How long until a call of `cost` points could be sent without waiting
    /// for the budget (this client's, and its share's if it has one).
    pub fn time_until(&self, cost: f64) -> Duration {
        let now = Instant::now();
        let whole = self.budget.lock().time_until(cost, now);
        match &self.share {
            Some((_, share)) => whole.max(share.lock().time_until(cost, now)),
            None => whole,
        }
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
                .with_label_values(&[self.processor, &self.shop])
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
            let now = Instant::now();
            let mut wait = self.budget.lock().reserve(estimated_cost, now);
            if let Some((_, share)) = &self.share {
                wait = wait.max(share.lock().reserve(estimated_cost, now));
            }
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
                            .with_label_values(&[self.processor, &self.shop, "error"])
                            .inc();
                        return Err(AdminApiError::Tls(format!("{}: {cause}", self.graphql_url)));
                    }
                    None => format!("request failed: {e}"),
                },
                Ok(r) if r.status().as_u16() == 401 => {
                    m.requests
                        .with_label_values(&[self.processor, &self.shop, "unauthorized"])
                        .inc();
                    return Err(AdminApiError::Unauthorized);
                }
                Ok(r) if r.status().as_u16() == 429 => {
                    m.requests
                        .with_label_values(&[self.processor, &self.shop, "throttled"])
                        .inc();
                    self.wait(retry_after(&r)).await;
                    continue;
                }
                Ok(r) if r.status().is_server_error() => format!("HTTP {}", r.status()),
                Ok(r) => match r.json::<Value>().await {
                    Err(e) => format!("unreadable answer: {e}"),
                    Ok(answer) => match self.interpret(answer) {
                        Answer::Done(response) => {
                            m.requests
                                .with_label_values(&[self.processor, &self.shop, "ok"])
                                .inc();
                            return Ok(response);
                        }
                        Answer::Throttled { requested } => {
                            // Wait for what the shop says the query costs.
                            estimated_cost = estimated_cost.max(requested);
                            continue;
                        }
                        Answer::Failed(e) => {
                            m.requests
                                .with_label_values(&[self.processor, &self.shop, "error"])
                                .inc();
                            return Err(e);
                        }
                    },
                },
            };
            m.requests
                .with_label_values(&[self.processor, &self.shop, "transient_error"])
                .inc();
            self.back_off(&mut failures, failure).await?;
        }
    }

    /// Counts a transient failure and waits before the next attempt
    /// (exponential, with jitter); gives up after `max_attempts`.
    async fn back_off(&self, failures: &mut u32, failure: String) -> Result<(), AdminApiError> {
        *failures += 1;
        if *failures >= self.max_attempts {
            return Err(AdminApiError::Unavailable {
                attempts: *failures,
                last: failure,
            });
        }
        let base = self.backoff_base.as_secs_f64() * 2f64.powi(*failures as i32 - 1);
        let jittered = base * (0.5 + fastrand::f64());
        tracing::debug!(%failure, attempt = *failures, retry_in_ms = (jittered * 1000.0) as u64, "shop API call failed");
        tokio::time::sleep(Duration::from_secs_f64(jittered.min(30.0))).await;
        Ok(())
    }

    fn interpret(&self, answer: Value) -> Answer {
        let cost: Option<QueryCost> = answer
            .pointer("/extensions/cost")
            .and_then(|c| serde_json::from_value(c.clone()).ok());
        if let Some(c) = cost {
            if let Some((share, budget)) = &self.share {
                budget
                    .lock()
                    .follow_share(&c.throttle_status, *share, Instant::now());
            }
            self.budget
                .lock()
                .observe(c.throttle_status, Instant::now());
            if let Some(actual) = c.actual_query_cost {
                metrics()
                    .cost
                    .with_label_values(&[self.processor, &self.shop])
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
                    .with_label_values(&[self.processor, &self.shop, "throttled"])
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

/// One page of a REST listing and where the next one is, if there is one.
pub struct RestPage {
    pub body: Value,
    pub next: Option<reqwest::Url>,
}

/// The target of the `rel="next"` link in an RFC 8288 `Link` header value
/// (`<url>; rel="next", <url>; rel="previous"`), if it has one. Total over
/// any text: a malformed value has no next link.
fn next_link(header: &str) -> Option<&str> {
    let mut rest = header;
    loop {
        let open = rest.find('<')?;
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        let after = &rest[close + 1..];
        let params_end = after.find('<').unwrap_or(after.len());
        let is_next = after[..params_end].split(';').any(|param| {
            param.split_once('=').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("rel")
                    && value
                        .trim()
                        .trim_end_matches(',')
                        .trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|rel| rel.eq_ignore_ascii_case("next"))
            })
        });
        if is_next {
            return Some(target);
        }
        rest = &after[params_end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_link_is_found_among_others_and_nothing_else_is_taken_for_it() {
        let shop = "https://s.myshopify.com/admin/api/2026-04/orders.json";
        let both = format!(
            "<{shop}?page_info=p1&limit=250>; rel=\"previous\", <{shop}?page_info=n2&limit=250>; rel=\"next\""
        );
        assert_eq!(
            next_link(&both),
            Some(format!("{shop}?page_info=n2&limit=250").as_str())
        );
        assert_eq!(
            next_link("<https://a/x?page_info=n>;rel=next"),
            Some("https://a/x?page_info=n")
        );
        assert_eq!(
            next_link("<https://a/x>; REL=\"prefetch next\""),
            Some("https://a/x")
        );
        assert_eq!(
            next_link(&format!("<{shop}?page_info=p1>; rel=\"previous\"")),
            None
        );
        for malformed in [
            "",
            "<",
            ">",
            "<a",
            "rel=next",
            "<a>; rel",
            "<a>; rel=",
            "<a>; nextrel=x",
            "<>>;<;rel=\"",
            "\u{1F600}<\u{e9}>;rel=n\u{e9}xt",
        ] {
            assert_eq!(next_link(malformed), None, "{malformed:?}");
        }
    }

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
