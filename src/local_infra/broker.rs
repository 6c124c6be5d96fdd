//! A throwaway tansu broker (Kafka protocol) with in-memory storage.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, Producer};

use super::process::{log_tail, spawn_guarded, stop};
use super::{LocalInfraError, free_port};

const INSTALL_HINT: &str = "run `cargo install tansu@0.6.0 --features dynostore --locked` (see DEVELOPERS.md) or set FLYWHEEL_TANSU_BIN";

pub struct LocalBroker {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    security: BrokerSecurity,
}

/// How a broker started for tests of secured clients is reached.
#[derive(Clone, Debug, Default)]
pub struct BrokerSecurity {
    /// The port clients are told to use (the advertised listener), e.g. a
    /// TLS-terminating proxy in front of the broker's plaintext listener.
    pub advertised_port: Option<u16>,
    /// Clients must authenticate with SASL (tansu `--authentication`).
    pub authentication: bool,
}

impl LocalBroker {
    /// Starts tansu on a free port from an empty working directory (it reads a
    /// `.env` from there) and waits until it answers a metadata request.
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

    async fn start_with(port: u16, security: BrokerSecurity) -> Result<Self, LocalInfraError> {
        let bin = find_tansu()?;
        let dir = tempfile::Builder::new()
            .prefix("flywheel-tansu-")
            .tempdir()?;
        let mut broker = LocalBroker {
            port,
            dir,
            child: None,
            security,
        };
        broker.spawn(&bin)?;
        broker.wait_ready().await?;
        Ok(broker)
    }

    fn spawn(&mut self, bin: &PathBuf) -> Result<(), LocalInfraError> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!(
            "tcp://127.0.0.1:{}",
            self.security.advertised_port.unwrap_or(self.port)
        );
        let logfile = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(bin);
        cmd.arg("broker")
            .args([
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .args(self.security_args())
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(logfile.try_clone()?)
            .stderr(logfile);
        self.child = Some(spawn_guarded(cmd, Some(self.dir.path().to_path_buf()))?);
        Ok(())
    }

    fn security_args(&self) -> Vec<&'static str> {
        if self.security.authentication {
            vec!["--authentication"]
        } else {
            Vec::new()
        }
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
                // storage, so a listener that accepts is as ready as it gets.
                if self.security.authentication {
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
            what: "tansu broker".into(),
            reason,
            log_tail: log_tail(&self.log_path(), 30),
        }
    }

    /// The port of its own (plaintext) listener.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
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
        self.spawn(&find_tansu()?)?;
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

fn find_tansu() -> Result<PathBuf, LocalInfraError> {
    let mut candidates = Vec::new();
    if let Ok(bin) = std::env::var("FLYWHEEL_TANSU_BIN") {
        candidates.push(PathBuf::from(bin));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("tansu")));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/tansu"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| LocalInfraError::Missing {
            what: "tansu".into(),
            hint: INSTALL_HINT.into(),
        })
}
