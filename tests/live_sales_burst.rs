//! A burst of shop sales over hot SKUs, with ERP receipts and shipments and
//! another app editing a level under the stock processor's compare-and-set:
//! no processor stops, contended writes are counted and retried, the shop
//! converges on the ERP, and nothing set in the shop is a number the ERP did
//! not compute. Its own binary: it reads the process-wide outcome counters.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{TestEnv, wait_for};
use flywheel::erp::demo_erp::{DemoSize, ErpActivity};
use shopsim::Topic;

const T: Duration = Duration::from_secs(90);
const SKU: &str = "SKU-000001";

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_sales_receipts_and_edits_never_stops_the_processors() {
    let size = DemoSize {
        skus: 5,
        warehouses: 3,
        orders: 0,
        seed: 0.6,
    };
    let env = TestEnv::new("live_sales_burst", size).await;
    let source = env.start_streaming().await;
    let wired = common::WiredShop::start(
        &env,
        "live_sales_burst-processors",
        5,
        &[Topic::OrdersCreate, Topic::OrdersPaid, Topic::OrdersUpdated],
    )
    .await;
    let (sim, config) = (&wired.sim, &wired.config);
    let processors = common::stock_and_order_processors(config);
    let want = || env.shop_should_show_all(5, 0);
    wait_for("the shop to match the ERP", T, || async {
        common::shop_on_hand(sim).await == want().await
    })
    .await;

    // For 6 s: orders at 30/s over 5 hot SKUs, ERP receipts and shipments, and
    // for at least the first 3 s another app moving SKU-000001's on_hand at WH1
    // under the processor's compare-and-set, faster than a read-then-write
    // round trip. The edits go on (and so does the load, up to 30 s) until a
    // write of the processor has met one: on a slow machine the first writes
    // of the level may come after 3 s.
    let stop_edits = Arc::new(AtomicBool::new(false));
    let editor = {
        let (stop, shop) = (stop_edits.clone(), sim.shop().clone());
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                {
                    let mut st = shop.state.lock();
                    let item = st.variant_by_sku(SKU).expect("the SKU").inventory_item_id;
                    let loc = st.location_by_name("WH1").expect("WH1").id;
                    if let Some(l) = st.levels.get_mut(&(item, loc)) {
                        l.available += 1;
                    }
                }
                flips += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            flips
        })
    };
    sim.start_order_generator(30.0);
    let mut activity = ErpActivity::new(size, 11);
    let started = std::time::Instant::now();
    let mut n = 0u32;
    let contended = || {
        common::processor_outcomes()
            .get("contended")
            .copied()
            .unwrap_or(0)
    };
    while started.elapsed() < Duration::from_secs(6)
        || (contended() == 0 && started.elapsed() < Duration::from_secs(30))
    {
        n += 1;
        let product = 1 + (n % 5) as i32;
        env.erp
            .execute(
                "UPDATE stock_quant q SET quantity = q.quantity + $2::int FROM stock_warehouse w
                 WHERE w.code = 'WH1' AND q.location_id = w.lot_stock_id AND q.product_id = $1",
                &[&product, &(1 + (n % 4) as i32)],
            )
            .await
            .unwrap();
        if n.is_multiple_of(4) {
            activity.ship_shop_order(&env.erp).await.unwrap();
        }
        if started.elapsed() > Duration::from_secs(3) && contended() > 0 {
            stop_edits.store(true, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.stop_order_generator();
    stop_edits.store(true, Ordering::Relaxed);
    let flips = editor.join().unwrap();
    // The editor left on_hand far off; a last receipt per SKU makes the ERP's
    // number the shop's again.
    for product in 1..=5 {
        env.erp
            .execute(
                "UPDATE stock_quant q SET quantity = q.quantity + 1 FROM stock_warehouse w
                 WHERE w.code = 'WH1' AND q.location_id = w.lot_stock_id AND q.product_id = $1",
                &[&product],
            )
            .await
            .unwrap();
    }
    wait_for("every shop order to reach the ERP", T, || async {
        let shop = sim.shop().state.lock().orders.len() as i64;
        let erp: i64 = env
            .erp
            .query_one(
                "SELECT count(*) FROM sale_order WHERE channel = 'demo'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        erp == shop
    })
    .await;
    wait_for("the shop to converge on the ERP", T, || async {
        common::shop_on_hand(sim).await == want().await
    })
    .await;

    let outcomes = common::processor_outcomes();
    let contended = outcomes.get("contended").copied().unwrap_or(0);
    let orders = sim.shop().state.lock().orders.len();
    let refused = sim.stats()["orders_refused_short"].as_u64().unwrap_or(0);
    println!(
        "burst: {orders} orders, {refused} refused short, {flips} edits, {contended} contended"
    );
    assert!(orders > 20, "the burst sold ({orders} orders)");
    assert!(contended > 0, "the edits never made a write contend");
    // Every quantity Flywheel set is a value the ERP computed for that level:
    // nothing above what was sellable.
    let mut targets: std::collections::HashMap<String, Vec<i64>> = Default::default();
    let mut stock = env.reader("erp.stock.v1");
    for rec in stock.drain(Duration::from_secs(2)).await {
        targets
            .entry(rec.key.clone())
            .or_default()
            .push(common::stock_target(rec, "demo"));
    }
    {
        let st = sim.shop().state.lock();
        for v in st.variants.values() {
            for l in st.locations.values() {
                let key = format!("{}/{}", v.sku, l.name);
                for q in st
                    .set_history
                    .get(&(v.inventory_item_id, l.id))
                    .into_iter()
                    .flatten()
                {
                    assert!(
                        targets.get(&key).is_some_and(|t| t.contains(q)),
                        "{key}: set to {q}, which the ERP never computed ({:?})",
                        targets.get(&key)
                    );
                }
            }
        }
    }
    // Zero processor exits: each is still running and stops cleanly.
    for p in processors {
        p.stop().await;
    }
    source.stop().await;
    wired.stop();
}
