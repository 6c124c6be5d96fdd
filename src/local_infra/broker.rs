//! A throwaway development broker (Kafka protocol, in-memory storage): the
//! `flywheel dev-broker` of this build, run as a child process.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, Producer};

use super::process::{log_tail, spawn_guarded, stop};
use super::{LocalInfraError, free_port};

/// The processors' `fetch.wait.max.ms` against this broker (see
/// [`LocalBroker::configure`]).
pub const FETCH_WAIT_MS: u64 = 10;

const MISSING_HINT: &str = "this build has no development broker (built with --no-default-features): \
     build with the default features, set FLYWHEEL_BIN to a flywheel binary that has one, \
     or configure kafka.bootstrap";

pub struct LocalBroker {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    security: BrokerSecurity,
    /// `flywheel dev-broker --fetch-cache-mib`, when not its default.
    fetch_cache_mib: Option<u64>,
}

/// How a broker started for tests of secured clients is reached.
#[derive(Clone, Debug, Default)]
pub struct BrokerSecurity {
    /// Clients must authenticate with SASL (`flywheel dev-broker --authentication`).
    pub authentication: bool,
    /// The listener speaks TLS with this PEM certificate chain and key.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl LocalBroker {
    /// Starts the development broker on a free port from an empty working
    /// directory and waits until it answers a metadata request.
    pub async fn start() -> Result<Self, LocalInfraError> {
        Self::start_on_port(free_port()?).await
    }

    /// Like [`start`](Self::start) on a given port, e.g. one a client was told
    /// about before the broker existed.
    pub async fn start_on_port(port: u16) -> Result<Self, LocalInfraError> {
        Self::start_with(port, BrokerSecurity::default()).await
    }

    /// Starts a broker whose listener needs TLS and/or SASL.
    pub async fn start_secured(security: BrokerSecurity) -> Result<Self, LocalInfraError> {
        Self::start_with(free_port()?, security).await
    }

    /// Starts a broker that keeps `mib` MiB of recent batches to answer
    /// fetches from (`flywheel dev-broker --fetch-cache-mib`): with 0, every
    /// fetch is answered by its storage.
    pub async fn start_with_fetch_cache(mib: u64) -> Result<Self, LocalInfraError> {
        Self::start_configured(free_port()?, BrokerSecurity::default(), Some(mib)).await
    }

    async fn start_with(port: u16, security: BrokerSecurity) -> Result<Self, LocalInfraError> {
        Self::start_configured(port, security, None).await
    }

    async fn start_configured(
        port: u16,
        security: BrokerSecurity,
        fetch_cache_mib: Option<u64>,
    ) -> Result<Self, LocalInfraError> {
        let bin = broker_program()?;
        let dir = tempfile::Builder::new()
            .prefix("flywheel-dev-broker-")
            .tempdir()?;
        let mut broker = LocalBroker {
            port,
            dir,
            child: None,
            security,
            fetch_cache_mib,
        };
        broker.spawn(&bin)?;
        broker.wait_ready().await?;
        Ok(broker)
    }

    fn spawn(&mut self, bin: &PathBuf) -> Result<(), LocalInfraError> {
        let listen = format!("127.0.0.1:{}", self.port);
        let logfile = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(bin);
        cmd.arg("dev-broker")
            .args(["--listen", &listen])
            .args(self.security_args())
            .args(
                self.fetch_cache_mib
                    .map(|mib| ["--fetch-cache-mib".to_owned(), mib.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .current_dir(self.dir.path())
            // Its own log level: a test's RUST_LOG=debug would drown the
            // broker's log in protocol frames.
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(logfile.try_clone()?)
            .stderr(logfile);
        self.child = Some(spawn_guarded(cmd, Some(self.dir.path().to_path_buf()))?);
        Ok(())
    }

    fn security_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        if self.security.authentication {
            args.push("--authentication".into());
        }
        if let Some((cert, key)) = &self.security.tls {
            args.extend([
                "--tls-cert".into(),
                cert.into(),
                "--tls-key".into(),
                key.into(),
            ]);
        }
        args
    }

    async fn wait_ready(&mut self) -> Result<(), LocalInfraError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        // The bootstrap answers metadata itself, wherever it advertises.
        let kafka = crate::config::KafkaConfig {
            bootstrap: self.bootstrap(),
            ..Default::default()
        };
        let mut last_err = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(self.start_failed(format!("exited with {status}")));
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                // Nobody can pass its SASL check without a user in its
                // storage, and a TLS listener answers only clients with the
                // test's CA: a listener that accepts is as ready as it gets.
                if self.security.authentication || self.security.tls.is_some() {
                    return Ok(());
                }
                let k = kafka.clone();
                let answer = tokio::task::spawn_blocking(move || metadata_answers(&k))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                match answer {
                    Ok(()) => return Ok(()),
                    Err(e) => last_err = e,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(self.start_failed(format!("no metadata answer within 30 s: {last_err}")))
    }

    fn start_failed(&self, reason: String) -> LocalInfraError {
        LocalInfraError::StartFailed {
            what: "development broker".into(),
            reason,
            log_tail: log_tail(&self.log_path(), 30),
        }
    }

    /// The port of its own (plaintext) listener.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker process's id while it runs (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Points `kafka` at this broker, with the fetch wait it needs: tansu
    /// answers a fetch only after `fetch.wait.max.ms`, records or not, so
    /// Apache Kafka's 500 ms would be added to every hop through it.
    pub fn configure(&self, kafka: &mut crate::config::KafkaConfig) {
        kafka.bootstrap = self.bootstrap();
        kafka.fetch_wait_max_ms = FETCH_WAIT_MS;
    }

    /// The default Kafka settings, pointed at this broker ([`configure`](Self::configure)).
    pub fn kafka_config(&self) -> crate::config::KafkaConfig {
        let mut kafka = crate::config::KafkaConfig::default();
        self.configure(&mut kafka);
        kafka
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// Stops the broker (SIGTERM, SIGKILL after 5 s). Memory storage is lost.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, libc::SIGTERM, Duration::from_secs(5));
        }
    }

    /// Starts a fresh broker on the same port after [`stop`](Self::stop), for
    /// tests of what clients do while the broker is away.
    pub async fn restart(&mut self) -> Result<(), LocalInfraError> {
        self.stop();
        self.spawn(&broker_program()?)?;
        self.wait_ready().await
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn metadata_answers(kafka: &crate::config::KafkaConfig) -> Result<(), String> {
    let producer: BaseProducer = crate::bus::client::client_config(kafka, "local-broker-probe")
        .set("log_level", "3")
        .create()
        .map_err(|e| e.to_string())?;
    producer
        .client()
        .fetch_metadata(None, Duration::from_secs(2))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The executable whose `dev-broker` subcommand runs the broker: `FLYWHEEL_BIN`
/// when set; this executable when it is Flywheel with the broker built in;
/// else the `flywheel` binary cargo builds beside a test or benchmark binary
/// (`target/<profile>/deps/<test>` → `target/<profile>/flywheel`).
fn broker_program() -> Result<PathBuf, LocalInfraError> {
    if let Some(bin) = std::env::var_os("FLYWHEEL_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe()?;
    if exe.file_stem().is_some_and(|s| s == "flywheel") {
        return if cfg!(feature = "dev-broker") {
            Ok(exe)
        } else {
            Err(LocalInfraError::Missing {
                what: "development broker".into(),
                hint: MISSING_HINT.into(),
            })
        };
    }
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join("flywheel"))
        .find(|p| p.is_file())
        .ok_or_else(|| LocalInfraError::Missing {
            what: "the flywheel binary (for its development broker)".into(),
            hint: format!(
                "no flywheel binary beside {}: run through cargo test/bench (which build it) or set FLYWHEEL_BIN",
                exe.display()
            ),
        })
}
