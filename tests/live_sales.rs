//! Stock under live sales (the stock contract of `sync::stock_to_shop`): the
//! shop sells while Flywheel writes the ERP's stock. A sale lowers what the
//! shop can sell at once and no Flywheel write undoes it; once the ERP has the
//! order (reserved, then shipped), the shop's number is the ERP's — exactly,
//! never subtracted twice. The shop simulator refuses an order line when its
//! `available` is short, as a shop that does not sell out-of-stock items.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{TestEnv, wait_for};
use flywheel::erp::demo_erp::{DemoSize, ErpActivity};
use shopsim::Topic;

const T: Duration = Duration::from_secs(90);
const SKU: &str = "SKU-000001";

/// The shop's (available, on_hand, committed) of `SKU` at WH1.
fn wh1_level(sim: &shopsim::ShopSim) -> (i64, i64, i64) {
    let st = sim.shop().state.lock();
    let item = st.variant_by_sku(SKU).expect("the SKU").inventory_item_id;
    let loc = st.location_by_name("WH1").expect("WH1").id;
    let l = st.levels[&(item, loc)];
    (l.available, l.on_hand(), l.committed)
}

fn sets_of_wh1(sim: &shopsim::ShopSim) -> Vec<i64> {
    let st = sim.shop().state.lock();
    let item = st.variant_by_sku(SKU).expect("the SKU").inventory_item_id;
    let loc = st.location_by_name("WH1").expect("WH1").id;
    st.set_history
        .get(&(item, loc))
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shop_sells_at_most_what_the_erp_has_and_ends_exact() {
    let env = TestEnv::new(
        "live_sales",
        DemoSize {
            skus: 5,
            warehouses: 3,
            orders: 0,
            seed: 0.3,
        },
    )
    .await;
    // Exactly 10 units of SKU-000001 in WH1, nothing reserved, nothing on shelves.
    env.erp
        .batch_execute(
            "UPDATE stock_quant q SET quantity = 0, reserved_quantity = 0
             FROM stock_location l WHERE l.id = q.location_id AND q.product_id = 1
               AND l.name LIKE 'WH1/%';
             UPDATE stock_quant q SET quantity = 10
             FROM stock_warehouse w WHERE w.code = 'WH1' AND q.location_id = w.lot_stock_id
               AND q.product_id = 1;",
        )
        .await
        .unwrap();
    let source = env.start_streaming().await;
    let wired = common::WiredShop::start(
        &env,
        "live_sales-processors",
        5,
        &[Topic::OrdersCreate, Topic::OrdersPaid, Topic::OrdersUpdated],
    )
    .await;
    let (sim, config) = (&wired.sim, &wired.config);
    let processors = common::stock_and_order_processors(config);
    wait_for("the shop to show the ERP's 10 units", T, || async {
        wh1_level(sim) == (10, 10, 0)
    })
    .await;

    // Customers buy one unit at a time, every 20 ms — far faster than a sale
    // travels webhook → Kafka → ERP order → reservation — while the ERP keeps
    // producing stock events for the same key (the quant is touched, and a
    // unit moves between WH1's Stock and one of its shelves and back).
    let stop = Arc::new(AtomicBool::new(false));
    let toucher = {
        let (stop, erp) = (stop.clone(), common::connect(&env.dsn).await);
        tokio::spawn(async move {
            let mut touches = 0u64;
            while !stop.load(Ordering::Relaxed) {
                erp.execute(
                    "UPDATE stock_quant q SET write_date = now() FROM stock_warehouse w
                     WHERE w.code = 'WH1' AND q.location_id = w.lot_stock_id AND q.product_id = 1",
                    &[],
                )
                .await
                .expect("touching the quant");
                touches += 1;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            touches
        })
    };
    let sold = AtomicU64::new(0);
    for _ in 0..400 {
        if sim.place_order_for(SKU, 1).is_some() {
            sold.fetch_add(1, Ordering::Relaxed);
        }
        assert!(
            sold.load(Ordering::Relaxed) <= 10,
            "the shop sold more than the ERP has"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let touches = toucher.await.unwrap();
    assert!(
        touches > 50,
        "the ERP kept changing the SKU ({touches} times)"
    );
    let sold = sold.load(Ordering::Relaxed) as i64;
    assert!(sold <= 10, "oversold: {sold} units of 10");
    assert_eq!(sold, 10, "the shop stopped selling before it was out");

    // The ERP gets every order and reserves it; the shop's number stays right
    // (its own reservations are not subtracted a second time).
    let erp_orders = || async {
        env.erp
            .query_one(
                "SELECT count(*) FROM sale_order WHERE channel = 'demo' AND state = 'sale'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    wait_for("every sale to reach the ERP", T, || async {
        erp_orders().await == sold
    })
    .await;
    let (_, reserved, _) = env.stock_of(SKU, "WH1").await;
    assert_eq!(
        reserved.parse::<f64>().unwrap(),
        10.0,
        "the ERP reserved the sales"
    );
    assert_eq!(
        wh1_level(sim),
        (0, 10, 10),
        "sold out, 10 on hand, all committed"
    );

    // The ERP ships every order, then receives 5 units: the shop fulfils the
    // orders and ends at exactly the ERP's 5.
    let mut activity = ErpActivity::new(
        DemoSize {
            skus: 5,
            warehouses: 3,
            orders: 0,
            seed: 0.3,
        },
        7,
    );
    while activity.ship_shop_order(&env.erp).await.unwrap() > 0 {}
    env.set_stock(1, "WH1", 5).await;
    wait_for("the shop to show the ERP's remaining 5", T, || async {
        wh1_level(sim) == (5, 5, 0)
    })
    .await;
    assert_eq!(env.shop_should_show(SKU, "WH1", 0).await, 5);
    let fulfilled = sim
        .shop()
        .state
        .lock()
        .orders
        .values()
        .filter(|o| o.fulfillment_status.as_deref() == Some("fulfilled"))
        .count() as i64;
    assert_eq!(
        fulfilled, sold,
        "every shipped order is fulfilled in the shop"
    );
    // Nothing Flywheel wrote ever exceeded what the ERP had.
    let sets = sets_of_wh1(sim);
    assert!(
        sets.iter().all(|q| *q <= 10),
        "a write above the ERP's stock: {sets:?}"
    );
    let outcomes = common::processor_outcomes();
    println!(
        "sold {sold}, shop sets {sets:?}, contended {}",
        outcomes.get("contended").copied().unwrap_or(0)
    );
    for p in processors {
        p.stop().await;
    }
    source.stop().await;
    wired.stop();
}
