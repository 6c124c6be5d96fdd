//! ERP prices and stock → a WooCommerce shop, end to end (real PostgreSQL, source,
//! broker, price processor, the simulator's WooCommerce REST v3 mode): the
//! shop's own price list with its "was" prices as sales, batches within
//! WooCommerce's 100-item limit, a replay in a new group that writes nothing,
//! a 429 storm waited out, a SKU the shop lacks dead-lettered naming the shop.
//! Its own binary: it reads process-wide metrics.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TestEnv, wait_for};
use flywheel::config::{Platform, Secret, ShopConfig};
use flywheel::erp::demo_erp::DemoSize;
use shopsim::woo::{WooConfig, WooSim};

const T: Duration = Duration::from_secs(120);
const SKUS: u32 = 250;

fn woo_shop(sim: &WooSim, requests_per_second: f64) -> ShopConfig {
    ShopConfig {
        name: "woo".into(),
        platform: Platform::Woocommerce,
        admin_url: format!("{}/wp-json/wc/v3", sim.base_url()),
        consumer_key: Secret(sim.config.consumer_key.clone()),
        consumer_secret: Secret(sim.config.consumer_secret.clone()),
        requests_per_second,
        burst: 20,
        // Wholesale: a fixed price for every third product, below the list
        // price, which the ERP reports as its compare-at ("was") price.
        price_list: "2".into(),
        ..ShopConfig::local_default()
    }
}

/// A WooCommerce simulator of 20 SKUs with 50 of each in stock, sending its
/// order webhooks to `order_webhooks`.
async fn small_woo_sim(order_webhooks: Vec<String>) -> WooSim {
    WooSim::start(
        WooConfig {
            seed: shopsim::state::Seed {
                initial_available: 50,
                ..shopsim::catalog::demo_seed(20, 1)
            },
            order_webhooks,
            ..WooConfig::default()
        },
        "127.0.0.1:0".parse().expect("an address"),
    )
    .await
    .expect("the WooCommerce simulator starts")
}

/// Awaits the dead letter of `SKU-NOT-IN-WOO`, checks it is an
/// `unknown_sku` naming `shop`, and returns how many letters there are.
async fn unknown_sku_letters(env: &TestEnv, shop: &str) -> usize {
    let names_it = |d: &common::Rec| {
        d.str("reason")
            .is_some_and(|r| r.contains("SKU-NOT-IN-WOO"))
    };
    let mut dlq = env.reader("flywheel.dlq.v1");
    let letters = dlq.read_until(T, |r| r.iter().any(names_it)).await;
    let letter = letters.iter().find(|d| names_it(d)).expect("the letter");
    let reason = letter.str("reason");
    assert!(
        reason.is_some_and(|r| r.contains(&format!("shop `{shop}`"))),
        "{reason:?}"
    );
    assert_eq!(letter.str("error_class"), Some("unknown_sku"));
    letters.len()
}

fn events(outcome: &str) -> u64 {
    common::processor_events(&[("shop", "woo"), ("outcome", outcome)])
}

#[tokio::test(flavor = "multi_thread")]
async fn erp_prices_reach_woocommerce_in_batches_once_through_a_429_storm() {
    let size = DemoSize {
        skus: SKUS,
        warehouses: 3,
        orders: 0,
        seed: 0.3,
    };
    let env = TestEnv::new("woo_prices", size).await;
    // A tight shop: 4 requests a second, bursts of 4; the client is allowed
    // 50, so it runs into 429s and must wait them out.
    let sim = WooSim::start(
        WooConfig {
            seed: shopsim::catalog::demo_seed(SKUS, 1),
            requests_per_second: 4.0,
            burst: 4.0,
            ..WooConfig::default()
        },
        "127.0.0.1:0".parse().expect("an address"),
    )
    .await
    .expect("the WooCommerce simulator starts");
    let before = sim.prices();
    // A SKU the shop lacks, with a Wholesale price: a dead letter naming the shop.
    env.add_erp_product(9_001, Some("SKU-NOT-IN-WOO")).await;
    env.erp
        .execute(
            "INSERT INTO product_pricelist_item (pricelist_id, applied_on, product_id, fixed_price)
             VALUES (2, '0_product_variant', 9001, 0.50)",
            &[],
        )
        .await
        .expect("a Wholesale price for it");
    let want = common::wholesale_view(&env, &before).await;
    assert_ne!(want, before, "Wholesale changes some prices");
    let source = env.start_streaming().await;

    let mut config = env.config.clone();
    config.shops = vec![woo_shop(&sim, 50.0)];
    config.processors.group_id = "woo_prices".into();
    config.processors.batch_wait_ms = 100;
    config.validate().expect("a valid WooCommerce shop");
    let processor = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::price_to_shop::run(&c, &c.shops[0].clone(), t).await
    });
    wait_for(
        "the Wholesale prices in the WooCommerce shop",
        T,
        || async { sim.prices() == want },
    )
    .await;
    let letters = unknown_sku_letters(&env, "woo").await;
    assert_eq!(letters, 1, "the 429s cost no dead letter");
    let stats = sim.stats();
    assert!(stats.throttled > 0, "the shop answered 429: {stats:?}");
    assert_eq!(stats.oversized_batches, 0, "{stats:?}");
    assert!(stats.batch_requests >= 1, "{stats:?}");
    processor.stop().await;

    // A replay in a new group, with the applied versions lost too (so the
    // version guard does not hide it), reads everything again and writes
    // nothing: WooCommerce has no compare-and-set, the read before the write
    // is what keeps a replay from writing twice.
    env.erp
        .execute(
            "DELETE FROM flywheel.applied_versions WHERE processor = 'price.woo'",
            &[],
        )
        .await
        .expect("forgetting the applied versions");
    let written = sim.stats().batch_items;
    let unchanged = events("unchanged");
    let mut replay = config.clone();
    replay.processors.group_id = "woo_prices_replay".into();
    let processor = common::RunningProcessor::spawn(&replay, |c, t| async move {
        flywheel::sync::price_to_shop::run(&c, &c.shops[0].clone(), t).await
    });
    let changed = want
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .count() as u64;
    wait_for("the replay to find every price in place", T, || async {
        events("unchanged") >= unchanged + changed
            && flywheel::ops::lag::consumer_lag(&replay).is_ok_and(|lags| {
                lags.iter()
                    .filter(|l| l.group == "woo_prices_replay.price.woo")
                    .all(|l| l.lag == 0)
            })
    })
    .await;
    assert_eq!(sim.stats().batch_items, written, "the replay wrote nothing");
    assert_eq!(sim.prices(), want);
    processor.stop().await;
    source.stop().await;
}

/// The poll reads a shop's orders page by page. More than a page of them
/// changed in one second (a bulk edit), and one of the first page changes
/// again while the poll reads: with pages by number the orders behind it
/// shifted one place towards the page already read, and the one that slid
/// onto it was never read, while the next poll starts past it.
#[tokio::test(flavor = "multi_thread")]
async fn the_poll_reads_every_order_when_one_changes_while_it_pages() {
    use flywheel::shop::woocommerce::WooClient;
    use flywheel::shop::woocommerce::order_poll::WooOrderFeed;

    let sim = small_woo_sim(Vec::new()).await;
    let mut placed = Vec::new();
    // More than the feed names in `exclude` (500): the rest of the second is
    // skipped past by offset.
    for i in 0..650 {
        let sku = format!("SKU-{:06}", i % 20 + 1);
        placed.push(sim.place_order(&sku, 1).await.expect("an order"));
    }
    placed.sort_unstable();
    const BULK_EDIT: &str = "2026-03-02T10:00:00";
    for order in sim.state().orders.values_mut() {
        order.date_modified_gmt = BULK_EDIT.into();
    }
    // The lowest id sorts first in its second: it is on the first page.
    sim.change_order_after_next_listing(placed[0]);

    let client = WooClient::for_shop(&woo_shop(&sim, 1000.0), "order_poll").expect("a client");
    let since = "2026-03-02T09:59:00Z".parse().expect("a time");
    let mut feed = WooOrderFeed(client);
    let (read, pages) = common::read_listing(&mut feed, since).await;
    assert!(pages >= 7, "650 orders, 100 a page: {pages} pages");
    let mut ids: Vec<u64> = read.iter().filter_map(|o| o["id"].as_u64()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids, placed, "every order, once or more");
    // Its change is read by the next poll, which starts 2 s before the
    // newest change this one saw.
    let (next, _) = common::read_listing(&mut feed, since + chrono::Duration::seconds(58)).await;
    assert!(
        next.iter()
            .any(|o| o["id"].as_u64() == Some(placed[0]) && o["date_modified_gmt"] != BULK_EDIT),
        "the order that changed during the poll, as it is now"
    );
}

/// A product deleted and created again under its SKU (a re-import) has a new
/// id: a write to the id the SKU was mapped to is refused as invalid, and goes
/// again to the new one. Before, the mapping was kept for the worker's life
/// and every later write of the SKU was dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_to_a_product_created_again_under_its_sku_finds_the_new_one() {
    use flywheel::shop::woocommerce::WooClient;

    let sim = small_woo_sim(Vec::new()).await;
    let mut client = WooClient::for_shop(&woo_shop(&sim, 1000.0), "prices").expect("a client");
    let price = |amount: &str| [("SKU-000003", serde_json::json!({"regular_price": amount}))];
    let first = client
        .update_by_sku(&price("12.50"))
        .await
        .expect("a write");
    assert_eq!(first, vec![Ok(())]);
    let (old, new) = sim.state().replace_product("SKU-000003").expect("the SKU");
    assert_ne!(old, new);
    let again = client
        .update_by_sku(&price("13.75"))
        .await
        .expect("a write");
    assert_eq!(again, vec![Ok(())], "written to the product's new id");
    assert_eq!(sim.prices()["SKU-000003"].0, "13.75");
}

/// A site that ignores `exclude` answers the same full page of one second's
/// orders again: the poll cannot read past it, and says so as an error (the
/// poll has not succeeded) rather than ending as if it had read them all.
#[tokio::test(flavor = "multi_thread")]
async fn a_site_that_ignores_exclude_fails_the_poll_instead_of_ending_it_short() {
    use flywheel::shop::order_poll::OrderFeed;
    use flywheel::shop::woocommerce::WooClient;
    use flywheel::shop::woocommerce::order_poll::WooOrderFeed;

    let sim = small_woo_sim(Vec::new()).await;
    for i in 0..150 {
        let sku = format!("SKU-{:06}", i % 20 + 1);
        sim.place_order(&sku, 1).await.expect("an order");
    }
    for order in sim.state().orders.values_mut() {
        order.date_modified_gmt = "2026-03-02T10:00:00".into();
    }
    sim.set_faults(shopsim::ApiFaults {
        ignore_exclude: true,
        ..Default::default()
    });
    let client = WooClient::for_shop(&woo_shop(&sim, 1000.0), "order_poll").expect("a client");
    let mut feed = WooOrderFeed(client);
    let mut listing = feed.changed_since("2026-03-02T09:59:00Z".parse().expect("a time"));
    let first = feed.next_page(&mut listing).await.expect("the first page");
    assert_eq!(first.map(|p| p.len()), Some(100));
    let again = feed.next_page(&mut listing).await;
    let e = again.expect_err("the same page again is an error");
    assert!(e.to_string().contains("despite `exclude`"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_whose_webhooks_are_lost_still_reach_the_erp_by_the_poll() {
    let env = TestEnv::new("woo_poll", common::small()).await;
    let source = env.start_streaming().await;
    flywheel::bus::topics::ensure_topics(&env.config.kafka, &["shop.orders.v1"])
        .await
        .expect("the orders topic");
    // Webhooks go where nothing listens: every delivery fails, none is
    // retried, and WooCommerce disables the webhook after 5.
    let nowhere = format!(
        "http://127.0.0.1:{}/webhooks/woocommerce/woo",
        flywheel::local_infra::free_port().expect("a free port")
    );
    let sim = small_woo_sim(vec![nowhere]).await;
    let mut config = env.config.clone();
    config.shops = vec![woo_shop(&sim, 50.0)];
    config.processors.group_id = "woo_poll".into();
    config.processors.batch_wait_ms = 50;
    let orders_in = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::orders_to_erp::run(&c, t).await
    });
    let poll = common::RunningProcessor::order_poll(&config);

    let mut ids = Vec::new();
    for i in 1..=6 {
        let sku = format!("SKU-{i:06}");
        ids.push(sim.place_order(&sku, 1).await.expect("an order"));
    }
    assert_eq!(sim.stats().failed_deliveries, 5, "{:?}", sim.stats());
    assert_eq!(
        sim.state().webhooks[0].status,
        "disabled",
        "disabled after 5 failed deliveries; the sixth order was not even sent"
    );
    let erp = &env.erp;
    let in_erp = || async move {
        erp.query(
            "SELECT shop_order_id, state FROM sale_order WHERE channel = 'woo' ORDER BY 1",
            &[],
        )
        .await
        .expect("reading sale_order")
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect::<Vec<_>>()
    };
    let mut want: Vec<(String, String)> = ids
        .iter()
        .map(|id| (id.to_string(), "sale".to_owned()))
        .collect();
    want.sort();
    wait_for("every order in the ERP, by the poll", T, || async {
        in_erp().await == want
    })
    .await;
    // Polled again and again: still one sale order each.
    wait_for("a few more polls", T, || async {
        sim.stats().requests > 10
    })
    .await;
    assert_eq!(in_erp().await, want);

    // Shipped in the ERP → completed in WooCommerce with a note carrying the
    // carrier and tracking; cancelled in the ERP → cancelled.
    let status_processor = |group: &str| {
        let mut c = config.clone();
        c.processors.group_id = group.into();
        common::RunningProcessor::spawn(&c, |c, t| async move {
            flywheel::sync::status_to_shop::run(&c, &c.shops[0].clone(), t).await
        })
    };
    let status = status_processor("woo_poll");
    let (shipped, cancelled) = (ids[0], ids[1]);
    env.ship("woo", shipped, "JJD000111").await;
    env.erp
        .execute(
            "UPDATE sale_order SET state = 'cancel' WHERE channel = 'woo' AND shop_order_id = $1",
            &[&cancelled.to_string()],
        )
        .await
        .expect("cancelling in the ERP");
    let order = |id: u64| sim.state().orders[&id].clone();
    wait_for(
        "the shipment and the cancellation in WooCommerce",
        T,
        || async { order(shipped).status == "completed" && order(cancelled).status == "cancelled" },
    )
    .await;
    let notes = |id: u64| {
        order(id)
            .notes
            .iter()
            .map(|n| (n.note.clone(), n.customer_note))
            .collect::<Vec<_>>()
    };
    let one_note = vec![(
        "Shipped with DHL, tracking number JJD000111.".to_owned(),
        true,
    )];
    assert_eq!(notes(shipped), one_note);
    status.stop().await;

    // The order went back to processing by hand, the versions were lost, and
    // the statuses are replayed in a new group: completed again, no second note.
    sim.state()
        .orders
        .get_mut(&shipped)
        .expect("the order")
        .status = "processing".into();
    env.erp
        .execute(
            "DELETE FROM flywheel.applied_versions WHERE processor = 'order_status.woo'",
            &[],
        )
        .await
        .expect("forgetting the applied versions");
    let status = status_processor("woo_poll_replay");
    wait_for("the replayed shipment", T, || async {
        order(shipped).status == "completed"
    })
    .await;
    assert_eq!(notes(shipped), one_note, "the note is not written twice");
    assert_eq!(order(cancelled).status, "cancelled");
    status.stop().await;

    poll.stop().await;
    orders_in.stop().await;
    source.stop().await;
}

/// What shop `woostock` should count for `sku`: Σ over WH1 and WH2 of
/// on hand − reserved (its own orders' reservations included: WooCommerce
/// counts a sold unit off at once), less a safety stock of 1; computed here
/// from the ERP's tables, independently of the connector.
async fn count_should_be(env: &TestEnv, sku: &str) -> i64 {
    let mut total = 0;
    for wh in ["WH1", "WH2"] {
        let (on_hand, reserved, _) = env.stock_of(sku, wh).await;
        let num = |s: &str| s.parse::<f64>().expect("a decimal");
        total += num(&on_hand).trunc() as i64 - num(&reserved).ceil() as i64;
    }
    (total - 1).max(0)
}

/// Units `woostock` holds back for sales the ERP has not reserved yet.
async fn held(env: &TestEnv, sku: &str) -> Option<i64> {
    env.erp
        .query_opt(
            "SELECT held FROM flywheel.stock_counts WHERE shop = 'woostock' AND sku = $1",
            &[&sku],
        )
        .await
        .expect("reading the stock counts")
        .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn woocommerce_counts_hold_a_sale_until_the_erp_reserves_it() {
    const SKUS: u32 = 30;
    let size = DemoSize {
        skus: SKUS,
        warehouses: 3,
        orders: 0,
        seed: 0.7,
    };
    let env = TestEnv::new("woo_stock", size).await;
    // Three SKUs to a variable product: most counts are variations', written
    // through their parent's batch endpoint.
    let sim = WooSim::start(
        WooConfig {
            seed: shopsim::state::Seed {
                initial_available: 1_000,
                ..shopsim::catalog::demo_seed(SKUS, 1)
            },
            variations_per_product: 3,
            ..WooConfig::default()
        },
        "127.0.0.1:0".parse().expect("an address"),
    )
    .await
    .expect("the WooCommerce simulator starts");
    env.add_erp_product(9_002, Some("SKU-NOT-IN-WOO")).await;
    let source = env.start_streaming().await;
    flywheel::bus::topics::ensure_topics(&env.config.kafka, &["shop.orders.v1"])
        .await
        .expect("the orders topic");

    let mut config = env.config.clone();
    let mut shop = woo_shop(&sim, 50.0);
    shop.name = "woostock".into();
    shop.safety_stock = 1;
    // Stocked from WH1 and WH2; WH3 is another channel's.
    shop.warehouse_locations = [("WH1", ""), ("WH2", "")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    config.shops = vec![shop];
    config.processors.group_id = "woo_stock".into();
    config.processors.batch_wait_ms = 50;
    config.validate().expect("a valid WooCommerce shop");
    let stock_processor = |config: &flywheel::config::Config| {
        common::RunningProcessor::spawn(config, |c, t| async move {
            flywheel::sync::stock_to_shop::run(&c, &c.shops[0].clone(), t).await
        })
    };
    let stock = stock_processor(&config);

    let mut want = BTreeMap::new();
    for p in 1..=SKUS {
        let sku = format!("SKU-{p:06}");
        want.insert(sku.clone(), Some(count_should_be(&env, &sku).await));
    }
    wait_for("every count in the WooCommerce shop", T, || async {
        sim.stock() == want
    })
    .await;
    let state = sim.state().product_by_sku("SKU-000005").cloned();
    assert!(
        state.is_some_and(|p| p.parent_id != 0),
        "SKU-000005 is a variation"
    );

    // The race: the shop sells 2 of SKU-000005 and takes them off its count;
    // before the order reaches the ERP, a receipt of 5 in WH1 comes through.
    // The count must not put the 2 sold units back on sale.
    let sku = "SKU-000005";
    let order = sim.place_order(sku, 2).await.expect("an order");
    let (on_hand, _, _) = env.stock_of(sku, "WH1").await;
    let on_hand: f64 = on_hand.parse().expect("a decimal");
    env.set_stock(5, "WH1", on_hand as i32 + 5).await;
    let erp_count = count_should_be(&env, sku).await;
    wait_for("the receipt counted, the sale held back", T, || async {
        sim.stock()[sku] == Some(erp_count - 2)
    })
    .await;
    assert_eq!(held(&env, sku).await, Some(2));

    // The order reaches the ERP (by the poll), which reserves it for this
    // shop: the count stays where it is and nothing is held any more.
    let orders_in = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::orders_to_erp::run(&c, t).await
    });
    let poll = common::RunningProcessor::order_poll(&config);
    wait_for("the order in the ERP", T, || async {
        env.order_states("woostock", order).await.len() == 1
    })
    .await;
    // The demo ERP reserves the order inside Flywheel's own transaction,
    // which capture skips (Flywheel's writes carry its replication origin);
    // a real ERP reserves in a transaction of its own. Its next move on the
    // quant publishes the reservation: touch it.
    env.erp
        .execute(
            "UPDATE stock_quant SET quantity = quantity
             WHERE product_id = 5
               AND location_id = (SELECT lot_stock_id FROM stock_warehouse WHERE code = 'WH1')",
            &[],
        )
        .await
        .expect("touching the quant");
    wait_for("the reservation counted, nothing held", T, || async {
        held(&env, sku).await == Some(0)
    })
    .await;
    assert_eq!(count_should_be(&env, sku).await, erp_count - 2);
    assert_eq!(sim.stock()[sku], Some(erp_count - 2));
    assert_eq!(env.order_states("woostock", order).await, ["sale"]);

    // A SKU the shop lacks: a dead letter naming the shop.
    unknown_sku_letters(&env, "woostock").await;
    stock.stop().await;

    // A replay in a new group, the applied versions forgotten: every count
    // is found in place, nothing is written.
    env.erp
        .execute(
            "DELETE FROM flywheel.applied_versions WHERE processor = 'stock.woostock'",
            &[],
        )
        .await
        .expect("forgetting the applied versions");
    let written = sim.stats().batch_items;
    let before = sim.stock();
    let mut replay = config.clone();
    replay.processors.group_id = "woo_stock_replay".into();
    let stock = stock_processor(&replay);
    wait_for("the replay to read every stock event", T, || async {
        flywheel::ops::lag::consumer_lag(&replay).is_ok_and(|lags| {
            let ours: Vec<_> = lags
                .iter()
                .filter(|l| l.group == "woo_stock_replay.stock.woostock")
                .collect();
            !ours.is_empty() && ours.iter().all(|l| l.lag == 0)
        })
    })
    .await;
    assert_eq!(sim.stats().batch_items, written, "the replay wrote nothing");
    assert_eq!(sim.stock(), before);
    stock.stop().await;
    poll.stop().await;
    orders_in.stop().await;
    source.stop().await;
}
