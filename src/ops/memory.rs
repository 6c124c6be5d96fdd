//! Giving freed heap memory back to the operating system.
//!
//! glibc's allocator returns memory to the system only from the top of each
//! arena, and a worker allocates on many threads (tokio's workers, librdkafka's
//! callbacks): after a burst (the first full sync's 10,000 `products/update`
//! webhooks) the freed pages stayed resident, about 35 MB in the
//! `worker_memory` bench. `malloc_trim` releases every whole free page of every
//! arena; it walks the arenas under their locks, which takes milliseconds, so
//! it runs on a blocking thread every [`TRIM_EVERY`].

use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Trims the heap every [`TRIM_EVERY`] until `shutdown` (glibc only; elsewhere
/// nothing to do).
pub fn spawn_trim(shutdown: CancellationToken) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let took = tokio::task::spawn_blocking(|| {
                let start = std::time::Instant::now();
                // SAFETY: malloc_trim only walks glibc's own arenas under their locks.
                unsafe { libc::malloc_trim(0) };
                start.elapsed()
            })
            .await;
            if let Ok(took) = took {
                tracing::debug!(micros = took.as_micros() as u64, "heap trimmed");
            }
        }
    });
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    drop(shutdown);
}
