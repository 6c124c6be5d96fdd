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

use common::{FlywheelProcess, Rec, RunningSource, TopicReader, wait_for};
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
        // Flywheel's own state (source position, echo marks, the
        // processors' versions, levels and leases) per test too.
        config.erp.state_database = format!("{name}_fw");
        config.erp.status_interval_ms = 100;
        config.erp.heartbeat_interval_ms = 500;
        common::shared().await.broker.configure(&mut config.kafka);
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
                format!(
                    "SELECT binlog_file, binlog_pos FROM `{}`.source_state WHERE name = ?",
                    self.config.erp.state_database
                ),
                (&self.name,),
            )
            .await
            .ok()?;
        row.map(|(f, p)| BinlogPos::new(f, p))
    }

    /// Waits until the stored position reaches `target`.
    async fn await_stored_past(&self, target: u64, what: &str) {
        wait_for(
            &format!("the stored position to pass {what}"),
            T,
            || async {
                self.stored()
                    .await
                    .and_then(|p| p.position())
                    .is_some_and(|p| p.0 >= target)
            },
        )
        .await;
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
    let latest = common::latest_by_key(records);
    assert_eq!(latest[&k].str("on_hand"), Some("77.000000000"));
    assert!(env.stored().await.expect("stored").position() > snapshot_at.position());
    source.stop().await;
}

/// The stored position follows Kafka's acknowledgements, not the status
/// interval: with an interval far beyond the deadline, only a prompt store
/// can advance it.
#[tokio::test(flavor = "multi_thread")]
async fn the_position_is_stored_soon_after_the_events_are_acknowledged() {
    let mut env = Env::new("prompt_store", small()).await;
    env.config.erp.status_interval_ms = 600_000;
    let source = env.start_streaming().await;
    let after = env
        .commit("UPDATE `tabBin` SET actual_qty = 78 WHERE item_code = 'SKU-000004' AND warehouse = 'WH1 - FW'")
        .await;
    env.await_stored_past(after, "the acknowledged commit")
        .await;
    source.stop().await;
}

/// Transactions on tables Flywheel does not read carry nothing to acknowledge,
/// so the stored position moves past them: here one committed right behind a
/// change of ours (still on its way to Kafka), and one alone. Otherwise the
/// position would stay at the last change of ours, and a restart would read
/// the rest of the log again.
#[tokio::test(flavor = "multi_thread")]
async fn the_position_moves_past_transactions_on_other_tables() {
    let mut env = Env::new("idle_floor", small()).await;
    env.erp
        .query_drop("CREATE TABLE not_ours (id INT PRIMARY KEY, note TEXT)")
        .await
        .expect("creating a table Flywheel does not read");
    let source = env.start_streaming().await;
    let before_ours = master_position(&mut env.erp).await;
    let ours = env
        .commit("UPDATE `tabBin` SET actual_qty = 79 WHERE item_code = 'SKU-000005' AND warehouse = 'WH1 - FW'")
        .await;
    let behind = env
        .commit("INSERT INTO not_ours VALUES (1, 'right behind a change of ours')")
        .await;
    assert!(behind > ours);
    env.await_stored_past(behind, "a transaction on another table right behind ours")
        .await;
    let alone = env.commit("INSERT INTO not_ours VALUES (2, 'alone')").await;
    env.await_stored_past(alone, "a transaction on another table alone")
        .await;
    // The change of ours reached Kafka; nothing of the other table did.
    let mut stock = env.reader("erp.stock.v1");
    let k = key(5, 1);
    // Its version is its commit's position, at or before `ours`: the source
    // stores its own position on this server too, and such a commit can land
    // between ours and the reading of the server's position.
    stock
        .read_until(T, |r| {
            r.iter().any(|e| {
                e.key == k
                    && (before_ours + 1..=ours).contains(&e.version())
                    && e.str("on_hand") == Some("79.000000000")
            })
        })
        .await;
    let records = stock.drain(Duration::from_secs(1)).await;
    assert!(records.iter().all(|e| e.key.starts_with("SKU-")));
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
        "INSERT INTO echo_mark_fw.echo_marks (origin) VALUES ('test');
         UPDATE `tabBin` SET actual_qty = 55 WHERE item_code = 'SKU-000004' AND warehouse = 'WH1 - FW';
         DELETE FROM echo_mark_fw.echo_marks WHERE origin = 'test'",
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

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_stream_then_restart_loses_nothing() {
    let mut env = Env::new("kill_nine", small()).await;
    let mut child = FlywheelProcess::source(&env.config, &[]);
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
    let first_run_ends = common::run_ends(&mut stock).await;
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
    let mut child = FlywheelProcess::source(&env.config, &[]);
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
    common::await_final_on_hand(&mut stock, &finals).await;
    child.kill_9();

    // Within each run, versions per key only grow; the restart may replay.
    common::assert_versions_grow_within_runs(&stock.records, &first_run_ends);
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
        err.contains("DELETE FROM `misconfigured_fw`.source_state WHERE name = 'misconfigured'"),
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
    // The processors keep their state beside the source's, in MariaDB.
    let mut config = env.config.clone();
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
                payload: codec.encode_serde(e).expect("encoding").into(),
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

/// `flywheel processors` on `config` written to a file, killed when dropped.
struct ProcessorsProcess {
    child: FlywheelProcess,
    _dir: tempfile::TempDir,
}

impl ProcessorsProcess {
    fn spawn(config: &Config) -> ProcessorsProcess {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("flywheel.toml");
        std::fs::write(&file, toml::to_string(config).expect("config as TOML")).expect("config");
        let child = FlywheelProcess::spawn(
            &["--config".as_ref(), file.as_os_str(), "processors".as_ref()],
            &[],
        );
        ProcessorsProcess { child, _dir: dir }
    }

    fn kill_9(&mut self) {
        self.child.kill_9();
    }
}

/// (SKU, shop location) → what the shop should sell: actual − reserved,
/// never below zero (no shop orders here, so nothing is the shop's own).
async fn erpnext_should_show(dsn: &str) -> HashMap<(String, String), i64> {
    let mut c = shared_or_own(dsn).await.expect("connect");
    let rows: Vec<(String, String, i64)> = c
        .query(
            "SELECT item_code, warehouse,
                    CAST(GREATEST(0, TRUNCATE(actual_qty, 0) - CEIL(reserved_qty)) AS SIGNED)
             FROM `tabBin`",
        )
        .await
        .expect("reading tabBin");
    rows.into_iter()
        .map(|(item, warehouse, n)| {
            // `WH2 - FW` is the shop's `WH2`.
            let location = warehouse
                .split(" - ")
                .next()
                .unwrap_or(&warehouse)
                .to_owned();
            ((item, location), n)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn processors_keep_their_state_in_mariadb_and_recover_from_kill_9() {
    let env = Env::new("state_in_mariadb", small()).await;
    let source = env.start_streaming().await;
    let sim = common::start_shop(20).await;
    // No `processors.state_dsn`: versions, levels written and partition
    // leases live in the ERP's server, beside the source's position.
    let mut config = env.config.clone();
    assert!(config.processors.state_dsn.is_none());
    config.processors.group_id = "state_in_mariadb".into();
    config.processors.instance_id = "mariadb-worker".into();
    config.processors.batch_wait_ms = 50;
    config.shops[0].admin_url = sim.graphql_url();
    config.shops[0].access_token = flywheel::config::Secret(sim.config.access_token.clone());
    config.shops[0].price_list = demo_erpnext::STANDARD_SELLING.into();
    config.shops[0].warehouse_locations = (1..=3)
        .map(|i| (warehouse_name(i), format!("WH{i}")))
        .collect();
    let mut workers = ProcessorsProcess::spawn(&config);
    let in_sync =
        || async { common::shop_stock(&sim).await == erpnext_should_show(&env.dsn).await };
    wait_for("the shop to show the ERP's stock", T, in_sync).await;

    let state_db = config.erp.state_database.clone();
    let mut conn = shared_or_own(&env.dsn).await.expect("connect");
    // A level whose shop number already matched shows in sync before its
    // event is applied, and versions are stored after the writes: wait.
    let applied = || async {
        let mut conn = shared_or_own(&env.dsn).await.expect("connect");
        let n: i64 = conn
            .exec_first(
                format!(
                    "SELECT COUNT(*) FROM `{state_db}`.applied_versions WHERE processor = 'stock.demo'"
                ),
                (),
            )
            .await
            .expect("reading applied versions")
            .expect("a count");
        n
    };
    wait_for("every stock event applied", T, || async {
        applied().await >= 60
    })
    .await;
    assert_eq!(
        applied().await,
        60,
        "one applied version per item and warehouse"
    );
    let written: i64 = conn
        .exec_first(
            format!("SELECT COUNT(*) FROM `{state_db}`.levels_written WHERE confirmed"),
            (),
        )
        .await
        .expect("reading levels written")
        .expect("a count");
    assert!(written > 0, "the levels written are recorded and confirmed");
    // The stock processor's live workers, as `flywheel replay` sees them.
    let holders = || async {
        let mut state = flywheel::sync::state::StateDb::connect(&config)
            .await
            .expect("the state database");
        state
            .holders("state_in_mariadb.stock.demo")
            .await
            .expect("holders")
            .len()
    };
    assert_eq!(holders().await, 1);

    // Stock keeps moving while the processors are killed and restarted.
    let writer_dsn = env.dsn.clone();
    let stop = CancellationToken::new();
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut conn = shared_or_own(&writer_dsn).await.expect("writer connects");
            let mut activity = demo_erpnext::ErpNextActivity::new(small(), 11);
            let mut moves = 0u32;
            while !stop.is_cancelled() {
                activity.stock_move(&mut conn).await.expect("a stock move");
                moves += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            moves
        }
    });
    wait_for("the writer to get going", T, || async {
        common::shop_stock(&sim).await != erpnext_should_show(&env.dsn).await
            || writer.is_finished()
    })
    .await;
    workers.kill_9();
    // The killed worker's session ended with it, and its leases with that.
    wait_for("the dead worker's leases to be released", T, || async {
        holders().await == 0
    })
    .await;
    let _workers = ProcessorsProcess::spawn(&config);
    wait_for("the restarted worker to join", T, || async {
        holders().await == 1
    })
    .await;
    stop.cancel();
    let moves = writer.await.expect("the writer");
    assert!(moves > 0);
    wait_for("the shop to converge after the restart", T, in_sync).await;
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_state_on_mariadb_never_lowers_a_version_and_tells_keys_apart_by_case() {
    let env = Env::new("state_versions", small()).await;
    let mut state = flywheel::sync::state::StateDb::connect(&env.config)
        .await
        .expect("the state database");
    let v = |n: i64, t: &str| (n, t.to_owned());
    let store = |applied: Vec<(&str, (i64, String))>| {
        applied
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<Vec<_>>()
    };
    state
        .store_versions("stock", &store(vec![("a", v(5, "")), ("A", v(3, "x"))]))
        .await
        .expect("storing");
    // Older, equal and tiebreak-newer versions in one upsert.
    state
        .store_versions(
            "stock",
            &store(vec![("a", v(5, "b")), ("A", v(2, "z")), ("b", v(1, ""))]),
        )
        .await
        .expect("storing");
    state
        .store_versions("stock", &store(vec![("a", v(4, "z"))]))
        .await
        .expect("storing");
    let keys = ["a", "A", "b", "c"].map(String::from);
    let loaded = state.load_versions("stock", &keys).await.expect("loading");
    assert_eq!(loaded.get("a"), Some(&v(5, "b")));
    assert_eq!(loaded.get("A"), Some(&v(3, "x")));
    assert_eq!(loaded.get("b"), Some(&v(1, "")));
    assert_eq!(loaded.get("c"), None);
    assert!(
        state
            .load_versions("price", &keys)
            .await
            .expect("loading")
            .is_empty(),
        "versions are per processor"
    );

    // Levels written: intended, then confirmed only where the write matches.
    let levels = [(
        "gid://shopify/InventoryItem/7",
        "gid://shopify/Location/1",
        4,
        9,
    )];
    state.intend_levels("eu", &levels).await.expect("intending");
    state
        .confirm_levels("eu", &[("7", "1", 4, 8)])
        .await
        .expect("confirming another version");
    let pairs = vec![
        ("7".to_owned(), "1".to_owned()),
        ("8".to_owned(), "1".to_owned()),
    ];
    let written = state
        .load_levels("eu", &pairs)
        .await
        .expect("loading levels");
    assert_eq!(written.len(), 1);
    assert!(!written[&pairs[0]].confirmed);
    state
        .confirm_levels("eu", &levels)
        .await
        .expect("confirming");
    // Another shop's item 7 at location 1 is another level.
    assert!(
        state
            .load_levels("us", &pairs)
            .await
            .expect("loading levels")
            .is_empty()
    );
    let written = state
        .load_levels("eu", &pairs)
        .await
        .expect("loading levels");
    assert_eq!(
        written[&pairs[0]],
        flywheel::sync::state::Written {
            quantity: 4,
            version: 9,
            confirmed: true
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catalogue_mapping_in_mariadb_keeps_its_contract() {
    let env = Env::new("catalog_in_mariadb", small()).await;
    let mut state = flywheel::sync::state::StateDb::connect(&env.config)
        .await
        .expect("the state database");
    common::check_catalogue_mapping(&mut state).await;
}

/// The stock counts of a shop keeping one count per SKU (WooCommerce), kept
/// in MariaDB: a part older than the stored one does not replace it, parts
/// are per shop, and a count write is confirmed only at
/// the quantity recorded.
#[tokio::test(flavor = "multi_thread")]
async fn stock_counts_are_kept_in_mariadb_version_guarded() {
    use flywheel::sync::state::{CountWritten, StateDb, StockPart};
    let env = Env::new("counts_in_mariadb", small()).await;
    let mut state = StateDb::connect(&env.config)
        .await
        .expect("the state database");
    let part = |warehouse: &str, version: i64, sellable: i64, own_reserved: i64| StockPart {
        sku: "SKU-1".into(),
        warehouse: warehouse.into(),
        version,
        sellable,
        own_reserved,
    };
    state
        .store_parts("woo", &[part("WH1", 10, 7, 1), part("WH2", 10, 5, 0)])
        .await
        .expect("storing parts");
    // A replayed, older event of WH1, and a newer one of WH2.
    state
        .store_parts("woo", &[part("WH1", 9, 100, 0), part("WH2", 11, 6, 2)])
        .await
        .expect("storing parts again");
    let mut parts = state
        .load_parts("woo", &["SKU-1".into(), "SKU-2".into()])
        .await
        .expect("loading parts");
    parts.sort_by(|a, b| a.warehouse.cmp(&b.warehouse));
    assert_eq!(parts, [part("WH1", 10, 7, 1), part("WH2", 11, 6, 2)]);
    assert!(
        state
            .load_parts("other", &["SKU-1".into()])
            .await
            .expect("loading")
            .is_empty(),
        "another shop's parts are its own"
    );

    let count = CountWritten {
        quantity: 9,
        own_reserved: 3,
        held: 1,
        held_since: 1_700_000_000,
        confirmed: false,
    };
    state
        .record_counts("woo", &[("SKU-1".into(), count)])
        .await
        .expect("recording");
    // A confirmation of another quantity (an older write) changes nothing.
    state
        .confirm_counts("woo", &[("SKU-1".into(), 8)])
        .await
        .expect("confirming");
    let loaded = state
        .load_counts("woo", &["SKU-1".into()])
        .await
        .expect("loading");
    assert_eq!(loaded.get("SKU-1"), Some(&count));
    state
        .confirm_counts("woo", &[("SKU-1".into(), 9)])
        .await
        .expect("confirming");
    let loaded = state
        .load_counts("woo", &["SKU-1".into()])
        .await
        .expect("loading");
    assert_eq!(
        loaded.get("SKU-1"),
        Some(&CountWritten {
            confirmed: true,
            ..count
        })
    );
}

/// `flywheel reconcile`'s ERP side on MariaDB: every key read inside one
/// consistent snapshot, at the binlog position the snapshot stands at (so a
/// repair event is ordered exactly against the stream), or one key alone.
#[tokio::test(flavor = "multi_thread")]
async fn the_erps_truth_is_read_at_the_snapshots_binlog_position() {
    let mut env = Env::new("truth", small()).await;
    let before = env
        .commit(
            "UPDATE `tabBin` SET actual_qty = 321, reserved_qty = 1
             WHERE item_code = 'SKU-000002' AND warehouse = 'WH3 - FW'",
        )
        .await;
    let truth = flywheel::erp::source::read_truth(&env.config, &["stock"], None)
        .await
        .expect("reading the ERP's truth");
    let after = master_position(&mut env.erp).await;
    assert!(
        truth.version.0 >= before && truth.version.0 <= after,
        "version {} is not the snapshot's position (in [{before}, {after}])",
        truth.version.0
    );
    let stock = &truth.records["stock"];
    assert_eq!(stock.len(), 20 * 3, "one event per (SKU, warehouse)");
    assert!(!truth.records.contains_key("price"), "only what was asked");
    let codec = flywheel::bus::avro::AvroCodec::for_topic("erp.stock.v1").expect("codec");
    let k = key(2, 3);
    let record = stock.iter().find(|r| r.key == k).expect("the changed key");
    let value = codec.decode(&record.payload).expect("an event");
    assert_eq!(
        flywheel::bus::avro::field_str(&value, "on_hand"),
        Some("321.000000000")
    );
    let one = flywheel::erp::source::read_truth(&env.config, &["stock"], Some(&k))
        .await
        .expect("reading one key");
    assert_eq!(one.records["stock"].len(), 1);
    assert_eq!(one.records["stock"][0].key, k);
}

/// Capture reads row images with its own reader (`erp::mysql::row_image`),
/// which decodes only the trigger columns and steps over the rest by their
/// binary size. On real binlog events of a table with every column type
/// MariaDB has, with NULLs, extremes, updates and deletes, it must give the
/// same text as mysql_common's own `rows()` for every column, and the same
/// for the wanted columns when only some are wanted (the others stepped over).
#[tokio::test(flavor = "multi_thread")]
async fn row_images_read_the_same_text_as_mysql_common_for_every_column_type() {
    use flywheel::erp::mysql::binlog_value::{binlog_value_text, check_table_map};
    use flywheel::erp::mysql::row_image::{Image, TableForm};
    use futures::StreamExt;
    use mysql_common::binlog::events::EventData;
    use mysql_common::binlog::row::BinlogRow;

    let server = mariadb().await;
    let name = "row_images";
    server.create_database(name).await.expect("database");
    let mut conn = server.connect(name).await.expect("connecting");
    conn.query_drop(
        "CREATE TABLE every_type (
            id int NOT NULL PRIMARY KEY,
            t tinyint, tu tinyint unsigned, s smallint, su smallint unsigned,
            m mediumint, mu mediumint unsigned, i int, iu int unsigned,
            b bigint, bu bigint unsigned, f float, d double,
            dec_a decimal(21,9), dec_b decimal(10,2), dec_c decimal(65,30), dec_d decimal(5,0),
            c char(10), c_long char(200) CHARACTER SET utf8mb4,
            vc varchar(140), vc_long varchar(2000) CHARACTER SET utf8mb4,
            vb varbinary(20), bn binary(4),
            tt tinytext, tx text, mt mediumtext, lt longtext, bl blob,
            dt datetime, dt3 datetime(3), dt6 datetime(6),
            ts timestamp(2) NULL, ts0 timestamp NULL,
            tm time, tm1 time(1), tm4 time(4), tm6 time(6), dte date, yr year,
            e enum('a','b','c'), st set('x','y','z'), bt bit(10), js json,
            tail varchar(10)
        )",
    )
    .await
    .expect("creating the table");
    let start: mysql_async::Row = conn
        .query_first("SHOW MASTER STATUS")
        .await
        .expect("SHOW MASTER STATUS")
        .expect("binlog is on");
    let (file, pos): (String, u64) = (start.get(0).expect("file"), start.get(1).expect("pos"));
    let full = "(1, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
        -9223372036854775808, 18446744073709551615, -1.5, 2.25e-300,
        -123456789012.123456789, 99999999.99, -12345678901234567890123456789012345.123456789012345678901234567890, -99999,
        'char', REPEAT('é', 200), 'SKU-000001', REPEAT('ü', 2000),
        x'00ff10', x'01020304',
        'tiny', REPEAT('t', 300), REPEAT('m', 70000), 'long', x'deadbeef',
        '2026-12-05 23:59:58', '2026-12-05 01:02:03.456', '1000-01-01 00:00:00.000001',
        '2026-12-05 10:11:12.34', '2026-01-01 00:00:00',
        '-838:59:59', '12:34:56.7', '-01:02:03.0405', '23:59:59.999999', '2026-02-28', 2026,
        'b', 'x,z', b'1010101010', '{\"a\": [1, 2.5, null, \"x\"]}', 'end')";
    conn.query_drop(format!("INSERT INTO every_type VALUES {full}"))
        .await
        .expect("inserting extremes");
    conn.query_drop(
        "INSERT INTO every_type (id) VALUES (2), (3);
         INSERT INTO every_type (id, dec_a, vc, tail) VALUES (4, 0, '', '');
         UPDATE every_type SET dec_a = dec_a + 1, vc = CONCAT(vc, '-x'), tm = '00:00:01', tail = 'u' WHERE id IN (1, 4);
         UPDATE every_type SET tu = 0, dt6 = NULL, js = '[]' WHERE id = 1;
         DELETE FROM every_type WHERE id IN (2, 4);",
    )
    .await
    .expect("changing rows");
    let end = master_position(&mut conn).await;

    let opts = mysql_async::Opts::from_url(&server.dsn(name)).expect("dsn");
    let reader = Conn::new(opts).await.expect("a replica connection");
    let mut stream = reader
        .get_binlog_stream(
            mysql_async::BinlogStreamRequest::new(replica_id(name))
                .with_filename(file.as_bytes())
                .with_pos(pos),
        )
        .await
        .expect("a binlog stream");
    let texts = |image: &BinlogRow| -> (usize, Vec<Option<String>>) {
        let texts = (0..image.len())
            .map(|i| image.as_ref(i).and_then(binlog_value_text))
            .collect();
        (image.len(), texts)
    };
    let ours = |image: &Image, columns: usize| -> (usize, Vec<Option<String>>) {
        let texts = (0..columns)
            .map(|i| image.text(i).map(str::to_owned))
            .collect();
        (image.present, texts)
    };
    let mut table = None;
    let mut images = 0;
    let mut deadline = Box::pin(tokio::time::sleep(T));
    loop {
        let event = tokio::select! {
            e = stream.next() => e.expect("the stream ended").expect("a binlog event"),
            _ = &mut deadline => panic!("the binlog did not reach position {end} in {T:?}"),
        };
        let at = BinlogPos::new(file.clone(), u64::from(event.header().log_pos()));
        match event.read_data().expect("decodable") {
            Some(EventData::TableMapEvent(tme)) if tme.table_name() == "every_type" => {
                check_table_map(&tme).expect("a table map capture accepts");
                let columns = tme.columns_count() as usize;
                let all: Vec<usize> = (0..columns).collect();
                let odd: Vec<usize> = (1..columns).step_by(2).collect();
                let every = TableForm::new(&tme, &all).expect("a form of every column");
                let some = TableForm::new(&tme, &odd).expect("a form of odd columns");
                table = Some((tme.into_owned(), every, some, columns));
            }
            // Other tests write to the same server at the same time.
            Some(EventData::RowsEvent(rows))
                if table.as_ref().map(|t| t.0.table_id()) == Some(rows.table_id()) =>
            {
                let Some((tme, every, some, columns)) = table.as_ref() else {
                    continue;
                };
                let theirs: Vec<_> = rows
                    .rows(tme)
                    .map(|row| {
                        let (before, after) = row.expect("mysql_common decodes the row");
                        (before.as_ref().map(texts), after.as_ref().map(texts))
                    })
                    .collect();
                let every_rows: Vec<_> = every
                    .rows(&rows)
                    .expect("our reader decodes the row")
                    .iter()
                    .map(|(b, a)| {
                        (
                            b.as_ref().map(|i| ours(i, *columns)),
                            a.as_ref().map(|i| ours(i, *columns)),
                        )
                    })
                    .collect();
                assert_eq!(every_rows, theirs, "every column wanted");
                let some_rows = some.rows(&rows).expect("our reader decodes the row");
                assert_eq!(some_rows.len(), theirs.len());
                for ((b, a), (tb, ta)) in some_rows.iter().zip(&theirs) {
                    for (image, their) in [(b, tb), (a, ta)] {
                        let (Some(image), Some((present, their))) = (image, their) else {
                            assert_eq!(image.is_some(), their.is_some());
                            continue;
                        };
                        images += 1;
                        assert_eq!(image.present, *present);
                        for (i, text) in their.iter().enumerate() {
                            let want = if i % 2 == 1 { text.as_deref() } else { None };
                            assert_eq!(image.text(i), want, "column {i} with odd columns wanted");
                        }
                    }
                }
            }
            _ => {}
        }
        if at.position().expect("numbered file").0 >= end {
            break;
        }
    }
    // 4 inserted, 2 + 1 updated (before and after), 2 deleted.
    assert_eq!(images, 4 + 2 * 3 + 2, "every image compared");
}
