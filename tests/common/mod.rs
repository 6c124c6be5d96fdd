//! Integration-test harness: one real PostgreSQL cluster and one real tansu
//! broker (the development broker built into `flywheel`) per test binary, a
//! database, slot and topic prefix per test.
//!
//! Servers start on first use and fail the test loudly if they cannot; they are
//! killed when the test binary exits (see `local_infra`).

#![allow(dead_code)]

pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::OnceCell;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use flywheel::bus::avro::{AvroCodec, field_i64, field_str};
use flywheel::bus::topics::ensure_topics;
use flywheel::config::Config;
use flywheel::erp::demo_erp::{self, DemoSize};
use flywheel::local_infra::{LocalBroker, LocalPostgres};

pub struct Shared {
    pub pg: LocalPostgres,
    pub broker: LocalBroker,
}

pub async fn shared() -> &'static Shared {
    static SHARED: OnceCell<Shared> = OnceCell::const_new();
    SHARED
        .get_or_init(|| async {
            let pg = LocalPostgres::start()
                .await
                .unwrap_or_else(|e| panic!("test PostgreSQL did not start: {e}"));
            let broker = LocalBroker::start()
                .await
                .unwrap_or_else(|e| panic!("test broker did not start: {e}"));
            Shared { pg, broker }
        })
        .await
}

pub async fn connect(dsn: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {dsn}: {e}"));
    tokio::spawn(conn);
    client
}

/// One test's world: its own ERP database (demo data), slot and topics.
pub struct TestEnv {
    pub name: String,
    pub dsn: String,
    pub config: Config,
    pub erp: Client,
}

impl TestEnv {
    pub async fn new(name: &str, size: DemoSize) -> TestEnv {
        let shared = shared().await;
        shared
            .pg
            .create_database(name)
            .await
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        let dsn = shared.pg.dsn(name);
        let mut erp = connect(&dsn).await;
        demo_erp::create_and_seed(&mut erp, size)
            .await
            .expect("seeding the demo ERP");
        let mut config = Config::default();
        config.erp.dsn = dsn.clone();
        config.erp.slot = name.to_owned();
        config.erp.status_interval_ms = 100;
        config.erp.heartbeat_interval_ms = 500;
        shared.broker.configure(&mut config.kafka);
        config.kafka.topic_prefix = format!("{name}.");
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
            ],
        )
        .await
        .expect("creating topics");
        TestEnv {
            name: name.to_owned(),
            dsn,
            config,
            erp,
        }
    }

    pub fn reader(&self, logical_topic: &str) -> TopicReader {
        TopicReader::new(
            &self.config.kafka,
            &self.config.kafka.topic(logical_topic),
            logical_topic,
        )
    }

    /// Runs the source in-process until [`RunningSource::stop`].
    pub fn start_source(&self) -> RunningSource {
        let token = CancellationToken::new();
        let config = self.config.clone();
        let t = token.clone();
        let handle = tokio::spawn(async move { flywheel::erp::source::run(&config, t).await });
        RunningSource { token, handle }
    }

    /// Starts the source and waits until its initial snapshot is complete.
    pub async fn start_streaming(&self) -> RunningSource {
        let source = self.start_source();
        wait_for("the initial snapshot", Duration::from_secs(300), || {
            self.snapshot_done()
        })
        .await;
        source
    }

    /// Sets the quantity of product `product_id` on warehouse `warehouse`'s Stock location.
    pub async fn set_stock(&self, product_id: i32, warehouse: &str, quantity: i32) {
        self.erp
            .execute(
                "UPDATE stock_quant SET quantity = $3::int
                 WHERE product_id = $1
                   AND location_id = (SELECT lot_stock_id FROM stock_warehouse WHERE code = $2)",
                &[&product_id, &warehouse, &quantity],
            )
            .await
            .expect("setting stock");
    }

    /// The slot's confirmed flush position.
    pub async fn confirmed_flush(&self) -> Option<u64> {
        let row = self
            .erp
            .query_opt(
                "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.name],
            )
            .await
            .expect("reading the slot");
        row.and_then(|r| r.get::<_, Option<i64>>(0))
            .map(|v| v as u64)
    }

    /// Waits (at most `timeout`) until the slot's confirmed flush position
    /// reaches `lsn`; `what` names it in the failure.
    pub async fn await_confirmed(&self, what: &str, lsn: u64, timeout: Duration) {
        wait_for(what, timeout, || async {
            self.confirmed_flush().await.unwrap_or(0) >= lsn
        })
        .await;
    }

    /// The write position the slot's reader last reported (what it received).
    pub async fn write_position(&self) -> Option<u64> {
        let row = self
            .erp
            .query_opt(
                "SELECT (r.write_lsn - '0/0'::pg_lsn)::bigint FROM pg_stat_replication r
                 JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $1",
                &[&self.name],
            )
            .await
            .expect("reading the replication status");
        row.and_then(|r| r.get::<_, Option<i64>>(0))
            .map(|v| v as u64)
    }

    pub async fn current_wal(&self) -> u64 {
        let v: i64 = self
            .erp
            .query_one(
                "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint",
                &[],
            )
            .await
            .expect("reading the WAL position")
            .get(0);
        v as u64
    }

    /// Whether the source finished its initial snapshot.
    pub async fn snapshot_done(&self) -> bool {
        self.erp
            .query_opt(
                "SELECT 1 FROM flywheel.source_snapshot WHERE slot_name = $1",
                &[&self.name],
            )
            .await
            .map(|r| r.is_some())
            .unwrap_or(false)
    }

    /// A new ERP product `id` with SKU `sku` (or none) and 4 units on WH1's
    /// Stock (the demo shop does not sell it).
    pub async fn add_erp_product(&self, id: i32, sku: Option<&str>) {
        self.erp
            .execute(
                "WITH t AS (INSERT INTO product_template (id, name, list_price) VALUES ($1, coalesce($2, 'Unlisted'), 1) RETURNING id),
                      p AS (INSERT INTO product_product (id, product_tmpl_id, default_code)
                            SELECT $1, id, $2 FROM t RETURNING id)
                 INSERT INTO stock_quant (product_id, location_id, quantity)
                 SELECT p.id, w.lot_stock_id, 4 FROM p, stock_warehouse w WHERE w.code = 'WH1'",
                &[&id, &sku],
            )
            .await
            .expect("adding an ERP product");
    }

    /// What the shop's `on_hand` should be for a SKU in a warehouse under the
    /// stock contract: ERP on hand − (reserved − reserved for channel `demo`)
    /// − safety stock, at least 0. With no unfulfilled shop orders it is also
    /// the shop's `available`.
    pub async fn shop_should_show(&self, sku: &str, warehouse: &str, safety: i64) -> i64 {
        let (on_hand, reserved, _) = self.stock_of(sku, warehouse).await;
        let own: String = self
            .erp
            .query_one(
                "SELECT coalesce(sum(m.product_uom_qty), 0)::text
                 FROM stock_move m
                 JOIN stock_location l ON l.id = m.location_id
                 JOIN stock_warehouse w ON l.name LIKE w.code || '/%'
                 JOIN product_product p ON p.id = m.product_id
                 JOIN sale_order_line sl ON sl.id = m.sale_line_id
                 JOIN sale_order o ON o.id = sl.order_id
                 WHERE m.state = 'assigned' AND o.channel = 'demo' AND p.default_code = $1 AND w.code = $2",
                &[&sku, &warehouse],
            )
            .await
            .expect("reading reservations")
            .get(0);
        let num = |s: &str| s.parse::<f64>().expect("a decimal");
        let elsewhere = (num(&reserved) - num(&own)).max(0.0).ceil() as i64;
        (num(&on_hand).trunc() as i64 - elsewhere - safety).max(0)
    }

    /// (sku, warehouse) → [`TestEnv::shop_should_show`] for the demo ERP's
    /// first `skus` SKUs in WH1..WH3.
    pub async fn shop_should_show_all(
        &self,
        skus: u32,
        safety: i64,
    ) -> HashMap<(String, String), i64> {
        let mut want = HashMap::new();
        for p in 1..=skus {
            for w in 1..=3 {
                let (sku, wh) = (format!("SKU-{p:06}"), format!("WH{w}"));
                let v = self.shop_should_show(&sku, &wh, safety).await;
                want.insert((sku, wh), v);
            }
        }
        want
    }

    /// Ships shop order `id` of `channel` in the ERP: a done delivery with
    /// carrier DHL and `tracking`.
    pub async fn ship(&self, channel: &str, id: u64, tracking: &str) {
        self.erp
            .execute(
                "INSERT INTO stock_picking (name, sale_id, state, carrier_name, carrier_tracking_ref, date_done)
                 SELECT 'WH/OUT/' || id, id, 'done', 'DHL', $3, now()
                 FROM sale_order WHERE channel = $1 AND shop_order_id = $2",
                &[&channel, &id.to_string(), &tracking],
            )
            .await
            .expect("shipping in the ERP");
    }

    /// The states of the ERP's sale orders for shop order `id` of `channel`
    /// (one, once it arrived; never more).
    pub async fn order_states(&self, channel: &str, id: u64) -> Vec<String> {
        self.erp
            .query(
                "SELECT state FROM sale_order WHERE channel = $1 AND shop_order_id = $2",
                &[&channel, &id.to_string()],
            )
            .await
            .expect("reading sale_order")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Stock of one SKU in one warehouse, computed here independently of the connector.
    pub async fn stock_of(&self, sku: &str, warehouse: &str) -> (String, String, String) {
        let row = self
            .erp
            .query_one(
                "SELECT coalesce(sum(q.quantity),0)::text, coalesce(sum(q.reserved_quantity),0)::text,
                        (coalesce(sum(q.quantity),0) - coalesce(sum(q.reserved_quantity),0))::text
                 FROM stock_quant q
                 JOIN stock_location l ON l.id = q.location_id AND l.usage = 'internal'
                 JOIN product_product p ON p.id = q.product_id
                 JOIN stock_warehouse w ON l.name LIKE w.code || '/%'
                 WHERE p.default_code = $1 AND w.code = $2",
                &[&sku, &warehouse],
            )
            .await
            .expect("computing stock");
        (row.get(0), row.get(1), row.get(2))
    }
}

pub struct RunningSource {
    pub token: CancellationToken,
    pub handle: tokio::task::JoinHandle<Result<(), flywheel::erp::source::SourceError>>,
}

impl RunningSource {
    /// Graceful stop; panics if the source had failed.
    pub async fn stop(self) {
        self.token.cancel();
        match tokio::time::timeout(Duration::from_secs(30), self.handle).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("source failed: {e}"),
            Ok(Err(e)) => panic!("source task panicked: {e}"),
            Err(_) => panic!("source did not stop within 30 s"),
        }
    }

    /// Panics with the source's error if it stopped on its own.
    pub fn assert_running(&self) {
        assert!(
            !self.handle.is_finished(),
            "the source stopped unexpectedly"
        );
    }
}

/// A record read back from Kafka and decoded.
#[derive(Clone, Debug)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    /// The decoded Avro value (Null for topics that are not Avro, like the raw one).
    pub value: Value,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Rec {
    pub fn str(&self, field: &str) -> Option<&str> {
        field_str(&self.value, field)
    }

    pub fn version(&self) -> u64 {
        field_i64(&self.value, "version").expect("every event has a version") as u64
    }

    pub fn deleted(&self) -> bool {
        matches!(
            flywheel::bus::avro::field(&self.value, "deleted"),
            Some(Value::Boolean(true))
        )
    }
}

/// Reads a whole topic from the beginning (no consumer group) and decodes it.
pub struct TopicReader {
    consumer: Option<BaseConsumer>,
    codec: Option<&'static AvroCodec>,
    pub records: Vec<Rec>,
}

impl TopicReader {
    pub fn new(
        kafka: &flywheel::config::KafkaConfig,
        physical_topic: &str,
        logical_topic: &str,
    ) -> TopicReader {
        let consumer: BaseConsumer = flywheel::bus::client::client_config(kafka, "test-reader")
            .set("group.id", "flywheel-tests-unused")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .expect("creating a test consumer");
        let metadata = consumer
            .fetch_metadata(Some(physical_topic), Duration::from_secs(10))
            .expect("topic metadata");
        let mut tpl = TopicPartitionList::new();
        for topic in metadata.topics() {
            for p in topic.partitions() {
                tpl.add_partition_offset(physical_topic, p.id(), Offset::Beginning)
                    .expect("assigning");
            }
        }
        assert!(tpl.count() > 0, "topic {physical_topic} has no partitions");
        consumer.assign(&tpl).expect("assigning partitions");
        TopicReader {
            consumer: Some(consumer),
            codec: AvroCodec::for_topic(logical_topic).ok(),
            records: Vec::new(),
        }
    }

    /// Polls until `done(records)` holds, or panics after `timeout`.
    pub async fn read_until(&mut self, timeout: Duration, done: impl Fn(&[Rec]) -> bool) -> &[Rec] {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.records) {
                return &self.records;
            }
            if Instant::now() > deadline {
                panic!(
                    "condition not met within {timeout:?}; {} records read",
                    self.records.len()
                );
            }
            self.poll_some().await;
        }
    }

    /// Reads for `quiet` after the last record arrived: everything there is.
    pub async fn drain(&mut self, quiet: Duration) -> &[Rec] {
        let mut last = Instant::now();
        let mut n = self.records.len();
        while last.elapsed() < quiet {
            self.poll_some().await;
            if self.records.len() != n {
                n = self.records.len();
                last = Instant::now();
            }
        }
        &self.records
    }

    async fn poll_some(&mut self) {
        let consumer = self.consumer.take().expect("consumer");
        let codec = self.codec;
        let (consumer, batch) = tokio::task::spawn_blocking(move || {
            let mut batch = Vec::new();
            let until = Instant::now() + Duration::from_millis(200);
            while Instant::now() < until {
                match consumer.poll(Duration::from_millis(50)) {
                    Some(Ok(m)) => {
                        let payload = m.payload().unwrap_or_default().to_vec();
                        let value = match codec {
                            Some(c) => c.decode(&payload).unwrap_or_else(|e| {
                                panic!("undecodable record at offset {}: {e}", m.offset())
                            }),
                            None => Value::Null,
                        };
                        let mut headers = HashMap::new();
                        if let Some(h) = m.headers() {
                            for hd in h.iter() {
                                headers.insert(
                                    hd.key.to_owned(),
                                    String::from_utf8_lossy(hd.value.unwrap_or_default())
                                        .into_owned(),
                                );
                            }
                        }
                        batch.push(Rec {
                            partition: m.partition(),
                            offset: m.offset(),
                            key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                            value,
                            payload,
                            headers,
                        });
                    }
                    Some(Err(e)) => panic!("consuming failed: {e}"),
                    None => {}
                }
            }
            (consumer, batch)
        })
        .await
        .expect("poll task");
        self.consumer = Some(consumer);
        self.records.extend(batch);
    }
}

/// A configuration for tests that need only Kafka (no ERP database): topic
/// prefix `name.`, on the shared broker.
pub async fn kafka_only_config(name: &str) -> Config {
    let shared = shared().await;
    let mut config = Config::default();
    shared.broker.configure(&mut config.kafka);
    config.kafka.topic_prefix = format!("{name}.");
    config.kafka.partitions = 3;
    config.metrics.listen = String::new();
    config
}

/// Awaits `cond` (re-evaluated every 50 ms) or panics with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Awaits the shop showing `want` (re-read every 50 ms) or panics after
/// `timeout` naming each level that differs, with the shop's record of what it
/// was set to, so a failure says which levels stuck and where.
#[allow(dead_code)]
pub async fn wait_for_shop_stock(
    what: &str,
    timeout: Duration,
    sim: &shopsim::ShopSim,
    want: &HashMap<(String, String), i64>,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let have = shop_stock(sim).await;
        if have == *want {
            return;
        }
        if Instant::now() > deadline {
            let mut keys: Vec<&(String, String)> = want.keys().chain(have.keys()).collect();
            keys.sort();
            keys.dedup();
            let differ: Vec<String> = keys
                .into_iter()
                .filter(|k| want.get(*k) != have.get(*k))
                .map(|k| format!("{k:?}: want {:?}, shop {:?}", want.get(k), have.get(k)))
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}; {} levels differ:\n{}",
                differ.len(),
                differ.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints a child process's log file when the test panics, so a failure in
/// CI says what the child saw.
pub struct ShowLogOnPanic(pub std::path::PathBuf);

impl Drop for ShowLogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!(
                "--- log of {} ---\n{log}--- end of log ---",
                self.0.display()
            );
        }
    }
}

pub fn small() -> DemoSize {
    DemoSize {
        skus: 20,
        warehouses: 3,
        orders: 5,
        seed: 0.1,
    }
}

/// The shop simulator in-process on a free port, with the demo catalogue
/// (`skus` products, WH1..WH3).
pub async fn start_shop(skus: u32) -> shopsim::ShopSim {
    shopsim::ShopSim::start(
        shopsim::SimConfig {
            seed: shopsim::catalog::demo_seed(skus, 3),
            ..shopsim::SimConfig::default()
        },
        "127.0.0.1:0".parse().expect("an address"),
    )
    .await
    .expect("the shop simulator starts")
}

/// Runs the `flywheel` binary with `args` against `config`'s ERP, Kafka and
/// processor group; returns whether it succeeded and its stdout + stderr.
pub async fn flywheel_cli(config: &Config, args: &[&str]) -> (bool, String) {
    flywheel_cli_with_env(
        args,
        &[
            ("FLYWHEEL_ERP__DSN", &config.erp.dsn),
            ("FLYWHEEL_ERP__SLOT", &config.erp.slot),
            ("FLYWHEEL_KAFKA__BOOTSTRAP", &config.kafka.bootstrap),
            ("FLYWHEEL_KAFKA__TOPIC_PREFIX", &config.kafka.topic_prefix),
            ("FLYWHEEL_PROCESSORS__GROUP_ID", &config.processors.group_id),
        ],
    )
    .await
}

/// Runs the `flywheel` binary with `args` and only the settings in `env`
/// (metrics off); returns whether it succeeded and its stdout + stderr.
pub async fn flywheel_cli_with_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .args(args)
        .envs(env.iter().copied())
        .env("FLYWHEEL_METRICS__LISTEN", "")
        .output()
        .await
        .expect("running flywheel");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// POSTs a Shopify `orders/create` webhook signed with `secret`; the status.
pub async fn post_shopify_order(url: &str, secret: &str, webhook_id: &str, body: Vec<u8>) -> u16 {
    reqwest::Client::new()
        .post(url)
        .header("X-Shopify-Topic", "orders/create")
        .header(
            "X-Shopify-Hmac-Sha256",
            flywheel::shop::signature::sign(secret, &body),
        )
        .header("X-Shopify-Webhook-Id", webhook_id)
        .body(body)
        .send()
        .await
        .expect("the gateway answers")
        .status()
        .as_u16()
}

/// (sku, location) → available, as the shop has it now.
pub async fn shop_stock(sim: &shopsim::ShopSim) -> HashMap<(String, String), i64> {
    shop_levels(sim, "available").await
}

/// (sku, location) → on_hand (available + committed), as the shop has it now.
pub async fn shop_on_hand(sim: &shopsim::ShopSim) -> HashMap<(String, String), i64> {
    shop_levels(sim, "on_hand").await
}

async fn shop_levels(sim: &shopsim::ShopSim, quantity: &str) -> HashMap<(String, String), i64> {
    let state: serde_json::Value = reqwest::get(format!("{}/_sim/state", sim.base_url()))
        .await
        .expect("simulator state")
        .json()
        .await
        .expect("JSON");
    state["stock"]
        .as_array()
        .expect("stock list")
        .iter()
        .map(|l| {
            (
                (
                    l["sku"].as_str().expect("sku").to_owned(),
                    l["location"].as_str().expect("location").to_owned(),
                ),
                l[quantity].as_i64().expect("a quantity"),
            )
        })
        .collect()
}

/// `flywheel_processor_events_total` of this test binary, summed over the
/// series whose labels include every (name, value) of `labels`.
pub fn processor_events(labels: &[(&str, &str)]) -> u64 {
    metric("flywheel_processor_events_total", labels) as u64
}

/// The value of this test binary's metric `name` (a counter or a gauge),
/// summed over the series with these labels.
#[allow(dead_code)]
pub fn metric(name: &str, labels: &[(&str, &str)]) -> f64 {
    prometheus::gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            labels.iter().all(|(name, value)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *name && l.value() == *value)
            })
        })
        .map(|m| m.get_counter().value() + m.get_gauge().value())
        .sum()
}

/// The processors' outcome counters of this test binary, summed over entities.
pub fn processor_outcomes() -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for family in prometheus::gather() {
        if family.name() != "flywheel_processor_events_total" {
            continue;
        }
        for m in family.get_metric() {
            if let Some(l) = m.get_label().iter().find(|l| l.name() == "outcome") {
                *out.entry(l.value().to_owned()).or_default() += m.get_counter().value() as u64;
            }
        }
    }
    out
}

/// `env`'s configuration with processors pointed at `sim`, in consumer group `group`.
pub fn processor_config(env: &TestEnv, sim: &shopsim::ShopSim, group: &str) -> Config {
    let mut config = env.config.clone();
    config.processors.group_id = group.to_owned();
    config.processors.batch_wait_ms = 100;
    config.shops[0].admin_url = sim.graphql_url();
    config.shops[0].access_token = flywheel::config::Secret(sim.config.access_token.clone());
    config
}

/// The webhook secret shared by [`WiredShop`]'s simulator and gateway.
pub const WIRED_SECRET: &str = "wired-shop-secret";

/// A shop simulator whose webhooks of `topics` go to a gateway running
/// in-process (shop `demo`), and `env`'s configuration pointing the
/// processors at that shop, in consumer group `group`.
pub struct WiredShop {
    pub sim: shopsim::ShopSim,
    pub config: Config,
    pub gateway: flywheel::shop::gateway::RunningGateway,
    gateway_stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl WiredShop {
    pub async fn start(
        env: &TestEnv,
        group: &str,
        skus: u32,
        topics: &[shopsim::Topic],
    ) -> WiredShop {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = env.config.clone();
        config.gateway.listen = "127.0.0.1:0".into();
        config.gateway.dedupe_path = dir.path().join("seen.log");
        config.shops[0].webhook_secrets = vec![flywheel::config::Secret(WIRED_SECRET.into())];
        let gateway_stop = CancellationToken::new();
        let gateway =
            flywheel::shop::gateway::start(&config, axum::Router::new(), gateway_stop.clone())
                .await
                .expect("the gateway starts");
        let callback = format!("http://{}/webhooks/shopify/demo", gateway.addr);
        let sim = shopsim::ShopSim::start(
            shopsim::SimConfig {
                webhook_secret: WIRED_SECRET.into(),
                seed: shopsim::catalog::demo_seed(skus, 3),
                subscriptions: topics.iter().map(|t| (*t, callback.clone())).collect(),
                ..shopsim::SimConfig::default()
            },
            "127.0.0.1:0".parse().expect("an address"),
        )
        .await
        .expect("the shop simulator starts");
        let processors = processor_config(env, &sim, group);
        config.processors = processors.processors;
        config.shops[0].admin_url = processors.shops[0].admin_url.clone();
        config.shops[0].access_token = processors.shops[0].access_token.clone();
        let addr = gateway.addr;
        wait_for(
            "the gateway to be ready",
            Duration::from_secs(60),
            || async move {
                reqwest::get(format!("http://{addr}/readyz"))
                    .await
                    .is_ok_and(|r| r.status() == 200)
            },
        )
        .await;
        WiredShop {
            sim,
            config,
            gateway,
            gateway_stop,
            _dir: dir,
        }
    }

    pub fn stop(&self) {
        self.gateway_stop.cancel();
    }
}

/// A processor running in-process until [`RunningProcessor::stop`].
pub struct RunningProcessor {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), Box<dyn std::error::Error + Send + Sync>>>,
}

impl RunningProcessor {
    /// Runs `run` (a processor, an order poll: anything that runs until its
    /// token is cancelled) in its own task.
    pub fn spawn<Fut, E>(
        config: &Config,
        run: impl FnOnce(Config, CancellationToken) -> Fut,
    ) -> RunningProcessor
    where
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let token = CancellationToken::new();
        let running = run(config.clone(), token.clone());
        let handle = tokio::spawn(async move { running.await.map_err(|e| e.into()) });
        RunningProcessor { token, handle }
    }

    /// The order poll of the configuration's first shop, every second.
    pub fn order_poll(config: &Config) -> RunningProcessor {
        let mut config = config.clone();
        config.shops[0].order_poll_secs = 1;
        RunningProcessor::spawn(&config, |c, t| async move {
            flywheel::shop::order_poll::run_for_shop(&c, &c.shops[0].clone(), t).await
        })
    }

    /// The configuration's first shop's order poll as the processors role
    /// runs it (`order_poll::run_supervised`: restarted, never ending on
    /// its own), every second.
    pub fn supervised_order_poll(config: &Config) -> RunningProcessor {
        let mut config = config.clone();
        config.shops[0].order_poll_secs = 1;
        RunningProcessor::spawn(&config, |c, t| async move {
            flywheel::shop::order_poll::run_supervised(&c, &c.shops[0].clone(), t).await;
            Ok::<(), std::io::Error>(())
        })
    }

    /// Stops it; panics if it had stopped on its own or ends with an error.
    pub async fn stop(self) {
        assert!(
            !self.handle.is_finished(),
            "the processor stopped on its own: {:?}",
            self.handle.await
        );
        self.token.cancel();
        match tokio::time::timeout(Duration::from_secs(30), self.handle).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("processor failed: {e}"),
            Ok(Err(e)) => panic!("processor task panicked: {e}"),
            Err(_) => panic!("processor did not stop within 30 s"),
        }
    }
}

/// The stock processor group's total lag (records not yet committed).
pub fn stock_lag(config: &Config) -> i64 {
    group_lag(config, "stock")
}

/// Shop `demo`'s `entity` processor group's total lag.
pub fn group_lag(config: &Config, entity: &str) -> i64 {
    let suffix = format!(".{entity}.demo");
    flywheel::ops::lag::consumer_lag(config)
        .expect("reading the lag")
        .iter()
        .filter(|l| l.group.ends_with(&suffix))
        .map(|l| l.lag)
        .sum()
}

/// SKU → (price, compare-at price), as the shop has it now.
pub async fn shop_prices(sim: &shopsim::ShopSim) -> HashMap<String, (String, Option<String>)> {
    let state: serde_json::Value = reqwest::get(format!("{}/_sim/state", sim.base_url()))
        .await
        .expect("simulator state")
        .json()
        .await
        .expect("JSON");
    state["prices"]
        .as_array()
        .expect("price list")
        .iter()
        .map(|p| {
            (
                p["sku"].as_str().expect("sku").to_owned(),
                (
                    p["price"].as_str().expect("price").to_owned(),
                    p["compare_at_price"].as_str().map(str::to_owned),
                ),
            )
        })
        .collect()
}

/// Awaits the shop showing `price` for `sku`.
pub async fn wait_for_shop_price(
    what: &str,
    timeout: Duration,
    sim: &shopsim::ShopSim,
    sku: &str,
    price: &str,
) {
    wait_for(what, timeout, || async {
        shop_prices(sim).await.get(sku).map(|p| p.0.as_str()) == Some(price)
    })
    .await;
}

/// SKU → (list price, no compare-at), as the ERP has it now.
pub async fn erp_list_prices(env: &TestEnv) -> HashMap<String, (String, Option<String>)> {
    env.erp
        .query(
            "SELECT p.default_code, t.list_price::text FROM product_product p JOIN product_template t ON t.id = p.product_tmpl_id",
            &[],
        )
        .await
        .expect("reading list prices")
        .iter()
        .map(|r| (r.get::<_, String>(0), (r.get::<_, String>(1), None)))
        .collect()
}

/// What the stock processor should set as the shop's `on_hand` for one
/// `erp.stock.v1` record (the stock contract, computed here independently of
/// the processor): on hand − (reserved − reserved for `channel`), at least 0.
pub fn stock_target(rec: &Rec, channel: &str) -> i64 {
    if rec.deleted() {
        return 0;
    }
    let num = |f: &str| {
        rec.str(f)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let own = rec
        .str("reserved_by_channel")
        .and_then(|j| serde_json::from_str::<HashMap<String, String>>(j).ok())
        .and_then(|m| m.get(channel).and_then(|q| q.parse::<f64>().ok()))
        .unwrap_or(0.0);
    let elsewhere = (num("reserved") - own).max(0.0).ceil() as i64;
    (num("on_hand").trunc() as i64 - elsewhere).max(0)
}

/// The stock, order and order status processors in-process on `config`: what
/// a shop that sells needs (its stock, its orders in the ERP, their shipments).
pub fn stock_and_order_processors(config: &Config) -> [RunningProcessor; 3] {
    [
        RunningProcessor::spawn(config, |c, t| async move {
            flywheel::sync::stock_to_shop::run(&c, &c.shops[0].clone(), t).await
        }),
        RunningProcessor::spawn(config, |c, t| async move {
            flywheel::sync::orders_to_erp::run(&c, t).await
        }),
        RunningProcessor::spawn(config, |c, t| async move {
            flywheel::sync::status_to_shop::run(&c, &c.shops[0].clone(), t).await
        }),
    ]
}

/// The newest record (by version) of each key.
pub fn latest_by_key(records: &[Rec]) -> HashMap<String, &Rec> {
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

/// After a source was killed: everything its run produced, as the last
/// offset per partition (what comes after is the next run's).
pub async fn run_ends(stock: &mut TopicReader) -> HashMap<i32, i64> {
    let records = stock.drain(Duration::from_secs(2)).await;
    let mut ends = HashMap::new();
    for r in records {
        let e = ends.entry(r.partition).or_insert(r.offset);
        *e = (*e).max(r.offset);
    }
    ends
}

/// Waits until the newest record of every key in `finals` carries its final
/// `on_hand`.
pub async fn await_final_on_hand(stock: &mut TopicReader, finals: &HashMap<String, String>) {
    stock
        .read_until(Duration::from_secs(90), move |r| {
            let latest = latest_by_key(r);
            finals
                .iter()
                .all(|(k, v)| latest.get(k).and_then(|e| e.str("on_hand")) == Some(v.as_str()))
        })
        .await;
}

/// Within each run of a source (split at `first_run_ends`), versions per key
/// only grow; the second run may replay older versions, which consumers
/// skip as stale.
pub fn assert_versions_grow_within_runs(records: &[Rec], first_run_ends: &HashMap<i32, i64>) {
    let mut last: HashMap<(bool, String), u64> = HashMap::new();
    for r in records {
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

/// The `flywheel` binary as a child process (`args`, settings from `envs`),
/// killed when dropped so a failing test does not leave it running; its log
/// is shown when the test fails.
pub struct FlywheelProcess(pub std::process::Child, pub Option<ChildLog>);

/// A child's stderr in a file of its own, printed if the test panics.
pub struct ChildLog {
    // Declared before the directory: fields drop in order, the log is read first.
    _show: ShowLogOnPanic,
    _dir: tempfile::TempDir,
}

impl FlywheelProcess {
    pub fn spawn(args: &[&std::ffi::OsStr], envs: &[(&str, &str)]) -> FlywheelProcess {
        let dir = tempfile::tempdir().expect("a directory for the child's log");
        let log = dir.path().join("flywheel.log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_flywheel"))
            .args(args)
            .env("FLYWHEEL_METRICS__LISTEN", "")
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the child's log file"))
            .spawn()
            .expect("spawning flywheel");
        FlywheelProcess(
            child,
            Some(ChildLog {
                _show: ShowLogOnPanic(log),
                _dir: dir,
            }),
        )
    }

    /// The source of `config`'s ERP and Kafka; `envs` override settings.
    pub fn source(config: &Config, envs: &[(&str, &str)]) -> FlywheelProcess {
        let server_id = config.erp.server_id.to_string();
        let mut all: Vec<(&str, &str)> = vec![
            ("FLYWHEEL_ERP__DSN", &config.erp.dsn),
            ("FLYWHEEL_ERP__SLOT", &config.erp.slot),
            ("FLYWHEEL_ERP__SERVER_ID", &server_id),
            ("FLYWHEEL_ERP__STATE_DATABASE", &config.erp.state_database),
            ("FLYWHEEL_ERP__STATUS_INTERVAL_MS", "100"),
            ("FLYWHEEL_KAFKA__BOOTSTRAP", &config.kafka.bootstrap),
            ("FLYWHEEL_KAFKA__TOPIC_PREFIX", &config.kafka.topic_prefix),
            ("FLYWHEEL_KAFKA__PARTITIONS", "3"),
        ];
        all.extend_from_slice(envs);
        FlywheelProcess::spawn(&["source".as_ref()], &all)
    }

    pub fn kill_9(&mut self) {
        self.0.kill().expect("kill -9");
        self.0.wait().expect("reaping the killed process");
    }
}

impl Drop for FlywheelProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SKU → (regular, sale) a WooCommerce shop on the ERP's Wholesale list
/// (price list 2) should show: the list price as the regular price, the
/// Wholesale price as the sale; other SKUs keep what the shop had (`before`).
pub async fn wholesale_view(
    env: &TestEnv,
    before: &std::collections::BTreeMap<String, (String, String)>,
) -> std::collections::BTreeMap<String, (String, String)> {
    let mut want = before.clone();
    for r in env
        .erp
        .query(
            "SELECT p.default_code, i.fixed_price::text, t.list_price::text
             FROM product_pricelist_item i
             JOIN product_product p ON p.id = i.product_id
             JOIN product_template t ON t.id = p.product_tmpl_id
             WHERE i.pricelist_id = 2 AND p.default_code IS NOT NULL",
            &[],
        )
        .await
        .expect("reading Wholesale")
    {
        let (sku, fixed, list): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        if want.contains_key(&sku) {
            want.insert(sku, (list, fixed));
        }
    }
    want
}

/// The catalogue mapping's contract, on whatever backend `state` is: entries
/// are per shop, an older entry never replaces a newer one, a product's
/// webhook takes its SKUs no longer on it away (unless a newer entry moved
/// them), a deleted product's SKUs read as unknown, and the export mark is
/// kept.
pub async fn check_catalogue_mapping(state: &mut flywheel::sync::state::StateDb) {
    use flywheel::sync::state::CatalogEntry;
    let entry = |sku: &str, variant: &str, product: &str| CatalogEntry {
        sku: sku.into(),
        variant: variant.into(),
        product: product.into(),
        inventory_item: format!("item-{variant}"),
    };
    let skus: Vec<String> = ["SKU-a", "SKU-b", "SKU-c", "sku-a"]
        .map(String::from)
        .to_vec();
    let mapped = |entries: Vec<CatalogEntry>| {
        let mut m: Vec<(String, String)> =
            entries.into_iter().map(|e| (e.sku, e.variant)).collect();
        m.sort();
        m
    };
    let pair = |s: &str, v: &str| (s.to_owned(), v.to_owned());
    assert!(!state.catalog_exported("shop").await.expect("exported"));
    state
        .store_catalog(
            "shop",
            100,
            &[
                entry("SKU-a", "1", "10"),
                entry("SKU-b", "2", "10"),
                entry("SKU-c", "3", "30"),
                // Shopify does not make SKUs unique: the first one stays.
                entry("SKU-c", "4", "40"),
            ],
        )
        .await
        .expect("storing");
    state.mark_catalog_exported("shop").await.expect("marking");
    assert!(state.catalog_exported("shop").await.expect("exported"));
    assert!(!state.catalog_exported("other").await.expect("exported"));
    // An older lookup does not replace what a newer read said.
    state
        .store_catalog("shop", 50, &[entry("SKU-a", "9", "90")])
        .await
        .expect("storing an older entry");
    assert_eq!(
        mapped(state.load_catalog("shop", &skus).await.expect("loading")),
        [pair("SKU-a", "1"), pair("SKU-b", "2"), pair("SKU-c", "3")],
        "keys differing only in case are different SKUs"
    );
    assert!(
        state
            .load_catalog("other", &skus)
            .await
            .expect("loading")
            .is_empty()
    );
    // Product 10 now has SKU-a only: SKU-b is gone. An older webhook of it
    // (a replay) brings nothing back.
    state
        .store_product("shop", "10", 200, &[entry("SKU-a", "1", "10")])
        .await
        .expect("a product update");
    state
        .store_product(
            "shop",
            "10",
            150,
            &[entry("SKU-a", "1", "10"), entry("SKU-b", "2", "10")],
        )
        .await
        .expect("a replayed older product update");
    // SKU-c moved to product 50 (newer); product 30's deletion, older than
    // that, leaves it where it is.
    state
        .store_product("shop", "50", 300, &[entry("SKU-c", "5", "50")])
        .await
        .expect("a product update");
    state
        .store_product("shop", "30", 250, &[])
        .await
        .expect("a product deletion");
    assert_eq!(
        mapped(state.load_catalog("shop", &skus).await.expect("loading")),
        [pair("SKU-a", "1"), pair("SKU-c", "5")]
    );
    // A write found SKU-a's item gone; an entry stored after that stays.
    state
        .forget_catalog("shop", 500, &["SKU-a".to_owned()])
        .await
        .expect("forgetting");
    assert!(
        state
            .load_catalog("shop", &skus)
            .await
            .expect("loading")
            .iter()
            .all(|e| e.sku != "SKU-a")
    );
    state
        .store_catalog("shop", 600, &[entry("SKU-a", "6", "60")])
        .await
        .expect("storing the variant looked up anew");
    state
        .forget_catalog("shop", 550, &["SKU-a".to_owned()])
        .await
        .expect("forgetting with an older version");
    // Deleting product 50 after that takes SKU-c away.
    state
        .store_product("shop", "50", 400, &[])
        .await
        .expect("a product deletion");
    assert_eq!(
        mapped(state.load_catalog("shop", &skus).await.expect("loading")),
        [pair("SKU-a", "6")]
    );
}

/// Every page of `feed`'s listing of the orders changed since `since`, and
/// how many pages it took.
#[allow(dead_code)]
pub async fn read_listing<F: flywheel::shop::order_poll::OrderFeed>(
    feed: &mut F,
    since: chrono::DateTime<chrono::Utc>,
) -> (Vec<serde_json::Value>, usize) {
    let mut listing = feed.changed_since(since);
    let (mut orders, mut pages) = (Vec::new(), 0);
    while let Some(page) = feed.next_page(&mut listing).await.expect("a page") {
        orders.extend(page);
        pages += 1;
    }
    (orders, pages)
}

/// Runs `flywheel trace <entity> <key> --format json`; returns its exit
/// status and story.
#[allow(dead_code)]
pub async fn trace(config: &Config, entity: &str, key: &str) -> (i32, serde_json::Value) {
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("flywheel.toml");
    std::fs::write(&file, toml::to_string(config).expect("TOML")).expect("writing");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .arg("--config")
        .arg(&file)
        .args(["trace", entity, key, "--format", "json"])
        .env("FLYWHEEL_METRICS__LISTEN", "")
        .output()
        .await
        .expect("running flywheel trace");
    let code = out.status.code().expect("an exit status");
    let story = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "trace printed no JSON ({e}), exit {code}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, story)
}
