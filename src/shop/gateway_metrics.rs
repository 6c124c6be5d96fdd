//! The webhook gateway's Prometheus metrics (default registry).

use std::sync::OnceLock;

use prometheus::{
    Histogram, HistogramOpts, IntCounterVec, Opts, register_histogram, register_int_counter_vec,
};

/// Registration fails only on a duplicate name, which is a programming error.
const REGISTER: &str = "registering a gateway metric";

pub struct GatewayMetrics {
    pub requests: IntCounterVec,
    pub rejected: IntCounterVec,
    pub verification_failures: IntCounterVec,
    pub duplicates: IntCounterVec,
    pub ignored: IntCounterVec,
    pub produced: IntCounterVec,
    pub produce_seconds: Histogram,
}

impl GatewayMetrics {
    pub fn get() -> &'static GatewayMetrics {
        static M: OnceLock<GatewayMetrics> = OnceLock::new();
        M.get_or_init(|| GatewayMetrics {
            requests: register_int_counter_vec!(
                Opts::new(
                    "flywheel_gateway_requests_total",
                    "Webhook requests by platform and HTTP status"
                ),
                &["platform", "status"]
            )
            .expect(REGISTER),
            rejected: register_int_counter_vec!(
                Opts::new(
                    "flywheel_gateway_rejected_total",
                    "Webhooks not put in Kafka, by platform and reason"
                ),
                &["platform", "reason"]
            )
            .expect(REGISTER),
            verification_failures: register_int_counter_vec!(
                Opts::new(
                    "flywheel_gateway_verification_failures_total",
                    "Webhooks with a missing or wrong signature"
                ),
                &["platform"]
            )
            .expect(REGISTER),
            duplicates: register_int_counter_vec!(
                Opts::new(
                    "flywheel_gateway_duplicates_total",
                    "Redelivered webhook ids answered without producing"
                ),
                &["platform"]
            )
            .expect(REGISTER),
            ignored: register_int_counter_vec!(
                Opts::new(
                    "flywheel_gateway_ignored_total",
                    "Webhooks of unsupported topics (and WooCommerce pings), answered and ignored"
                ),
                &["platform"]
            )
            .expect(REGISTER),
            produced: register_int_counter_vec!(
                Opts::new(
                    "flywheel_gateway_produced_total",
                    "Webhooks made durable in Kafka, by platform and kind"
                ),
                &["platform", "kind"]
            )
            .expect(REGISTER),
            produce_seconds: register_histogram!(
                HistogramOpts::new(
                    "flywheel_gateway_produce_seconds",
                    "Time from a verified webhook to Kafka's acknowledgement"
                )
                .buckets(vec![
                    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0
                ])
            )
            .expect(REGISTER),
        })
    }
}
