//! Logging setup: human-readable by default, JSON on request; to stderr, or
//! to a file when the terminal belongs to something else (the demo's status).

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber, writing to stderr. `RUST_LOG` overrides
/// the configured level.
pub fn init(log: &LogConfig) {
    install(log, std::io::stderr, true);
}

/// Like [`init`], appending to `path` instead (no colours).
pub fn init_to_file(log: &LogConfig, path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)?;
    install(log, Mutex::new(file), false);
    Ok(())
}

fn install<W>(log: &LogConfig, writer: W, ansi: bool)
where
    W: for<'a> MakeWriter<'a, Writer: Write> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},rdkafka=warn", log.level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.try_init(),
    };
}
