//! The Admin API client against the shop simulator: the rate limit is a wait,
//! transient failures are retried, a bad token fails at once.

use std::time::{Duration, Instant};

use flywheel::shop::admin_api::{AdminApi, AdminApiError};
use serde_json::{Value, json};
use shopsim::{ApiFaults, ShopSim, SimConfig, WebhookFaults};

/// A 52-point query on the simulator's 100-variant catalogue.
const Q52: &str = "{ productVariants(first: 50) { nodes { id } } }";

async fn sim(bucket: f64, restore: f64) -> ShopSim {
    ShopSim::start(
        SimConfig {
            bucket_size: bucket,
            restore_rate: restore,
            seed: shopsim::catalog::demo_seed(100, 2),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("simulator")
}

fn client(sim: &ShopSim) -> AdminApi {
    AdminApi::new(sim.graphql_url(), sim.config.access_token.clone())
        .with_retries(8, Duration::from_millis(20))
}

fn throttled(sim: &ShopSim) -> u64 {
    sim.stats()["api"]["throttled"].as_u64().unwrap()
}

#[tokio::test]
async fn a_burst_waits_for_budget_instead_of_being_throttled() {
    // Without a budget, the same burst is throttled by this shop.
    let naive = sim(200.0, 400.0).await;
    let http = reqwest::Client::new();
    for _ in 0..10 {
        http.post(naive.graphql_url())
            .header("X-Shopify-Access-Token", &naive.config.access_token)
            .json(&json!({"query": Q52}))
            .send()
            .await
            .unwrap();
    }
    assert!(
        throttled(&naive) > 0,
        "the test shop must be tight enough to throttle a burst"
    );

    let shop = sim(200.0, 400.0).await;
    let api = client(&shop);
    let started = Instant::now();
    for _ in 0..10 {
        let r = api
            .execute(Q52, Value::Null, 52.0)
            .await
            .expect("the call succeeds");
        assert_eq!(
            r.data["productVariants"]["nodes"].as_array().unwrap().len(),
            50
        );
        assert_eq!(r.cost.unwrap().throttle_status.restore_rate, 400.0);
    }
    assert_eq!(
        throttled(&shop),
        0,
        "the budget kept every call under the limit"
    );
    // 520 points through a 200-point bucket at 400/s takes at least 0.8 s.
    assert!(
        started.elapsed() >= Duration::from_millis(750),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_underestimated_query_is_throttled_then_waits_and_succeeds() {
    let shop = sim(100.0, 200.0).await;
    let api = client(&shop);
    // Spend most of the bucket, then claim the next query costs 1 point.
    api.execute(Q52, Value::Null, 52.0).await.unwrap();
    let r = api
        .execute(Q52, Value::Null, 1.0)
        .await
        .expect("a throttle is a wait, not a failure");
    assert!(r.data["productVariants"].is_object());
    assert!(
        throttled(&shop) >= 1,
        "the shop did throttle the underestimated call"
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_the_shop_recovers() {
    let shop = sim(1000.0, 1000.0).await;
    shop.set_faults(
        ApiFaults {
            error_probability: 1.0,
            ..Default::default()
        },
        WebhookFaults::default(),
    );
    let api = client(&shop);
    let call =
        tokio::spawn(async move { api.execute("{ shop { name } }", Value::Null, 1.0).await });
    // The outage under test lasts half a second.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shop.set_faults(ApiFaults::default(), WebhookFaults::default());
    let r = call.await.unwrap().expect("recovered after retries");
    assert_eq!(r.data["shop"]["name"], "flywheel-demo");
    assert!(shop.stats()["api"]["injected_errors"].as_u64().unwrap() >= 2);
}

#[tokio::test]
async fn persistent_failure_is_reported_as_transient_and_a_bad_token_at_once() {
    let shop = sim(1000.0, 1000.0).await;
    shop.set_faults(
        ApiFaults {
            error_probability: 1.0,
            ..Default::default()
        },
        WebhookFaults::default(),
    );
    let api = AdminApi::new(shop.graphql_url(), shop.config.access_token.clone())
        .with_retries(3, Duration::from_millis(10));
    let err = api
        .execute("{ shop { name } }", Value::Null, 1.0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AdminApiError::Unavailable { attempts: 3, .. }),
        "{err}"
    );
    assert!(err.is_transient());
    assert_eq!(shop.stats()["api"]["injected_errors"], 3);

    let shop = sim(1000.0, 1000.0).await;
    let api = AdminApi::new(shop.graphql_url(), "wrong-token");
    let err = api
        .execute("{ shop { name } }", Value::Null, 1.0)
        .await
        .unwrap_err();
    assert!(matches!(err, AdminApiError::Unauthorized), "{err}");
    assert!(!err.is_transient());
    assert_eq!(shop.stats()["api"]["unauthorized"], 1, "no retries on 401");

    // GraphQL errors (here: a syntax error) are not retried either.
    let api = client(&shop);
    let err = api
        .execute("{ shop { name ", Value::Null, 1.0)
        .await
        .unwrap_err();
    assert!(matches!(err, AdminApiError::GraphQl(_)), "{err}");
}
