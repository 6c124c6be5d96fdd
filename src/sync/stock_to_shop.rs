//! Processor: `erp.stock.v1` → the shop's inventory (Admin GraphQL).
//!
//! Per batch: decode → keep the newest version per key (coalescing) → drop
//! versions not newer than the applied ones (version guard) → map SKU to
//! inventory item (shop lookup, cached) and warehouse to location → write
//! `max(0, available − safety_stock)` with `inventorySetQuantities`, ≤ 250 per
//! call, an idempotency key derived from the keys and versions, and
//! `changeFromQuantity` from the last known level (re-read and retried when
//! stale) → record the versions → commit the Kafka offsets. Unknown SKUs and
//! undecodable records go to the dead-letter topic; their offsets commit too.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, register_int_counter_vec};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Value, json};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::version_store::{Version, VersionStore, is_newer};
use crate::bus::BusError;
use crate::bus::avro::{AvroCodec, field, field_i64, field_str};
use crate::bus::dlq::DeadLetter;
use crate::bus::producer::EventProducer;
use crate::bus::topics::{DEAD_LETTERS, ERP_STOCK, ensure_topics};
use crate::config::Config;
use crate::shop::admin_api::{AdminApi, AdminApiError};

const PROCESSOR: &str = "stock_to_shop";

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("Kafka consumer: {0}")]
    Consumer(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("state database: {0}")]
    State(#[from] tokio_postgres::Error),
    #[error("shop API: {0}")]
    Shop(#[from] AdminApiError),
    #[error(
        "the shop has no location for warehouse `{warehouse}` (looked for `{location}`); set processors.warehouse_locations"
    )]
    UnknownLocation { warehouse: String, location: String },
    #[error("unexpected shop answer: {0}")]
    ShopAnswer(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

struct Metrics {
    events: IntCounterVec,
}

fn metrics() -> &'static IntCounterVec {
    static M: OnceLock<Metrics> = OnceLock::new();
    &M.get_or_init(|| Metrics {
        events: register_int_counter_vec!(
            Opts::new(
                "flywheel_processor_events_total",
                "Events handled by processors: applied, skipped_stale, coalesced, dead_lettered"
            ),
            &["entity", "outcome"]
        )
        .expect("registering processor metrics"),
    })
    .events
}

/// One decoded stock event.
#[derive(Clone, Debug)]
struct StockEvent {
    key: String,
    version: Version,
    sku: String,
    warehouse: String,
    available: i64,
    partition: i32,
    offset: i64,
}

pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), SyncError> {
    let p = &config.processors;
    let state_dsn = p
        .state_dsn
        .clone()
        .unwrap_or_else(|| config.erp.dsn.clone());
    let (state, conn) = tokio_postgres::connect(&state_dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let store = VersionStore::open(&state, PROCESSOR).await?;
    ensure_topics(&config.kafka, &[ERP_STOCK, DEAD_LETTERS]).await?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.bootstrap)
        .set("group.id", &p.group_id)
        .set(
            "client.id",
            format!("{}-{PROCESSOR}", config.kafka.client_id),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&config.kafka.topic(ERP_STOCK)])?;
    let mut worker = Worker {
        api: AdminApi::new(p.shop_graphql_url.clone(), p.shop_access_token.0.clone()),
        dlq: EventProducer::new(&config.kafka, PROCESSOR)?,
        store,
        state,
        safety_stock: p.safety_stock,
        warehouse_locations: p.warehouse_locations.clone(),
        items: HashMap::new(),
        locations: HashMap::new(),
        levels: HashMap::new(),
        physical_topic: config.kafka.topic(ERP_STOCK),
    };
    let wait = Duration::from_millis(p.batch_wait_ms);
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = consumer.recv() => m?.detach(),
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + wait;
        while batch.len() < p.batch_max {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(m) => batch.push(m?.detach()),
                Err(_) => break,
            }
        }
        worker.apply(&batch).await?;
        // Applied or dead-lettered: now the offsets may move.
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for m in &batch {
            let e = next.entry(m.partition()).or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in next {
            tpl.add_partition_offset(&worker.physical_topic, partition, Offset::Offset(offset))?;
        }
        consumer.commit(&tpl, CommitMode::Sync)?;
    }
}

struct Worker {
    api: AdminApi,
    dlq: EventProducer,
    store: VersionStore,
    state: Client,
    safety_stock: i64,
    warehouse_locations: BTreeMap<String, String>,
    /// sku → inventory item gid
    items: HashMap<String, String>,
    /// location name → gid
    locations: HashMap<String, String>,
    /// (item, location) → last known available
    levels: HashMap<(String, String), i64>,
    physical_topic: String,
}

impl Worker {
    async fn apply(&mut self, batch: &[OwnedMessage]) -> Result<(), SyncError> {
        let m = metrics();
        let codec = AvroCodec::for_topic(ERP_STOCK).map_err(BusError::from)?;
        // Decode and coalesce: the newest version per key wins.
        let mut newest: HashMap<String, StockEvent> = HashMap::new();
        for msg in batch {
            let payload = msg.payload().unwrap_or_default();
            let Some(event) = decode(codec, payload, msg) else {
                self.dead_letter(msg, "undecodable", "not an erp.stock.v1 record".into())
                    .await?;
                continue;
            };
            match newest.get(&event.key) {
                Some(prev) if prev.version >= event.version => {
                    m.with_label_values(&["stock", "coalesced"]).inc();
                }
                _ => {
                    if newest.insert(event.key.clone(), event).is_some() {
                        m.with_label_values(&["stock", "coalesced"]).inc();
                    }
                }
            }
        }
        // Version guard.
        let keys: Vec<String> = newest.keys().cloned().collect();
        let applied = self.store.load(&self.state, &keys).await?;
        let fresh: Vec<StockEvent> = newest
            .into_values()
            .filter(|e| {
                let newer = is_newer(&e.version, applied.get(&e.key));
                if !newer {
                    m.with_label_values(&["stock", "skipped_stale"]).inc();
                }
                newer
            })
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        self.resolve_items(&fresh).await?;
        let mut writes = Vec::new();
        for e in &fresh {
            let Some(item) = self.items.get(&e.sku).cloned() else {
                let msg = batch
                    .iter()
                    .find(|x| x.offset() == e.offset && x.partition() == e.partition);
                if let Some(msg) = msg {
                    self.dead_letter(
                        msg,
                        "unknown_sku",
                        format!("the shop has no variant with SKU `{}`", e.sku),
                    )
                    .await?;
                }
                continue;
            };
            let location = self.location(&e.warehouse).await?;
            writes.push((
                e.clone(),
                item,
                location,
                (e.available - self.safety_stock).max(0),
            ));
        }
        for chunk in writes.chunks(250) {
            self.set_quantities(chunk).await?;
        }
        let done: Vec<(String, Version)> = writes
            .iter()
            .map(|(e, ..)| (e.key.clone(), e.version.clone()))
            .collect();
        self.store.store(&self.state, &done).await?;
        m.with_label_values(&["stock", "applied"])
            .inc_by(done.len() as u64);
        Ok(())
    }

    async fn dead_letter(
        &self,
        msg: &OwnedMessage,
        class: &str,
        reason: String,
    ) -> Result<(), SyncError> {
        metrics()
            .with_label_values(&["stock", "dead_lettered"])
            .inc();
        let letter = DeadLetter {
            key: String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
            error_class: class.into(),
            reason,
            stage: format!("processor.{PROCESSOR}"),
            occurred_at_micros: chrono::Utc::now().timestamp_micros(),
            attempts: 1,
            original_topic: Some(ERP_STOCK.into()),
            original_partition: Some(msg.partition()),
            original_offset: Some(msg.offset()),
            payload: msg.payload().map(<[u8]>::to_vec),
            ..Default::default()
        };
        self.dlq.send(letter.to_record()?).await?;
        Ok(())
    }

    /// Looks up unknown SKUs in the shop (50 per query), caching the items.
    async fn resolve_items(&mut self, events: &[StockEvent]) -> Result<(), SyncError> {
        let mut missing: Vec<&str> = events
            .iter()
            .map(|e| e.sku.as_str())
            .filter(|s| !self.items.contains_key(*s))
            .collect();
        missing.sort();
        missing.dedup();
        for chunk in missing.chunks(50) {
            let filter = chunk
                .iter()
                .map(|s| format!("sku:'{s}'"))
                .collect::<Vec<_>>()
                .join(" OR ");
            let r = self
                .api
                .execute(
                    "query($q: String) { productVariants(first: 50, query: $q) { nodes { sku inventoryItem { id } } } }",
                    json!({"q": filter}),
                    2.0 + 50.0 * 2.0,
                )
                .await?;
            for v in r.data["productVariants"]["nodes"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let (Some(sku), Some(id)) =
                    (v["sku"].as_str(), v["inventoryItem"]["id"].as_str())
                {
                    self.items.insert(sku.to_owned(), id.to_owned());
                }
            }
        }
        Ok(())
    }

    async fn location(&mut self, warehouse: &str) -> Result<String, SyncError> {
        let name = self
            .warehouse_locations
            .get(warehouse)
            .cloned()
            .unwrap_or_else(|| warehouse.to_owned());
        if self.locations.is_empty() {
            let r = self
                .api
                .execute(
                    "{ locations(first: 250) { nodes { id name } } }",
                    Value::Null,
                    252.0,
                )
                .await?;
            for l in r.data["locations"]["nodes"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let (Some(id), Some(n)) = (l["id"].as_str(), l["name"].as_str()) {
                    self.locations.insert(n.to_owned(), id.to_owned());
                }
            }
        }
        self.locations
            .get(&name)
            .cloned()
            .ok_or_else(|| SyncError::UnknownLocation {
                warehouse: warehouse.into(),
                location: name,
            })
    }

    /// Reads the current `available` of (item, location) pairs into the cache.
    async fn read_levels(&mut self, pairs: &[(String, String)]) -> Result<(), SyncError> {
        for chunk in pairs.chunks(100) {
            let mut query = String::from("query {");
            for (i, (item, loc)) in chunk.iter().enumerate() {
                query.push_str(&format!(
                    " l{i}: inventoryItem(id: \"{item}\") {{ inventoryLevel(locationId: \"{loc}\") {{ quantities(names: [\"available\"]) {{ quantity }} }} }}"
                ));
            }
            query.push_str(" }");
            let r = self
                .api
                .execute(&query, Value::Null, 3.0 * chunk.len() as f64)
                .await?;
            for (i, pair) in chunk.iter().enumerate() {
                let q =
                    r.data[format!("l{i}")]["inventoryLevel"]["quantities"][0]["quantity"].as_i64();
                match q {
                    Some(q) => {
                        self.levels.insert(pair.clone(), q);
                    }
                    None => {
                        return Err(SyncError::ShopAnswer(format!(
                            "no level for {} at {}",
                            pair.0, pair.1
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// One `inventorySetQuantities` call (≤ 250), compare-before-write, retried
    /// after a re-read when the shop's quantity moved under us.
    async fn set_quantities(
        &mut self,
        chunk: &[(StockEvent, String, String, i64)],
    ) -> Result<(), SyncError> {
        let pairs: Vec<(String, String)> = chunk
            .iter()
            .map(|(_, i, l, _)| (i.clone(), l.clone()))
            .collect();
        let unknown: Vec<(String, String)> = pairs
            .iter()
            .filter(|p| !self.levels.contains_key(*p))
            .cloned()
            .collect();
        self.read_levels(&unknown).await?;
        // Same keys and versions → same key: a retry after a crash is a no-op.
        let idempotency_key = {
            use std::hash::{DefaultHasher, Hash, Hasher};
            let mut h = DefaultHasher::new();
            for (e, ..) in chunk {
                (&e.key, &e.version).hash(&mut h);
            }
            format!("flywheel-stock-{:016x}", h.finish())
        };
        for attempt in 0..3 {
            let quantities: Vec<Value> = chunk
                .iter()
                .map(|(_, item, loc, qty)| {
                    json!({"inventoryItemId": item, "locationId": loc, "quantity": qty,
                           "changeFromQuantity": self.levels.get(&(item.clone(), loc.clone()))})
                })
                .collect();
            let key = format!("{idempotency_key}-{attempt}");
            let r = self
                .api
                .execute(
                    &format!(
                        "mutation($input: InventorySetQuantitiesInput!) {{ inventorySetQuantities(input: $input) @idempotent(key: \"{key}\") {{ userErrors {{ code field message }} }} }}"
                    ),
                    json!({"input": {"name": "available", "reason": "correction",
                                     "referenceDocumentUri": "flywheel://erp/stock", "quantities": quantities}}),
                    10.0,
                )
                .await?;
            let errors = r.data["inventorySetQuantities"]["userErrors"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if errors.is_empty() {
                for (_, item, loc, qty) in chunk {
                    self.levels.insert((item.clone(), loc.clone()), *qty);
                }
                return Ok(());
            }
            let stale = errors
                .iter()
                .any(|e| e["code"] == "CHANGE_FROM_QUANTITY_STALE");
            if !stale {
                return Err(SyncError::ShopAnswer(format!(
                    "inventorySetQuantities: {}",
                    Value::Array(errors)
                )));
            }
            tracing::debug!(attempt, "shop quantity moved under us; re-reading");
            self.read_levels(&pairs).await?;
        }
        Err(SyncError::ShopAnswer(
            "quantities kept moving under us (3 stale attempts)".into(),
        ))
    }
}

fn decode(codec: &AvroCodec, payload: &[u8], msg: &OwnedMessage) -> Option<StockEvent> {
    let v = codec.decode(payload).ok()?;
    let deleted = matches!(
        field(&v, "deleted"),
        Some(apache_avro::types::Value::Boolean(true))
    );
    let available = if deleted {
        0
    } else {
        // Decimal string; the shop counts whole units.
        field_str(&v, "available")?.parse::<f64>().ok()?.floor() as i64
    };
    Some(StockEvent {
        key: field_str(&v, "key")?.to_owned(),
        version: (field_i64(&v, "version")?, String::new()),
        sku: field_str(&v, "sku")?.to_owned(),
        warehouse: field_str(&v, "warehouse")?.to_owned(),
        available,
        partition: msg.partition(),
        offset: msg.offset(),
    })
}
