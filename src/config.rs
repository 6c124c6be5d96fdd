//! One typed configuration: defaults, then a TOML file, then `FLYWHEEL_*`
//! environment variables (`FLYWHEEL_ERP__DSN` sets `erp.dsn`). Validated at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub erp: ErpConfig,
    pub kafka: KafkaConfig,
    /// The shops kept in sync (`[[shops]]`): the gateway accepts their
    /// webhooks, the processors write to them, each at its own pace.
    pub shops: Vec<ShopConfig>,
    pub gateway: GatewayConfig,
    pub processors: ProcessorsConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub lifecycle: LifecycleConfig,
    pub reconcile: ReconcileConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            erp: ErpConfig::default(),
            kafka: KafkaConfig::default(),
            shops: vec![ShopConfig::local_default()],
            gateway: GatewayConfig::default(),
            processors: ProcessorsConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            lifecycle: LifecycleConfig::default(),
            reconcile: ReconcileConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    /// After SIGTERM/SIGINT, how long the roles get to finish in-flight work,
    /// commit and confirm before the process gives up and exits 1.
    pub shutdown_timeout_secs: u64,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            shutdown_timeout_secs: 30,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ErpConfig {
    /// The ERP's database kind. Unset: `mysql` for a `mysql://` or
    /// `mariadb://` DSN, `postgres` otherwise.
    pub kind: Option<ErpKind>,
    /// PostgreSQL: a libpq-style DSN (`host=… port=… user=… dbname=…` or
    /// `postgres://…`); the user needs the REPLICATION attribute and SELECT on
    /// the connector's tables. MariaDB/MySQL: `mysql://user:password@host:port/db`
    /// (or `mariadb://…`); the user needs REPLICATION SLAVE, REPLICATION CLIENT
    /// and SELECT on the connector's tables.
    pub dsn: String,
    /// A PEM file of the CA(s) that signed the PostgreSQL servers'
    /// certificates (ERP and state database). Set: certificates are verified
    /// (libpq's verify-full). Unset: TLS as the DSN's `sslmode` asks
    /// (`prefer` by default), encrypted but unverified, as libpq does.
    pub tls_ca_file: Option<PathBuf>,
    /// Connector file, or a built-in connector's name (`odoo`, `erpnext`);
    /// unset: `odoo` on PostgreSQL, `erpnext` on MariaDB/MySQL.
    pub connector: Option<PathBuf>,
    /// Logical replication slot Flywheel owns (created when missing).
    pub slot: String,
    /// Publication over the connector's trigger tables (created when missing).
    pub publication: String,
    /// How often to report the confirmed position to PostgreSQL.
    pub status_interval_ms: u64,
    /// Emit a heartbeat message this often so the slot advances while the
    /// published tables are idle; 0 disables it.
    pub heartbeat_interval_ms: u64,
    /// Keys per model query (snapshot and streaming).
    pub batch_keys: usize,
    /// Upper bound of transactions merged into one re-read under load.
    pub max_batch_transactions: usize,
    /// Connections the streaming source runs the connector's key and model
    /// queries on, in turn (PostgreSQL and MariaDB/MySQL). Under load those
    /// queries are most of the capture's time, and one connection is one
    /// server process (PostgreSQL) or thread (MariaDB), one core at most.
    /// Three, not two: on the 2-core bench machine a third connection keeps
    /// the server busy while the others wait for their round trips (capture
    /// 2.1-2.3x -> 1.9-2.0x `pg_recvlogical`).
    pub query_connections: usize,
    /// MariaDB/MySQL: the server id Flywheel registers as a replica with. It
    /// must differ from the server's and from every other replica's.
    pub server_id: u32,
    /// MariaDB/MySQL: the database holding Flywheel's own state (source
    /// position, echo marks), on the ERP's server.
    pub state_database: String,
}

/// Which kind of database the ERP runs on; it selects the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErpKind {
    Postgres,
    Mysql,
}

impl Default for ErpConfig {
    fn default() -> Self {
        ErpConfig {
            kind: None,
            dsn: "host=127.0.0.1 port=5432 user=postgres dbname=erp".into(),
            tls_ca_file: None,
            connector: None,
            slot: "flywheel".into(),
            publication: "flywheel".into(),
            status_interval_ms: 1_000,
            heartbeat_interval_ms: 10_000,
            batch_keys: 1_000,
            max_batch_transactions: 500,
            query_connections: 3,
            server_id: 4_171_001,
            state_database: "flywheel".into(),
        }
    }
}

/// A PostgreSQL DSN, with the setting named when it does not parse.
fn parse_dsn(setting: &str, dsn: &str) -> Result<tokio_postgres::Config, ConfigError> {
    dsn.parse()
        .map_err(|e| ConfigError::Invalid(format!("{setting}: {e}")))
}

impl ErpConfig {
    pub fn kind(&self) -> ErpKind {
        self.kind.unwrap_or_else(|| {
            if crate::mysql::is_mysql_dsn(&self.dsn) {
                ErpKind::Mysql
            } else {
                ErpKind::Postgres
            }
        })
    }

    /// Connection options of a MariaDB/MySQL ERP (`erp.kind = "mysql"`).
    pub fn mysql_opts(&self) -> Result<mysql_async::Opts, ConfigError> {
        crate::mysql::opts("erp.dsn", &self.dsn).map_err(ConfigError::Invalid)
    }

    pub fn pg_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        parse_dsn("erp.dsn", &self.dsn)
    }

    /// TLS for every PostgreSQL connection (ERP and state database).
    pub fn tls(&self) -> Result<crate::pg::tls::PgTls, ConfigError> {
        crate::pg::tls::PgTls::new(self.tls_ca_file.as_deref())
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    pub fn status_interval(&self) -> Duration {
        Duration::from_millis(self.status_interval_ms.max(10))
    }

    pub fn heartbeat_interval(&self) -> Option<Duration> {
        (self.heartbeat_interval_ms > 0).then(|| Duration::from_millis(self.heartbeat_interval_ms))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap: String,
    /// Partitions of the topics Flywheel creates.
    pub partitions: i32,
    pub replication_factor: i32,
    pub client_id: String,
    /// Prepended to every topic name (e.g. `staging.`), to share one cluster
    /// between environments or merchants.
    pub topic_prefix: String,
    /// How long the producer retries one record before reporting it failed.
    pub message_timeout_ms: u64,
    /// The processors' `fetch.wait.max.ms`. Apache Kafka answers a fetch as
    /// soon as records arrive, so this only bounds an idle consumer's wait:
    /// librdkafka's 500 costs no latency there, where 10 made every idle
    /// consumer send 100 fetches a second per broker. The development broker
    /// (tansu 0.6) answers only after sleeping on it, records or not, so
    /// whoever starts one sets it small (`LocalBroker::configure`).
    pub fetch_wait_max_ms: u64,
    /// Entity (state) topics are created with `cleanup.policy=compact`, and
    /// existing ones without it are reported.
    pub compact_state_topics: bool,
    /// `min.compaction.lag.ms` of the state topics: every version stays at
    /// least this long before compaction may drop it for a newer one.
    pub min_compaction_lag_ms: u64,
    /// `retention.ms` of the event topics (raw webhooks, dead letters), and of
    /// the state topics when `compact_state_topics` is off.
    pub event_retention_ms: i64,
    /// How the clients talk to the brokers.
    pub security_protocol: SecurityProtocol,
    /// SASL mechanism (with `sasl_plaintext` / `sasl_ssl`).
    pub sasl_mechanism: SaslMechanism,
    pub sasl_username: String,
    /// Also `FLYWHEEL_KAFKA__SASL_PASSWORD`; never logged.
    pub sasl_password: Secret,
    /// PEM file of the certificate authorities that signed the brokers'
    /// certificates (with `ssl` / `sasl_ssl`); the system's when unset.
    pub ssl_ca_file: Option<PathBuf>,
    /// Client certificate and its key (PEM), for brokers that require one.
    pub ssl_certificate_file: Option<PathBuf>,
    pub ssl_key_file: Option<PathBuf>,
    /// Any other librdkafka property, passed to every client as is (the
    /// escape hatch: `socket.keepalive.enable`, `ssl.endpoint.identification.algorithm`,
    /// `sasl.oauthbearer.*`, ...). Properties Flywheel sets from the settings
    /// above, or relies on for its guarantees, are refused here.
    pub librdkafka: std::collections::BTreeMap<String, String>,
}

/// librdkafka's `security.protocol`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// librdkafka's `sasl.mechanism`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// librdkafka properties the `[kafka]` settings own (set them there), or
/// that Flywheel's guarantees rest on (manual commits after applying, the
/// idempotent producer acknowledged by all replicas).
pub const OWNED_LIBRDKAFKA_PROPERTIES: [(&str, &str); 13] = [
    ("bootstrap.servers", "kafka.bootstrap"),
    ("client.id", "kafka.client_id"),
    ("security.protocol", "kafka.security_protocol"),
    ("sasl.mechanism", "kafka.sasl_mechanism"),
    ("sasl.mechanisms", "kafka.sasl_mechanism"),
    ("sasl.username", "kafka.sasl_username"),
    ("sasl.password", "kafka.sasl_password"),
    ("ssl.ca.location", "kafka.ssl_ca_file"),
    ("ssl.certificate.location", "kafka.ssl_certificate_file"),
    ("ssl.key.location", "kafka.ssl_key_file"),
    (
        "enable.auto.commit",
        "nothing: processors commit after applying",
    ),
    ("fetch.wait.max.ms", "kafka.fetch_wait_max_ms"),
    (
        "enable.idempotence",
        "nothing: the producer is always idempotent",
    ),
];

impl KafkaConfig {
    /// Settings that cannot work together, named, before any client is built.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.bootstrap.trim().is_empty() {
            return bad("kafka.bootstrap is empty: give host:port of one or more brokers".into());
        }
        let sasl = self.security_protocol.uses_sasl();
        if sasl && (self.sasl_username.is_empty() || self.sasl_password.0.is_empty()) {
            return bad(format!(
                "kafka.security_protocol = \"{}\" needs kafka.sasl_username and kafka.sasl_password (or FLYWHEEL_KAFKA__SASL_PASSWORD)",
                self.security_protocol.as_str()
            ));
        }
        if !sasl && !self.sasl_username.is_empty() {
            return bad(format!(
                "kafka.sasl_username is set but kafka.security_protocol = \"{}\" does not use SASL: use sasl_ssl or sasl_plaintext",
                self.security_protocol.as_str()
            ));
        }
        let files = [
            ("kafka.ssl_ca_file", &self.ssl_ca_file),
            ("kafka.ssl_certificate_file", &self.ssl_certificate_file),
            ("kafka.ssl_key_file", &self.ssl_key_file),
        ];
        for (name, file) in files {
            let Some(file) = file else { continue };
            if !self.security_protocol.uses_tls() {
                return bad(format!(
                    "{name} is set but kafka.security_protocol = \"{}\" does not use TLS: use ssl or sasl_ssl",
                    self.security_protocol.as_str()
                ));
            }
            if let Err(e) = std::fs::metadata(file) {
                return bad(format!("{name} = {}: {e}", file.display()));
            }
        }
        if self.ssl_certificate_file.is_some() != self.ssl_key_file.is_some() {
            return bad(
                "kafka.ssl_certificate_file and kafka.ssl_key_file go together (a client certificate and its key)".into(),
            );
        }
        for key in self.librdkafka.keys() {
            if let Some((_, instead)) = OWNED_LIBRDKAFKA_PROPERTIES.iter().find(|(k, _)| k == key) {
                return bad(format!(
                    "kafka.librdkafka.\"{key}\" cannot be set there; set {instead}"
                ));
            }
        }
        Ok(())
    }

    /// The physical name of a logical topic.
    pub fn topic(&self, logical: &str) -> String {
        format!("{}{logical}", self.topic_prefix)
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap: "127.0.0.1:9092".into(),
            partitions: 6,
            replication_factor: 1,
            client_id: "flywheel".into(),
            topic_prefix: String::new(),
            message_timeout_ms: 30_000,
            fetch_wait_max_ms: 500,
            compact_state_topics: true,
            min_compaction_lag_ms: 3_600_000,
            event_retention_ms: 7 * 24 * 3_600_000,
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: SaslMechanism::ScramSha512,
            sasl_username: String::new(),
            sasl_password: Secret::default(),
            ssl_ca_file: None,
            ssl_certificate_file: None,
            ssl_key_file: None,
            librdkafka: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where the webhook gateway listens.
    pub listen: String,
    /// Larger request bodies are refused with 413.
    pub body_limit_bytes: usize,
    /// Answer 503 when Kafka has not acknowledged by then. Shopify waits 5 s.
    pub ack_deadline_ms: u64,
    /// Redeliveries of a webhook id within this window are answered 200 and not produced again.
    pub dedupe_window_secs: u64,
    /// File remembering delivered webhook ids across restarts.
    pub dedupe_path: PathBuf,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "127.0.0.1:8080".into(),
            body_limit_bytes: 1024 * 1024,
            ack_deadline_ms: 3_000,
            dedupe_window_secs: 24 * 3600,
            dedupe_path: PathBuf::from("flywheel-gateway-seen.log"),
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Shopify,
    Woocommerce,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Shopify => "shopify",
            Platform::Woocommerce => "woocommerce",
        }
    }
}

/// One shop (`[[shops]]`): where its webhooks come in, how the processors
/// reach it, and what of the ERP it gets.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShopConfig {
    /// The `{shop}` in the webhook URL, the channel of its orders, and part of
    /// its processors' consumer groups: letters, digits, `_` and `-`.
    pub name: String,
    pub platform: Platform,
    /// Webhook signing secrets; several at once to rotate without downtime.
    /// None: the gateway does not accept this shop's webhooks.
    #[serde(default)]
    pub webhook_secrets: Vec<Secret>,
    /// Shopify: the Admin GraphQL endpoint
    /// (`https://<shop>.myshopify.com/admin/api/2026-04/graphql.json`).
    /// WooCommerce: the REST API base (`https://<site>/wp-json/wc/v3`).
    /// Empty: no processor writes to this shop (webhooks only).
    #[serde(default)]
    pub admin_url: String,
    /// Shopify: the Admin API access token.
    #[serde(default)]
    pub access_token: Secret,
    /// WooCommerce: the REST API key pair (basic auth over HTTPS).
    #[serde(default)]
    pub consumer_key: Secret,
    #[serde(default)]
    pub consumer_secret: Secret,
    /// WooCommerce: requests per second to the shop, on average, and the
    /// burst allowed above it (a WordPress host has no published limit; the
    /// defaults are gentle).
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: f64,
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// How often the shop's changed orders are polled (`shop::order_poll`):
    /// the net under webhooks that get lost (WooCommerce never retries one).
    #[serde(default = "default_order_poll_secs")]
    pub order_poll_secs: u64,
    /// A PEM file of certificate authorities to trust for the shop's HTTPS
    /// besides the system's (a private CA, a TLS-inspecting proxy).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The ERP price list whose prices this shop shows (`list` = list price).
    #[serde(default = "default_price_list")]
    pub price_list: String,
    /// The shop's currency; prices in other currencies are not applied.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Units kept back from the shop: sellable = max(0, available − safety_stock).
    #[serde(default)]
    pub safety_stock: i64,
    /// ERP warehouse code → shop location name; a warehouse not listed maps to
    /// the location of the same name.
    #[serde(default)]
    pub warehouse_locations: std::collections::BTreeMap<String, String>,
}

fn default_requests_per_second() -> f64 {
    5.0
}

fn default_burst() -> u32 {
    10
}

fn default_order_poll_secs() -> u64 {
    60
}

fn default_price_list() -> String {
    "list".into()
}

fn default_currency() -> String {
    "EUR".into()
}

/// Longest shop name: the name is part of its processors' names
/// (`shop_inventory.<shop>`, `price.<shop>#sent`), which the MariaDB/MySQL
/// state tables keep in 64 characters.
pub const MAX_SHOP_NAME: usize = 40;

impl ShopConfig {
    /// The shop a configuration without `[[shops]]` talks to: the shop
    /// simulator `flywheel demo` starts on its default port.
    pub fn local_default() -> ShopConfig {
        ShopConfig {
            name: "demo".into(),
            platform: Platform::Shopify,
            webhook_secrets: Vec::new(),
            admin_url: "http://127.0.0.1:8089/admin/api/2026-04/graphql.json".into(),
            access_token: Secret("shpat_flywheel_local".into()),
            consumer_key: Secret::default(),
            consumer_secret: Secret::default(),
            requests_per_second: default_requests_per_second(),
            burst: default_burst(),
            order_poll_secs: default_order_poll_secs(),
            ca_file: None,
            price_list: default_price_list(),
            currency: default_currency(),
            safety_stock: 0,
            warehouse_locations: Default::default(),
        }
    }

    /// The name of the shop location an ERP warehouse's stock goes to.
    pub fn location_name(&self, warehouse: &str) -> String {
        self.warehouse_locations
            .get(warehouse)
            .cloned()
            .unwrap_or_else(|| warehouse.to_owned())
    }

    /// The shop's webhook secrets, as the signature check takes them.
    pub fn secrets(&self) -> Vec<String> {
        self.webhook_secrets.iter().map(|s| s.0.clone()).collect()
    }
}

impl std::fmt::Debug for ShopConfig {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShopConfig")
            .field("name", &self.name)
            .field("platform", &self.platform)
            .field(
                "webhook_secrets",
                &format_args!("[{} redacted]", self.webhook_secrets.len()),
            )
            .field("admin_url", &self.admin_url)
            .field("access_token", &self.access_token)
            .field("consumer_key", &self.consumer_key)
            .field("consumer_secret", &self.consumer_secret)
            .field("requests_per_second", &self.requests_per_second)
            .field("burst", &self.burst)
            .field("order_poll_secs", &self.order_poll_secs)
            .field("price_list", &self.price_list)
            .field("currency", &self.currency)
            .field("safety_stock", &self.safety_stock)
            .field("warehouse_locations", &self.warehouse_locations)
            .finish()
    }
}

/// A secret string: serialised as-is, never shown by Debug.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessorsConfig {
    /// Kafka consumer group of the processors: more workers, more partitions.
    pub group_id: String,
    /// Where the processors keep their state (applied versions, partition
    /// leases, levels written): a PostgreSQL DSN or a `mysql://` URL; the
    /// ERP's server when unset.
    pub state_dsn: Option<String>,
    /// Most events applied together (and quantities per inventory call, ≤ 250).
    pub batch_max: usize,
    /// How long to wait for more events after a batch's first; 0: none — a
    /// batch is what has already arrived. Batching then comes from load, not
    /// from waiting: while a batch is applied (or waits for the shop's
    /// budget) the next events queue and form the next, larger batch.
    pub batch_wait_ms: u64,
    /// Where a consumer group without committed offsets starts: `earliest`
    /// (everything the topics hold) or `latest` (only what comes next, e.g. for
    /// a shop already in sync).
    pub new_group_start: GroupStart,
    /// This worker's name where operators see it: the state database's
    /// `application_name` of the sessions holding its partition leases, and
    /// `flywheel replay`'s refusal while they are held. The host name when unset.
    pub instance_id: String,
    /// A processor whose group has records waiting but whose committed
    /// offsets have not moved for this long is stalled: not ready, logged,
    /// `flywheel_processor_stalled` = 1.
    pub stall_timeout_secs: u64,
}

/// The processors' state database (see `ProcessorsConfig::state_location`).
#[derive(Clone, Debug)]
pub enum StateLocation {
    /// A PostgreSQL DSN; the tables live in its `flywheel` schema.
    Postgres(String),
    /// A MariaDB/MySQL server; the tables live in `database`.
    Mysql {
        opts: mysql_async::Opts,
        database: String,
    },
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GroupStart {
    #[default]
    Earliest,
    Latest,
}

impl GroupStart {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupStart::Earliest => "earliest",
            GroupStart::Latest => "latest",
        }
    }
}

impl ProcessorsConfig {
    /// Where the processors keep their state: `state_dsn` (PostgreSQL, or
    /// MariaDB/MySQL for a `mysql://` / `mariadb://` URL, in the URL's
    /// database or `flywheel`), else the ERP's server (PostgreSQL: the ERP
    /// database's `flywheel` schema; MariaDB/MySQL: `erp.state_database`).
    pub fn state_location(&self, erp: &ErpConfig) -> Result<StateLocation, ConfigError> {
        match &self.state_dsn {
            Some(dsn) if crate::mysql::is_mysql_dsn(dsn) => {
                let opts = crate::mysql::opts("processors.state_dsn", dsn)
                    .map_err(ConfigError::Invalid)?;
                let database = opts.db_name().unwrap_or("flywheel").to_owned();
                Ok(StateLocation::Mysql { opts, database })
            }
            Some(dsn) => {
                parse_dsn("processors.state_dsn", dsn)?;
                Ok(StateLocation::Postgres(dsn.clone()))
            }
            None => match erp.kind() {
                ErpKind::Postgres => Ok(StateLocation::Postgres(erp.dsn.clone())),
                ErpKind::Mysql => Ok(StateLocation::Mysql {
                    opts: erp.mysql_opts()?,
                    database: erp.state_database.clone(),
                }),
            },
        }
    }

    /// `instance_id`, or the host name when unset.
    pub fn instance(&self) -> String {
        if !self.instance_id.is_empty() {
            return self.instance_id.clone();
        }
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "flywheel".into())
    }

    pub fn stall_timeout(&self) -> Duration {
        Duration::from_secs(self.stall_timeout_secs)
    }
}

impl Default for ProcessorsConfig {
    fn default() -> Self {
        ProcessorsConfig {
            group_id: "flywheel-processors".into(),
            state_dsn: None,
            batch_max: 250,
            batch_wait_ms: 0,
            new_group_start: GroupStart::Earliest,
            instance_id: String::new(),
            stall_timeout_secs: 120,
        }
    }
}

/// Continuous reconciliation in the processors role (`reconcile::continuous`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Seconds between two comparisons of a shop with the ERP; 0: never.
    pub interval_secs: u64,
    /// The share of each shop's API rate budget a comparison may use, so it
    /// never competes with live changes: (0, 1].
    pub budget_share: f64,
    /// Repair the drift found (through the processors, version-guarded);
    /// off: report it only (`flywheel_drift_keys`, a log line per key).
    pub auto_repair: bool,
    /// How far back the order safety net looks for shop orders the ERP
    /// lacks: the processors' poll on start, and `flywheel reconcile
    /// --entity orders`. Longer than any outage you want covered.
    pub orders_lookback_secs: u64,
    /// A Shopify shop compared on this many keys or more is read whole with
    /// one bulk query (a few cost points, outside the rate budget) instead of
    /// page by page (about 4 points a level); 0: always in bulk. A bulk read
    /// also lists the shop's SKUs the ERP lacks.
    pub bulk_above_keys: usize,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            interval_secs: 900,
            budget_share: 0.1,
            auto_repair: false,
            orders_lookback_secs: 24 * 3600,
            bulk_above_keys: 1000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `/metrics` is served; empty disables it.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl MetricsConfig {
    pub fn addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen
            .parse()
            .map(Some)
            .map_err(|e| ConfigError::Invalid(format!("metrics.listen `{}`: {e}", self.listen)))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `flywheel=debug,rdkafka=warn`;
    /// `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

/// The settings of the one-shop configuration, before `[[shops]]`.
const ONE_SHOP_SETTINGS: [&str; 9] = [
    "processors.shop_graphql_url",
    "processors.shop_access_token",
    "processors.shop_ca_file",
    "processors.shop_channel",
    "processors.shop_price_list",
    "processors.shop_currency",
    "processors.safety_stock",
    "processors.warehouse_locations",
    "gateway.shops",
];

/// Refuses a configuration written for one shop, showing the new form.
fn refuse_one_shop_settings(fig: &Figment) -> Result<(), ConfigError> {
    let found: Vec<&str> = ONE_SHOP_SETTINGS
        .into_iter()
        .filter(|key| fig.find_value(key).is_ok())
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    Err(ConfigError::Invalid(format!(
        "{} belong to a shop now: describe each shop in a [[shops]] entry, used by the gateway \
         and the processors alike, e.g.\n\n\
         [[shops]]\n\
         name = \"main-shop\"            # was processors.shop_channel / gateway.shops.name\n\
         platform = \"shopify\"\n\
         webhook_secrets = [\"…\"]       # was gateway.shops.secrets\n\
         admin_url = \"https://main-shop.myshopify.com/admin/api/2026-04/graphql.json\"  # was processors.shop_graphql_url\n\
         access_token = \"shpat_…\"      # was processors.shop_access_token\n\
         price_list = \"list\"           # was processors.shop_price_list\n\
         currency = \"EUR\"              # was processors.shop_currency\n\
         safety_stock = 2\n\
         warehouse_locations = {{ WH1 = \"Main warehouse\" }}\n\n\
         (from the environment: FLYWHEEL_SHOPS='[{{name=\"main-shop\", platform=\"shopify\", …}}]')",
        found.join(", ")
    )))
}

impl Config {
    /// Defaults, then `file` (if given), then `FLYWHEEL_<SECTION>__<KEY>`
    /// environment variables. Every setting lives in a section, so a
    /// `FLYWHEEL_*` variable without `__` is not a setting but one of the
    /// program's own (`FLYWHEEL_CONFIG`, `FLYWHEEL_BIN`, `FLYWHEEL_PG_BINDIR`)
    /// and is left out rather than refused as an unknown field. The one
    /// top-level list, `FLYWHEEL_SHOPS`, is the exception.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_path_buf()));
            }
            fig = fig.merge(Toml::file(path));
        }
        let fig = fig.merge(
            Env::prefixed("FLYWHEEL_")
                .filter(|key| {
                    key.as_str().contains("__") || key.as_str().eq_ignore_ascii_case("shops")
                })
                .split("__"),
        );
        refuse_one_shop_settings(&fig)?;
        let config: Config = fig
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate_shops(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::BTreeSet::new();
        for shop in &self.shops {
            if shop.name.is_empty()
                || !shop
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
            {
                return Err(ConfigError::Invalid(format!(
                    "shop name `{}`: use letters, digits, '_' and '-' (it is a URL segment and part of consumer group names)",
                    shop.name
                )));
            }
            if shop.name.len() > MAX_SHOP_NAME {
                return Err(ConfigError::Invalid(format!(
                    "shop name `{}` is {} characters long: use at most {MAX_SHOP_NAME} (it names the shop's processors and their state, whose columns hold 64)",
                    shop.name,
                    shop.name.len()
                )));
            }
            if !names.insert(shop.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "two [[shops]] are named `{}`: each needs a name of its own",
                    shop.name
                )));
            }
            if shop.webhook_secrets.iter().any(|s| s.0.is_empty()) {
                return Err(ConfigError::Invalid(format!(
                    "shop `{}` has an empty webhook secret: webhooks could not be verified",
                    shop.name
                )));
            }
            if shop.platform == Platform::Shopify && shop.admin_url.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "shop `{}` has no admin_url: set it to the shop's Admin GraphQL endpoint",
                    shop.name
                )));
            }
            if shop.platform == Platform::Woocommerce
                && !shop.admin_url.is_empty()
                && (shop.consumer_key.0.is_empty() || shop.consumer_secret.0.is_empty())
            {
                return Err(ConfigError::Invalid(format!(
                    "shop `{}` has an admin_url but no consumer_key / consumer_secret: create a REST API key (WooCommerce → Settings → Advanced → REST API, read/write) and set both",
                    shop.name
                )));
            }
            if shop.platform == Platform::Shopify {
                let mut by_location = std::collections::BTreeMap::new();
                for (warehouse, location) in &shop.warehouse_locations {
                    if let Some(first) = by_location.insert(location, warehouse) {
                        return Err(ConfigError::Invalid(format!(
                            "shop `{}`: warehouses `{first}` and `{warehouse}` both map to location `{location}`; a Shopify location holds one quantity per item, so each would overwrite the other's: map each warehouse to a location of its own",
                            shop.name
                        )));
                    }
                }
            }
            if !shop.requests_per_second.is_finite()
                || shop.requests_per_second <= 0.0
                || shop.burst == 0
            {
                return Err(ConfigError::Invalid(format!(
                    "shop `{}`: requests_per_second, burst and order_poll_secs must be above 0",
                    shop.name
                )));
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.erp.kind() {
            ErpKind::Postgres => drop(self.erp.pg_config()?),
            ErpKind::Mysql => {
                let opts = self.erp.mysql_opts()?;
                if opts.db_name().is_none() {
                    return Err(ConfigError::Invalid(
                        "erp.dsn names no database: mysql://user:password@host:port/<database>"
                            .into(),
                    ));
                }
                if self.erp.server_id == 0 {
                    return Err(ConfigError::Invalid(
                        "erp.server_id must not be 0: a replica needs an id of its own".into(),
                    ));
                }
            }
        }
        self.kafka.validate()?;
        self.processors.state_location(&self.erp)?;
        self.erp.tls()?;
        self.metrics.addr()?;
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.kafka.partitions < 1 {
            return bad("kafka.partitions must be at least 1");
        }
        if self.kafka.replication_factor < 1 {
            return bad("kafka.replication_factor must be at least 1");
        }
        self.validate_shops()?;
        if self.gateway.ack_deadline_ms >= 5_000 {
            return bad("gateway.ack_deadline_ms must stay under Shopify's 5 s webhook timeout");
        }
        if !(1..=250).contains(&self.processors.batch_max) {
            return bad(
                "processors.batch_max must be between 1 and 250 (Shopify's limit per call)",
            );
        }
        if self.processors.stall_timeout_secs == 0 {
            return bad("processors.stall_timeout_secs must be at least 1");
        }
        let share = self.reconcile.budget_share;
        if !(share > 0.0 && share <= 1.0) {
            return bad("reconcile.budget_share must be above 0 and at most 1");
        }
        if self
            .processors
            .instance_id
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
        {
            return bad(
                "processors.instance_id may contain only letters, digits, '.', '_' and '-'",
            );
        }
        if self.erp.batch_keys == 0
            || self.erp.max_batch_transactions == 0
            || self.erp.query_connections == 0
        {
            return bad(
                "erp.batch_keys, erp.max_batch_transactions and erp.query_connections must be at least 1",
            );
        }
        if self.erp.slot.is_empty()
            || !self
                .erp
                .slot
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return bad("erp.slot may contain only lower-case letters, digits and underscores");
        }
        Ok(())
    }
}

#[cfg(test)]
// figment's Jail returns figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn file_then_env_override() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "f.toml",
                "[erp]\nslot = \"from_file\"\n[kafka]\npartitions = 3\n",
            )?;
            jail.set_env("FLYWHEEL_KAFKA__PARTITIONS", "12");
            let c = Config::load(Some(Path::new("f.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.erp.slot, "from_file");
            assert_eq!(c.kafka.partitions, 12);
            assert_eq!(c.kafka.replication_factor, 1);
            Ok(())
        });
    }

    #[test]
    fn the_programs_own_variables_are_not_settings() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FLYWHEEL_PG_BINDIR", "/usr/lib/postgresql/15/bin");
            jail.set_env("FLYWHEEL_BIN", "/usr/local/bin/flywheel");
            jail.set_env("FLYWHEEL_REQUIRE_PROMTOOL", "1");
            jail.set_env("FLYWHEEL_ERP__SLOT", "from_env");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.erp.slot, "from_env");
            Ok(())
        });
    }

    #[test]
    fn rejects_bad_values_with_the_setting_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("f.toml", "[erp]\nslot = \"Bad-Slot\"\n")?;
            let err = Config::load(Some(Path::new("f.toml"))).unwrap_err();
            assert!(err.to_string().contains("erp.slot"), "{err}");
            jail.create_file("g.toml", "[erp]\nsloot = \"x\"\n")?;
            let err = Config::load(Some(Path::new("g.toml"))).unwrap_err();
            assert!(err.to_string().contains("sloot"), "{err}");
            jail.create_file("h.toml", "[processors]\nstate_dsn = \"host=db port=x\"\n")?;
            let err = Config::load(Some(Path::new("h.toml"))).unwrap_err();
            assert!(err.to_string().contains("processors.state_dsn"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_one_shop_configuration_is_refused_with_the_new_form() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "old.toml",
                "[processors]\nshop_graphql_url = \"https://x/graphql.json\"\nshop_channel = \"x\"\n\
                 [[gateway.shops]]\nname = \"x\"\nplatform = \"shopify\"\nsecrets = [\"s\"]\n",
            )?;
            let err = Config::load(Some(Path::new("old.toml")))
                .unwrap_err()
                .to_string();
            for named in [
                "processors.shop_graphql_url",
                "processors.shop_channel",
                "gateway.shops",
                "[[shops]]",
                "admin_url =",
            ] {
                assert!(err.contains(named), "{named} missing from: {err}");
            }
            jail.set_env("FLYWHEEL_PROCESSORS__SAFETY_STOCK", "2");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("processors.safety_stock"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn shops_come_from_the_environment_too() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "FLYWHEEL_SHOPS",
                r#"[{name="eu", platform="shopify", admin_url="http://eu/graphql.json", access_token="t", warehouse_locations={WH1="Berlin"}}]"#,
            );
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.shops.len(), 1);
            assert_eq!(c.shops[0].name, "eu");
            assert_eq!(c.shops[0].admin_url, "http://eu/graphql.json");
            assert_eq!(c.shops[0].warehouse_locations["WH1"], "Berlin");
            Ok(())
        });
    }

    #[test]
    fn shops_need_distinct_url_safe_names() {
        figment::Jail::expect_with(|jail| {
            let shop = |name: &str| {
                format!(
                    "[[shops]]\nname = \"{name}\"\nplatform = \"shopify\"\nadmin_url = \"http://x/\"\n"
                )
            };
            jail.create_file("two.toml", &format!("{}{}", shop("a"), shop("a")))?;
            let err = Config::load(Some(Path::new("two.toml"))).unwrap_err();
            assert!(
                err.to_string().contains("two [[shops]] are named `a`"),
                "{err}"
            );
            jail.create_file("long.toml", &shop(&"a".repeat(41)))?;
            let err = Config::load(Some(Path::new("long.toml"))).unwrap_err();
            assert!(err.to_string().contains("use at most 40"), "{err}");
            jail.create_file("slash.toml", &shop("a/b"))?;
            let err = Config::load(Some(Path::new("slash.toml"))).unwrap_err();
            assert!(err.to_string().contains("shop name `a/b`"), "{err}");
            jail.create_file("ok.toml", &format!("{}{}", shop("eu"), shop("us")))?;
            let c = Config::load(Some(Path::new("ok.toml"))).map_err(|e| e.to_string())?;
            let names: Vec<&str> = c.shops.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(
                names,
                ["eu", "us"],
                "the file's list replaces the default shop"
            );
            assert_eq!(c.shops[0].price_list, "list");
            Ok(())
        });
    }

    #[test]
    fn two_warehouses_cannot_share_a_shopify_location() {
        figment::Jail::expect_with(|jail| {
            let shop = |platform: &str| {
                format!(
                    "[[shops]]\nname = \"eu\"\nplatform = \"{platform}\"\nadmin_url = \"http://x/\"\n\
                     consumer_key = \"k\"\nconsumer_secret = \"s\"\n\
                     warehouse_locations = {{ WH1 = \"Berlin\", WH2 = \"Berlin\" }}\n"
                )
            };
            jail.create_file("shopify.toml", &shop("shopify"))?;
            let err = Config::load(Some(Path::new("shopify.toml"))).unwrap_err();
            assert!(
                err.to_string()
                    .contains("warehouses `WH1` and `WH2` both map to location `Berlin`"),
                "{err}"
            );
            // WooCommerce keeps one count per SKU: the listed warehouses are summed.
            jail.create_file("woo.toml", &shop("woocommerce"))?;
            Config::load(Some(Path::new("woo.toml"))).map_err(|e| e.to_string())?;
            Ok(())
        });
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod example_file {
    #[test]
    fn the_shipped_example_config_loads() {
        // In a jail: the other tests set FLYWHEEL_* variables in theirs.
        figment::Jail::expect_with(|_| {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/flywheel.example.toml");
            let c =
                super::Config::load(Some(std::path::Path::new(path))).map_err(|e| e.to_string())?;
            assert_eq!(c.kafka.replication_factor, 3);
            assert_eq!(c.shops.len(), 2);
            // Secrets never show in Debug output (and so never in logs).
            let shown = format!("{:?}", c.shops[0]);
            assert!(!shown.contains("current-app-secret"), "{shown}");
            assert!(!shown.contains("shpat_"), "{shown}");
            Ok(())
        });
    }
}
