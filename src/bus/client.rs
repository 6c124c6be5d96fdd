//! Every Kafka client Flywheel builds — producers, consumers and admin clients
//! of every role, command and test — starts from [`client_config`], the one
//! place that sets the brokers, the security settings and the
//! `[kafka.librdkafka]` pass-through. [`probe`] connects once and, when it
//! cannot, says why in terms of those settings: librdkafka itself only retries
//! and logs, so a wrong password would otherwise look like a slow broker.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::KafkaConfig;

/// Why Flywheel could not talk to Kafka, with the settings to look at.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "Kafka refused the SASL credentials ({detail}): check kafka.sasl_username, kafka.sasl_password (FLYWHEEL_KAFKA__SASL_PASSWORD) and kafka.sasl_mechanism"
    )]
    Authentication { detail: String },
    #[error(
        "TLS with Kafka failed ({detail}): check kafka.ssl_ca_file (the authority that signed the brokers' certificates), kafka.security_protocol, and kafka.ssl_certificate_file / kafka.ssl_key_file if the brokers require a client certificate"
    )]
    Tls { detail: String },
    #[error(
        "cannot reach Kafka at kafka.bootstrap = {bootstrap} ({detail}): is the broker up, the address right, and kafka.security_protocol what its listener speaks?"
    )]
    Unreachable { bootstrap: String, detail: String },
    #[error("Kafka client could not be created (check [kafka] and [kafka.librdkafka]): {0}")]
    Client(#[from] KafkaError),
}

/// The configuration every Kafka client starts from; `purpose` ends its
/// `client.id` (`flywheel-processor-stock`), which brokers show in their logs
/// and quotas. The caller adds what its kind of client needs.
pub fn client_config(kafka: &KafkaConfig, purpose: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap)
        .set("client.id", format!("{}-{purpose}", kafka.client_id))
        .set("security.protocol", kafka.security_protocol.as_str());
    if kafka.security_protocol.uses_sasl() {
        c.set("sasl.mechanism", kafka.sasl_mechanism.as_str())
            .set("sasl.username", &kafka.sasl_username)
            .set("sasl.password", &kafka.sasl_password.0);
    }
    let files = [
        ("ssl.ca.location", &kafka.ssl_ca_file),
        ("ssl.certificate.location", &kafka.ssl_certificate_file),
        ("ssl.key.location", &kafka.ssl_key_file),
    ];
    for (property, file) in files {
        if let Some(file) = file {
            c.set(property, file.display().to_string());
        }
    }
    // Last, so an operator can tune anything Flywheel does not own
    // (`KafkaConfig::validate` refuses the owned properties).
    for (property, value) in &kafka.librdkafka {
        c.set(property, value);
    }
    c
}

/// Connects to the cluster and reads its metadata, within `timeout`; returns
/// the names of the topics the cluster has. On failure, says which settings to
/// look at. Blocking: call it from a blocking task.
pub fn probe(kafka: &KafkaConfig, timeout: Duration) -> Result<HashSet<String>, ConnectError> {
    let consumer: BaseConsumer<LastError> =
        client_config(kafka, "probe").create_with_context(LastError::default())?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut detail = match consumer.fetch_metadata(None, left.min(Duration::from_secs(1))) {
            Ok(metadata) => {
                return Ok(metadata
                    .topics()
                    .iter()
                    .map(|t| t.name().to_owned())
                    .collect());
            }
            Err(e) => e.to_string(),
        };
        // librdkafka hands its error events to the context only when polled.
        for _ in 0..5 {
            let _ = consumer.poll(Duration::from_millis(20));
        }
        // The telling error (a refused handshake) is often followed by a
        // generic one ("all brokers are down"): any telling one wins.
        let seen = consumer.context().0.lock().clone();
        if let Some(e) = seen
            .iter()
            .find_map(|(code, reason)| classify(*code, reason))
        {
            return Err(e);
        }
        if !seen.is_empty() {
            detail = seen
                .iter()
                .map(|(_, r)| r.as_str())
                .collect::<Vec<_>>()
                .join("; ");
        }
        if Instant::now() >= deadline {
            return Err(ConnectError::Unreachable {
                bootstrap: kafka.bootstrap.clone(),
                detail,
            });
        }
    }
}

/// A connection error an operator fixes in the settings, from librdkafka's
/// error code and text (a TLS failure can arrive as a transport error whose
/// text names SSL).
fn classify(code: Option<RDKafkaErrorCode>, reason: &str) -> Option<ConnectError> {
    let detail = reason.to_owned();
    match code {
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
            Some(ConnectError::Authentication { detail })
        }
        Some(RDKafkaErrorCode::SSL) => Some(ConnectError::Tls { detail }),
        _ if reason.contains("SSL handshake failed") || reason.contains("certificate verify") => {
            Some(ConnectError::Tls { detail })
        }
        _ if reason.contains("SASL authentication error")
            || reason.contains("Authentication failed") =>
        {
            Some(ConnectError::Authentication { detail })
        }
        _ => None,
    }
}

/// Keeps the distinct errors librdkafka reported (a few), silently: the
/// probe's result says what they mean.
#[derive(Default)]
struct LastError(parking_lot::Mutex<Vec<(Option<RDKafkaErrorCode>, String)>>);

impl ClientContext for LastError {
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, _message: &str) {}

    fn error(&self, error: KafkaError, reason: &str) {
        let mut seen = self.0.lock();
        if seen.len() < 8 && !seen.iter().any(|(_, r)| r == reason) {
            seen.push((error.rdkafka_error_code(), reason.to_owned()));
        }
    }
}

impl ConsumerContext for LastError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SaslMechanism, Secret, SecurityProtocol};

    #[test]
    fn security_settings_become_librdkafka_properties_and_the_pass_through_comes_last() {
        let mut kafka = KafkaConfig {
            bootstrap: "b1:9093,b2:9093".into(),
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: SaslMechanism::ScramSha256,
            sasl_username: "flywheel".into(),
            sasl_password: Secret("s3cret".into()),
            ssl_ca_file: Some("/etc/kafka/ca.pem".into()),
            ..KafkaConfig::default()
        };
        kafka
            .librdkafka
            .insert("socket.keepalive.enable".into(), "true".into());
        let c = client_config(&kafka, "probe");
        assert_eq!(c.get("bootstrap.servers"), Some("b1:9093,b2:9093"));
        assert_eq!(c.get("client.id"), Some("flywheel-probe"));
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(c.get("sasl.username"), Some("flywheel"));
        assert_eq!(c.get("sasl.password"), Some("s3cret"));
        assert_eq!(c.get("ssl.ca.location"), Some("/etc/kafka/ca.pem"));
        assert_eq!(c.get("ssl.certificate.location"), None);
        assert_eq!(c.get("socket.keepalive.enable"), Some("true"));

        let plain = client_config(&KafkaConfig::default(), "x");
        assert_eq!(plain.get("security.protocol"), Some("plaintext"));
        assert_eq!(plain.get("sasl.password"), None);
    }

    #[test]
    fn connection_errors_are_classed_by_what_the_operator_fixes() {
        assert!(matches!(
            classify(
                Some(RDKafkaErrorCode::Authentication),
                "SASL authentication error: Authentication failed"
            ),
            Some(ConnectError::Authentication { .. })
        ));
        assert!(matches!(
            classify(
                Some(RDKafkaErrorCode::BrokerTransportFailure),
                "ssl://b:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed"
            ),
            Some(ConnectError::Tls { .. })
        ));
        assert!(
            classify(
                Some(RDKafkaErrorCode::AllBrokersDown),
                "1/1 brokers are down"
            )
            .is_none()
        );
    }
}
