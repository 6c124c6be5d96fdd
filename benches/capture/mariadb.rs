//! The MariaDB run of the capture benchmark (a module of `capture.rs`):
//! Flywheel's binlog source vs `mariadb-binlog --read-from-remote-server`
//! (the physical baseline: receives the same binlog range as a replica and
//! writes it out raw, like `pg_recvlogical` for PostgreSQL).
//!
//! Phase A, fixed offered load: each transaction sets 5 random bins to the
//! transaction's sequence number; a Kafka consumer reads `erp.stock.v1` and
//! maps each event's `on_hand` back to the commit it came from. MariaDB's
//! binlog timestamps have whole seconds, so the latency is measured here:
//! commit (client side) → event consumed from Kafka, an upper bound of
//! commit → Kafka ack.
//!
//! Phase B, same binlog: with the source stopped, a burst is written; then the
//! source catches up to its end (stored position ≥ end), then
//! `mariadb-binlog` reads the very same range.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use tokio_util::sync::CancellationToken;

use flywheel::bus::avro::{AvroCodec, field_str};
use flywheel::config::Config;
use flywheel::erp::demo_erp::{DemoSize, SplitMix64};
use flywheel::erp::demo_erpnext::{self, warehouse_name};
use flywheel::erp::mysql::binlog_pos::BinlogPos;
use flywheel::erp::source_metrics::SourceMetrics;
use flywheel::local_infra::{LocalBroker, LocalMariadb, find_mariadb_binary};

use super::{Knobs, events_total};

async fn master_status(c: &mut mysql_async::Conn) -> BinlogPos {
    let row: mysql_async::Row = c
        .query_first("SHOW MASTER STATUS")
        .await
        .expect("SHOW MASTER STATUS")
        .expect("binlog on");
    BinlogPos::new(
        row.get::<String, _>(0).expect("file"),
        row.get::<u64, _>(1).expect("position"),
    )
}

async fn stored(c: &mut mysql_async::Conn) -> Option<BinlogPos> {
    let row: Option<(String, u64)> = c
        .query_first(
            "SELECT binlog_file, binlog_pos FROM flywheel.source_state WHERE name = 'flywheel'",
        )
        .await
        .ok()?;
    row.map(|(f, p)| BinlogPos::new(f, p))
}

/// One stock transaction: `rows` random bins set to `n`.
async fn stock_txn(
    c: &mut mysql_async::Conn,
    rng: &mut SplitMix64,
    size: DemoSize,
    rows: u32,
    n: u64,
) {
    let mut tx = c
        .start_transaction(mysql_async::TxOpts::default())
        .await
        .expect("begin");
    for _ in 0..rows {
        tx.exec_drop(
            "UPDATE `tabBin` SET actual_qty = ? WHERE item_code = ? AND warehouse = ?",
            (
                n,
                format!("SKU-{:06}", rng.one_to(size.skus)),
                warehouse_name(rng.one_to(size.warehouses)),
            ),
        )
        .await
        .expect("update");
    }
    tx.commit().await.expect("commit");
}

pub async fn run(knobs: Knobs, broker: &LocalBroker) {
    let Knobs {
        size,
        rate,
        seconds,
        burst,
        rows,
        rounds,
    } = knobs;
    println!("\n===== MariaDB (binlog) =====");
    let server = LocalMariadb::start().await.expect("MariaDB");
    server.create_database("erp").await.expect("database");
    let mut admin = server.connect("erp").await.expect("connect");
    demo_erpnext::create_and_seed(&mut admin, size)
        .await
        .expect("seed");
    let mut config = Config::default();
    config.erp.dsn = server.dsn("erp");
    config.erp.status_interval_ms = 100;
    config.erp.query_connections =
        super::common::env_or("BENCH_QUERY_CONNECTIONS", config.erp.query_connections);
    config.erp.max_batch_transactions =
        super::common::env_or("BENCH_MAX_BATCH_TXNS", config.erp.max_batch_transactions);
    broker.configure(&mut config.kafka);
    config.kafka.topic_prefix = "mariadb.".into();
    config.metrics.listen = String::new();

    let run_source = |config: Config| {
        let token = CancellationToken::new();
        let t = token.clone();
        let h = tokio::spawn(async move { flywheel::erp::source::run(&config, t).await });
        (token, h)
    };
    let m = SourceMetrics::get();
    let snapshot0 = snapshot_events();
    let t0 = Instant::now();
    let (token, handle) = run_source(config.clone());
    while stored(&mut admin).await.is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "snapshot: {} events ({} SKUs x {} warehouses + prices) in {:.1} s",
        snapshot_events() - snapshot0,
        size.skus,
        size.warehouses,
        t0.elapsed().as_secs_f64()
    );

    // Phase A: fixed offered load, latency measured through a consumer.
    let commits: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumer = {
        let (commits, latencies, stop) = (commits.clone(), latencies.clone(), stop.clone());
        let kafka = config.kafka.clone();
        std::thread::spawn(move || consume(&kafka, &commits, &latencies, &stop))
    };
    let mut load = server.connect("erp").await.expect("connect");
    let (rows0, ev0) = (m.row_changes.get(), events_total());
    let mut rng = SplitMix64::new(1);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let start = Instant::now();
    let mut n = 1_000_000u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        n += 1;
        stock_txn(&mut load, &mut rng, size, rows, n).await;
        commits.lock().expect("lock").insert(n, Instant::now());
    }
    let sent = n - 1_000_000;
    let end = master_status(&mut admin)
        .await
        .position()
        .expect("numbered");
    while stored(&mut admin).await.and_then(|p| p.position()) < Some(end) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    consumer.join().expect("consumer");
    let mut lat = latencies.lock().expect("lock").clone();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or("-".into(), |s| format!("{:.1} ms", s * 1000.0))
    };
    println!(
        "\nphase A: offered {rate} tx/s x {rows} rows for {seconds} s ({sent} transactions)\n  \
         captured {:.0} row changes/s, {:.0} entity events/s\n  \
         commit -> event consumed from Kafka (≥ commit -> ack): p50 {}, p99 {} ({} events)",
        (m.row_changes.get() - rows0) as f64 / elapsed,
        (events_total() - ev0) as f64 / elapsed,
        q(0.5),
        q(0.99),
        lat.len()
    );

    // Phase B: the same binlog range for both.
    token.cancel();
    handle.await.expect("source task").expect("source");
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let from = master_status(&mut admin).await;
        let writers = 4;
        let per_writer = burst / writers;
        let mut tasks = Vec::new();
        for w in 0..writers {
            let dsn = server.dsn("erp");
            tasks.push(tokio::spawn(async move {
                let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&dsn).expect("dsn"))
                    .await
                    .expect("connect");
                let mut rng = SplitMix64::new(100 * round as u64 + w as u64);
                for i in 0..per_writer {
                    let seq = 1_000_000 * (1 + round as u64) + i as u64;
                    stock_txn(&mut c, &mut rng, size, rows, seq).await;
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
        let to = master_status(&mut admin).await;
        let txns = (per_writer * writers) as u64;
        println!(
            "\nphase B, round {round} of {rounds}: {txns} transactions x {rows} rows written while stopped ({:.1} MB of binlog)",
            (to.position().expect("numbered").0 - from.position().expect("numbered").0) as f64
                / 1e6
        );
        let end = to.position().expect("numbered");
        let (rows0, ev0) = (m.row_changes.get(), events_total());
        let start = Instant::now();
        let (token, handle) = run_source(config.clone());
        while stored(&mut admin).await.and_then(|p| p.position()) < Some(end) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ours = start.elapsed().as_secs_f64();
        let (our_rows, our_events) = (m.row_changes.get() - rows0, events_total() - ev0);
        token.cancel();
        handle.await.expect("source task").expect("source");

        assert_eq!(from.file, to.file, "the burst spans binlog files");
        let out = tempfile::tempdir().expect("tempdir");
        let binlog = find_mariadb_binary("mariadb-binlog").expect("mariadb-binlog");
        let start = Instant::now();
        let st = std::process::Command::new(&binlog)
            .args([
                "--read-from-remote-server",
                "--host=127.0.0.1",
                "--user=root",
            ])
            .arg(format!("--port={}", server.port()))
            .arg("--raw")
            .arg(format!("--result-file={}/", out.path().display()))
            .arg(format!("--start-position={}", from.pos))
            .arg(format!("--stop-position={}", to.pos))
            .arg(&from.file)
            .status()
            .expect("mariadb-binlog");
        let baseline = start.elapsed().as_secs_f64();
        assert!(st.success(), "mariadb-binlog failed");
        println!(
            "  flywheel source : {ours:.2} s = {:.0} row changes/s, {:.0} entity events/s (decode + re-read + produce + ack + store)",
            our_rows as f64 / ours,
            our_events as f64 / ours
        );
        println!(
            "  mariadb-binlog  : {baseline:.2} s = {:.0} row changes/s (receive as a replica, raw to a file)",
            (txns * rows as u64) as f64 / baseline
        );
        println!(
            "  ratio flywheel/mariadb-binlog time: {:.2}x",
            ours / baseline
        );
        ratios.push(ours / baseline);
    }
    println!("\nphase B, {}", super::common::ratio_summary(&mut ratios));
}

fn snapshot_events() -> u64 {
    prometheus::core::Collector::collect(&SourceMetrics::get().snapshot_events)
        .iter()
        .flat_map(|f| f.get_metric())
        .map(|x| x.get_counter().value() as u64)
        .sum()
}

/// Reads `erp.stock.v1` from its end until `stop`, turning each event's
/// `on_hand` (a transaction's sequence number) into commit → consumed seconds.
fn consume(
    kafka: &flywheel::config::KafkaConfig,
    commits: &Mutex<HashMap<u64, Instant>>,
    latencies: &Mutex<Vec<f64>>,
    stop: &std::sync::atomic::AtomicBool,
) {
    let consumer: BaseConsumer = flywheel::bus::client::client_config(kafka, "bench-reader")
        .set("group.id", "bench-capture-mariadb")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("consumer");
    // Assigned at the end of every partition: only events from now on.
    let topic = kafka.topic("erp.stock.v1");
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(&topic, p.id(), rdkafka::Offset::End)
                .expect("partition");
        }
    }
    consumer.assign(&tpl).expect("assign");
    let codec = AvroCodec::for_topic("erp.stock.v1").expect("codec");
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let Ok(v) = codec.decode(m.payload().unwrap_or_default()) else {
            continue;
        };
        let n = field_str(&v, "on_hand")
            .and_then(|s| s.split('.').next())
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(at) = n.and_then(|n| commits.lock().expect("lock").remove(&n)) {
            latencies
                .lock()
                .expect("lock")
                .push(at.elapsed().as_secs_f64());
        }
    }
}
