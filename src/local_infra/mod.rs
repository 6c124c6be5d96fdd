//! Throwaway local infrastructure: a PostgreSQL cluster, a MariaDB server and a
//! Kafka-protocol development broker (tansu, built in), each in its own temporary directory on
//! a free port.
//!
//! Used by `flywheel demo` (when nothing else is configured), by every
//! integration test and by the benchmarks, so all three run against the same
//! real servers started the same way.

mod broker;
mod mariadb;
mod postgres;
mod process;

pub use broker::{BrokerSecurity, LocalBroker};
pub use mariadb::{LOCAL_MARIADB_USER, LocalMariadb, find_mariadb_binary};
pub use postgres::{LocalPostgres, find_pg_binary};
pub use process::{system_user_when_root, unprivileged_user};

use std::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum LocalInfraError {
    #[error("{what} is not installed or not on PATH: {hint}")]
    Missing { what: String, hint: String },
    #[error("{what} failed to start: {reason}\n--- last lines of its log ---\n{log_tail}")]
    StartFailed {
        what: String,
        reason: String,
        log_tail: String,
    },
    #[error("local infrastructure I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A port that was free a moment ago. The server binds it right after, so the
/// race window is small; a lost race shows up as a loud start failure.
///
/// Chosen below the kernel's ephemeral range where there is room: a port the
/// kernel hands out for port 0 is also what it gives outgoing connections,
/// and one of those took a gateway's port between this check and its bind
/// (`Address already in use` in CI).
pub fn free_port() -> std::io::Result<u16> {
    const LOWEST: u16 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok());
    if let Some(high) = ephemeral_low.filter(|low| *low > LOWEST + 1_000) {
        for _ in 0..50 {
            let port = fastrand::u16(LOWEST..high);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
