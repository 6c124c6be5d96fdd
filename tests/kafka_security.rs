//! Flywheel's Kafka clients against brokers that need TLS or SASL: with the
//! right authority they produce and consume; an unknown authority, refused
//! credentials and an unreachable broker each fail with a message naming the
//! setting to fix.
//!
//! The broker is `flywheel dev-broker` (tansu 0.6.0 built in) with
//! `--tls-cert/--tls-key` or `--authentication`.
//!
//! What tansu 0.6.0 cannot show: a *successful* SASL login. Its SASL layer
//! offers SCRAM only (rsasl built without PLAIN) and checks SCRAM users kept
//! in its storage, which can only be created over an authenticated
//! connection — with memory storage, no user can ever exist. Client
//! certificates are sent but not checked (tansu asks for none).

mod common;

use std::time::Duration;

use flywheel::bus::client::{ConnectError, client_config, probe};
use flywheel::config::{KafkaConfig, SaslMechanism, Secret, SecurityProtocol};
use flywheel::local_infra::{BrokerSecurity, LocalBroker, free_port};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const T: Duration = Duration::from_secs(30);

async fn probed(kafka: &KafkaConfig, timeout: Duration) -> Result<(), ConnectError> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || probe(&kafka, timeout))
        .await
        .expect("the probe task")
        .map(|_topics| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_the_brokers_authority_works_and_an_unknown_authority_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, issuer) = common::tls::ca("flywheel test Kafka CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let (broker_cert, broker_key) = common::tls::signed_cert(&issuer, dir.path(), "broker");
    let (client_cert, client_key) = common::tls::signed_cert(&issuer, dir.path(), "client");
    let broker = LocalBroker::start_secured(BrokerSecurity {
        tls: Some((broker_cert, broker_key)),
        ..BrokerSecurity::default()
    })
    .await
    .expect("the TLS broker starts");
    let kafka = KafkaConfig {
        bootstrap: broker.bootstrap(),
        security_protocol: SecurityProtocol::Ssl,
        ssl_ca_file: Some(ca_file),
        ssl_certificate_file: Some(client_cert),
        ssl_key_file: Some(client_key),
        topic_prefix: "tls.".into(),
        partitions: 1,
        ..KafkaConfig::default()
    };
    kafka.validate().expect("valid TLS settings");

    // Topics, a record produced and read back, all over TLS.
    flywheel::bus::topics::ensure_topics(&kafka, &["erp.stock.v1"])
        .await
        .expect("topics created over TLS");
    let topic = kafka.topic("erp.stock.v1");
    let producer: FutureProducer = client_config(&kafka, "test-producer").create().unwrap();
    producer
        .send(
            FutureRecord::to(&topic).key("k").payload("over tls"),
            Duration::from_secs(10),
        )
        .await
        .expect("produced over TLS");
    let consumer: BaseConsumer = client_config(&kafka, "test-consumer")
        .set("group.id", "tls-test")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + T;
    let payload = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing consumed over TLS"
        );
        if let Some(msg) = consumer.poll(Duration::from_millis(200)) {
            break msg.expect("a record").payload().map(<[u8]>::to_vec);
        }
    };
    assert_eq!(payload.as_deref(), Some(&b"over tls"[..]));

    // The same broker, a CA that did not sign its certificate.
    let (other_pem, _) = common::tls::ca("somebody else's CA");
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, other_pem).unwrap();
    let untrusting = KafkaConfig {
        ssl_ca_file: Some(other),
        ..kafka.clone()
    };
    let err = probed(&untrusting, T)
        .await
        .expect_err("a broker certificate from an unknown CA was accepted");
    assert!(matches!(err, ConnectError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("kafka.ssl_ca_file"), "{err}");

    // A plaintext client at a TLS listener gets no answer it understands.
    let plaintext = KafkaConfig {
        bootstrap: kafka.bootstrap.clone(),
        ..KafkaConfig::default()
    };
    let err = probed(&plaintext, Duration::from_secs(3))
        .await
        .expect_err("plaintext to a TLS listener");
    assert!(err.to_string().contains("kafka.security_protocol"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_sasl_credentials_are_named_and_the_password_is_never_printed() {
    let broker = LocalBroker::start_secured(BrokerSecurity {
        authentication: true,
        ..BrokerSecurity::default()
    })
    .await
    .expect("the broker with --authentication starts");
    let password = "not-the-password-7f3a";
    for mechanism in [SaslMechanism::ScramSha512, SaslMechanism::ScramSha256] {
        let kafka = KafkaConfig {
            bootstrap: broker.bootstrap(),
            security_protocol: SecurityProtocol::SaslPlaintext,
            sasl_mechanism: mechanism,
            sasl_username: "flywheel".into(),
            sasl_password: Secret(password.into()),
            ..KafkaConfig::default()
        };
        kafka.validate().expect("valid SASL settings");
        assert!(
            !format!("{kafka:?}").contains(password),
            "Debug shows the password"
        );
        let err = probed(&kafka, T)
            .await
            .expect_err("unknown SASL credentials were accepted");
        assert!(
            matches!(err, ConnectError::Authentication { .. }),
            "{mechanism:?}: {err}"
        );
        assert!(err.to_string().contains("kafka.sasl_password"), "{err}");
    }

    // The command line says the same, password from the environment.
    let (ok, text) = common::flywheel_cli_with_env(
        &["topics"],
        &[
            ("FLYWHEEL_KAFKA__BOOTSTRAP", &broker.bootstrap()),
            ("FLYWHEEL_KAFKA__SECURITY_PROTOCOL", "sasl_plaintext"),
            ("FLYWHEEL_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512"),
            ("FLYWHEEL_KAFKA__SASL_USERNAME", "flywheel"),
            ("FLYWHEEL_KAFKA__SASL_PASSWORD", password),
        ],
    )
    .await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("Kafka refused the SASL credentials"),
        "{text}"
    );
    assert!(!text.contains(password), "the password was printed: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_broker_is_named_with_its_address() {
    let kafka = KafkaConfig {
        bootstrap: format!("127.0.0.1:{}", free_port().unwrap()),
        ..KafkaConfig::default()
    };
    let err = probed(&kafka, Duration::from_secs(3))
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("kafka.bootstrap = {}", kafka.bootstrap)),
        "{err}"
    );
}

#[test]
fn settings_that_cannot_work_are_refused_before_any_client_is_built() {
    let sasl_without_password = KafkaConfig {
        security_protocol: SecurityProtocol::SaslSsl,
        sasl_username: "flywheel".into(),
        ..KafkaConfig::default()
    };
    let err = sasl_without_password.validate().unwrap_err().to_string();
    assert!(err.contains("kafka.sasl_password"), "{err}");

    let ca_without_tls = KafkaConfig {
        ssl_ca_file: Some("/etc/hosts".into()),
        ..KafkaConfig::default()
    };
    let err = ca_without_tls.validate().unwrap_err().to_string();
    assert!(err.contains("does not use TLS"), "{err}");

    let missing_file = KafkaConfig {
        security_protocol: SecurityProtocol::Ssl,
        ssl_ca_file: Some("/nonexistent/ca.pem".into()),
        ..KafkaConfig::default()
    };
    let err = missing_file.validate().unwrap_err().to_string();
    assert!(
        err.contains("kafka.ssl_ca_file = /nonexistent/ca.pem"),
        "{err}"
    );

    let mut owned = KafkaConfig::default();
    owned
        .librdkafka
        .insert("enable.auto.commit".into(), "true".into());
    let err = owned.validate().unwrap_err().to_string();
    assert!(err.contains("enable.auto.commit"), "{err}");

    let mut escape_hatch = KafkaConfig::default();
    escape_hatch
        .librdkafka
        .insert("socket.keepalive.enable".into(), "true".into());
    escape_hatch.validate().expect("any other property passes");
}
