//! Flywheel's PostgreSQL connections over TLS, against a real server with
//! `ssl=on`: the replication connection (our own protocol code) and the query
//! connections negotiate TLS as `sslmode` asks, verify the certificate when
//! `erp.tls_ca_file` is set, and refuse a certificate from another CA.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::tls::ca;
use flywheel::erp::postgres::replication::ReplicationConn;
use flywheel::local_infra::{LocalPostgres, unprivileged_user};
use flywheel::pg::tls::PgTls;
use rcgen::{Issuer, KeyPair};

/// A PostgreSQL server with TLS on, its certificate (for 127.0.0.1 and
/// localhost) signed by `issuer`. The files live in `dir`, readable by the
/// server's user only, as PostgreSQL insists.
async fn tls_server(issuer: &Issuer<'static, KeyPair>, dir: &Path) -> LocalPostgres {
    let (cert_path, key_path) = common::tls::signed_cert(issuer, dir, "server");
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if let Some((uid, gid)) = unprivileged_user() {
        for p in [dir, &cert_path, &key_path] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
        }
    }
    LocalPostgres::start_with(&[
        ("ssl", "on"),
        ("ssl_cert_file", &cert_path.display().to_string()),
        ("ssl_key_file", &key_path.display().to_string()),
    ])
    .await
    .expect("PostgreSQL with ssl=on starts")
}

fn write_ca(dir: &Path, name: &str, pem: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

async fn backends_over_tls(pg: &LocalPostgres) -> Vec<(String, bool)> {
    let (client, conn) = tokio_postgres::connect(&pg.dsn("postgres"), tokio_postgres::NoTls)
        .await
        .expect("a plain connection for inspection");
    tokio::spawn(conn);
    client
        .query(
            "SELECT a.backend_type, s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.pid <> pg_backend_pid() AND a.backend_type IN ('walsender', 'client backend')",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn replication_and_query_connections_use_tls_and_verify_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, issuer) = ca("Flywheel test CA");
    let (other_pem, _) = ca("Some other CA");
    let pg = tls_server(&issuer, dir.path()).await;
    let dsn = format!("{} sslmode=require", pg.dsn("postgres"));
    let config: tokio_postgres::Config = dsn.parse().unwrap();

    // Verified against the CA that signed the server's certificate.
    let tls = PgTls::new(Some(&write_ca(dir.path(), "ca.pem", &ca_pem))).expect("TLS settings");
    let mut repl = ReplicationConn::connect(&config, &tls)
        .await
        .expect("replication connection over TLS");
    repl.identify_system().await.expect("IDENTIFY_SYSTEM");
    let client = flywheel::pg::tls::connect(&config, &tls)
        .await
        .expect("query connection over TLS");
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the query connection is encrypted");
    let backends = backends_over_tls(&pg).await;
    assert!(
        backends.contains(&("walsender".to_string(), true)),
        "the replication connection is encrypted: {backends:?}"
    );

    // A certificate from another CA is refused, with the reason.
    let wrong = PgTls::new(Some(&write_ca(dir.path(), "other.pem", &other_pem))).unwrap();
    let err = ReplicationConn::connect(&config, &wrong)
        .await
        .err()
        .expect("the replication connection refuses the certificate")
        .to_string();
    assert!(err.contains("TLS") && err.contains("certificate"), "{err}");
    let err = flywheel::pg::tls::connect(&config, &wrong)
        .await
        .expect_err("the query connection refuses the certificate");
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");

    // The roles stop with the reason instead of restarting forever: a wrong
    // certificate does not heal by itself.
    let mut roles = flywheel::config::Config::default();
    roles.erp.dsn = dsn.clone();
    roles.erp.tls_ca_file = Some(dir.path().join("other.pem"));
    let stop = tokio_util::sync::CancellationToken::new();
    let source = tokio::time::timeout(
        Duration::from_secs(30),
        flywheel::erp::source::run_with_retries(&roles, stop.clone()),
    )
    .await
    .expect("the source gives up instead of retrying")
    .expect_err("the source cannot start");
    assert!(source.to_string().contains("certificate"), "{source}");
    let processor = tokio::time::timeout(
        Duration::from_secs(30),
        flywheel::sync::stock_to_shop::run(&roles, &roles.shops[0], stop.clone()),
    )
    .await
    .expect("the processor gives up instead of retrying")
    .expect_err("the processor cannot start");
    assert!(processor.to_string().contains("certificate"), "{processor}");

    // Without a CA: encrypted but unverified, as libpq's sslmode=require.
    let unverified = PgTls::new(None).unwrap();
    let mut repl = ReplicationConn::connect(&config, &unverified)
        .await
        .expect("replication connection, unverified");
    repl.identify_system().await.expect("IDENTIFY_SYSTEM");

    // A CA file that is not one is refused up front, naming it.
    let err = PgTls::new(Some(&write_ca(dir.path(), "junk.pem", "not a certificate")))
        .err()
        .expect("junk refused")
        .to_string();
    assert!(err.contains("junk.pem"), "{err}");
}

#[tokio::test]
async fn sslmode_require_refuses_a_server_without_tls_and_prefer_falls_back() {
    let pg = LocalPostgres::start()
        .await
        .expect("PostgreSQL without TLS");
    let tls = PgTls::new(None).unwrap();
    let require: tokio_postgres::Config = format!("{} sslmode=require", pg.dsn("postgres"))
        .parse()
        .unwrap();
    let err = ReplicationConn::connect(&require, &tls)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("does not offer TLS"), "{err}");
    assert!(flywheel::pg::tls::connect(&require, &tls).await.is_err());

    // The default (prefer) connects in plain text to such a server.
    let prefer: tokio_postgres::Config = pg.dsn("postgres").parse().unwrap();
    let mut repl = ReplicationConn::connect(&prefer, &tls)
        .await
        .expect("plain replication connection");
    repl.identify_system().await.expect("IDENTIFY_SYSTEM");
    flywheel::pg::tls::connect(&prefer, &tls)
        .await
        .expect("plain query connection");
}
