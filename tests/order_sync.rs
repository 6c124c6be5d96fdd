//! Shop orders → ERP, end to end: the shop simulator's signed webhooks (each
//! delivered twice and out of order) → the gateway → Kafka → the order
//! processor → the demo ERP's sale_order.

mod common;

use std::time::Duration;

use common::{TestEnv, small, wait_for};
use flywheel::config::{Platform, ShopConfig};
use flywheel::shop::signature::sign;
use serde_json::json;
use shopsim::{ApiFaults, ShopSim, SimConfig, Topic, WebhookFaults};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(60);
const SECRET: &str = "order-sync-secret";

#[tokio::test(flavor = "multi_thread")]
async fn a_shop_order_appears_once_in_the_erp_and_follows_cancellation() {
    let env = TestEnv::new("order_sync", small()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = env.config.clone();
    config.gateway.listen = "127.0.0.1:0".into();
    config.gateway.dedupe_path = dir.path().join("seen.log");
    config.gateway.shops = vec![ShopConfig {
        name: "demo".into(),
        platform: Platform::Shopify,
        secrets: vec![SECRET.into()],
    }];
    config.processors.group_id = "order_sync-processors".into();
    config.processors.batch_wait_ms = 100;
    let token = CancellationToken::new();
    let gw = flywheel::shop::gateway::start(&config, axum::Router::new(), token.clone())
        .await
        .expect("gateway");
    let callback = format!("http://{}/webhooks/shopify/demo", gw.addr);
    let sim = ShopSim::start(
        SimConfig {
            webhook_secret: SECRET.into(),
            seed: shopsim::catalog::demo_seed(20, 3),
            subscriptions: [
                Topic::OrdersCreate,
                Topic::OrdersPaid,
                Topic::OrdersUpdated,
                Topic::OrdersCancelled,
            ]
            .iter()
            .map(|t| (*t, callback.clone()))
            .collect(),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    sim.set_faults(
        ApiFaults::default(),
        WebhookFaults {
            duplicate_probability: 1.0,
            reorder_probability: 1.0,
            delay_ms: 0,
        },
    );
    let processor = common::RunningProcessor::spawn(&config, |c, t| async move {
        flywheel::sync::orders_to_erp::run(&c, t).await
    });
    wait_for("the gateway to be ready", T, || async {
        reqwest::get(format!("http://{}/readyz", gw.addr))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    let id = sim.place_orders(1, true)[0];
    let shop_order = sim.shop().state.lock().orders[&id].clone();
    let order_state = || async {
        env.erp
            .query(
                "SELECT o.state, (SELECT count(*) FROM sale_order_line l WHERE l.order_id = o.id),
                        p.email, o.amount_total::text
                 FROM sale_order o JOIN res_partner p ON p.id = o.partner_id
                 WHERE o.channel = 'demo' AND o.shop_order_id = $1",
                &[&id.to_string()],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, Option<String>>(2),
                    r.get::<_, String>(3),
                )
            })
            .collect::<Vec<_>>()
    };
    wait_for("the order in the ERP, paid", T, || async {
        order_state().await.first().is_some_and(|o| o.0 == "sale")
    })
    .await;
    let rows = order_state().await;
    assert_eq!(rows.len(), 1, "one sale_order for one shop order");
    assert_eq!(
        rows[0].1,
        shop_order.line_items.len() as i64,
        "every line, once"
    );
    assert_eq!(rows[0].2.as_deref(), Some(shop_order.email.as_str()));
    assert_eq!(rows[0].3, shop_order.total_price());

    // Cancelled in the shop → cancelled in the ERP.
    let r: serde_json::Value = reqwest::Client::new()
        .post(sim.graphql_url())
        .header("X-Shopify-Access-Token", &sim.config.access_token)
        .json(&json!({"query": "mutation($id: ID!) { orderCancel(orderId: $id, reason: CUSTOMER, restock: true) { userErrors { message } } }",
                      "variables": {"id": format!("gid://shopify/Order/{id}")}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["data"]["orderCancel"]["userErrors"], json!([]));
    wait_for("the cancellation in the ERP", T, || async {
        order_state().await.first().is_some_and(|o| o.0 == "cancel")
    })
    .await;
    assert_eq!(order_state().await.len(), 1);

    // An order with a SKU the ERP does not know: dead-lettered, nothing written.
    let body = serde_json::to_vec(&json!({"id": 777001, "updated_at": "2026-11-23T10:00:00Z",
        "email": "x@example.com", "financial_status": "paid", "total_price": "5.00",
        "line_items": [{"id": 1, "sku": "SKU-000001", "quantity": 1, "price": "2.50"},
                       {"id": 2, "sku": "NOT-IN-ERP", "quantity": 1, "price": "2.50"}]}))
    .unwrap();
    let status = reqwest::Client::new()
        .post(&callback)
        .header("X-Shopify-Topic", "orders/create")
        .header("X-Shopify-Hmac-Sha256", sign(SECRET, &body))
        .header("X-Shopify-Webhook-Id", "unknown-sku-1")
        .body(body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let mut dlq = env.reader("flywheel.dlq.v1");
    let letters = dlq
        .read_until(T, |r| {
            r.iter()
                .any(|d| d.str("error_class") == Some("unknown_sku"))
        })
        .await;
    let letter = letters
        .iter()
        .find(|d| d.str("error_class") == Some("unknown_sku"))
        .unwrap();
    assert!(letter.str("reason").unwrap().contains("NOT-IN-ERP"));
    assert_eq!(letter.str("stage"), Some("processor.order_in"));
    let written: i64 = env
        .erp
        .query_one(
            "SELECT count(*) FROM sale_order WHERE shop_order_id = '777001'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, 0, "never a half-written order");

    processor.stop().await;
    token.cancel();
}
