//! The source reads a transaction's entities only once the transaction is
//! visible to queries. PostgreSQL flushes a commit record before it makes the
//! commit visible to other sessions, and the walsender may deliver the
//! transaction in between: a re-read at once returns the old value under the
//! new version, and when that is the key's last change the shop keeps the old
//! value for good (see `erp::visibility`).
//!
//! The window is made wide and deterministic with synchronous replication to
//! a standby that does not exist: the committing session then waits after its
//! commit record is flushed (and decoded by the source), and its transaction
//! stays invisible to every other session until the wait ends. The setting is
//! server-wide, which is why this test has a binary (and a PostgreSQL) of its
//! own.

mod common;

use std::time::Duration;

use common::{Rec, TestEnv, connect, small, wait_for};
use flywheel::erp::source_metrics::SourceMetrics;

const T: Duration = Duration::from_secs(60);
const KEY: &str = "SKU-000001/WH1";

fn newest<'a>(records: &'a [Rec], key: &str) -> Option<&'a Rec> {
    records
        .iter()
        .filter(|r| r.key == key)
        .max_by_key(|r| r.version())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivered_transaction_is_read_only_once_it_is_visible() {
    let env = TestEnv::new("visibility", small()).await;
    let source = env.start_streaming().await;
    let mut stock = env.reader("erp.stock.v1");

    env.set_stock(1, "WH1", 11).await;
    let (on_hand, _, _) = env.stock_of("SKU-000001", "WH1").await;
    let records = stock
        .read_until(T, |r| {
            newest(r, KEY).is_some_and(|e| e.str("on_hand") == Some(on_hand.as_str()))
        })
        .await;
    let before = newest(records, KEY).expect("found above").version();

    // Commits from now on wait for a standby that never comes.
    // (ALTER SYSTEM refuses to run in a multi-statement string.)
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = 'nobody'",
        "SELECT pg_reload_conf()",
    ] {
        env.erp.batch_execute(sql).await.expect("holding commits");
    }
    wait_for("the setting to take effect", T, || async {
        let fresh = connect(&env.dsn).await;
        let v: String = fresh
            .query_one("SHOW synchronous_standby_names", &[])
            .await
            .expect("SHOW")
            .get(0);
        v == "nobody"
    })
    .await;
    let waits_before = SourceMetrics::get().visibility_waits.get();
    let writer = connect(&env.dsn).await;
    let held = tokio::spawn(async move {
        writer
            .execute(
                "UPDATE stock_quant SET quantity = 42 WHERE product_id = 1
                   AND location_id = (SELECT lot_stock_id FROM stock_warehouse WHERE code = 'WH1')",
                &[],
            )
            .await
    });

    // The source has the transaction but waits for it to become visible: it
    // keeps finding it in flight (a transaction of ordinary load, caught in
    // the window, costs one or two looks).
    wait_for(
        "the source to wait for the delivered transaction",
        T,
        || async { SourceMetrics::get().visibility_waits.get() >= waits_before + 20 },
    )
    .await;
    assert!(!held.is_finished(), "the commit was not held");
    let early = stock.drain(Duration::from_millis(500)).await;
    assert!(
        newest(early, KEY).is_some_and(|e| e.version() == before),
        "an event was published for a transaction no query could see yet: {:?}",
        newest(early, KEY).map(|e| (e.version(), e.str("on_hand")))
    );

    for sql in [
        "ALTER SYSTEM RESET synchronous_standby_names",
        "SELECT pg_reload_conf()",
    ] {
        env.erp.batch_execute(sql).await.expect("releasing commits");
    }
    tokio::time::timeout(T, held)
        .await
        .expect("the held commit returns once released")
        .expect("the writer task")
        .expect("the update");

    let records = stock
        .read_until(T, |r| newest(r, KEY).is_some_and(|e| e.version() > before))
        .await;
    let event = newest(records, KEY).expect("found above");
    let (now_on_hand, _, _) = env.stock_of("SKU-000001", "WH1").await;
    assert_ne!(now_on_hand, on_hand, "the held update changed the level");
    assert_eq!(
        event.str("on_hand"),
        Some(now_on_hand.as_str()),
        "the event of the held transaction carries the value from before it"
    );
    source.assert_running();
    source.stop().await;
}
