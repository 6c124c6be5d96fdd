//! The ERP source against a real PostgreSQL and a real Kafka-protocol broker.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{FlywheelProcess, Rec, TestEnv, small, wait_for};
use flywheel::erp::demo_erp::DemoSize;

const T: Duration = Duration::from_secs(60);

/// Runs `sql` in one transaction; returns WAL positions just before and after
/// its commit, which bracket the commit record's LSN.
async fn commit_bracketed(env: &mut TestEnv, sql: &str) -> (u64, u64) {
    let tx = env.erp.transaction().await.expect("begin");
    tx.batch_execute(sql).await.expect("transaction body");
    let before: i64 = tx
        .query_one(
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint",
            &[],
        )
        .await
        .expect("lsn")
        .get(0);
    tx.commit().await.expect("commit");
    (before as u64, env.current_wal().await)
}

#[tokio::test(flavor = "multi_thread")]
async fn stock_change_appears_with_the_right_aggregate_and_version() {
    let mut env = TestEnv::new("stock_change", small()).await;
    let source = env.start_streaming().await;
    let mut stock = env.reader("erp.stock.v1");

    // SKU-000001 in WH1: 100 (10 reserved) on Stock, 5 on a shelf; 7 at the
    // customer location and 11 on WH1's view location, neither of which is
    // the warehouse's stock (the one is elsewhere, the other not internal).
    let (lo, hi) = commit_bracketed(
        &mut env,
        "DELETE FROM stock_quant WHERE product_id = 1;
         INSERT INTO stock_quant (product_id, location_id, quantity, reserved_quantity)
         SELECT 1, w.lot_stock_id, 100, 10 FROM stock_warehouse w WHERE w.code = 'WH1';
         INSERT INTO stock_quant (product_id, location_id, quantity)
         SELECT 1, l.id, 5 FROM stock_location l WHERE l.name = 'WH1/Stock/Shelf 1';
         INSERT INTO stock_quant (product_id, location_id, quantity) VALUES (1, 3, 7);
         INSERT INTO stock_quant (product_id, location_id, quantity)
         SELECT 1, w.view_location_id, 11 FROM stock_warehouse w WHERE w.code = 'WH1';",
    )
    .await;

    let records = stock
        .read_until(T, |r| {
            r.iter()
                .any(|e| e.key == "SKU-000001/WH1" && e.version() >= lo)
        })
        .await;
    let event = records
        .iter()
        .find(|e| e.key == "SKU-000001/WH1" && e.version() >= lo)
        .expect("found above");
    assert!(
        event.version() >= lo && event.version() < hi,
        "version {} is not the commit LSN (in [{lo}, {hi}))",
        event.version()
    );
    assert_eq!(event.str("on_hand"), Some("105.000"));
    assert_eq!(event.str("reserved"), Some("10.000"));
    assert_eq!(event.str("available"), Some("95.000"));
    assert_eq!(event.str("sku"), Some("SKU-000001"));
    assert_eq!(event.str("warehouse"), Some("WH1"));
    assert!(!event.deleted());
    assert_eq!(
        event.headers.get("flywheel.version").map(String::as_str),
        Some(event.version().to_string().as_str())
    );
    // The same transaction emptied WH2 and WH3 of SKU-000001: zero, not absent.
    let all = stock
        .read_until(T, |r| {
            ["SKU-000001/WH2", "SKU-000001/WH3"]
                .iter()
                .all(|k| r.iter().any(|e| e.key == *k && e.version() >= lo))
        })
        .await;
    for k in ["SKU-000001/WH2", "SKU-000001/WH3"] {
        let e = all
            .iter()
            .find(|e| e.key == k && e.version() >= lo)
            .unwrap();
        assert_eq!(e.str("on_hand"), Some("0"), "{k}");
    }
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reservations_of_shop_orders_are_published_per_channel_and_warehouse() {
    let mut env = TestEnv::new("reserved_by_channel", small()).await;
    let source = env.start_streaming().await;
    let mut stock = env.reader("erp.stock.v1");

    // Two channels' orders reserve SKU-000002 in WH1, one in WH2; an order
    // the ERP made itself (no channel) is nobody's part.
    let (lo, _) = commit_bracketed(
        &mut env,
        "INSERT INTO sale_order (name, partner_id, state, channel, shop_order_id, warehouse_id)
         SELECT v.name, (SELECT min(id) FROM res_partner), 'sale', v.channel, v.name, w.id
         FROM (VALUES ('T-1', 'shop-a', 'WH1'), ('T-2', 'shop-b', 'WH1'),
                      ('T-3', 'shop-a', 'WH2'), ('T-4', NULL, 'WH1')) v(name, channel, wh)
         JOIN stock_warehouse w ON w.code = v.wh;
         INSERT INTO sale_order_line (order_id, product_id, name, product_uom_qty, price_unit)
         SELECT o.id, 2, 'line', v.qty, 1
         FROM sale_order o JOIN (VALUES ('T-1', 2), ('T-2', 3), ('T-3', 1), ('T-4', 4)) v(name, qty)
           ON v.name = o.name;
         SELECT demo_reserve_order(id) FROM sale_order WHERE name LIKE 'T-%';
         INSERT INTO stock_move (sale_line_id, product_id, location_id, product_uom_qty, state)
         SELECT l.id, 2, w.lot_stock_id, 4, 'assigned'
         FROM sale_order_line l JOIN sale_order o ON o.id = l.order_id
         JOIN stock_warehouse w ON w.id = o.warehouse_id WHERE o.name = 'T-4';",
    )
    .await;

    let keys = ["SKU-000002/WH1", "SKU-000002/WH2"];
    let records = stock
        .read_until(T, |r| {
            keys.iter()
                .all(|k| r.iter().any(|e| e.key == *k && e.version() >= lo))
        })
        .await;
    let by_channel = |key: &str| {
        let e = records
            .iter()
            .rfind(|e| e.key == key && e.version() >= lo)
            .expect("found above");
        e.str("reserved_by_channel")
            .map(|j| serde_json::from_str::<serde_json::Value>(j).expect("a JSON object"))
    };
    assert_eq!(
        by_channel("SKU-000002/WH1"),
        Some(serde_json::json!({"shop-a": "2.000", "shop-b": "3.000"}))
    );
    assert_eq!(
        by_channel("SKU-000002/WH2"),
        Some(serde_json::json!({"shop-a": "1.000"}))
    );
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_touching_many_rows_of_one_sku_produces_it_once() {
    let mut env = TestEnv::new("many_rows", small()).await;
    let source = env.start_streaming().await;
    let mut stock = env.reader("erp.stock.v1");

    // 300 row changes, all SKU-000002 in WH1 (Stock and both shelves).
    let (lo, hi) = commit_bracketed(
        &mut env,
        "INSERT INTO stock_quant (product_id, location_id, quantity)
         SELECT 2, l.id, 1 FROM stock_location l, generate_series(1, 100)
         WHERE l.name LIKE 'WH1/Stock%';
         UPDATE stock_quant SET quantity = quantity + 1 WHERE product_id = 2
           AND location_id IN (SELECT id FROM stock_location WHERE name LIKE 'WH1/%');",
    )
    .await;
    let (on_hand, _, _) = env.stock_of("SKU-000002", "WH1").await;
    stock
        .read_until(T, |r| r.iter().any(|e| e.version() >= lo))
        .await;
    // Let anything else the transaction might (wrongly) produce arrive.
    let records = stock.drain(Duration::from_secs(2)).await;
    let from_txn: Vec<&Rec> = records.iter().filter(|e| e.version() >= lo).collect();
    assert_eq!(
        from_txn.len(),
        1,
        "expected one event, got {:?}",
        from_txn.iter().map(|e| &e.key).collect::<Vec<_>>()
    );
    assert_eq!(from_txn[0].key, "SKU-000002/WH1");
    assert!(from_txn[0].version() < hi);
    assert_eq!(from_txn[0].str("on_hand"), Some(on_hand.as_str()));
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_of_10000_skus_produces_exactly_one_event_per_key() {
    let size = DemoSize {
        skus: 10_000,
        warehouses: 3,
        orders: 10,
        seed: 0.3,
    };
    let env = TestEnv::new("snapshot_10k", size).await;
    let expected_prices: i64 = env
        .erp
        .query_one(
            "SELECT (SELECT count(*) FROM product_product)
                  + (SELECT count(*) FROM product_pricelist_item i JOIN product_product p ON p.id = i.product_id)
                  + (SELECT count(*) FROM product_pricelist_item i JOIN product_product p ON p.product_tmpl_id = i.product_tmpl_id)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let source = env.start_streaming().await;

    let mut stock = env.reader("erp.stock.v1");
    stock.read_until(T, |r| r.len() >= 30_000).await;
    stock.drain(Duration::from_secs(2)).await;
    let keys: HashSet<&str> = stock.records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(
        stock.records.len(),
        30_000,
        "one event per (SKU, warehouse)"
    );
    assert_eq!(keys.len(), 30_000);
    let versions: HashSet<u64> = stock.records.iter().map(Rec::version).collect();
    assert_eq!(
        versions.len(),
        1,
        "every snapshot event carries the snapshot LSN"
    );
    let snapshot_lsn: i64 = env
        .erp
        .query_one(
            "SELECT (snapshot_lsn - '0/0'::pg_lsn)::bigint FROM flywheel.source_snapshot WHERE slot_name = $1",
            &[&env.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions.into_iter().next(), Some(snapshot_lsn as u64));

    let mut prices = env.reader("erp.price.v1");
    prices
        .read_until(T, |r| r.len() as i64 >= expected_prices)
        .await;
    prices.drain(Duration::from_secs(2)).await;
    let price_keys: HashSet<&str> = prices.records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(prices.records.len() as i64, expected_prices);
    assert_eq!(price_keys.len() as i64, expected_prices);
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_published_tables_do_not_hold_back_the_slot() {
    let env = TestEnv::new("idle_tables", small()).await;
    let source = env.start_streaming().await;
    let start = env.current_wal().await;
    env.erp
        .batch_execute("CREATE TABLE audit_log (id serial PRIMARY KEY, payload text)")
        .await
        .unwrap();
    for _ in 0..20 {
        env.erp
            .batch_execute(
                "INSERT INTO audit_log (payload) SELECT repeat('x', 200) FROM generate_series(1, 2000)",
            )
            .await
            .unwrap();
    }
    let target = env.current_wal().await;
    // Measured from before the writes: the source may already confirm part of
    // this WAL while it is being written.
    assert!(
        target > start + 1_000_000,
        "the busy table wrote at least 1 MB of WAL"
    );
    env.await_confirmed(
        "the confirmed flush position to pass the busy table's WAL",
        target,
        T,
    )
    .await;
    source.assert_running();
    source.stop().await;
}

/// The slot follows Kafka's acknowledgements, not the status interval: with
/// an interval far beyond the deadline, only a prompt report can advance it.
#[tokio::test(flavor = "multi_thread")]
async fn the_slot_is_confirmed_soon_after_the_events_are_acknowledged() {
    let mut env = TestEnv::new("prompt_confirm", small()).await;
    env.config.erp.status_interval_ms = 600_000;
    env.config.erp.heartbeat_interval_ms = 0;
    let source = env.start_streaming().await;
    let (_, after) = commit_bracketed(
        &mut env,
        "UPDATE stock_quant SET quantity = quantity + 1 WHERE product_id = 1",
    )
    .await;
    env.await_confirmed(
        "the confirmed flush position to pass the acknowledged commit",
        after,
        Duration::from_secs(20),
    )
    .await;
    source.assert_running();
    source.stop().await;
}

/// WAL the server sent past a change while the change was still on its way to
/// Kafka is confirmed once the change is acknowledged: the slot does not keep
/// it until the next heartbeat. Here the broker is paused while the change and
/// a write to an unpublished table go by.
#[tokio::test(flavor = "multi_thread")]
async fn wal_sent_while_a_change_was_unacknowledged_is_confirmed_after_its_ack() {
    let mut env = TestEnv::new("sent_floor", small()).await;
    // A broker of its own, to pause without pausing the other tests.
    let broker = flywheel::local_infra::LocalBroker::start()
        .await
        .expect("a broker of its own");
    broker.configure(&mut env.config.kafka);
    env.config.erp.status_interval_ms = 200;
    env.config.erp.heartbeat_interval_ms = 0;
    let source = env.start_streaming().await;
    env.erp
        .batch_execute("CREATE TABLE not_published (x int)")
        .await
        .expect("an unpublished table");

    let broker_pid = broker.pid().expect("the broker runs") as libc::pid_t;
    assert_eq!(unsafe { libc::kill(broker_pid, libc::SIGSTOP) }, 0);
    let (_, change_end) = commit_bracketed(
        &mut env,
        "UPDATE stock_quant SET quantity = quantity + 1 WHERE product_id = 1",
    )
    .await;
    env.erp
        .batch_execute("INSERT INTO not_published VALUES (1)")
        .await
        .expect("writing the unpublished table");
    let sent_end = env.current_wal().await;
    // The reader reports what it received as its write position: once that
    // passes `sent_end`, it has the server's word that everything before was sent.
    wait_for(
        "the reader to hear that the server sent everything",
        Duration::from_secs(20),
        || async { env.write_position().await.unwrap_or(0) >= sent_end },
    )
    .await;
    let confirmed_while_paused = env.confirmed_flush().await.unwrap_or(0);
    assert_eq!(unsafe { libc::kill(broker_pid, libc::SIGCONT) }, 0);
    assert!(
        confirmed_while_paused < change_end,
        "nothing is acknowledged while the broker is paused"
    );
    env.await_confirmed(
        "the change to be confirmed",
        change_end,
        Duration::from_secs(20),
    )
    .await;
    // In the same report, not at a later keepalive or heartbeat (the server
    // sends none while the reader's write position is at its end; the
    // background writer's next snapshot of running transactions would be one,
    // up to 15 s later).
    let confirmed = env.confirmed_flush().await.unwrap_or(0);
    assert!(
        confirmed >= sent_end,
        "the slot stopped at {confirmed}, short of the WAL sent after the change ({sent_end})"
    );
    source.assert_running();
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unmappable_row_is_dead_lettered_and_the_source_keeps_going() {
    let env = TestEnv::new("dead_letter", small()).await;
    let source = env.start_streaming().await;

    // A product without a SKU receives stock.
    env.erp
        .batch_execute(
            "INSERT INTO product_template (id, name, list_price) VALUES (900, 'Unlisted', 1);
             INSERT INTO product_product (id, product_tmpl_id, default_code) VALUES (900, 900, NULL);
             INSERT INTO stock_quant (product_id, location_id, quantity)
             SELECT 900, lot_stock_id, 4 FROM stock_warehouse WHERE code = 'WH2';",
        )
        .await
        .unwrap();
    let mut dlq = env.reader("flywheel.dlq.v1");
    let records = dlq
        .read_until(T, |r| {
            r.iter()
                .any(|d| d.str("context").is_some_and(|c| c.contains("\"900\"")))
        })
        .await;
    let letter = records
        .iter()
        .find(|d| d.str("context").is_some_and(|c| c.contains("\"900\"")))
        .unwrap();
    assert_eq!(letter.str("error_class"), Some("unmappable_row"));
    assert_eq!(letter.str("stage"), Some("erp.source"));
    assert!(
        letter.str("reason").unwrap().contains("without `sku`"),
        "{:?}",
        letter.str("reason")
    );
    assert!(letter.str("source_position").is_some());
    assert_eq!(
        letter
            .headers
            .get("flywheel.error.class")
            .map(String::as_str),
        Some("unmappable_row")
    );

    // The source is still streaming.
    env.set_stock(3, "WH3", 4242).await;
    let (on_hand, _, _) = env.stock_of("SKU-000003", "WH3").await;
    let mut stock = env.reader("erp.stock.v1");
    stock
        .read_until(T, |r| {
            r.iter()
                .any(|e| e.key == "SKU-000003/WH3" && e.str("on_hand") == Some(on_hand.as_str()))
        })
        .await;
    source.assert_running();
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_replica_identity_is_refused_with_the_fix() {
    let env = TestEnv::new("replica_identity", small()).await;
    env.erp
        .batch_execute("ALTER TABLE stock_quant REPLICA IDENTITY DEFAULT")
        .await
        .unwrap();
    let err = flywheel::erp::source::run(&env.config, Default::default())
        .await
        .expect_err("the source must refuse to start");
    let text = err.to_string();
    assert!(
        text.contains("ALTER TABLE public.stock_quant REPLICA IDENTITY FULL"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_restart_resumes_where_it_stopped() {
    let env = TestEnv::new("graceful_restart", small()).await;
    let source = env.start_streaming().await;
    source.stop().await;

    // Changes while the source is down are captured after it comes back.
    env.set_stock(4, "WH1", 777).await;
    let (on_hand, _, _) = env.stock_of("SKU-000004", "WH1").await;
    let source = env.start_source();
    let mut stock = env.reader("erp.stock.v1");
    stock
        .read_until(T, |r| {
            r.iter()
                .any(|e| e.key == "SKU-000004/WH1" && e.str("on_hand") == Some(on_hand.as_str()))
        })
        .await;
    // No second snapshot: 60 snapshot events plus what changed.
    let records = stock.drain(Duration::from_secs(1)).await;
    assert!(
        records.len() < 70,
        "{} events: the restart re-snapshotted",
        records.len()
    );
    source.stop().await;
}

/// Three transactions waiting while the source is down are read in one batch;
/// each key must still get the commit LSN of the newest transaction that
/// touched *it* (other processors compare versions across entities), whether
/// the connector's keys queries name their input rows (one query for the
/// batch) or not (one query per transaction).
async fn keys_in_one_batch_get_their_own_transactions_version(name: &str, connector: &str) {
    let mut env = TestEnv::new(name, small()).await;
    let path = std::env::temp_dir().join(format!("flywheel-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, connector).expect("connector file");
    env.config.erp.connector = Some(path);
    env.start_streaming().await.stop().await;

    let set = |product: i32, quantity: i32| {
        format!(
            "UPDATE stock_quant SET quantity = {quantity} WHERE product_id = {product}
               AND location_id = (SELECT lot_stock_id FROM stock_warehouse WHERE code = 'WH1');"
        )
    };
    let first = commit_bracketed(&mut env, &set(1, 301)).await;
    let second = commit_bracketed(&mut env, &set(2, 302)).await;
    let third = commit_bracketed(&mut env, &(set(1, 311) + &set(3, 303))).await;

    let source = env.start_source();
    let mut stock = env.reader("erp.stock.v1");
    let wanted = ["SKU-000001/WH1", "SKU-000002/WH1", "SKU-000003/WH1"];
    let records = stock
        .read_until(T, |r| {
            wanted
                .iter()
                .all(|k| r.iter().any(|e| e.key == *k && e.version() >= first.0))
        })
        .await;
    let version = |key: &str| {
        records
            .iter()
            .filter(|e| e.key == key && e.version() >= first.0)
            .map(Rec::version)
            .max()
            .expect("read above")
    };
    let within = |v: u64, (lo, hi): (u64, u64)| lo <= v && v < hi;
    assert!(
        within(version("SKU-000002/WH1"), second),
        "SKU-000002 was touched by the second transaction only: {} not in {second:?}",
        version("SKU-000002/WH1")
    );
    for key in ["SKU-000001/WH1", "SKU-000003/WH1"] {
        assert!(
            within(version(key), third),
            "{key}'s newest transaction is the third: {} not in {third:?}",
            version(key)
        );
    }
    assert!(first.1 <= second.0, "the transactions committed in order");
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_resolved_for_a_whole_batch_keep_their_own_transactions_version() {
    let odoo = include_str!("../connectors/odoo.toml");
    assert!(
        odoo.contains("input_row"),
        "the built-in connector names input rows"
    );
    keys_in_one_batch_get_their_own_transactions_version("batch_keys", odoo).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connector_without_input_row_still_labels_keys_per_transaction() {
    let odoo = include_str!("../connectors/odoo.toml");
    let legacy = odoo
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(", c.input_row", "")
        .replace(" WITH ORDINALITY AS c(", " AS c(")
        .replace(", input_row)", ")");
    assert!(!legacy.contains("input_row"));
    keys_in_one_batch_get_their_own_transactions_version("legacy_keys", &legacy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prices_follow_list_price_and_pricelist_changes() {
    let env = TestEnv::new("prices", small()).await;
    let source = env.start_streaming().await;
    // Product 6 has a Wholesale variant price (every third product).
    env.erp
        .batch_execute(
            "UPDATE product_template SET list_price = 50 WHERE id = 6;
             UPDATE product_pricelist_item SET fixed_price = 31.50 WHERE product_id = 6 AND pricelist_id = 2;",
        )
        .await
        .unwrap();
    let mut prices = env.reader("erp.price.v1");
    let records = prices
        .read_until(T, |r| {
            r.iter()
                .any(|e| e.key == "SKU-000006/list/EUR" && e.str("amount") == Some("50.00"))
                && r.iter()
                    .any(|e| e.key == "SKU-000006/2/EUR" && e.str("amount") == Some("31.50"))
        })
        .await;
    let latest = common::latest_by_key(records);
    assert_eq!(latest["SKU-000006/2/EUR"].str("compare_at"), Some("50.00"));
    source.stop().await;
}

/// A writer changing the stock of 10 SKUs across warehouses in many small
/// transactions until the token is cancelled; its task returns how many.
fn spawn_stock_writer(
    env: &TestEnv,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<i32>,
) {
    let writer_dsn = env.dsn.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let client = common::connect(&writer_dsn).await;
            let mut n = 0i32;
            while !stop.is_cancelled() {
                n += 1;
                client
                    .execute(
                        "UPDATE stock_quant q SET quantity = $1
                         FROM stock_warehouse w
                         WHERE q.location_id = w.lot_stock_id AND q.product_id = 1 + $1 % 10
                           AND w.code = 'WH' || (1 + $1 % 3)",
                        &[&n],
                    )
                    .await
                    .expect("writer update");
            }
            n
        }
    });
    (stop, writer)
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_stream_then_restart_loses_nothing() {
    let env = TestEnv::new("kill_nine", small()).await;
    let mut child = FlywheelProcess::source(&env.config, &[]);
    wait_for("the snapshot", T, || env.snapshot_done()).await;

    // A writer changes stock while the source is killed and restarted.
    let (stop, writer) = spawn_stock_writer(&env);
    let mut stock = env.reader("erp.stock.v1");
    stock.read_until(T, |r| r.len() >= 60 + 200).await;
    child.kill_9();
    // Everything produced by the first run, and where it ends per partition.
    let first_run_ends = common::run_ends(&mut stock).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // the writer keeps writing while the source is down
    let mut child = FlywheelProcess::source(&env.config, &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let writes = writer.await.expect("writer");
    assert!(writes > 200, "the writer made only {writes} transactions");

    // Converged: for every key, the newest version carries the ERP's final state.
    let mut finals = HashMap::new();
    for p in 1..=10 {
        for w in 1..=3 {
            let sku = format!("SKU-{p:06}");
            let wh = format!("WH{w}");
            finals.insert(format!("{sku}/{wh}"), env.stock_of(&sku, &wh).await.0);
        }
    }
    common::await_final_on_hand(&mut stock, &finals).await;
    child.kill_9();

    // Within each run, versions per key only grow; a restart may replay (older
    // versions again), which consumers skip as stale.
    common::assert_versions_grow_within_runs(&stock.records, &first_run_ends);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_cleanly_and_confirms_what_was_produced() {
    let env = TestEnv::new("sigterm", small()).await;
    // Status reports every 60 s and no heartbeat: what is in flight when the
    // signal arrives is confirmed only by the shutdown path (acknowledged
    // batches are otherwise reported within milliseconds, which a test cannot
    // get between).
    let mut child = FlywheelProcess::source(
        &env.config,
        &[
            ("FLYWHEEL_ERP__STATUS_INTERVAL_MS", "60000"),
            ("FLYWHEEL_ERP__HEARTBEAT_INTERVAL_MS", "0"),
        ],
    );
    wait_for("the snapshot", T, || env.snapshot_done()).await;
    let mut stock = env.reader("erp.stock.v1");
    let snapshot = stock.drain(Duration::from_secs(1)).await.len();
    // A writer keeps changing stock; the signal comes while the source is
    // busy with its transactions.
    let (stop, writer) = spawn_stock_writer(&env);
    stock.read_until(T, |r| r.len() >= snapshot + 100).await;

    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("waiting for the source") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit within 20 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.cancel();
    writer.await.expect("writer");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    // Every event the source produced belongs to a confirmed transaction: a
    // restart replays none of them.
    let newest = stock
        .drain(Duration::from_secs(2))
        .await
        .iter()
        .map(|e| e.version())
        .max()
        .expect("events");
    let confirmed = env.confirmed_flush().await.unwrap_or(0);
    assert!(
        confirmed >= newest,
        "confirmed {confirmed} does not cover the produced event of version {newest}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_started_before_its_broker_catches_up_once_the_broker_is_there() {
    let env = TestEnv::new("broker_late", small()).await;
    let port = flywheel::local_infra::free_port().expect("a free port");
    let mut config = env.config.clone();
    config.kafka.bootstrap = format!("127.0.0.1:{port}");
    let token = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn({
        let token = token.clone();
        async move { flywheel::erp::source::run_with_retries(&config, token).await }
    });
    // The outage under test: no broker for three seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !handle.is_finished(),
        "the source gave up while the broker was away"
    );

    let broker = flywheel::local_infra::LocalBroker::start_on_port(port)
        .await
        .expect("starting the late broker");
    wait_for("the snapshot", Duration::from_secs(120), || {
        env.snapshot_done()
    })
    .await;
    let late = flywheel::config::KafkaConfig {
        bootstrap: broker.bootstrap(),
        ..env.config.kafka.clone()
    };
    let mut stock = common::TopicReader::new(
        &late,
        &env.config.kafka.topic("erp.stock.v1"),
        "erp.stock.v1",
    );
    stock.read_until(T, |r| r.len() >= 60).await;
    token.cancel();
    handle
        .await
        .expect("source task")
        .expect("the source ended with an error");
}

#[test]
fn the_shop_simulator_names_skus_and_warehouses_like_the_demo_erp() {
    for i in [1, 42, 9_999, 10_000] {
        assert_eq!(shopsim::catalog::sku(i), flywheel::erp::demo_erp::sku(i));
    }
    for w in 1..=5 {
        assert_eq!(
            shopsim::catalog::location_name(w),
            flywheel::erp::demo_erp::warehouse_code(w)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_logical_wal_is_refused_with_the_fix() {
    // Its own cluster: the shared one runs with wal_level=logical.
    let pg = flywheel::local_infra::LocalPostgres::start_with(&[
        ("wal_level", "replica"),
        ("max_replication_slots", "0"),
    ])
    .await
    .expect("a replica-level cluster");
    let mut config = flywheel::config::Config::default();
    config.erp.dsn = pg.dsn("postgres");
    config.metrics.listen = String::new();
    let err = flywheel::erp::source::run(&config, Default::default())
        .await
        .expect_err("the source must refuse a server without logical WAL");
    let text = err.to_string();
    assert!(text.contains("wal_level is `replica`"), "{text}");
    assert!(
        text.contains("ALTER SYSTEM SET wal_level = logical"),
        "{text}"
    );
    assert!(!err.is_retryable(), "an operator must act");
}
