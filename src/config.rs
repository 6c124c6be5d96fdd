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

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub erp: ErpConfig,
    pub kafka: KafkaConfig,
    pub gateway: GatewayConfig,
    pub processors: ProcessorsConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub lifecycle: LifecycleConfig,
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
            if self.dsn.starts_with("mysql://") || self.dsn.starts_with("mariadb://") {
                ErpKind::Mysql
            } else {
                ErpKind::Postgres
            }
        })
    }

    /// Connection options of a MariaDB/MySQL ERP (`erp.kind = "mysql"`).
    pub fn mysql_opts(&self) -> Result<mysql_async::Opts, ConfigError> {
        let url = match self.dsn.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => self.dsn.clone(),
        };
        // The URL may hold a password: the error names the setting, not the value.
        mysql_async::Opts::from_url(&url).map_err(|e| {
            ConfigError::Invalid(format!(
                "erp.dsn is not a mysql://user:password@host:port/database URL ({})",
                match e {
                    mysql_async::UrlError::UnsupportedScheme { .. } => "unsupported scheme",
                    mysql_async::UrlError::Parse(_) => "does not parse",
                    _ => "invalid option",
                }
            ))
        })
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
pub const OWNED_LIBRDKAFKA_PROPERTIES: [(&str, &str); 12] = [
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
    pub shops: Vec<ShopConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "127.0.0.1:8080".into(),
            body_limit_bytes: 1024 * 1024,
            ack_deadline_ms: 3_000,
            dedupe_window_secs: 24 * 3600,
            dedupe_path: PathBuf::from("flywheel-gateway-seen.log"),
            shops: Vec::new(),
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

/// A shop whose webhooks the gateway accepts.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShopConfig {
    /// The `{shop}` in the webhook URL, and the channel in event keys.
    pub name: String,
    pub platform: Platform,
    /// Webhook signing secrets; several at once to rotate without downtime.
    pub secrets: Vec<String>,
}

impl std::fmt::Debug for ShopConfig {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShopConfig")
            .field("name", &self.name)
            .field("platform", &self.platform)
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
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
    /// Flywheel's state (applied versions); the ERP database when unset.
    pub state_dsn: Option<String>,
    /// The shop's Admin GraphQL endpoint.
    pub shop_graphql_url: String,
    pub shop_access_token: Secret,
    /// A PEM file of certificate authorities to trust for the shop's HTTPS
    /// besides the system's (a private CA, a TLS-inspecting proxy).
    pub shop_ca_file: Option<std::path::PathBuf>,
    /// Units kept back from the shop: sellable = max(0, available − safety_stock).
    pub safety_stock: i64,
    /// Most events applied together (and quantities per inventory call, ≤ 250).
    pub batch_max: usize,
    /// How long to gather a batch after its first event.
    pub batch_wait_ms: u64,
    /// ERP warehouse code → shop location name; a warehouse not listed maps to
    /// the location of the same name.
    pub warehouse_locations: std::collections::BTreeMap<String, String>,
    /// The ERP price list that is the shop's variant price (`list` = list price).
    pub shop_price_list: String,
    /// The shop's currency; prices in other currencies are not applied.
    pub shop_currency: String,
    /// The shop's name at the gateway (the channel of its orders): order
    /// statuses of other channels are not applied to this shop.
    pub shop_channel: String,
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
    /// Where Flywheel's processor state lives: `state_dsn`, or the ERP database.
    pub fn state_database(&self, erp: &ErpConfig) -> String {
        self.state_dsn.clone().unwrap_or_else(|| erp.dsn.clone())
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
            shop_graphql_url: "http://127.0.0.1:8089/admin/api/2026-04/graphql.json".into(),
            shop_access_token: Secret("shpat_flywheel_local".into()),
            shop_ca_file: None,
            safety_stock: 0,
            batch_max: 250,
            batch_wait_ms: 200,
            warehouse_locations: Default::default(),
            shop_price_list: "list".into(),
            shop_currency: "EUR".into(),
            shop_channel: "demo".into(),
            new_group_start: GroupStart::Earliest,
            instance_id: String::new(),
            stall_timeout_secs: 120,
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

impl Config {
    /// Defaults, then `file` (if given), then `FLYWHEEL_<SECTION>__<KEY>`
    /// environment variables. Every setting lives in a section, so a
    /// `FLYWHEEL_*` variable without `__` is not a setting but one of the
    /// program's own (`FLYWHEEL_CONFIG`, `FLYWHEEL_BIN`, `FLYWHEEL_PG_BINDIR`)
    /// and is left out rather than refused as an unknown field.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_path_buf()));
            }
            fig = fig.merge(Toml::file(path));
        }
        let config: Config = fig
            .merge(
                Env::prefixed("FLYWHEEL_")
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            )
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
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
        if let Some(dsn) = &self.processors.state_dsn {
            parse_dsn("processors.state_dsn", dsn)?;
        }
        self.erp.tls()?;
        self.metrics.addr()?;
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.kafka.partitions < 1 {
            return bad("kafka.partitions must be at least 1");
        }
        if self.kafka.replication_factor < 1 {
            return bad("kafka.replication_factor must be at least 1");
        }
        for shop in &self.gateway.shops {
            if shop.secrets.iter().all(|s| s.is_empty()) {
                return Err(ConfigError::Invalid(format!(
                    "gateway shop `{}` has no secret: webhooks could not be verified",
                    shop.name
                )));
            }
        }
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
        if self.erp.batch_keys == 0 || self.erp.max_batch_transactions == 0 {
            return bad("erp.batch_keys and erp.max_batch_transactions must be at least 1");
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
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod example_file {
    #[test]
    fn the_shipped_example_config_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/flywheel.example.toml");
        let c = super::Config::load(Some(std::path::Path::new(path))).unwrap();
        assert_eq!(c.kafka.replication_factor, 3);
        assert_eq!(c.gateway.shops.len(), 2);
        // Secrets never show in Debug output (and so never in logs).
        assert!(!format!("{:?}", c.gateway.shops[0]).contains("current-app-secret"));
    }
}
