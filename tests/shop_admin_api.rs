//! The Admin API client against the shop simulator: the rate limit is a wait,
//! transient failures are retried, a bad token fails at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use flywheel::shop::admin_api::{AdminApi, AdminApiError};
use flywheel::shop::shopify::catalog::{
    CatalogStore, CatalogStoreError, MemoryCatalog, VariantRef,
};
use futures::future::BoxFuture;
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

/// An HTTPS front for the simulator, served the way a real shop is: a
/// certificate for `localhost` signed by a throwaway CA. Returns the https
/// GraphQL URL and the CA certificate (PEM).
async fn https_front(sim: &ShopSim) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use tokio_rustls::rustls::{ServerConfig, pki_types::PrivateKeyDer};

    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Flywheel test CA");
    let ca_pem = ca.self_signed(&ca_key).expect("the CA certificate").pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().expect("a server key");
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .expect("server parameters")
        .signed_by(&leaf_key, &issuer)
        .expect("the server certificate");
    let tls = ServerConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .expect("a TLS server configuration");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = sim.addr;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that rejects the certificate ends the handshake here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    let url = sim.graphql_url();
    let path = url
        .trim_start_matches("http://")
        .split_once('/')
        .map(|(_, p)| p)
        .expect("a URL with a path");
    (format!("https://localhost:{port}/{path}"), ca_pem)
}

fn https_config(sim: &ShopSim, url: &str) -> flywheel::config::ShopConfig {
    flywheel::config::ShopConfig {
        admin_url: url.to_string(),
        access_token: flywheel::config::Secret(sim.config.access_token.clone()),
        ..flywheel::config::ShopConfig::local_default()
    }
}

#[tokio::test]
async fn https_shop_works_with_its_ca_configured_and_is_refused_clearly_without() {
    let shop = sim(1000.0, 100.0).await;
    let (url, ca_pem) = https_front(&shop).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("shop-ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let query = "{ productVariants(first: 2) { nodes { sku } } }";

    // Trusting the shop's CA: the query goes through TLS and is answered.
    let mut config = https_config(&shop, &url);
    config.ca_file = Some(ca_file.clone());
    let api = AdminApi::for_shop(&config, "stock").expect("a client");
    let r = api
        .execute(query, Value::Null, 4.0)
        .await
        .expect("answered");
    let skus = r.data["productVariants"]["nodes"]
        .as_array()
        .expect("nodes");
    assert_eq!(skus.len(), 2, "{}", r.data);

    // Not trusting it: a TLS error that says what to configure, at once and
    // not retried (it cannot heal by itself).
    let api = AdminApi::for_shop(&https_config(&shop, &url), "stock").expect("a client");
    let before = shop.stats()["api"]["graphql_requests"].as_u64();
    assert_eq!(before, Some(1), "the trusted query reached the shop");
    match api.execute(query, Value::Null, 4.0).await {
        Err(e @ AdminApiError::Tls(_)) => {
            assert!(!e.is_transient());
            let text = e.to_string();
            assert!(text.contains("ca_file"), "{text}");
            assert!(text.contains("certificate"), "{text}");
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
    assert_eq!(shop.stats()["api"]["graphql_requests"].as_u64(), before);

    // A CA file that is not there is a configuration error naming it.
    let mut config = https_config(&shop, &url);
    config.ca_file = Some(dir.path().join("missing.pem"));
    match AdminApi::for_shop(&config, "stock") {
        Err(AdminApiError::Tls(text)) => assert!(text.contains("missing.pem"), "{text}"),
        Err(other) => panic!("expected a TLS configuration error, got {other}"),
        Ok(_) => panic!("a missing CA file was accepted"),
    }
}

/// A worker killed mid-write: its `inventorySetQuantities` was accepted, and
/// the shop carries it out although the client is gone. A restarted worker
/// sending the same request (same key) while it is still processed is told
/// so (`InProgress`, never a refusal to dead-letter); once it landed, the same
/// key is answered from the shop's record and nothing is applied twice.
#[tokio::test]
async fn a_write_whose_client_died_still_lands_once_and_its_repeat_waits() {
    use flywheel::shop::platform::{OnHandWrite, SetOnHand, StockLevelPlatform, StockLevelReader};
    use flywheel::shop::shopify::catalog::ShopCatalog;
    use flywheel::shop::shopify::inventory::ShopifyInventory;

    let shop = sim(1000.0, 100.0).await;
    let mut inventory = ShopifyInventory {
        catalog: ShopCatalog::in_memory(client(&shop)),
    };
    let items = inventory.items(&["SKU-000001"]).await.expect("items");
    let item = items["SKU-000001"].clone();
    let location = inventory
        .location("WH1")
        .await
        .expect("locations")
        .expect("WH1");
    let pair = (item.clone(), location.clone());
    let before = inventory
        .on_hand(std::slice::from_ref(&pair))
        .await
        .expect("level")[&pair];
    let write = [OnHandWrite {
        item,
        location,
        on_hand: before + 40,
        compare: Some(before),
    }];
    shop.set_faults(
        ApiFaults {
            mutation_latency_ms: 600,
            ..ApiFaults::default()
        },
        WebhookFaults::default(),
    );
    // The dying worker: its request is sent, then the client is gone.
    let died = tokio::time::timeout(
        Duration::from_millis(150),
        inventory.set_on_hand(&write, "flywheel-stock-test-died"),
    )
    .await;
    assert!(
        died.is_err(),
        "the first write must still be in flight when dropped"
    );
    // The restarted worker sends the same request while it is processed.
    let mut restarted = ShopifyInventory {
        catalog: ShopCatalog::in_memory(client(&shop)),
    };
    assert_eq!(
        restarted
            .set_on_hand(&write, "flywheel-stock-test-died")
            .await
            .expect("an answer"),
        SetOnHand::InProgress
    );
    // The abandoned write lands.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = restarted
            .on_hand(std::slice::from_ref(&pair))
            .await
            .expect("level")[&pair];
        if now == before + 40 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned write never landed ({now})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its repeat is answered from the record: done, applied once.
    assert_eq!(
        restarted
            .set_on_hand(&write, "flywheel-stock-test-died")
            .await
            .expect("an answer"),
        SetOnHand::Done
    );
    let sets: usize = shop
        .shop()
        .state
        .lock()
        .set_history
        .values()
        .map(|h| h.iter().filter(|q| **q == before + 40).count())
        .sum();
    assert_eq!(sets, 1, "the level was set to its target exactly once");
}

/// Bulk queries against the simulator: the result is every node, nested
/// connections on their own lines after their parent; two clients asking for
/// the same export at once share one operation (the second waits for the
/// first and takes its file); a query that is not GraphQL is refused, final.
#[tokio::test]
async fn bulk_queries_export_everything_once_and_bad_ones_are_refused() {
    use flywheel::shop::shopify::bulk::run_query;
    let shop = sim(1000.0, 100.0).await;
    // Long enough that the second client asks while the first one runs.
    shop.set_faults(
        ApiFaults {
            bulk_latency_ms: 1_000,
            ..ApiFaults::default()
        },
        WebhookFaults::default(),
    );
    let (a, b) = (client(&shop), client(&shop));
    let query = flywheel::shop::shopify::export::QUERY;
    let patience = Duration::from_secs(30);
    let (first, second) = tokio::join!(
        run_query(&a, query, patience),
        run_query(&b, query, patience)
    );
    let (first, second) = (first.expect("an export"), second.expect("an export"));
    assert_eq!(first, second);
    assert_eq!(shop.shop().bulk.started(), 1, "one operation served both");
    let variants = first
        .iter()
        .filter(|l| l.get("__parentId").is_none())
        .count();
    let levels = first.len() - variants;
    assert_eq!((variants, levels), (100, 200), "100 SKUs at 2 locations");
    assert!(
        first
            .iter()
            .filter(|l| l.get("__parentId").is_some())
            .all(|l| l["quantities"][0]["name"] == "on_hand")
    );

    let refused = run_query(&a, "{ productVariants { edges ", patience).await;
    assert!(
        matches!(&refused, Err(AdminApiError::GraphQl(m)) if m.contains("Invalid bulk query")),
        "{refused:?}"
    );
}

/// Bulk mutations against the simulator: variables are staged and uploaded,
/// every line runs, each result names its line (a refused line carries its
/// own errors and does not stop the others); a second client's mutation
/// waits for the running one and then runs too; a mutation Shopify cannot
/// run in bulk is refused, final; the lines cost no points.
#[tokio::test]
async fn bulk_mutations_run_every_line_one_at_a_time_and_bad_ones_are_refused() {
    use flywheel::shop::shopify::bulk::run_mutation;
    let shop = sim(1000.0, 100.0).await;
    shop.set_faults(
        ApiFaults {
            bulk_latency_ms: 500,
            ..ApiFaults::default()
        },
        WebhookFaults::default(),
    );
    let variant = |sku: &str| {
        let st = shop.shop().state.lock();
        let v = st.variant_by_sku(sku).expect("a seeded SKU");
        (
            format!("gid://shopify/Product/{}", v.product_id),
            format!("gid://shopify/ProductVariant/{}", v.id),
        )
    };
    let update = "mutation($p: ID!, $v: [ProductVariantsBulkInput!]!) { productVariantsBulkUpdate(productId: $p, variants: $v) { userErrors { field message } } }";
    let line = |sku: &str, price: &str| {
        let (p, v) = variant(sku);
        json!({"p": p, "v": [{"id": v, "price": price}]})
    };
    let first = vec![
        line("SKU-000001", "11.00"),
        json!({"p": "gid://shopify/Product/999999", "v": [{"id": "gid://shopify/ProductVariant/999999", "price": "1.00"}]}),
        line("SKU-000002", "12.00"),
    ];
    let second = vec![line("SKU-000003", "13.00")];
    let cost_before = shop.stats()["api"]["cost_used"].as_u64().unwrap();
    let (a, b) = (client(&shop), client(&shop));
    let patience = Duration::from_secs(30);
    let (r1, r2) = tokio::join!(
        run_mutation(&a, update, &first, patience),
        run_mutation(&b, update, &second, patience)
    );
    let (r1, r2) = (r1.expect("a bulk mutation"), r2.expect("a bulk mutation"));
    assert_eq!(
        shop.shop().bulk.started(),
        2,
        "both ran, one after the other"
    );
    assert_eq!(r1.len(), 3);
    for (n, line) in r1.iter().enumerate() {
        assert_eq!(line["__lineNumber"], n, "{line}");
    }
    let errors = |l: &Value| l["data"]["productVariantsBulkUpdate"]["userErrors"].clone();
    assert_eq!(errors(&r1[0]), json!([]));
    assert_ne!(
        errors(&r1[1]),
        json!([]),
        "the unknown product is refused: {}",
        r1[1]
    );
    assert_eq!(errors(&r1[2]), json!([]));
    assert_eq!(errors(&r2[0]), json!([]));
    {
        let st = shop.shop().state.lock();
        let price = |sku: &str| st.variant_by_sku(sku).expect("SKU").price.clone();
        assert_eq!(
            (
                price("SKU-000001"),
                price("SKU-000002"),
                price("SKU-000003")
            ),
            ("11.00".into(), "12.00".into(), "13.00".into())
        );
    }
    let spent = shop.stats()["api"]["cost_used"].as_u64().unwrap() - cost_before;
    assert!(
        spent < 60,
        "staging, starting and polling two operations cost {spent} points; the lines none"
    );

    let refused = run_mutation(
        &a,
        "mutation { bulkOperationRunQuery(query: \"{ shop { id } }\") { userErrors { message } } }",
        &second,
        patience,
    )
    .await;
    assert!(
        matches!(&refused, Err(AdminApiError::GraphQl(m)) if m.contains("INVALID_MUTATION")),
        "{refused:?}"
    );
    // An upload to a target that was never staged is refused by the storage.
    let form = reqwest::multipart::Form::new()
        .text("key", "tmp/1/bulk/never-staged.jsonl")
        .text("file", "{}\n");
    let status = reqwest::Client::new()
        .post(format!("{}/_sim/staged-uploads", shop.base_url()))
        .multipart(form)
        .send()
        .await
        .expect("the upload answers")
        .status();
    assert_eq!(status, 403);
}

/// On API versions before 2026-01 there is no `bulkOperation(id:)`: bulk
/// queries and mutations are awaited through `currentBulkOperation` instead.
#[tokio::test]
async fn bulk_operations_work_without_bulk_operation_by_id() {
    use flywheel::shop::shopify::bulk::{run_mutation, run_query};
    let shop = sim(1000.0, 100.0).await;
    shop.set_faults(
        ApiFaults {
            bulk_latency_ms: 300,
            no_bulk_operation_by_id: true,
            ..ApiFaults::default()
        },
        WebhookFaults::default(),
    );
    let api = client(&shop);
    let patience = Duration::from_secs(30);
    let by_id = api
        .execute(
            "{ bulkOperation(id: \"gid://shopify/BulkOperation/1\") { id } }",
            Value::Null,
            1.0,
        )
        .await;
    assert!(
        matches!(&by_id, Err(AdminApiError::GraphQl(_))),
        "the simulator plays an older version: {by_id:?}"
    );
    let lines = run_query(&api, flywheel::shop::shopify::export::QUERY, patience)
        .await
        .expect("an export");
    assert!(!lines.is_empty());
    let variant = {
        let st = shop.shop().state.lock();
        let v = st.variant_by_sku("SKU-000004").expect("a seeded SKU");
        (
            format!("gid://shopify/Product/{}", v.product_id),
            format!("gid://shopify/ProductVariant/{}", v.id),
        )
    };
    let update = "mutation($p: ID!, $v: [ProductVariantsBulkInput!]!) { productVariantsBulkUpdate(productId: $p, variants: $v) { userErrors { field message } } }";
    let results = run_mutation(
        &api,
        update,
        &[json!({"p": variant.0, "v": [{"id": variant.1, "price": "14.00"}]})],
        patience,
    )
    .await
    .expect("a bulk mutation");
    assert_eq!(
        results[0]["data"]["productVariantsBulkUpdate"]["userErrors"],
        json!([])
    );
    let price = shop
        .shop()
        .state
        .lock()
        .variant_by_sku("SKU-000004")
        .expect("SKU")
        .price
        .clone();
    assert_eq!(price, "14.00");
}

/// A store that keeps a SKU's gone variant through `forget`, as when a stale
/// `products/*` webhook stored it again right after the forget.
#[derive(Default)]
struct StaleStore(MemoryCatalog);

impl CatalogStore for StaleStore {
    fn load<'a>(
        &'a mut self,
        skus: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, VariantRef>, CatalogStoreError>> {
        self.0.load(skus)
    }
    fn store<'a>(
        &'a mut self,
        version: i64,
        variants: &'a [(String, VariantRef)],
    ) -> BoxFuture<'a, Result<(), CatalogStoreError>> {
        self.0.store(version, variants)
    }
    fn forget<'a>(
        &'a mut self,
        _version: i64,
        _skus: &'a [String],
    ) -> BoxFuture<'a, Result<(), CatalogStoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn exported(&mut self) -> BoxFuture<'_, Result<bool, CatalogStoreError>> {
        self.0.exported()
    }
    fn mark_exported(&mut self) -> BoxFuture<'_, Result<(), CatalogStoreError>> {
        self.0.mark_exported()
    }
}

/// A store whose first `store` fails as a database away would.
#[derive(Default)]
struct StoreFailingOnce {
    inner: MemoryCatalog,
    failed: bool,
}

impl CatalogStore for StoreFailingOnce {
    fn load<'a>(
        &'a mut self,
        skus: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, VariantRef>, CatalogStoreError>> {
        self.inner.load(skus)
    }
    fn store<'a>(
        &'a mut self,
        version: i64,
        variants: &'a [(String, VariantRef)],
    ) -> BoxFuture<'a, Result<(), CatalogStoreError>> {
        if !std::mem::replace(&mut self.failed, true) {
            return Box::pin(async {
                Err(CatalogStoreError {
                    reason: "connection refused".into(),
                    retryable: true,
                })
            });
        }
        self.inner.store(version, variants)
    }
    fn forget<'a>(
        &'a mut self,
        version: i64,
        skus: &'a [String],
    ) -> BoxFuture<'a, Result<(), CatalogStoreError>> {
        self.inner.forget(version, skus)
    }
    fn exported(&mut self) -> BoxFuture<'_, Result<bool, CatalogStoreError>> {
        self.inner.exported()
    }
    fn mark_exported(&mut self) -> BoxFuture<'_, Result<(), CatalogStoreError>> {
        self.inner.mark_exported()
    }
}

/// A price write to a product replaced in the shop goes again to the variant
/// the shop has now, read from the shop itself: a store that still maps the
/// gone one after the forget (a stale webhook in between) had the retry find
/// it gone again, and the price was dead-lettered.
#[tokio::test]
async fn a_price_write_to_a_replaced_product_lands_even_if_the_gone_mapping_comes_back() {
    use flywheel::shop::platform::{PricePlatform, PriceWrite};
    use flywheel::shop::shopify::catalog::ShopCatalog;
    use flywheel::shop::shopify::prices::ShopifyPrices;

    let sim = sim(1000.0, 100.0).await;
    let mut prices = ShopifyPrices {
        catalog: ShopCatalog::new(client(&sim), Box::<StaleStore>::default()),
    };
    let write = |amount: &str| PriceWrite {
        sku: "SKU-000006".into(),
        amount: amount.into(),
        compare_at: None,
    };
    let first = prices
        .set(&[write("10.00")])
        .await
        .expect("the first write");
    assert_eq!(first, vec![Ok(())]);
    sim.replace_product("SKU-000006", 0).expect("SKU-000006");
    let again = prices
        .set(&[write("66.60")])
        .await
        .expect("the second write");
    assert_eq!(again, vec![Ok(())], "written to the new variant");
    let shown = sim
        .shop()
        .state
        .lock()
        .variant_by_sku("SKU-000006")
        .map(|v| v.price.clone());
    assert_eq!(shown.as_deref(), Some("66.60"));
}

/// The same for stock: a level refused for an inventory item the shop no
/// longer has is written to the item looked up in the shop itself. Through
/// the store, a gone mapping a stale webhook put back made every retry find
/// the gone item again, and the level waited.
#[tokio::test]
async fn a_stock_write_to_a_replaced_item_finds_the_new_one_even_if_the_gone_mapping_comes_back() {
    use flywheel::shop::platform::{OnHandWrite, SetOnHand, StockLevelPlatform, StockLevelReader};
    use flywheel::shop::shopify::catalog::ShopCatalog;
    use flywheel::shop::shopify::inventory::ShopifyInventory;

    let sim = sim(1000.0, 100.0).await;
    let mut inventory = ShopifyInventory {
        catalog: ShopCatalog::new(client(&sim), Box::<StaleStore>::default()),
    };
    let mapped = inventory.items(&["SKU-000006"]).await.expect("items");
    let location = inventory
        .location("WH1")
        .await
        .expect("locations")
        .expect("WH1");
    let (old, new) = sim.replace_product("SKU-000006", 0).expect("SKU-000006");
    assert_eq!(
        mapped["SKU-000006"],
        format!("gid://shopify/InventoryItem/{old}")
    );
    let write = |item: &str| {
        [OnHandWrite {
            item: item.to_owned(),
            location: location.clone(),
            on_hand: 17,
            compare: None,
        }]
    };
    assert_eq!(
        inventory
            .set_on_hand(&write(&mapped["SKU-000006"]), "flywheel-stock-test-gone")
            .await
            .expect("an answer"),
        SetOnHand::UnknownItem
    );
    let found = inventory
        .look_up_again(&["SKU-000006"])
        .await
        .expect("a lookup");
    assert_eq!(
        found.get("SKU-000006").map(String::as_str),
        Some(format!("gid://shopify/InventoryItem/{new}").as_str()),
        "the shop's item, not the gone one the store kept"
    );
    assert_eq!(
        inventory
            .set_on_hand(&write(&found["SKU-000006"]), "flywheel-stock-test-found")
            .await
            .expect("an answer"),
        SetOnHand::Done
    );
    let pair = (found["SKU-000006"].clone(), location.clone());
    let shown = inventory
        .on_hand(std::slice::from_ref(&pair))
        .await
        .expect("level");
    assert_eq!(shown.get(&pair), Some(&17));
}

/// A catalogue whose lasting store never held an export exports the shop's
/// catalogue on its first miss, even of one SKU, and reads later misses from
/// it: a processor joining with a new state database paid a lookup (3 points
/// and a round trip) on every SKU's first change, and its writes waited for
/// the budget. An export that fails does not hold a few misses back: they are
/// looked up one by one, and no export is tried again for a while; the
/// store failing to keep an export fails the miss (to be retried) and pauses
/// nothing. A catalogue for one client's life (a trace of one key) looks a few SKUs up
/// instead of reading the whole catalogue.
#[tokio::test]
async fn the_first_miss_exports_the_catalogue_and_a_failed_export_falls_back_to_lookups() {
    use flywheel::shop::shopify::catalog::ShopCatalog;
    // Asks `catalog` for `skus` (every one of them is in the shop, so every
    // one must be found) and returns the sim's (exports, lookups) after it.
    async fn miss(catalog: &mut ShopCatalog, sim: &ShopSim, skus: &[&str]) -> (u64, u64) {
        let found = catalog
            .variants(skus.iter().copied())
            .await
            .expect("variants");
        assert_eq!(found.len(), skus.len(), "{found:?}");
        (
            sim.operations("bulkOperationRunQuery"),
            sim.operations("productVariants"),
        )
    }
    let lasting = |sim: &ShopSim| ShopCatalog::new(client(sim), Box::<MemoryCatalog>::default());

    let shop = sim(1000.0, 100.0).await;
    let mut catalog = lasting(&shop);
    let first = miss(&mut catalog, &shop, &["SKU-000001"]).await;
    assert_eq!(first, (1, 0), "(exports, lookups) of the first miss");
    let later = miss(&mut catalog, &shop, &["SKU-000002", "SKU-000077"]).await;
    assert_eq!(later, (1, 0), "later misses read the export");

    let failing = sim(1000.0, 100.0).await;
    failing.set_faults(
        ApiFaults {
            bulk_failure: true,
            ..ApiFaults::default()
        },
        WebhookFaults::default(),
    );
    let mut catalog = lasting(&failing);
    let first = miss(&mut catalog, &failing, &["SKU-000001"]).await;
    assert_eq!(first, (1, 1), "(exports, lookups) of the first miss");
    let next = miss(&mut catalog, &failing, &["SKU-000002"]).await;
    assert_eq!(
        next,
        (1, 2),
        "an export was tried again right after one failed"
    );

    // The store failing to keep an export is not the shop refusing one: the
    // miss fails (to be retried), and the retry exports, not looks up.
    let shop = sim(1000.0, 100.0).await;
    let mut catalog = ShopCatalog::new(client(&shop), Box::<StoreFailingOnce>::default());
    let failed = catalog.variants(["SKU-000001"]).await;
    assert!(
        matches!(&failed, Err(e @ AdminApiError::CatalogStore(_)) if e.is_transient()),
        "{failed:?}"
    );
    let retried = miss(&mut catalog, &shop, &["SKU-000001"]).await;
    assert_eq!(
        retried,
        (2, 0),
        "(exports, lookups) after the store failed: the export was paused"
    );

    let one_shot = sim(1000.0, 100.0).await;
    let mut catalog = ShopCatalog::in_memory(client(&one_shot));
    let first = miss(&mut catalog, &one_shot, &["SKU-000001"]).await;
    assert_eq!(
        first,
        (0, 1),
        "(exports, lookups) of a one-shot catalogue's miss"
    );
}
