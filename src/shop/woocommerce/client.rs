//! The WooCommerce REST API v3 client of the processors: basic auth with the
//! shop's key pair, its own request rate (`governor`: `requests_per_second`,
//! `burst`), and the retry policy. 429 and 503 with `Retry-After` are waits
//! (not failures); other 5xx, timeouts and lost connections back off with
//! jitter and count toward `MAX_ATTEMPTS`; 401/403 stop at once with the
//! settings to check; any other 4xx is the shop refusing the request.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::config::ShopConfig;
use crate::shop::api::metrics;

/// Failed attempts (not waits) before a request is reported unavailable.
const MAX_ATTEMPTS: u32 = 8;
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The longest `Retry-After` honoured as given; longer ones are capped.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum WooError {
    #[error(
        "shop `{shop}` refused the REST API key ({status}): check consumer_key and consumer_secret of its [[shops]] entry (a read/write key)"
    )]
    Unauthorized { shop: String, status: u16 },
    #[error("shop `{shop}` failed {attempts} times in a row; last: {last}")]
    Unavailable {
        shop: String,
        attempts: u32,
        last: String,
    },
    #[error("shop `{shop}` refused {what} ({status}): {body}")]
    Refused {
        shop: String,
        what: String,
        status: u16,
        body: String,
    },
    #[error("shop `{shop}` answered {what} with something that is not the expected JSON: {detail}")]
    Protocol {
        shop: String,
        what: String,
        detail: String,
    },
    #[error(
        "TLS to shop `{0}` failed; check its admin_url, and set its ca_file to a PEM file of the CA that signed the certificate if it is not publicly trusted"
    )]
    Tls(String),
    #[error("shop configuration: {0}")]
    Config(String),
}

impl WooError {
    /// Worth trying again later (the shop away), as opposed to a request or
    /// credentials that can never work.
    pub fn is_transient(&self) -> bool {
        match self {
            WooError::Unavailable { .. } => true,
            WooError::Unauthorized { .. }
            | WooError::Refused { .. }
            | WooError::Protocol { .. }
            | WooError::Tls(_)
            | WooError::Config(_) => false,
        }
    }
}

pub struct WooClient {
    http: reqwest::Client,
    /// `https://<site>/wp-json/wc/v3`, without a trailing slash.
    base: String,
    key: String,
    secret: String,
    limiter: DefaultDirectRateLimiter,
    pub(super) shop: String,
    processor: &'static str,
    /// SKU → where it lives, looked up on a miss (`products`).
    pub(super) ids: std::collections::HashMap<String, super::products::ProductRef>,
}

impl WooClient {
    /// `shop`'s client for `processor`.
    pub fn for_shop(shop: &ShopConfig, processor: &'static str) -> Result<WooClient, WooError> {
        let http = crate::shop::api::http_client(shop).map_err(WooError::Config)?;
        let period = Duration::from_secs_f64(1.0 / shop.requests_per_second.max(0.001));
        let quota = Quota::with_period(period)
            .ok_or_else(|| WooError::Config("requests_per_second is too high".into()))?
            .allow_burst(NonZeroU32::new(shop.burst).unwrap_or(NonZeroU32::MIN));
        let m = metrics();
        m.throttle_wait.with_label_values(&[processor, &shop.name]);
        Ok(WooClient {
            http,
            base: shop.admin_url.trim_end_matches('/').to_owned(),
            key: shop.consumer_key.0.clone(),
            secret: shop.consumer_secret.0.clone(),
            limiter: RateLimiter::direct(quota),
            shop: shop.name.clone(),
            processor,
            ids: Default::default(),
        })
    }

    async fn wait(&self, d: Duration) {
        metrics()
            .throttle_wait
            .with_label_values(&[self.processor, &self.shop])
            .inc_by(d.as_secs_f64());
        tokio::time::sleep(d).await;
    }

    fn count(&self, outcome: &str) {
        metrics()
            .requests
            .with_label_values(&[self.processor, &self.shop, outcome])
            .inc();
    }

    /// Sends one request (`path` below the API base) and returns its JSON.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, WooError> {
        let what = format!("{method} {path}");
        let mut url = reqwest::Url::parse(&format!("{}/{path}", self.base)).map_err(|e| {
            WooError::Config(format!("shop `{}`: admin_url is not a URL: {e}", self.shop))
        })?;
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let mut failures = 0u32;
        loop {
            let before = tokio::time::Instant::now();
            self.limiter.until_ready().await;
            let waited = before.elapsed();
            if waited > Duration::from_millis(1) {
                metrics()
                    .throttle_wait
                    .with_label_values(&[self.processor, &self.shop])
                    .inc_by(waited.as_secs_f64());
            }
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .basic_auth(&self.key, Some(&self.secret));
            if let Some(b) = body {
                req = req.json(b);
            }
            let failure = match req.send().await {
                Err(e) => {
                    if crate::tls_error::rustls_cause(&e).is_some() {
                        self.count("error");
                        return Err(WooError::Tls(self.shop.clone()));
                    }
                    format!("request failed: {e}")
                }
                Ok(r) => {
                    let status = r.status();
                    let retry_after = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s).min(RETRY_AFTER_MAX));
                    if status.is_success() {
                        match r.text().await {
                            Ok(text) => {
                                self.count("ok");
                                return serde_json::from_str(&text).map_err(|e| {
                                    WooError::Protocol {
                                        shop: self.shop.clone(),
                                        what,
                                        detail: e.to_string(),
                                    }
                                });
                            }
                            // The connection broke mid-answer: another try.
                            Err(e) => {
                                self.count("transient_error");
                                format!("reading the answer failed: {e}")
                            }
                        }
                    } else {
                        match (status, retry_after) {
                            (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, _) => {
                                self.count("unauthorized");
                                return Err(WooError::Unauthorized {
                                    shop: self.shop.clone(),
                                    status: status.as_u16(),
                                });
                            }
                            (
                                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE,
                                Some(d),
                            ) => {
                                // The shop says when: a wait, not a failure.
                                self.count("throttled");
                                self.wait(d).await;
                                continue;
                            }
                            (StatusCode::TOO_MANY_REQUESTS, None) => {
                                self.count("throttled");
                                self.wait(Duration::from_secs(1)).await;
                                continue;
                            }
                            (s, _) if s.is_server_error() => {
                                self.count("transient_error");
                                format!("HTTP {s}")
                            }
                            (s, _) => {
                                self.count("error");
                                let body = r.text().await.unwrap_or_default();
                                return Err(WooError::Refused {
                                    shop: self.shop.clone(),
                                    what,
                                    status: s.as_u16(),
                                    body: body.chars().take(500).collect(),
                                });
                            }
                        }
                    }
                }
            };
            failures += 1;
            if failures >= MAX_ATTEMPTS {
                return Err(WooError::Unavailable {
                    shop: self.shop.clone(),
                    attempts: failures,
                    last: failure,
                });
            }
            let exp = BACKOFF_BASE
                .saturating_mul(1 << failures.min(6))
                .min(BACKOFF_MAX);
            // Full jitter: workers retrying together spread out.
            let pause = exp.mul_f64(0.5 + fastrand::f64() / 2.0);
            tracing::debug!(shop = %self.shop, %what, failure = %failure, ?pause, "retrying");
            tokio::time::sleep(pause).await;
        }
    }
}
