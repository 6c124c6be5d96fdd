//! Long-lived roles restart themselves after transient failures.
//!
//! A role that fails with an error worth retrying (a server away, a slot
//! briefly held) is started again after a backoff: 1 s doubling to 30 s, back
//! to 1 s after a minute of health. Each role resumes from its durable position
//! (the slot, the committed offsets), so a restart replays and never skips.
//! Errors an operator must fix end the role.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

fn restarts() -> &'static prometheus::IntCounterVec {
    static M: std::sync::OnceLock<prometheus::IntCounterVec> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        prometheus::register_int_counter_vec!(
            prometheus::Opts::new(
                "flywheel_role_restarts_total",
                "Restarts of a long-lived role after a transient failure (a server away), by role"
            ),
            &["role"]
        )
        .expect("registering the restarts counter")
    })
}

/// Runs `start()` until it returns `Ok`, `shutdown` is cancelled, or it fails
/// with an error `retryable` rejects.
pub async fn with_restarts<E, Fut>(
    role: &str,
    shutdown: &CancellationToken,
    retryable: impl Fn(&E) -> bool,
    mut start: impl FnMut() -> Fut,
) -> Result<(), E>
where
    E: std::fmt::Display,
    Fut: Future<Output = Result<(), E>>,
{
    // Exported at 0 from the start, so an alert on its rate sees the series.
    restarts().with_label_values(&[role]);
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        match start().await {
            Ok(()) => return Ok(()),
            // Stopping anyway: what did not complete replays at the next start.
            Err(e) if retryable(&e) && shutdown.is_cancelled() => {
                tracing::warn!(role, error = %e, "failed while stopping; uncommitted work replays at the next start");
                return Ok(());
            }
            Err(e) if retryable(&e) => {
                restarts().with_label_values(&[role]).inc();
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(role, error = %e, retry_in_s = backoff.as_secs(), "failed; restarting from its durable position");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn retries_transient_failures_and_stops_on_final_ones() {
        let calls = AtomicU32::new(0);
        let token = CancellationToken::new();
        let r: Result<(), String> = with_restarts(
            "t",
            &token,
            |e: &String| e == "transient",
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err("transient".to_string()),
                    _ => Ok(()),
                }
            },
        )
        .await;
        assert_eq!(r, Ok(()));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let r: Result<(), String> = with_restarts(
            "t",
            &token,
            |e: &String| e == "transient",
            || async { Err("final".to_string()) },
        )
        .await;
        assert_eq!(r, Err("final".to_string()));
    }
}
