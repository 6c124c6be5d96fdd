//! The development broker `flywheel dev-broker`: tansu (a Kafka-protocol broker
//! written in Rust) built into this binary, with in-memory storage.
//!
//! Why built in rather than installed: the README promises a demo and a test
//! run from a machine with only Rust and PostgreSQL, as `temporal server
//! start-dev` brings its own server. Why a child process rather than a task in
//! the caller: tests kill and restart the broker, and a broker that dies with
//! a `kill -9` must take its sockets with it, as a real one does.
//!
//! Production builds leave it out (`cargo build --no-default-features`) and
//! connect to the Kafka of `kafka.bootstrap`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

mod whole_batch_fetch;

use tansu_broker::NODE_ID;
use tansu_broker::broker::Broker;
use tansu_broker::coordinator::group::administrator::Controller;
use tansu_storage::StorageContainer;

use whole_batch_fetch::WholeBatchFetch;

/// How `flywheel dev-broker` listens.
#[derive(Clone, Debug, clap::Args)]
pub struct DevBrokerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub listen: SocketAddr,
    /// Address clients are told to use in metadata (default: `--listen`).
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
    /// Clients must authenticate with SASL (SCRAM). Memory storage holds no
    /// users, so nobody can log in: for testing refusals only.
    #[arg(long)]
    pub authentication: bool,
    /// PEM certificate chain: the listener speaks TLS (with `--tls-key`).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// MiB of the most recently produced batches kept to answer fetches
    /// from, beside the storage's own copy; a consumer reading further back
    /// is answered by the storage, which lists the partition on every fetch.
    #[arg(long, default_value_t = 256)]
    pub fetch_cache_mib: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DevBrokerError {
    #[error("cannot read the TLS certificate or key ({path}): {reason}")]
    TlsFiles { path: PathBuf, reason: String },
    #[error("the TLS certificate and key do not form a valid server identity: {0}")]
    TlsConfig(#[from] rustls::Error),
    #[error("invalid listener address {0}")]
    Address(String),
    #[error("the development broker failed: {0}")]
    Broker(String),
}

/// Runs the broker until SIGTERM or SIGINT.
pub async fn run(args: DevBrokerArgs) -> Result<(), DevBrokerError> {
    // tansu builds rustls configurations with the process-wide provider, and
    // this build links two (aws-lc-rs and ring), so none is the default until
    // one is chosen. An error only says one was chosen already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let advertised = tcp_url(args.advertise.unwrap_or(args.listen))?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(server_config(cert, key)?),
        _ => None,
    };
    // tansu 0.6.0 takes a TLS configuration but never uses it (its listener
    // stays plaintext), so with TLS the listener clients reach is ours: rustls
    // in front of tansu listening on loopback only.
    let listener = match &tls {
        None => tcp_url(args.listen)?,
        Some(config) => {
            let front = tokio::net::TcpListener::bind(args.listen)
                .await
                .map_err(|e| DevBrokerError::Address(format!("{}: {e}", args.listen)))?;
            let inner = flywheel::local_infra::free_port()
                .map_err(|e| DevBrokerError::Address(format!("a loopback port: {e}")))?;
            tokio::spawn(terminate_tls(front, config.clone(), inner));
            tcp_url(SocketAddr::from(([127, 0, 0, 1], inner)))?
        }
    };
    let memory =
        url::Url::parse("memory://tansu/").map_err(|e| DevBrokerError::Address(e.to_string()))?;
    tracing::info!(
        listen = %args.listen,
        advertised = %advertised,
        tls = tls.is_some(),
        authentication = args.authentication,
        "development broker (tansu {}, memory storage) starting",
        TANSU_VERSION
    );
    if args.authentication {
        // tansu wires SASL only through its own builder, whose storage is
        // the plain one. Memory storage holds no users, so nobody gets as far
        // as a fetch and the storage fix below is not needed.
        let broker = Broker::<Controller<StorageContainer>, StorageContainer>::builder()
            .node_id(NODE_ID)
            .cluster_id(CLUSTER_ID)
            .incarnation_id(uuid::Uuid::now_v7())
            .advertised_listener(advertised)
            .storage(memory)
            .listener(listener)
            .authentication(true)
            // Otherwise tansu prints a banner and clears the terminal on exit.
            .silent(true)
            .build()
            .await
            .map_err(broker_error)?;
        return broker
            .main(tokio::time::Instant::now())
            .await
            .map(|_| ())
            .map_err(broker_error);
    }
    let storage = StorageContainer::builder()
        .cluster_id(CLUSTER_ID)
        .node_id(NODE_ID)
        .advertised_listener(advertised.clone())
        .storage(memory)
        .silent(true)
        .build()
        .await
        .map_err(broker_error)?;
    let storage = WholeBatchFetch::new(storage, args.fetch_cache_mib.saturating_mul(1 << 20));
    let groups = Controller::with_storage(storage.clone()).map_err(broker_error)?;
    Broker::new(
        NODE_ID,
        CLUSTER_ID,
        listener,
        advertised,
        storage,
        groups,
        uuid::Uuid::now_v7(),
    )
    .main(tokio::time::Instant::now())
    .await
    .map(|_| ())
    .map_err(broker_error)
}

const CLUSTER_ID: &str = "flywheel-dev";

fn broker_error(e: impl std::fmt::Debug) -> DevBrokerError {
    DevBrokerError::Broker(format!("{e:?}"))
}

/// The tansu version built in (Cargo.toml pins it), for the start-up line.
const TANSU_VERSION: &str = "0.6.0";

/// Accepts TLS connections on `front` and relays each, decrypted, to the
/// broker's loopback listener on `inner`.
async fn terminate_tls(front: tokio::net::TcpListener, config: rustls::ServerConfig, inner: u16) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let (socket, peer) = match front.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // E.g. out of file descriptors: give connections time to end.
                tracing::warn!(error = %e, "accepting a TLS connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // A client that does not trust the certificate aborts here.
            let mut tls = match acceptor.accept(socket).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            if let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", inner)).await {
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            }
        });
    }
}

fn tcp_url(addr: SocketAddr) -> Result<url::Url, DevBrokerError> {
    url::Url::parse(&format!("tcp://{addr}")).map_err(|e| DevBrokerError::Address(e.to_string()))
}

fn server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, DevBrokerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let unreadable = |path: &std::path::Path, e: &dyn std::fmt::Display| DevBrokerError::TlsFiles {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| unreadable(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(cert, &e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| unreadable(key, &e))?;
    // Explicit, for the same reason as in `run`.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?)
}
