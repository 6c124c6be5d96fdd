//! TLS for Flywheel's PostgreSQL connections (the ERP's query and replication
//! connections, the state database), as the DSN's `sslmode` asks: `disable`,
//! `prefer` (the default: TLS when the server offers it) or `require`.
//!
//! As with libpq's `prefer`/`require`, the connection is encrypted but the
//! server's certificate is not checked unless a CA is configured
//! (`erp.tls_ca_file`); then it must chain to that CA and name the host
//! (libpq's `verify-full`). tokio-postgres parses no `verify-*` modes nor
//! `sslrootcert`, hence the setting.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    #[error("cannot read erp.tls_ca_file {path}: {source}")]
    ReadCa {
        path: String,
        source: std::io::Error,
    },
    #[error("erp.tls_ca_file {path}: {reason}")]
    BadCa { path: String, reason: String },
    #[error("TLS setup: {0}")]
    Setup(#[from] rustls::Error),
}

/// The TLS settings of every PostgreSQL connection of a process.
#[derive(Clone)]
pub struct PgTls {
    config: Arc<ClientConfig>,
}

impl PgTls {
    /// Verifies server certificates against `ca_file` when given.
    pub fn new(ca_file: Option<&Path>) -> Result<PgTls, PgTlsError> {
        // An explicit provider: the build links two rustls backends (aws-lc-rs
        // and, through the development broker, ring), so there is no default.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let config = match ca_file {
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
                .with_no_client_auth(),
            Some(path) => {
                let shown = path.display().to_string();
                let bad = |reason: String| PgTlsError::BadCa {
                    path: shown.clone(),
                    reason,
                };
                let pem = std::fs::read(path).map_err(|source| PgTlsError::ReadCa {
                    path: shown.clone(),
                    source,
                })?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| bad(format!("not PEM: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| bad(format!("not a CA certificate: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(bad("holds no certificate".into()));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        Ok(PgTls {
            config: Arc::new(config),
        })
    }

    /// For tokio-postgres connections.
    pub fn connector(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        tokio_postgres_rustls::MakeRustlsConnect::new((*self.config).clone())
    }

    /// The TLS handshake on a socket whose server accepted an SSLRequest
    /// (the replication connection, which is our own protocol code).
    pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        host: &str,
        socket: S,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<S>> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, socket)
            .await
    }
}

/// Connects with `tls` and drives the connection in the background.
pub async fn connect(
    config: &tokio_postgres::Config,
    tls: &PgTls,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tls.connector()).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// libpq's `sslmode=prefer/require` without a CA: encrypted, any certificate
/// accepted (the handshake's signatures are still checked).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
