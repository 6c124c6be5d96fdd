//! The MariaDB/MySQL source with the ERPNext connector, against a real
//! MariaDB (row-based binlog) and a real Kafka-protocol broker: the cases of
//! `erp_source.rs` (PostgreSQL), on the other database kind.
//!
//! One server of each kind per test binary, a database, replica id, state row
//! and topic prefix per test. Tests that break the server's configuration
//! start a server of their own.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use common::{Rec, RunningSource, TopicReader, wait_for};
use flywheel::bus::avro::AvroCodec;
use flywheel::bus::producer::{EventProducer, OutRecord};
use flywheel::bus::topics::ensure_topics;
use flywheel::config::Config;
use flywheel::erp::demo_erp::DemoSize;
use flywheel::erp::demo_erpnext::{self, warehouse_name};
use flywheel::erp::mysql::binlog_pos::BinlogPos;
use flywheel::local_infra::LocalMariadb;
use flywheel::shop::mapping::{Customer, Line, SHOP_ORDERS, ShopOrderEvent};

const T: Duration = Duration::from_secs(60);

/// The binary's MariaDB; the broker (and the PostgreSQL the processors keep
/// their state in) are `common`'s.
async fn mariadb() -> &'static LocalMariadb {
    // `RUST_LOG=flywheel=debug cargo test --test mariadb_source -- --nocapture`
    // shows what the source did.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    static MARIADB: OnceCell<LocalMariadb> = OnceCell::const_new();
    MARIADB
        .get_or_init(|| async {
            LocalMariadb::start()
                .await
                .unwrap_or_else(|e| panic!("test MariaDB did not start: {e}"))
        })
        .await
}

fn small() -> DemoSize {
    DemoSize {
        skus: 20,
        warehouses: 3,
        orders: 0,
        seed: 0.42,
    }
}

/// One test's world on `server`: its own ERPNext database, replica id, state
/// row (the slot name) and topics.
struct Env {
    name: String,
    config: Config,
    erp: Conn,
    dsn: String,
}

impl Env {
    async fn new(name: &str, size: DemoSize) -> Env {
        Env::on(mariadb().await, name, size).await
    }

    async fn on(server: &LocalMariadb, name: &str, size: DemoSize) -> Env {
        server
            .create_database(name)
            .await
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        let dsn = server.dsn(name);
        let mut erp = server.connect(name).await.expect("connecting to the ERP");
        demo_erpnext::create_and_seed(&mut erp, size)
            .await
            .expect("seeding the ERPNext demo");
        let mut config = Config::default();
        config.erp.dsn = dsn.clone();
        config.erp.slot = name.to_owned();
        // Replicas of one server need distinct ids, and tests run at once.
        config.erp.server_id = replica_id(name);
        config.erp.status_interval_ms = 100;
        config.erp.heartbeat_interval_ms = 500;
        config.kafka.bootstrap = common::shared().await.broker.bootstrap();
        config.kafka.topic_prefix = format!("my_{name}.");
        config.kafka.partitions = 3;
        config.kafka.message_timeout_ms = 10_000;
        config.metrics.listen = String::new();
        ensure_topics(
            &config.kafka,
            &[
                "erp.stock.v1",
                "erp.price.v1",
                "erp.order_status.v1",
                "flywheel.dlq.v1",
                "shop.orders.v1",
            ],
        )
        .await
        .expect("creating topics");
        Env {
            name: name.to_owned(),
            config,
            erp,
            dsn,
        }
    }

    fn reader(&self, topic: &str) -> TopicReader {
        TopicReader::new(&self.config.kafka, &self.config.kafka.topic(topic), topic)
    }

    fn start_source(&self) -> RunningSource {
        let token = CancellationToken::new();
        let config = self.config.clone();
        let t = token.clone();
        let handle = tokio::spawn(async move {
            let result = flywheel::erp::source::run(&config, t).await;
            if let Err(e) = &result {
                // Shown with the failing test's output.
                eprintln!("source stopped: {e}");
            }
            result
        });
        RunningSource { token, handle }
    }

    async fn start_streaming(&self) -> RunningSource {
        let source = self.start_source();
        wait_for("the initial snapshot", Duration::from_secs(300), || {
            self.snapshot_done()
        })
        .await;
        source
    }

    /// The stored position, once the snapshot is complete.
    async fn stored(&self) -> Option<BinlogPos> {
        let mut conn = shared_or_own(&self.dsn).await?;
        let row: Option<(String, u64)> = conn
            .exec_first(
                "SELECT binlog_file, binlog_pos FROM flywheel.source_state WHERE name = ?",
                (&self.name,),
            )
            .await
            .ok()?;
        row.map(|(f, p)| BinlogPos::new(f, p))
    }

    async fn snapshot_done(&self) -> bool {
        self.stored().await.is_some()
    }

    /// Runs `sql` (statements separated by `;`) in one transaction; returns
    /// the binlog position after its commit (its events' version).
    async fn commit(&mut self, sql: &str) -> u64 {
        let mut tx = self
            .erp
            .start_transaction(mysql_async::TxOpts::default())
            .await
            .expect("begin");
        for statement in sql.split(';').filter(|s| !s.trim().is_empty()) {
            tx.query_drop(statement).await.expect("transaction body");
        }
        tx.commit().await.expect("commit");
        master_position(&mut self.erp).await
    }

    /// (actual, reserved) of an item in a warehouse, as the ERP holds it now.
    async fn bin(&mut self, item: &str, warehouse: &str) -> (String, String) {
        self.erp
            .exec_first(
                "SELECT CAST(actual_qty AS CHAR), CAST(reserved_qty AS CHAR) FROM `tabBin`
                 WHERE item_code = ? AND warehouse = ?",
                (item, warehouse),
            )
            .await
            .expect("reading tabBin")
            .expect("the bin exists")
    }
}

/// A connection to the ERP's server.
async fn shared_or_own(dsn: &str) -> Option<Conn> {
    Conn::new(mysql_async::Opts::from_url(dsn).ok()?).await.ok()
}

fn replica_id(name: &str) -> u32 {
    // FNV-1a: stable across runs, distinct enough for a handful of tests.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    1_000 + h % 1_000_000
}

/// The server's current binlog position as a version.
async fn master_position(conn: &mut Conn) -> u64 {
    let row: mysql_async::Row = conn
        .query_first("SHOW MASTER STATUS")
        .await
        .expect("SHOW MASTER STATUS")
        .expect("binlog is on");
    let file: String = row.get(0).expect("file");
    let pos: u64 = row.get(1).expect("position");
    BinlogPos::new(file, pos)
        .position()
        .expect("numbered file")
        .0
}

fn latest_by_key(records: &[Rec]) -> HashMap<String, &Rec> {
    let mut out: HashMap<String, &Rec> = HashMap::new();
    for r in records {
        match out.get(&r.key) {
            Some(prev) if prev.version() >= r.version() => {}
            _ => {
                out.insert(r.key.clone(), r);
            }
        }
    }
    out
}

fn key(item: u32, warehouse: u32) -> String {
    format!("SKU-{item:06}/{}", warehouse_name(warehouse))
}

#[tokio::test(flavor = "multi_thread")]
async fn stock_change_appears_with_the_right_aggregate_and_version() {
    let mut env = Env::new("stock_change", small()).await;
    let source = env.start_streaming().await;
    let mut stock = env.reader("erp.stock.v1");

    let before = master_position(&mut env.erp).await;
    let after = env
        .commit(
            "UPDATE `tabBin` SET actual_qty = 100, reserved_qty = 10
             WHERE item_code = 'SKU-000001' AND warehouse = 'WH1 - FW'",
        )
        .await;

    let k = key(1, 1);
    let records = stock
        .read_until(T, |r| r.iter().any(|e| e.key == k && e.version() > before))
        .await;
    let event = records
        .iter()
        .find(|e| e.key == k && e.version() > before)
        .expect("found above");
    assert!(
        event.version() > before && event.version() <= after,
        "version {} is not the commit's binlog position (in ({before}, {after}])",
        event.version()
    );
    assert_eq!(event.str("sku"), Some("SKU-000001"));
    assert_eq!(event.str("warehouse"), Some("WH1 - FW"));
    assert_eq!(event.str("on_hand"), Some("100.000000000"));
    assert_eq!(event.str("reserved"), Some("10.000000000"));
    assert_eq!(event.str("available"), Some("90.000000000"));
    // Before it, the snapshot published the key once.
    let earlier = records
        .iter()
        .filter(|e| e.key == k && e.version() <= before)
        .count();
    assert_eq!(earlier, 1);
    source.assert_running();
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_touching_many_rows_of_one_item_produces_each_key_once() {
    let mut env = Env::new("many_rows", small()).await;
    let source = env.start_streaming().await;
    let mut stock = env.reader("erp.stock.v1");

    // Twelve row changes of SKU-000002 in three warehouses, in one transaction.
    let mut sql = String::new();
    for round in 1..=4 {
        for w in 1..=3 {
            sql.push_str(&format!(
                "UPDATE `tabBin` SET actual_qty = {} WHERE item_code = 'SKU-000002' AND warehouse = 'WH{w} - FW';",
                round * 10 + w
            ));
        }
    }
    let before = master_position(&mut env.erp).await;
    let after = env.commit(&sql).await;
    let keys: Vec<String> = (1..=3).map(|w| key(2, w)).collect();
    let mut versions = std::collections::HashSet::new();
    stock
        .read_until(T, |r| {
            keys.iter()
                .all(|k| r.iter().any(|e| &e.key == k && e.version() > before))
        })
        .await;
    let records = stock.drain(Duration::from_secs(1)).await;
    for (w, k) in keys.iter().enumerate() {
        let changes: Vec<&Rec> = records
            .iter()
            .filter(|e| &e.key == k && e.version() > before)
            .collect();
        assert_eq!(changes.len(), 1, "{k}: {changes:?}");
        // The source's own position bookkeeping may land between the commit
        // and the position read after it, so the commit ends at or before it.
        assert!(
            changes[0].version() > before && changes[0].version() <= after,
            "{k}: version {} not in ({before}, {after}]",
            changes[0].version()
        );
        versions.insert(changes[0].version());
        assert_eq!(
            changes[0].str("on_hand"),
            Some(format!("{}.000000000", 40 + w + 1).as_str())
        );
    }
    assert_eq!(
        versions.len(),
        1,
        "one transaction, one version: {versions:?}"
    );
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_of_10000_items_by_3_warehouses_produces_exactly_one_event_per_key() {
    let env = Env::new(
        "snapshot_10k",
        DemoSize {
            skus: 10_000,
            ..small()
        },
    )
    .await;
    let source = env.start_streaming().await;
    let mut stock = env.reader("erp.stock.v1");
    stock
        .read_until(Duration::from_secs(120), |r| r.len() >= 30_000)
        .await;
    let records = stock.drain(Duration::from_secs(2)).await;
    assert_eq!(records.len(), 30_000, "exactly one event per key");
    // Snapshot events carry its position, at or before the stored one.
    let snapshot_at = records[0].version();
    let stored = env
        .stored()
        .await
        .expect("stored")
        .position()
        .expect("numbered")
        .0;
    assert!(snapshot_at <= stored, "{snapshot_at} > {stored}");
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for r in records {
        *per_key.entry(r.key.as_str()).or_default() += 1;
        assert_eq!(
            r.version(),
            snapshot_at,
            "snapshot events carry its position"
        );
    }
    assert_eq!(per_key.len(), 30_000);
    // Spot check an aggregate: (i * 7 + w * 13) % 50 + 5 for item 1234 in WH2.
    let r = records
        .iter()
        .find(|r| r.key == key(1234, 2))
        .expect("key present");
    let seeded = format!("{}.000000000", (1234 * 7 + 2 * 13) % 50 + 5);
    assert_eq!(r.str("on_hand"), Some(seeded.as_str()));
    assert_eq!(r.str("available"), Some(seeded.as_str()));
    // Prices: every item in the standard list, every fifth in the wholesale one.
    let mut prices = env.reader("erp.price.v1");
    prices.read_until(T, |r| r.len() >= 12_000).await;
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_restart_resumes_where_it_stopped_without_a_new_snapshot() {
    let mut env = Env::new("restart", small()).await;
    let source = env.start_streaming().await;
    let snapshot_at = env.stored().await.expect("stored");
    source.stop().await;

    let before = master_position(&mut env.erp).await;
    env.commit("UPDATE `tabBin` SET actual_qty = 77 WHERE item_code = 'SKU-000003' AND warehouse = 'WH2 - FW'")
        .await;
    let source = env.start_source();
    let mut stock = env.reader("erp.stock.v1");
    let k = key(3, 2);
    stock
        .read_until(T, |r| r.iter().any(|e| e.key == k && e.version() > before))
        .await;
    let records = stock.drain(Duration::from_secs(1)).await;
    assert_eq!(
        records.iter().filter(|e| e.key == k).count(),
        2,
        "the snapshot's event and the change, no second snapshot"
    );
    let latest = latest_by_key(records);
    assert_eq!(latest[&k].str("on_hand"), Some("77.000000000"));
    assert!(env.stored().await.expect("stored").position() > snapshot_at.position());
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_carrying_flywheels_echo_mark_are_not_captured() {
    let mut env = Env::new("echo_mark", small()).await;
    let source = env.start_streaming().await;
    let mut stock = env.reader("erp.stock.v1");
    let before = master_position(&mut env.erp).await;
    // Flywheel's own write: the mark is inserted and deleted in the transaction.
    env.commit(
        "INSERT INTO flywheel.echo_marks (origin) VALUES ('test');
         UPDATE `tabBin` SET actual_qty = 55 WHERE item_code = 'SKU-000004' AND warehouse = 'WH1 - FW';
         DELETE FROM flywheel.echo_marks WHERE origin = 'test'",
    )
    .await;
    // Someone else's write after it.
    env.commit("UPDATE `tabBin` SET actual_qty = 66 WHERE item_code = 'SKU-000005' AND warehouse = 'WH1 - FW'")
        .await;
    // Once it is out, everything before it was captured or skipped.
    let records = stock
        .read_until(T, |r| {
            r.iter().any(|e| {
                e.key == key(5, 1)
                    && e.version() > before
                    && e.str("on_hand") == Some("66.000000000")
            })
        })
        .await;
    assert!(
        !records
            .iter()
            .any(|e| e.key == key(4, 1) && e.version() > before),
        "the marked transaction was captured"
    );
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn order_status_follows_submission_and_delivery() {
    let mut env = Env::new("order_status", small()).await;
    let source = env.start_streaming().await;
    let mut status = env.reader("erp.order_status.v1");
    env.commit(
        "INSERT INTO `tabCustomer` (name, customer_name, email_id) VALUES ('CUST-1', 'Ann', 'ann@example.com');
         INSERT INTO `tabSales Order` (name, customer, status, docstatus, custom_channel, custom_shop_order_id)
           VALUES ('SAL-ORD-1', 'CUST-1', 'To Deliver and Bill', 1, 'demo', '1001');
         INSERT INTO `tabSales Order Item` (name, parent, idx, item_code, qty, warehouse, docstatus)
           VALUES ('SOI-1', 'SAL-ORD-1', 1, 'SKU-000006', 2, 'WH1 - FW', 1)",
    )
    .await;
    status
        .read_until(T, |r| {
            r.iter()
                .any(|e| e.key == "demo/1001" && e.str("status") == Some("confirmed"))
        })
        .await;
    let shipped = demo_erpnext::ErpNextActivity::new(small(), 1)
        .ship_shop_order(&mut env.erp)
        .await
        .expect("shipping");
    assert_eq!(shipped, 1);
    let records = status
        .read_until(T, |r| {
            r.iter()
                .any(|e| e.key == "demo/1001" && e.str("status") == Some("shipped"))
        })
        .await;
    let e = records
        .iter()
        .find(|e| e.key == "demo/1001" && e.str("status") == Some("shipped"))
        .expect("found above");
    assert_eq!(e.str("erp_order"), Some("SAL-ORD-1"));
    assert!(e.str("tracking_ref").is_some_and(|t| t.len() > 3), "{e:?}");
    assert!(matches!(e.str("carrier"), Some("DHL" | "UPS" | "DPD")));
    // Shipping took the units out of the bin and its reservation.
    let (actual, reserved) = env.bin("SKU-000006", "WH1 - FW").await;
    let seeded = (6 * 7 + 13) % 50 + 5;
    assert_eq!(actual, format!("{}.000000000", seeded - 2));
    assert_eq!(reserved, "0.000000000");
    source.stop().await;
}

/// The `flywheel source` binary, killed with SIGKILL in the tests.
struct SourceProcess(std::process::Child);

impl SourceProcess {
    fn spawn(env: &Env) -> SourceProcess {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_flywheel"))
            .arg("source")
            .env("FLYWHEEL_ERP__DSN", &env.config.erp.dsn)
            .env("FLYWHEEL_ERP__SLOT", &env.config.erp.slot)
            .env(
                "FLYWHEEL_ERP__SERVER_ID",
                env.config.erp.server_id.to_string(),
            )
            .env("FLYWHEEL_ERP__STATUS_INTERVAL_MS", "100")
            .env("FLYWHEEL_KAFKA__BOOTSTRAP", &env.config.kafka.bootstrap)
            .env(
                "FLYWHEEL_KAFKA__TOPIC_PREFIX",
                &env.config.kafka.topic_prefix,
            )
            .env("FLYWHEEL_KAFKA__PARTITIONS", "3")
            .env("FLYWHEEL_METRICS__LISTEN", "")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawning flywheel source");
        SourceProcess(child)
    }

    fn kill_9(&mut self) {
        self.0.kill().expect("kill -9");
        self.0.wait().expect("reaping the killed source");
    }
}

impl Drop for SourceProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_stream_then_restart_loses_nothing() {
    let mut env = Env::new("kill_nine", small()).await;
    let mut child = SourceProcess::spawn(&env);
    wait_for("the snapshot", T, || env.snapshot_done()).await;

    // A writer changes stock of 10 items across warehouses in many small
    // transactions while the source is killed and restarted.
    let writer_dsn = env.dsn.clone();
    let stop = CancellationToken::new();
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut conn = shared_or_own(&writer_dsn).await.expect("writer connects");
            let mut n = 0u32;
            while !stop.is_cancelled() {
                n += 1;
                conn.exec_drop(
                    "UPDATE `tabBin` SET actual_qty = ? WHERE item_code = ? AND warehouse = ?",
                    (
                        n,
                        format!("SKU-{:06}", 1 + n % 10),
                        warehouse_name(1 + n % 3),
                    ),
                )
                .await
                .expect("writer update");
            }
            n
        }
    });
    let mut stock = env.reader("erp.stock.v1");
    stock.read_until(T, |r| r.len() >= 60 + 200).await;
    child.kill_9();
    let first_run_ends: HashMap<i32, i64> = {
        let records = stock.drain(Duration::from_secs(2)).await;
        let mut ends = HashMap::new();
        for r in records {
            let e = ends.entry(r.partition).or_insert(r.offset);
            *e = (*e).max(r.offset);
        }
        ends
    };
    // The writer keeps writing while the source is down.
    let down_from = master_position(&mut env.erp).await;
    wait_for("writes while the source is down", T, || {
        let dsn = env.dsn.clone();
        async move {
            let Some(mut c) = shared_or_own(&dsn).await else {
                return false;
            };
            master_position(&mut c).await > down_from + 20_000
        }
    })
    .await;
    let mut child = SourceProcess::spawn(&env);
    wait_for(
        "the restarted source to store a newer position",
        T,
        || async {
            env.stored()
                .await
                .and_then(|p| p.position())
                .is_some_and(|p| p.0 > down_from)
        },
    )
    .await;
    stop.cancel();
    let writes = writer.await.expect("writer");
    assert!(writes > 200, "the writer made only {writes} transactions");

    let mut finals = HashMap::new();
    for i in 1..=10 {
        for w in 1..=3 {
            let (actual, _) = env.bin(&format!("SKU-{i:06}"), &warehouse_name(w)).await;
            finals.insert(key(i, w), actual);
        }
    }
    let finals_ref = &finals;
    stock
        .read_until(T, move |r| {
            let latest = latest_by_key(r);
            finals_ref
                .iter()
                .all(|(k, v)| latest.get(k).and_then(|e| e.str("on_hand")) == Some(v.as_str()))
        })
        .await;
    child.kill_9();

    // Within each run, versions per key only grow; the restart may replay.
    let mut last: HashMap<(bool, String), u64> = HashMap::new();
    for r in &stock.records {
        let second_run = first_run_ends
            .get(&r.partition)
            .is_some_and(|end| r.offset > *end);
        let prev = last.entry((second_run, r.key.clone())).or_insert(0);
        assert!(
            r.version() > *prev,
            "version went backward within a run for {}: {} after {}",
            r.key,
            r.version(),
            prev
        );
        *prev = r.version();
    }
}

/// Runs the source once on `env` and returns its error (it must fail).
async fn refused(env: &Env) -> String {
    let source = env.start_source();
    match tokio::time::timeout(T, source.handle).await {
        Ok(Ok(Err(e))) => e.to_string(),
        Ok(Ok(Ok(()))) => panic!("the source stopped without an error"),
        Ok(Err(e)) => panic!("the source panicked: {e}"),
        Err(_) => panic!("the source kept running"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_binlog_format_and_a_purged_binlog_are_refused_with_the_fix() {
    // A server of its own: this test changes global settings and purges logs.
    let server = LocalMariadb::start()
        .await
        .unwrap_or_else(|e| panic!("test MariaDB did not start: {e}"));
    let mut env = Env::on(&server, "misconfigured", small()).await;

    env.erp
        .query_drop("SET GLOBAL binlog_format = 'STATEMENT'")
        .await
        .expect("set format");
    let err = refused(&env).await;
    assert!(err.contains("binlog_format is STATEMENT"), "{err}");
    assert!(err.contains("SET GLOBAL binlog_format = 'ROW'"), "{err}");
    env.erp
        .query_drop("SET GLOBAL binlog_format = 'ROW'")
        .await
        .expect("set format");

    let source = env.start_streaming().await;
    source.stop().await;
    let stored = env.stored().await.expect("stored");
    // Changes after the stored position, then the file holding them is purged.
    env.commit("UPDATE `tabBin` SET actual_qty = 1 WHERE item_code = 'SKU-000001'")
        .await;
    env.erp
        .query_drop("FLUSH BINARY LOGS")
        .await
        .expect("flush");
    let newest: String = {
        let row: mysql_async::Row = env
            .erp
            .query_first("SHOW MASTER STATUS")
            .await
            .expect("status")
            .expect("binlog");
        row.get(0).expect("file")
    };
    // The server keeps a file while a replica's dump thread still reads it,
    // and the stopped source's may take a moment to notice the disconnect.
    let purge_dsn = env.dsn.clone();
    wait_for("the stored binlog file to be purged", T, || {
        let (dsn, newest, file) = (purge_dsn.clone(), newest.clone(), stored.file.clone());
        async move {
            let Some(mut c) = shared_or_own(&dsn).await else {
                return false;
            };
            let _ = c
                .query_drop(format!("PURGE BINARY LOGS TO '{newest}'"))
                .await;
            let logs: Vec<mysql_async::Row> = c.query("SHOW BINARY LOGS").await.unwrap_or_default();
            !logs
                .iter()
                .any(|r| r.get::<String, _>(0).as_deref() == Some(file.as_str()))
        }
    })
    .await;
    let err = refused(&env).await;
    assert!(err.contains(&stored.file), "{err}");
    assert!(err.contains("purged"), "{err}");
    assert!(err.contains("re-snapshot"), "{err}");
    assert!(
        err.contains("DELETE FROM `flywheel`.source_state WHERE name = 'misconfigured'"),
        "{err}"
    );
}

/// A shop order event as the gateway would produce it.
fn shop_order(
    id: &str,
    version: i64,
    paid: bool,
    cancelled: bool,
    lines: &[(&str, i64)],
) -> ShopOrderEvent {
    ShopOrderEvent {
        key: format!("demo/{id}"),
        version,
        version_tiebreak: String::new(),
        source_ts: version,
        event_id: format!("test-{id}-{version}"),
        topic: "orders/updated".into(),
        platform: "shopify".into(),
        channel: "demo".into(),
        order_id: id.into(),
        order_name: Some(format!("#{id}")),
        email: Some(format!("buyer{id}@example.com")),
        currency: Some("EUR".into()),
        total_price: Some("30.00".into()),
        financial_status: Some(if paid { "paid" } else { "pending" }.into()),
        fulfillment_status: None,
        cancelled_at: cancelled.then(|| "2026-12-03T10:00:00Z".into()),
        cancel_reason: None,
        created_at: Some("2026-12-03T09:00:00Z".into()),
        updated_at: "2026-12-03T09:00:00Z".into(),
        customer: Some(Customer {
            first_name: Some("Buyer".into()),
            last_name: Some(id.into()),
            ..Default::default()
        }),
        shipping_address: None,
        billing_address: None,
        lines: lines
            .iter()
            .enumerate()
            .map(|(i, (sku, qty))| Line {
                line_id: format!("{id}-{i}"),
                sku: Some((*sku).into()),
                title: None,
                quantity: *qty,
                price: "10.00".into(),
            })
            .collect(),
        fulfillments: vec![],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shop_orders_reach_erpnext_once_and_do_not_echo() {
    let mut env = Env::new("orders_in", small()).await;
    // An existing customer with order 1's e-mail: matched, not duplicated.
    env.commit(
        "INSERT INTO `tabCustomer` (name, customer_name, email_id) VALUES ('Known Buyer', 'Known Buyer', 'BUYER1@example.com')",
    )
    .await;
    let source = env.start_streaming().await;
    let pg = &common::shared().await.pg;
    pg.create_database("my_orders_in_state")
        .await
        .expect("state database");
    let mut config = env.config.clone();
    config.processors.state_dsn = Some(pg.dsn("my_orders_in_state"));
    config.processors.group_id = "orders_in".into();
    config.processors.batch_wait_ms = 100;

    // Order 1 created unpaid then paid, order 2 paid then cancelled, each
    // version delivered twice and out of order; order 3 has a SKU the ERP lacks.
    let producer = EventProducer::new(&config.kafka, "test").expect("producer");
    let codec = AvroCodec::for_topic(SHOP_ORDERS).expect("codec");
    let one = [("SKU-000007", 2), ("SKU-000008", 1)];
    let deliveries = [
        shop_order("1", 2, true, false, &one),
        shop_order("1", 1, false, false, &one),
        shop_order("2", 1, true, false, &[("SKU-000009", 3)]),
        shop_order("1", 2, true, false, &one),
        shop_order("2", 2, true, true, &[("SKU-000009", 3)]),
        shop_order("2", 1, true, false, &[("SKU-000009", 3)]),
        shop_order("3", 1, true, false, &[("SKU-999999", 1)]),
    ];
    for e in &deliveries {
        producer
            .send(OutRecord {
                topic: SHOP_ORDERS,
                key: e.key.clone(),
                payload: codec.encode_serde(e).expect("encoding"),
                headers: vec![],
            })
            .await
            .expect("producing");
    }
    let processor = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::orders_to_erp::run(&c, t).await
    });

    let dsn = env.dsn.clone();
    let orders = || {
        let dsn = dsn.clone();
        async move {
            let mut c = shared_or_own(&dsn).await.expect("connect");
            let rows: Vec<(String, String, i64, String, i64)> = c
                .query(
                    "SELECT so.custom_shop_order_id, so.customer, so.docstatus, so.status,
                            (SELECT COUNT(*) FROM `tabSales Order Item` i WHERE i.parent = so.name)
                     FROM `tabSales Order` so WHERE so.custom_channel = 'demo' ORDER BY 1",
                )
                .await
                .expect("reading orders");
            rows
        }
    };
    wait_for("both orders in their final state", T, || async {
        let rows = orders().await;
        rows.len() == 2 && rows[0].2 == 1 && rows[1].2 == 2
    })
    .await;
    let rows = orders().await;
    assert_eq!(
        rows[0],
        (
            "1".into(),
            "Known Buyer".into(),
            1,
            "To Deliver and Bill".into(),
            2
        )
    );
    assert_eq!(rows[1].2, 2, "order 2 cancelled: {:?}", rows[1]);
    assert_eq!(rows[1].3, "Cancelled");
    assert_eq!(rows[1].4, 1);
    let customers: Vec<String> = env
        .erp
        .query("SELECT name FROM `tabCustomer` ORDER BY name")
        .await
        .expect("customers");
    assert_eq!(
        customers,
        vec!["Buyer 2".to_owned(), "Known Buyer".to_owned()]
    );

    // Order 3 is a dead letter naming the SKU; nothing of it was written.
    let mut dlq = env.reader("flywheel.dlq.v1");
    dlq.read_until(T, |r| {
        r.iter()
            .any(|e| e.str("reason").is_some_and(|r| r.contains("SKU-999999")))
    })
    .await;

    // The submitted order reserves its lines (recomputed after the write, a
    // change of its own): published with the channel's part.
    let mut stock = env.reader("erp.stock.v1");
    let k = key(7, 1);
    stock
        .read_until(T, |r| {
            r.iter().any(|e| {
                e.key == k
                    && e.str("reserved_by_channel")
                        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
                        == Some(serde_json::json!({"demo": "2.000000000"}))
            })
        })
        .await;
    assert_eq!(env.bin("SKU-000007", "WH1 - FW").await.1, "2.000000000");

    // No echo: Flywheel's own order writes produced no order status.
    let mut status = env.reader("erp.order_status.v1");
    let echoed = status.drain(Duration::from_secs(2)).await;
    assert!(
        echoed.iter().all(|e| !e.key.starts_with("demo/")),
        "echoed: {echoed:?}"
    );
    // …while a change the ERP makes to such an order is published.
    let shipped = demo_erpnext::ErpNextActivity::new(small(), 3)
        .ship_shop_order(&mut env.erp)
        .await
        .expect("shipping");
    assert_eq!(shipped, 1);
    status
        .read_until(T, |r| {
            r.iter()
                .any(|e| e.key == "demo/1" && e.str("status") == Some("shipped"))
        })
        .await;
    processor.stop().await;
    source.stop().await;
}
