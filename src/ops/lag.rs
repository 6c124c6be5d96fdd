//! How far behind the pipeline is: each processor group's lag per topic and
//! partition (high watermark − committed offset), and the source slot's lag.
//! `flywheel lag` prints it; the processors role exports the consumer lag as
//! `flywheel_consumer_lag_records` (refreshed every 15 s).

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{IntGaugeVec, Opts, register_int_gauge_vec};
use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

use crate::bus::group::{group_lag, group_name};
use crate::config::Config;

pub use crate::bus::group::PartitionLag;

/// The lag of every processor group on its topic. Topics that do not exist
/// yet are left out.
pub fn consumer_lag(config: &Config) -> Result<Vec<PartitionLag>, KafkaError> {
    let mut out = Vec::new();
    for lane in crate::sync::lanes(config) {
        let group = group_name(&config.processors, &lane.name());
        if let Some(lags) = group_lag(&config.kafka, &group, &config.kafka.topic(lane.topic))? {
            out.extend(lags);
        }
    }
    out.sort_by(|a, b| (&a.group, a.partition).cmp(&(&b.group, b.partition)));
    Ok(out)
}

/// The source slot: (active, bytes of WAL not yet confirmed), if it exists.
pub async fn slot_lag(config: &Config) -> anyhow::Result<Option<(bool, i64)>> {
    let client = crate::pg::tls::connect(&config.erp.pg_config()?, &config.erp.tls()?).await?;
    let row = client
        .query_opt(
            "SELECT active, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.erp.slot],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

fn gauge() -> &'static IntGaugeVec {
    static G: OnceLock<IntGaugeVec> = OnceLock::new();
    G.get_or_init(|| {
        register_int_gauge_vec!(
            Opts::new(
                "flywheel_consumer_lag_records",
                "Records in a processor group's topic partition not yet committed (high watermark − committed offset)"
            ),
            &["group", "topic", "partition"]
        )
        .expect("registering the consumer lag gauge")
    })
}

/// Refreshes `flywheel_consumer_lag_records` every `every` until `shutdown`.
pub async fn export(config: Config, every: Duration, shutdown: CancellationToken) {
    loop {
        let c = config.clone();
        match tokio::task::spawn_blocking(move || consumer_lag(&c)).await {
            Ok(Ok(lags)) => {
                for l in lags {
                    gauge()
                        .with_label_values(&[&l.group, &l.topic, &l.partition.to_string()])
                        .set(l.lag);
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "could not measure consumer lag"),
            Err(e) => tracing::debug!(error = %e, "consumer lag task failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
