//! A throwaway PostgreSQL cluster with `wal_level=logical`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{find_binary, log_tail, run_as, spawn_guarded, stop, unprivileged_user};
use super::{LocalInfraError, free_port};

/// The superuser every local cluster is initialised with (trust auth, loopback only).
pub const LOCAL_SUPERUSER: &str = "flywheel";

pub struct LocalPostgres {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl LocalPostgres {
    /// initdb into a temporary directory and start a server on a free port. Fails
    /// (with the server log) if it does not accept connections within 30 s.
    pub async fn start() -> Result<Self, LocalInfraError> {
        Self::start_with(&[]).await
    }

    /// Like [`start`](Self::start), with extra `-c name=value` server settings
    /// (applied last, so they override the defaults, e.g. `wal_level=replica`).
    pub async fn start_with(settings: &[(&str, &str)]) -> Result<Self, LocalInfraError> {
        let initdb = find_pg_binary("initdb")?;
        let postgres = find_pg_binary("postgres")?;
        let dir = tempfile::Builder::new().prefix("flywheel-pg-").tempdir()?;
        let user = unprivileged_user();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");

        let mut cmd = Command::new(&initdb);
        cmd.arg("-D")
            .arg(&data)
            .args([
                "-U",
                LOCAL_SUPERUSER,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ])
            .args(["--locale=C.UTF-8", "--no-instructions"])
            .current_dir(dir.path());
        run_as(&mut cmd, user);
        let out = cmd.output()?;
        if !out.status.success() {
            return Err(LocalInfraError::StartFailed {
                what: "initdb".into(),
                reason: format!("exit status {}", out.status),
                log_tail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }

        let port = free_port()?;
        let logfile = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&postgres);
        cmd.arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .args(["-c", "wal_level=logical"])
            .args(["-c", "max_replication_slots=32", "-c", "max_wal_senders=32"])
            .args(["-c", "max_connections=200"])
            // A throwaway cluster: durability of the server itself is not under test.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "wal_sender_timeout=60s"])
            .args(
                settings
                    .iter()
                    .flat_map(|(k, v)| ["-c".to_owned(), format!("{k}={v}")]),
            )
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(logfile.try_clone()?)
            .stderr(logfile);
        run_as(&mut cmd, user);
        let child = spawn_guarded(cmd, Some(dir.path().to_path_buf()))?;
        let mut pg = LocalPostgres {
            port,
            dir,
            child: Some(child),
        };
        pg.wait_ready(&log).await?;
        Ok(pg)
    }

    async fn wait_ready(&mut self, log: &Path) -> Result<(), LocalInfraError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last_err = String::new();
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(LocalInfraError::StartFailed {
                    what: "postgres".into(),
                    reason: format!("exited with {status}"),
                    log_tail: log_tail(log, 30),
                });
            }
            match tokio_postgres::connect(&self.dsn("postgres"), tokio_postgres::NoTls).await {
                Ok(_) => return Ok(()),
                Err(e) => last_err = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(LocalInfraError::StartFailed {
            what: "postgres".into(),
            reason: format!("not accepting connections after 30 s: {last_err}"),
            log_tail: log_tail(log, 30),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's process id while it runs (benchmarks read the CPU
    /// time of it and its backends).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Key=value DSN for `dbname` on this cluster, as the superuser.
    pub fn dsn(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={LOCAL_SUPERUSER} dbname={dbname}",
            self.port
        )
    }

    /// Creates a database (fails if it exists).
    pub async fn create_database(&self, name: &str) -> Result<(), tokio_postgres::Error> {
        let (client, conn) =
            tokio_postgres::connect(&self.dsn("postgres"), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "CREATE DATABASE \"{}\"",
                name.replace('"', "\"\"")
            ))
            .await
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Fast shutdown (SIGINT), SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, libc::SIGINT, Duration::from_secs(10));
        }
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finds a PostgreSQL server binary: `$FLYWHEEL_PG_BINDIR`, then PATH, then the
/// newest Debian-style `/usr/lib/postgresql/*/bin`.
pub fn find_pg_binary(name: &str) -> Result<PathBuf, LocalInfraError> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    versions.reverse();
    find_binary(
        name,
        "FLYWHEEL_PG_BINDIR",
        versions,
        "install PostgreSQL 15 or newer (Debian/Ubuntu: `sudo apt-get install postgresql`; macOS: `brew install postgresql@16`) or set FLYWHEEL_PG_BINDIR to the folder holding initdb and postgres",
    )
}
