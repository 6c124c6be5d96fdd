//! A connector's entities, whatever the database: keys from changed rows, all
//! keys, and the current value of a set of keys — each through a
//! [`ModelQueries`] of the source's database kind — and values turned into
//! Avro records.
//!
//! Everything is batched: a trigger's `keys` query gets all changed rows of a
//! table at once, and the `model` query all keys of a batch at once.

use std::collections::{BTreeSet, HashMap};

use super::committed::TriggerRow;
use super::connector::{Connector, EntityDef};
use super::model_queries::{ModelQueries, TextRow};
use super::position::Position;
use crate::bus::avro::{AvroCodec, FieldKind};
use crate::bus::producer::OutRecord;

/// Fields every entity record carries that the model does not supply.
const ENVELOPE: &[&str] = &["key", "version", "source_ts", "event_id", "deleted"];

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("entity `{entity}`: {reason}")]
    Invalid { entity: String, reason: String },
    /// A query failed on the database. `retryable` is decided by the database
    /// kind where the error arose (a server away vs a broken query).
    #[error("entity `{entity}`: {what} query failed: {reason}")]
    Query {
        entity: String,
        what: String,
        reason: String,
        retryable: bool,
    },
    /// Waiting until the database shows a batch's transactions as committed
    /// failed (see [`ModelQueries::wait_visible`]).
    #[error("waiting until the ERP database shows committed transactions: {reason}")]
    Visibility { reason: String, retryable: bool },
}

/// A key of an entity: its parts in connector order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntityKey(pub Vec<String>);

impl EntityKey {
    /// The key a [`kafka_key`](Self::kafka_key) was made from.
    pub fn from_kafka_key(key: &str) -> EntityKey {
        EntityKey(
            key.split('/')
                .map(|p| p.replace("%2F", "/").replace("%25", "%"))
                .collect(),
        )
    }

    /// The Kafka key: parts joined by `/`, with `%` and `/` inside a part
    /// percent-encoded so the key splits back unambiguously.
    pub fn kafka_key(&self) -> String {
        self.0
            .iter()
            .map(|p| p.replace('%', "%25").replace('/', "%2F"))
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// A changed row a trigger could not map to a key, with why.
#[derive(Clone, Debug)]
pub struct Unmappable {
    pub entity: String,
    pub table: String,
    pub reason: String,
    pub context: serde_json::Value,
}

/// The column a trigger's `keys` query may return to say which input row
/// (1-based, as `WITH ORDINALITY` / `FOR ORDINALITY` number them) each key came
/// from. With it the pipeline resolves a whole batch of transactions' rows in
/// one query and still gives each key the version of the newest transaction
/// that touched it; without it, one query per transaction.
pub const INPUT_ROW: &str = "input_row";

/// What one trigger's `keys` query returned: keys and rows without a key,
/// each with the index of the input row it came from (`None` when the query
/// does not return [`INPUT_ROW`]).
#[derive(Debug, Default)]
pub struct TriggerKeys {
    pub keys: Vec<(Option<usize>, EntityKey)>,
    pub unmappable: Vec<(Option<usize>, Unmappable)>,
}

impl TriggerKeys {
    /// Whether every key and unmappable row names its input row.
    pub fn names_input_rows(&self) -> bool {
        self.keys.iter().all(|(r, _)| r.is_some())
            && self.unmappable.iter().all(|(r, _)| r.is_some())
    }
}

/// The 0-based input row a result row names, if it has [`INPUT_ROW`].
fn input_row(row: &TextRow, asked: usize) -> Result<Option<usize>, String> {
    let Some((_, value)) = row.iter().find(|(n, _)| n == INPUT_ROW) else {
        return Ok(None);
    };
    let n = value
        .as_deref()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| (1..=asked).contains(n))
        .ok_or_else(|| {
            format!(
                "`{INPUT_ROW}` is {value:?}, not a 1-based position among the {asked} input rows \
                 (number them WITH ORDINALITY and return that column)"
            )
        })?;
    Ok(Some(n - 1))
}

/// The current value of one key: `None` when the model returned no row.
#[derive(Clone, Debug)]
pub struct EntityValue {
    pub key: EntityKey,
    pub fields: Option<HashMap<String, Option<String>>>,
}

/// One entity of the connector, checked against the database.
pub struct Entity {
    pub name: String,
    pub def: EntityDef,
    pub topic: &'static str,
    codec: &'static AvroCodec,
    /// The schema's fields in order (names borrowed from the process-wide codec).
    fields: Vec<(&'static str, FieldKind)>,
}

impl Entity {
    /// The columns the `model` query must return besides the key parts.
    pub fn value_columns(&self) -> Vec<&str> {
        self.fields
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| !ENVELOPE.contains(n))
            .collect()
    }

    /// The key parts, which `all_keys` and every trigger's `keys` return.
    pub fn key_columns(&self) -> Vec<&str> {
        self.def.key.iter().map(String::as_str).collect()
    }
}

/// The connector's entities, and which triggers each table fires.
pub struct EntityModels {
    pub entities: Vec<Entity>,
    /// qualified table → (entity index, trigger index)
    by_table: HashMap<String, Vec<(usize, usize)>>,
    /// The schema of tables the connector does not qualify.
    default_schema: String,
}

fn leak_topic(topic: &str) -> &'static str {
    // Topic names are few and live for the whole process.
    Box::leak(topic.to_owned().into_boxed_str())
}

impl EntityModels {
    /// A PostgreSQL connector: unqualified tables are in schema `public`.
    pub fn new(connector: &Connector) -> Result<EntityModels, ModelError> {
        Self::with_default_schema(connector, "public")
    }

    /// Unqualified trigger tables are in `default_schema` (MariaDB/MySQL: the
    /// ERP's database).
    pub fn with_default_schema(
        connector: &Connector,
        default_schema: &str,
    ) -> Result<EntityModels, ModelError> {
        let mut entities = Vec::new();
        let mut by_table: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        for (i, (name, def)) in connector.entities.iter().enumerate() {
            let invalid = |reason: String| ModelError::Invalid {
                entity: name.clone(),
                reason,
            };
            let codec = AvroCodec::for_topic(&def.topic).map_err(|e| invalid(e.to_string()))?;
            let fields = codec.fields();
            for part in &def.key {
                match fields.iter().find(|(n, _)| *n == part.as_str()) {
                    Some((_, FieldKind::String)) => {}
                    _ => {
                        return Err(invalid(format!(
                            "key part `{part}` must be a string field of schemas/{}.avsc",
                            def.topic
                        )));
                    }
                }
            }
            for (j, t) in def.triggers.iter().enumerate() {
                by_table
                    .entry(t.qualified_table_in(default_schema))
                    .or_default()
                    .push((i, j));
            }
            entities.push(Entity {
                name: name.clone(),
                def: def.clone(),
                topic: leak_topic(&def.topic),
                codec,
                fields,
            });
        }
        Ok(EntityModels {
            entities,
            by_table,
            default_schema: default_schema.to_owned(),
        })
    }

    /// (entity, trigger) pairs fired by changes to `qualified_table`.
    pub fn triggers_for(&self, qualified_table: &str) -> &[(usize, usize)] {
        self.by_table
            .get(qualified_table)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Keys affected by changed rows of one trigger. `rows` hold the trigger's
    /// columns in order. Keys with a NULL part come back as [`Unmappable`].
    /// Each key and unmappable row carries the index (into `rows`) of the row
    /// it came from when the `keys` query names it in [`INPUT_ROW`].
    pub async fn keys_for_rows(
        &self,
        queries: &impl ModelQueries,
        (entity, trigger): (usize, usize),
        rows: &[TriggerRow],
    ) -> Result<TriggerKeys, ModelError> {
        let e = &self.entities[entity];
        let t = &e.def.triggers[trigger];
        let result = queries.trigger_keys(entity, trigger, rows).await?;
        let mut out = TriggerKeys::default();
        for row in result {
            let input_row = input_row(&row, rows.len()).map_err(|reason| ModelError::Invalid {
                entity: e.name.clone(),
                reason: format!("trigger `{}` keys SQL: {reason}", t.table),
            })?;
            let mut parts = Vec::with_capacity(e.def.key.len());
            let mut missing = None;
            for part in &e.def.key {
                match column(&row, part) {
                    Some(v) => parts.push(v.to_owned()),
                    None => {
                        missing = Some(part.clone());
                        break;
                    }
                }
            }
            match missing {
                None => out.keys.push((input_row, EntityKey(parts))),
                Some(part) => {
                    let context = row_context(&row);
                    let table = t.qualified_table_in(&self.default_schema);
                    out.unmappable.push((
                        input_row,
                        Unmappable {
                            entity: e.name.clone(),
                            reason: format!(
                                "a changed {table} row maps to a {} key without `{part}` ({context}); \
                                 the ERP row cannot be published until it has one \
                                 (e.g. give the product a SKU / internal reference)",
                                e.name
                            ),
                            table,
                            context,
                        },
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Every key of an entity (snapshot, truncate, reconciliation).
    pub async fn all_keys(
        &self,
        queries: &impl ModelQueries,
        entity: usize,
    ) -> Result<Vec<EntityKey>, ModelError> {
        let e = &self.entities[entity];
        let rows = queries.all_keys(entity).await?;
        let keys: BTreeSet<EntityKey> = rows
            .iter()
            .filter_map(|row| {
                e.def
                    .key
                    .iter()
                    .map(|p| column(row, p).map(str::to_owned))
                    .collect::<Option<Vec<String>>>()
                    .map(EntityKey)
            })
            .collect();
        Ok(keys.into_iter().collect())
    }

    /// Current values of `keys` (one model query). Keys without a row come back
    /// with `fields: None` (deleted).
    pub async fn read(
        &self,
        queries: &impl ModelQueries,
        entity: usize,
        keys: &[EntityKey],
    ) -> Result<Vec<EntityValue>, ModelError> {
        let e = &self.entities[entity];
        let rows = queries.model(entity, keys).await?;
        let mut found: HashMap<EntityKey, HashMap<String, Option<String>>> = HashMap::new();
        for row in rows {
            let fields: HashMap<String, Option<String>> = row.into_iter().collect();
            let key: Option<Vec<String>> = e
                .def
                .key
                .iter()
                .map(|p| fields.get(p).cloned().flatten())
                .collect();
            if let Some(k) = key {
                found.insert(EntityKey(k), fields);
            }
        }
        Ok(keys
            .iter()
            .map(|k| EntityValue {
                key: k.clone(),
                fields: found.remove(k),
            })
            .collect())
    }
}

impl Entity {
    /// The Avro record for a value at `version`. Fails (for the dead-letter
    /// topic) when the model left a required field NULL.
    pub fn to_record(
        &self,
        value: &EntityValue,
        version: Position,
        source_ts_micros: i64,
    ) -> Result<OutRecord, String> {
        let key = value.key.kafka_key();
        let event_id = format!("{}:{key}@{version}", self.topic);
        let mut record = Vec::with_capacity(self.fields.len());
        for &(name, kind) in &self.fields {
            let v = match name {
                "key" => Field::Str(&key),
                "version" => Field::Long(version.0 as i64),
                "source_ts" => Field::Long(source_ts_micros),
                "event_id" => Field::Str(&event_id),
                "deleted" => Field::Bool(value.fields.is_none()),
                _ => {
                    let from_model = match &value.fields {
                        Some(f) => f.get(name).and_then(Option::as_deref),
                        None => self
                            .def
                            .key
                            .iter()
                            .position(|p| p == name)
                            .map(|i| value.key.0[i].as_str()),
                    };
                    match (kind, from_model) {
                        (FieldKind::String, Some(s)) => Field::Str(s),
                        (FieldKind::NullableString, s) => Field::NullableStr(s),
                        (FieldKind::String, None) => {
                            return Err(format!(
                                "the model returned NULL for required field `{name}`"
                            ));
                        }
                        (other, _) => {
                            return Err(format!(
                                "field `{name}` has type {other:?}, which models cannot fill"
                            ));
                        }
                    }
                }
            };
            record.push((name, v));
        }
        let payload = self
            .codec
            .encode_serde(&Record(&record))
            .map_err(|e| e.to_string())?;
        Ok(OutRecord {
            topic: self.topic,
            key,
            payload: payload.into(),
            headers: vec![("flywheel.version", version.0.to_string())],
        })
    }
}

/// One entity record, its fields in schema order, borrowed from the value it
/// describes: serialized straight into Avro, no `Value` built per record
/// (the snapshot and every captured batch encode one per key).
struct Record<'a>(&'a [(&'static str, Field<'a>)]);

enum Field<'a> {
    Str(&'a str),
    Long(i64),
    Bool(bool),
    NullableStr(Option<&'a str>),
}

impl serde::Serialize for Record<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut record = serializer.serialize_struct("record", self.0.len())?;
        for (name, field) in self.0 {
            record.serialize_field(name, field)?;
        }
        record.end()
    }
}

impl serde::Serialize for Field<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            Field::Str(s) => serializer.serialize_str(s),
            Field::Long(n) => serializer.serialize_i64(n),
            Field::Bool(b) => serializer.serialize_bool(b),
            Field::NullableStr(None) => serializer.serialize_none(),
            Field::NullableStr(Some(s)) => serializer.serialize_some(s),
        }
    }
}

/// The text of a row's column; `None` for NULL or a missing column.
fn column<'r>(row: &'r TextRow, name: &str) -> Option<&'r str> {
    row.iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref())
}

fn row_context(row: &TextRow) -> serde_json::Value {
    serde_json::Value::Object(
        row.iter()
            .filter(|(n, _)| n != INPUT_ROW)
            .map(|(n, v)| {
                let v = v
                    .clone()
                    .map_or(serde_json::Value::Null, serde_json::Value::String);
                (n.clone(), v)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::erp::committed::CommittedTxn;

    /// Canned rows: the pure mapping from text rows to keys and values.
    struct Canned(Vec<TextRow>);

    impl ModelQueries for Canned {
        async fn trigger_keys(
            &self,
            _: usize,
            _: usize,
            _: &[TriggerRow],
        ) -> Result<Vec<TextRow>, ModelError> {
            Ok(self.0.clone())
        }
        async fn all_keys(&self, _: usize) -> Result<Vec<TextRow>, ModelError> {
            Ok(self.0.clone())
        }
        async fn model(&self, _: usize, _: &[EntityKey]) -> Result<Vec<TextRow>, ModelError> {
            Ok(self.0.clone())
        }
        async fn wait_visible(&self, _: &[&CommittedTxn]) -> Result<(), ModelError> {
            Ok(())
        }
    }

    fn row(cols: &[(&str, Option<&str>)]) -> TextRow {
        cols.iter()
            .map(|(n, v)| ((*n).to_owned(), v.map(str::to_owned)))
            .collect()
    }

    /// The built-in Odoo connector's models and the index of its stock entity.
    fn odoo_stock() -> (EntityModels, usize) {
        let models = EntityModels::new(&Connector::load(None, "odoo").unwrap()).unwrap();
        let stock = models
            .entities
            .iter()
            .position(|e| e.name == "stock")
            .unwrap();
        (models, stock)
    }

    #[tokio::test]
    async fn text_rows_become_keys_dead_letters_and_values() {
        let (models, stock) = odoo_stock();
        let rows = Canned(vec![
            row(&[("sku", Some("SKU-1")), ("warehouse", Some("WH1"))]),
            row(&[
                ("sku", None),
                ("warehouse", Some("WH1")),
                ("product_id", Some("7")),
            ]),
        ]);
        let found = models.keys_for_rows(&rows, (stock, 0), &[]).await.unwrap();
        assert_eq!(
            found.keys,
            vec![(None, EntityKey(vec!["SKU-1".into(), "WH1".into()]))]
        );
        assert!(!found.names_input_rows());
        let unmappable = &found.unmappable;
        assert_eq!(unmappable.len(), 1);
        assert_eq!(unmappable[0].1.context["product_id"], "7");
        assert!(
            unmappable[0].1.reason.contains("without `sku`"),
            "{}",
            unmappable[0].1.reason
        );

        let asked = [
            EntityKey(vec!["SKU-1".into(), "WH1".into()]),
            EntityKey(vec!["SKU-2".into(), "WH1".into()]),
        ];
        let values = models.read(&rows, stock, &asked).await.unwrap();
        assert_eq!(values[0].key, asked[0]);
        assert!(
            values[0].fields.is_some(),
            "a key with a row has its fields"
        );
        assert!(values[1].fields.is_none(), "a key without a row is deleted");
    }

    #[tokio::test]
    async fn keys_name_their_input_row_and_a_wrong_one_is_refused() {
        let (models, stock) = odoo_stock();
        let asked: Vec<TriggerRow> = vec![vec![Some("1".into())], vec![Some("2".into())]];
        let rows = Canned(vec![
            row(&[
                ("sku", Some("A")),
                ("warehouse", Some("WH1")),
                (INPUT_ROW, Some("2")),
            ]),
            row(&[
                ("sku", None),
                ("warehouse", Some("WH1")),
                (INPUT_ROW, Some("1")),
            ]),
        ]);
        let found = models
            .keys_for_rows(&rows, (stock, 0), &asked)
            .await
            .unwrap();
        assert!(found.names_input_rows());
        assert_eq!(found.keys[0].0, Some(1), "1-based 2 is the second row");
        assert_eq!(found.unmappable[0].0, Some(0));
        assert!(
            found.unmappable[0].1.context.get(INPUT_ROW).is_none(),
            "the ordinal is ours, not the ERP row's"
        );
        for bad in ["0", "3", "x"] {
            let rows = Canned(vec![row(&[
                ("sku", Some("A")),
                ("warehouse", Some("WH1")),
                (INPUT_ROW, Some(bad)),
            ])]);
            let err = models
                .keys_for_rows(&rows, (stock, 0), &asked)
                .await
                .unwrap_err();
            assert!(
                matches!(&err, ModelError::Invalid { reason, .. } if reason.contains("input_row")),
                "{bad}: {err}"
            );
        }
    }

    /// What `to_record` wrote before it serialized straight into bytes: an
    /// Avro `Value::Record`, validated and encoded.
    fn encoded_through_value(
        e: &Entity,
        value: &EntityValue,
        version: Position,
        ts: i64,
    ) -> Vec<u8> {
        use crate::bus::avro::nullable_string;
        use apache_avro::types::Value;
        let key = value.key.kafka_key();
        let record = e
            .fields
            .iter()
            .map(|&(name, kind)| {
                let v = match name {
                    "key" => Value::String(key.clone()),
                    "version" => Value::Long(version.0 as i64),
                    "source_ts" => Value::TimestampMicros(ts),
                    "event_id" => Value::String(format!("{}:{key}@{version}", e.topic)),
                    "deleted" => Value::Boolean(value.fields.is_none()),
                    _ => {
                        let from_model = match &value.fields {
                            Some(f) => f.get(name).cloned().flatten(),
                            None => e
                                .def
                                .key
                                .iter()
                                .position(|p| p == name)
                                .map(|i| value.key.0[i].clone()),
                        };
                        match kind {
                            FieldKind::String => Value::String(from_model.unwrap()),
                            _ => nullable_string(from_model),
                        }
                    }
                };
                (name.to_owned(), v)
            })
            .collect();
        e.codec.encode(&Value::Record(record)).unwrap()
    }

    /// Records of every entity of both built-in connectors, present, with
    /// NULLs and deleted, are the bytes the `Value` path wrote, and a NULL
    /// in a required field is still refused.
    #[test]
    fn records_are_the_bytes_of_the_value_encoding() {
        let mut checked = 0;
        for connector in ["odoo", "erpnext"] {
            let models = EntityModels::new(&Connector::load(None, connector).unwrap()).unwrap();
            for e in &models.entities {
                let key = EntityKey(e.def.key.iter().map(|p| format!("{p}/1%")).collect());
                let filled: HashMap<String, Option<String>> = e
                    .fields
                    .iter()
                    .map(|(n, _)| ((*n).to_owned(), Some(format!("{n}-välue"))))
                    .collect();
                let nulls: HashMap<String, Option<String>> = e
                    .fields
                    .iter()
                    .map(|&(n, kind)| {
                        let keep = kind == FieldKind::String;
                        (n.to_owned(), keep.then(|| format!("{n}-v")))
                    })
                    .collect();
                for fields in [Some(filled), Some(nulls), None] {
                    let value = EntityValue {
                        key: key.clone(),
                        fields,
                    };
                    let record = e
                        .to_record(&value, Position(42), 1_700_000_000_000_000)
                        .unwrap();
                    assert_eq!(
                        record.payload,
                        encoded_through_value(e, &value, Position(42), 1_700_000_000_000_000),
                        "{connector}/{}",
                        e.name
                    );
                    assert_eq!(record.key, key.kafka_key());
                    checked += 1;
                }
                if let Some((required, _)) = e.fields.iter().find(|(n, k)| {
                    *k == FieldKind::String
                        && !ENVELOPE.contains(n)
                        && !e.def.key.iter().any(|p| p == n)
                }) {
                    let value = EntityValue {
                        key: key.clone(),
                        fields: Some(HashMap::from([((*required).to_owned(), None)])),
                    };
                    let err = e.to_record(&value, Position(1), 0).unwrap_err();
                    assert!(err.contains(required), "{err}");
                }
            }
        }
        assert!(checked >= 12, "{checked} records checked");
    }

    #[test]
    fn kafka_key_escapes_separators() {
        let k = EntityKey(vec!["A/B".into(), "50%".into(), "WH1".into()]);
        assert_eq!(k.kafka_key(), "A%2FB/50%25/WH1");
        assert_eq!(EntityKey::from_kafka_key(&k.kafka_key()), k);
        let tricky = EntityKey(vec!["%2F".into(), "x".into()]);
        assert_eq!(EntityKey::from_kafka_key(&tricky.kafka_key()), tricky);
    }
}
