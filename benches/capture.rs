//! Capture benchmark: Flywheel's ERP source vs `pg_recvlogical` on the same
//! WAL, and (`mariadb`) vs `mariadb-binlog` on the same binlog.
//!
//! `cargo bench --bench capture` (env: BENCH_ERP = postgres | mariadb | both,
//! default both; BENCH_SKUS, BENCH_RATE, BENCH_SECONDS, BENCH_BURST_TXNS,
//! BENCH_QUERY_CONNECTIONS (`erp.query_connections`), BENCH_MAX_BATCH_TXNS
//! (`erp.max_batch_transactions`),
//! BENCH_ROWS_PER_TXN, BENCH_ROUNDS, BENCH_CONNECTOR (`erp.connector`, to try a
//! connector's SQL)). Starts its own PostgreSQL, MariaDB and tansu.
//!
//! Phase A, fixed offered load: BENCH_RATE transactions/s for BENCH_SECONDS,
//! each changing BENCH_ROWS_PER_TXN stock rows of random SKUs; reports achieved
//! row changes/s and entity events/s and commit→Kafka-ack p50/p99.
//!
//! Phase B, same WAL: with both consumers stopped, BENCH_BURST_TXNS
//! transactions are written; then Flywheel's source catches up (decode,
//! re-read entities, produce, wait for acks, confirm), then `pg_recvlogical`
//! decodes the very same WAL range from its own slot (to /dev/null). Reported
//! as rates and the ratio of the two, because the machine is shared and noisy;
//! BENCH_ROUNDS times (default 5), each with a new burst, and the rounds'
//! median ratio with their range. Each round also says when the burst's last
//! transaction reached the source, and the CPU time PostgreSQL, this process
//! (the source), the broker and `pg_recvlogical` spent: whether a catch-up
//! waited on the walsender, on the queries or on Flywheel's own work.

mod common;
#[path = "capture/mariadb.rs"]
mod mariadb;

use common::{connect, cpu, env_or};
use std::time::{Duration, Instant};

use flywheel::config::Config;
use flywheel::erp::demo_erp::{self, DemoSize, SplitMix64};
use flywheel::erp::source_metrics::SourceMetrics;
use flywheel::local_infra::{LocalBroker, LocalPostgres};
use flywheel::ops::quantiles::BucketCounts;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

async fn wal_lsn(c: &Client) -> i64 {
    c.query_one(
        "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint",
        &[],
    )
    .await
    .expect("lsn")
    .get(0)
}

/// Lets the running source's slot move its restart point up to the log's end
/// before the source stops. PostgreSQL moves it only past a running-transactions
/// record the walsender decoded and the client confirmed (one is logged every
/// 15 s, and by a checkpoint), so after a burst it stayed a burst behind: the
/// next catch-up decoded that burst's WAL again (2.3–5.4 MB, measured) before
/// the new one, while `pg_recvlogical`'s slot, created just before the burst,
/// started at it, and the two did not decode the same WAL.
async fn settle_restart_point(admin: &Client, slot: &str) {
    let before = wal_lsn(admin).await;
    admin.batch_execute("CHECKPOINT").await.expect("checkpoint");
    let deadline = Instant::now() + Duration::from_secs(10);
    while slot_lsns(admin, slot).await.restart < before {
        if Instant::now() > deadline {
            println!("  (the source's slot did not move its restart point within 10 s)");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A slot's positions in the WAL: where a restart decodes from, and what its
/// client confirmed.
struct SlotLsns {
    restart: i64,
    confirmed: i64,
}

async fn slot_lsns(c: &Client, slot: &str) -> SlotLsns {
    let row = c
        .query_one(
            "SELECT coalesce((restart_lsn - '0/0'::pg_lsn)::bigint, 0),
                    coalesce((confirmed_flush_lsn - '0/0'::pg_lsn)::bigint, 0)
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("slot");
    SlotLsns {
        restart: row.get(0),
        confirmed: row.get(1),
    }
}

/// One stock transaction: `rows` quants of random SKUs in random warehouses.
async fn stock_txn(c: &Client, rng: &mut SplitMix64, size: DemoSize, rows: u32) {
    let products: Vec<i32> = (0..rows).map(|_| rng.one_to(size.skus) as i32).collect();
    let warehouses: Vec<String> = (0..rows)
        .map(|_| format!("WH{}", rng.one_to(size.warehouses)))
        .collect();
    c.execute(
        "UPDATE stock_quant q SET quantity = q.quantity + 1
         FROM unnest($1::int[], $2::text[]) AS m(product_id, wh), stock_warehouse w
         WHERE w.code = m.wh AND q.location_id = w.lot_stock_id AND q.product_id = m.product_id",
        &[&products, &warehouses],
    )
    .await
    .expect("stock transaction");
}

/// CPU time spent so far, by who spent it: on two shared cores, whether a
/// catch-up was short of CPU or waiting on something.
struct CpuSample {
    /// The postmaster and every backend, walsenders included.
    postgres: Duration,
    /// The benchmark's own process, which runs the source.
    this: Duration,
    broker: Duration,
    /// Commands this process ran to completion (`pg_recvlogical`).
    commands: Duration,
}

impl CpuSample {
    fn take(pg: &LocalPostgres, broker: &LocalBroker) -> CpuSample {
        let me = std::process::id();
        CpuSample {
            postgres: pg.pid().map_or(Duration::ZERO, cpu::process_tree),
            this: cpu::process(me),
            broker: broker.pid().map_or(Duration::ZERO, cpu::process),
            commands: cpu::reaped_children(me),
        }
    }

    fn since(&self, before: &CpuSample) -> CpuSample {
        CpuSample {
            postgres: self.postgres.saturating_sub(before.postgres),
            this: self.this.saturating_sub(before.this),
            broker: self.broker.saturating_sub(before.broker),
            commands: self.commands.saturating_sub(before.commands),
        }
    }
}

fn events_total() -> u64 {
    let m = SourceMetrics::get();
    prometheus::core::Collector::collect(&m.events)
        .iter()
        .flat_map(|f| f.get_metric())
        .map(|x| x.get_counter().value() as u64)
        .sum()
}

fn ms(s: Option<f64>) -> String {
    s.map_or("-".into(), |v| format!("{:.1} ms", v * 1000.0))
}

/// The offered load, the same for both database kinds.
#[derive(Clone, Copy)]
struct Knobs {
    size: DemoSize,
    rate: u32,
    seconds: u64,
    burst: u32,
    rows: u32,
    /// Phase B is repeated: one catch-up swings by a third on this machine.
    rounds: u32,
}

#[tokio::main]
async fn main() {
    let knobs = Knobs {
        size: DemoSize {
            skus: env_or("BENCH_SKUS", 10_000),
            warehouses: 3,
            orders: 10,
            seed: 0.5,
        },
        rate: env_or("BENCH_RATE", 200),
        seconds: env_or("BENCH_SECONDS", 10),
        burst: env_or("BENCH_BURST_TXNS", 5_000),
        rows: env_or("BENCH_ROWS_PER_TXN", 5),
        rounds: env_or("BENCH_ROUNDS", 5).max(1),
    };
    let which: String = env_or("BENCH_ERP", "both".to_owned());
    let broker = LocalBroker::start().await.expect("tansu");
    if which == "postgres" || which == "both" {
        postgres(knobs, &broker).await;
    }
    if which == "mariadb" || which == "both" {
        mariadb::run(knobs, &broker).await;
    }
}

async fn postgres(knobs: Knobs, broker: &LocalBroker) {
    let Knobs {
        size,
        rate,
        seconds,
        burst,
        rows,
        rounds,
    } = knobs;
    println!("===== PostgreSQL (logical replication) =====");
    // pg_stat_statements says which of the connector's queries phase B's
    // time goes to.
    let pg = LocalPostgres::start_with(&[("shared_preload_libraries", "pg_stat_statements")])
        .await
        .expect("PostgreSQL");
    pg.create_database("erp").await.expect("database");
    let dsn = pg.dsn("erp");
    let mut admin = connect(&dsn).await;
    admin
        .batch_execute("CREATE EXTENSION pg_stat_statements")
        .await
        .expect("pg_stat_statements");
    demo_erp::create_and_seed(&mut admin, size)
        .await
        .expect("seed");
    let mut config = Config::default();
    config.erp.dsn = dsn.clone();
    config.erp.status_interval_ms = 100;
    config.erp.connector = std::env::var_os("BENCH_CONNECTOR").map(Into::into);
    config.erp.query_connections = env_or("BENCH_QUERY_CONNECTIONS", config.erp.query_connections);
    config.erp.max_batch_transactions =
        env_or("BENCH_MAX_BATCH_TXNS", config.erp.max_batch_transactions);
    broker.configure(&mut config.kafka);
    config.kafka.topic_prefix = "postgres.".into();
    config.metrics.listen = String::new();
    let slot = config.erp.slot.clone();

    let run_source = |config: Config| {
        let token = CancellationToken::new();
        let t = token.clone();
        let h = tokio::spawn(async move { flywheel::erp::source::run(&config, t).await });
        (token, h)
    };
    let t0 = Instant::now();
    let (token, handle) = run_source(config.clone());
    while admin
        .query_opt("SELECT 1 FROM flywheel.source_snapshot", &[])
        .await
        .map(|r| r.is_none())
        .unwrap_or(true)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let snapshot_events: u64 =
        prometheus::core::Collector::collect(&SourceMetrics::get().snapshot_events)
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|x| x.get_counter().value() as u64)
            .sum();
    println!(
        "snapshot: {snapshot_events} events ({} SKUs x {} warehouses + prices) in {:.1} s",
        size.skus,
        size.warehouses,
        t0.elapsed().as_secs_f64()
    );

    // Phase A: fixed offered load.
    let m = SourceMetrics::get();
    let lat0 = BucketCounts::take(&m.commit_to_ack_seconds);
    let (rows0, ev0) = (m.row_changes.get(), events_total());
    let load = connect(&dsn).await;
    let mut rng = SplitMix64::new(1);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        stock_txn(&load, &mut rng, size, rows).await;
        sent += 1;
    }
    let end_lsn = wal_lsn(&admin).await;
    while slot_lsns(&admin, &slot).await.confirmed < end_lsn {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let lat = BucketCounts::take(&m.commit_to_ack_seconds).since(&lat0);
    println!(
        "\nphase A: offered {rate} tx/s x {rows} rows for {seconds} s ({sent} transactions)\n  \
         captured {:.0} row changes/s, {:.0} entity events/s\n  \
         commit -> Kafka ack: p50 {}, p99 {} ({} events)",
        (m.row_changes.get() - rows0) as f64 / elapsed,
        (events_total() - ev0) as f64 / elapsed,
        ms(lat.quantile(0.5)),
        ms(lat.quantile(0.99)),
        lat.count()
    );

    // Phase B: the same WAL for both. Stop ours, create the baseline slot, burst.
    settle_restart_point(&admin, &slot).await;
    token.cancel();
    handle.await.expect("source task").expect("source");
    let recvlogical =
        flywheel::local_infra::find_pg_binary("pg_recvlogical").expect("pg_recvlogical");
    let conn_args = [
        "-h",
        "127.0.0.1",
        "-p",
        &pg.port().to_string(),
        "-U",
        "flywheel",
        "-d",
        "erp",
    ];
    let mut ratios = Vec::new();
    admin
        .batch_execute("SELECT pg_stat_statements_reset()")
        .await
        .expect("pg_stat_statements_reset");
    for round in 1..=rounds {
        // A fresh baseline slot per round starts where the burst starts, so
        // both decode exactly the round's WAL.
        if round > 1 {
            admin
                .batch_execute("SELECT pg_drop_replication_slot('baseline')")
                .await
                .expect("dropping the baseline slot");
        }
        let st = std::process::Command::new(&recvlogical)
            .args(conn_args)
            .args([
                "--slot",
                "baseline",
                "--create-slot",
                "--plugin",
                "pgoutput",
            ])
            .status()
            .expect("pg_recvlogical --create-slot");
        assert!(st.success(), "creating the baseline slot failed");
        let from_lsn = wal_lsn(&admin).await;
        let writers = 4;
        let per_writer = burst / writers;
        let mut tasks = Vec::new();
        for w in 0..writers {
            let dsn = dsn.clone();
            tasks.push(tokio::spawn(async move {
                let c = connect(&dsn).await;
                let mut rng = SplitMix64::new(100 * round as u64 + w as u64);
                for _ in 0..per_writer {
                    stock_txn(&c, &mut rng, size, rows).await;
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
        let end_lsn = wal_lsn(&admin).await;
        let txns = (per_writer * writers) as u64;
        println!(
            "\nphase B, round {round} of {}: {txns} transactions x {rows} rows written while stopped ({:.1} MB of WAL)",
            rounds,
            (end_lsn - from_lsn) as f64 / 1e6
        );

        let restart = slot_lsns(&admin, &slot).await.restart;
        println!(
            "  the source's slot restarts {:.2} MB before the burst (pg_recvlogical's new slot: at it)",
            (from_lsn - restart) as f64 / 1e6
        );
        let (rows0, ev0) = (m.row_changes.get(), events_total());
        let cpu0 = CpuSample::take(&pg, broker);
        let start = Instant::now();
        let (token, handle) = run_source(config.clone());
        // Starting (connections, prepared statements, the slot) is part of
        // catching up, but reported apart: it does not grow with the WAL.
        let txns0 = m.transactions.get();
        let (mut first_txn, mut last_txn) = (None, None);
        while slot_lsns(&admin, &slot).await.confirmed < end_lsn {
            let seen = m.transactions.get() - txns0;
            if first_txn.is_none() && seen > 0 {
                first_txn = Some(start.elapsed().as_secs_f64());
            }
            if last_txn.is_none() && seen >= txns {
                last_txn = Some(start.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ours = start.elapsed().as_secs_f64();
        let cpu_ours = CpuSample::take(&pg, broker).since(&cpu0);
        let started = first_txn.unwrap_or(ours);
        let decoded = last_txn.unwrap_or(ours);
        let (our_rows, our_events) = (m.row_changes.get() - rows0, events_total() - ev0);
        settle_restart_point(&admin, &slot).await;
        token.cancel();
        handle.await.expect("source task").expect("source");

        let end_text = format!("{:X}/{:X}", end_lsn >> 32, end_lsn & 0xFFFF_FFFF);
        let cpu0 = CpuSample::take(&pg, broker);
        let start = Instant::now();
        let st = std::process::Command::new(&recvlogical)
            .args(conn_args)
            .args([
                "--slot",
                "baseline",
                "--start",
                "-f",
                "/dev/null",
                "--no-loop",
            ])
            .args(["-o", "proto_version=1", "-o", "publication_names=flywheel"])
            .args(["-E", &end_text])
            .status()
            .expect("pg_recvlogical --start");
        let baseline = start.elapsed().as_secs_f64();
        // pg_recvlogical's walsender ends after it: its CPU time reaches the
        // postmaster's total once it released the slot and was reaped.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut settled = CpuSample::take(&pg, broker);
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = CpuSample::take(&pg, broker);
            let released = admin
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'baseline' AND active",
                    &[],
                )
                .await
                .map(|r| r.is_none())
                .unwrap_or(false);
            let still = now.postgres == settled.postgres;
            settled = now;
            if released && still {
                break;
            }
        }
        let cpu_baseline = settled.since(&cpu0);
        assert!(st.success(), "pg_recvlogical failed");

        println!(
            "  flywheel source : {ours:.2} s = {:.0} row changes/s, {:.0} entity events/s (decode + re-read + produce + ack + confirm)\n    \
             of which {started:.2} s until the first transaction arrived (connect, prepare, start replication),\n    \
             the last arrived at {decoded:.2} s\n    \
             CPU: PostgreSQL {:.2} s, this process (the source) {:.2} s, broker {:.2} s",
            our_rows as f64 / ours,
            our_events as f64 / ours,
            cpu_ours.postgres.as_secs_f64(),
            cpu_ours.this.as_secs_f64(),
            cpu_ours.broker.as_secs_f64(),
        );
        println!(
            "  pg_recvlogical  : {baseline:.2} s = {:.0} row changes/s (decode to /dev/null)\n    \
             CPU: PostgreSQL {:.2} s, pg_recvlogical {:.2} s",
            (txns * rows as u64) as f64 / baseline,
            cpu_baseline.postgres.as_secs_f64(),
            cpu_baseline.commands.as_secs_f64(),
        );
        println!(
            "  ratio flywheel/pg_recvlogical time: {:.2}x",
            ours / baseline
        );
        ratios.push(ours / baseline);
    }
    println!("\nphase B, {}", common::ratio_summary(&mut ratios));
    let top = admin
        .query(
            "SELECT calls, total_exec_time, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 90)
             FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 6",
            &[],
        )
        .await
        .expect("pg_stat_statements");
    println!("  flywheel's queries by server time over all rounds (pg_stat_statements):");
    for r in top {
        let (calls, total, rows, query): (i64, f64, i64, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        println!("    {total:7.0} ms {calls:6} calls {rows:8} rows  {query}");
    }
    drop(pg);
}
