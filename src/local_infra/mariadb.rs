//! A throwaway MariaDB server with the row-based binary log a Flywheel source
//! needs (`binlog_format=ROW`, `binlog_row_image=FULL`,
//! `binlog_row_metadata=FULL`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use super::process::{find_binary, log_tail, run_as, spawn_guarded, stop, system_user_when_root};
use super::{LocalInfraError, free_port};

/// The account every local server is reached with: `root` over TCP, no
/// password (loopback only, a throwaway server).
pub const LOCAL_MARIADB_USER: &str = "root";

pub struct LocalMariadb {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl LocalMariadb {
    /// `mariadb-install-db` into a temporary directory and start `mariadbd` on
    /// a free port. Fails (with the server log) if it does not accept
    /// connections within 30 s.
    pub async fn start() -> Result<Self, LocalInfraError> {
        Self::start_with(&[]).await
    }

    /// Like [`start`](Self::start), with extra `--name=value` server options
    /// (applied last, so they override the defaults, e.g. `binlog-format=MIXED`).
    pub async fn start_with(options: &[(&str, &str)]) -> Result<Self, LocalInfraError> {
        let install_db = find_mariadb_binary("mariadb-install-db")?;
        let mariadbd = find_mariadb_binary("mariadbd")?;
        let dir = tempfile::Builder::new().prefix("flywheel-mdb-").tempdir()?;
        // mariadbd refuses to run as root; it must also be the one to switch
        // users (below us), or the parent-death signal would be cleared.
        let user = system_user_when_root("mysql");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let data = dir.path().join("data");
        let log = dir.path().join("mariadb.log");

        let mut cmd = Command::new(&install_db);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ])
            .current_dir(dir.path());
        run_as(&mut cmd, user);
        let out = cmd.output()?;
        if !out.status.success() {
            return Err(LocalInfraError::StartFailed {
                what: "mariadb-install-db".into(),
                reason: format!("exit status {}", out.status),
                log_tail: format!(
                    "{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }

        let port = free_port()?;
        let mut cmd = Command::new(&mariadbd);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--log-bin={}", data.join("binlog").display()))
            .args([
                "--server-id=1",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--binlog-row-metadata=FULL",
                "--skip-name-resolve",
                "--max-connections=300",
                "--innodb-buffer-pool-size=64M",
                // A throwaway server: its own durability is not under test.
                "--innodb-flush-log-at-trx-commit=0",
                "--sync-binlog=0",
            ])
            .args(options.iter().map(|(k, v)| format!("--{k}={v}")))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        run_as(&mut cmd, user);
        let child = spawn_guarded(cmd, Some(dir.path().to_path_buf()))?;
        let mut server = LocalMariadb {
            port,
            dir,
            child: Some(child),
        };
        server.wait_ready(&log).await?;
        Ok(server)
    }

    async fn wait_ready(&mut self, log: &Path) -> Result<(), LocalInfraError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last_err = String::new();
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(LocalInfraError::StartFailed {
                    what: "mariadbd".into(),
                    reason: format!("exited with {status}"),
                    log_tail: log_tail(log, 30),
                });
            }
            match self.connect("mysql").await {
                Ok(conn) => {
                    let _ = conn.disconnect().await;
                    return Ok(());
                }
                Err(e) => last_err = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(LocalInfraError::StartFailed {
            what: "mariadbd".into(),
            reason: format!("not accepting connections after 30 s: {last_err}"),
            log_tail: log_tail(log, 30),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL DSN for `database` on this server, as root.
    pub fn dsn(&self, database: &str) -> String {
        format!(
            "mysql://{LOCAL_MARIADB_USER}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// A connection to `database`, as root.
    pub async fn connect(&self, database: &str) -> Result<mysql_async::Conn, mysql_async::Error> {
        let opts =
            mysql_async::Opts::from_url(&self.dsn(database)).map_err(mysql_async::Error::Url)?;
        mysql_async::Conn::new(opts).await
    }

    /// Creates a database (fails if it exists).
    pub async fn create_database(&self, name: &str) -> Result<(), mysql_async::Error> {
        let mut conn = self.connect("mysql").await?;
        conn.query_drop(format!(
            "CREATE DATABASE `{}` CHARACTER SET utf8mb4",
            name.replace('`', "``")
        ))
        .await?;
        conn.disconnect().await
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mariadb.log")
    }

    /// Normal shutdown (SIGTERM), SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, libc::SIGTERM, Duration::from_secs(10));
        }
    }
}

impl Drop for LocalMariadb {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finds a MariaDB binary: `$FLYWHEEL_MARIADB_BINDIR`, then PATH, then
/// `/usr/sbin` and `/usr/bin` (where Debian puts `mariadbd`, outside a
/// normal user's PATH).
pub fn find_mariadb_binary(name: &str) -> Result<PathBuf, LocalInfraError> {
    find_binary(
        name,
        "FLYWHEEL_MARIADB_BINDIR",
        ["/usr/sbin", "/usr/bin"].map(PathBuf::from),
        "install MariaDB 10.6 or newer (Debian/Ubuntu: `sudo apt-get install mariadb-server`; macOS: `brew install mariadb`) or set FLYWHEEL_MARIADB_BINDIR to the folder holding mariadbd and mariadb-install-db",
    )
}
