//! Runs a connector's SQL against the ERP: keys from changed rows, all keys, and
//! the current value of a set of keys; and turns values into Avro records.
//!
//! Everything is batched: a trigger's `keys` query gets all changed rows of a
//! table at once as arrays, and the `model` query all keys of a batch at once.

use std::collections::{BTreeSet, HashMap};

use apache_avro::types::Value;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient, Statement};

use super::connector::{Connector, EntityDef};
use super::position::Position;
use crate::bus::avro::{AvroCodec, FieldKind, nullable_string};
use crate::bus::producer::OutRecord;
use crate::pg::error::db_error_text;

/// Fields every entity record carries that the model does not supply.
const ENVELOPE: &[&str] = &["key", "version", "source_ts", "event_id", "deleted"];

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("entity `{entity}`: {reason}")]
    Invalid { entity: String, reason: String },
    #[error("entity `{entity}`: {what} query failed: {source}")]
    Query {
        entity: String,
        what: String,
        source: tokio_postgres::Error,
    },
}

/// A key of an entity: its parts in connector order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntityKey(pub Vec<String>);

impl EntityKey {
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
    fields: Vec<(String, FieldKind)>,
}

/// The connector's entities with their statements prepared on one connection.
pub struct EntityModels {
    pub entities: Vec<Entity>,
    /// qualified table → (entity index, trigger index)
    by_table: HashMap<String, Vec<(usize, usize)>>,
}

/// Statements prepared on one connection (statements are per connection).
pub struct PreparedModels {
    model: Vec<Statement>,
    all_keys: Vec<Statement>,
    triggers: Vec<Vec<Statement>>,
}

fn leak_topic(topic: &str) -> &'static str {
    // Topic names are few and live for the whole process.
    Box::leak(topic.to_owned().into_boxed_str())
}

impl EntityModels {
    pub fn new(connector: &Connector) -> Result<EntityModels, ModelError> {
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
                match fields.iter().find(|(n, _)| n == part) {
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
                    .entry(t.qualified_table())
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
        Ok(EntityModels { entities, by_table })
    }

    /// (entity, trigger) pairs fired by changes to `qualified_table`.
    pub fn triggers_for(&self, qualified_table: &str) -> &[(usize, usize)] {
        self.by_table
            .get(qualified_table)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Prepares every statement on `client` and checks each against the
    /// connector's contract (parameters, returned columns and their types), so a
    /// broken connector fails at start with the entity and column named.
    pub async fn prepare(&self, client: &Client) -> Result<PreparedModels, ModelError> {
        let mut p = PreparedModels {
            model: Vec::new(),
            all_keys: Vec::new(),
            triggers: Vec::new(),
        };
        for e in &self.entities {
            let value_columns: Vec<&str> = e
                .fields
                .iter()
                .map(|(n, _)| n.as_str())
                .filter(|n| !ENVELOPE.contains(n))
                .collect();
            let model = e
                .prepare(
                    client,
                    "model",
                    &e.def.model,
                    e.def.key.len(),
                    &value_columns,
                )
                .await?;
            let key_columns: Vec<&str> = e.def.key.iter().map(String::as_str).collect();
            let all_keys = e
                .prepare(client, "all_keys", &e.def.all_keys, 0, &key_columns)
                .await?;
            let mut triggers = Vec::new();
            for t in &e.def.triggers {
                triggers.push(
                    e.prepare(
                        client,
                        &format!("trigger `{}` keys", t.table),
                        &t.keys,
                        t.columns.len(),
                        &key_columns,
                    )
                    .await?,
                );
            }
            p.model.push(model);
            p.all_keys.push(all_keys);
            p.triggers.push(triggers);
        }
        Ok(p)
    }

    /// Keys affected by changed rows of one trigger. `rows` hold the trigger's
    /// columns in order. Keys with a NULL part come back as [`Unmappable`].
    pub async fn keys_for_rows(
        &self,
        client: &impl GenericClient,
        prepared: &PreparedModels,
        (entity, trigger): (usize, usize),
        rows: &[Vec<Option<String>>],
    ) -> Result<(Vec<EntityKey>, Vec<Unmappable>), ModelError> {
        let e = &self.entities[entity];
        let t = &e.def.triggers[trigger];
        let columns: Vec<Vec<Option<String>>> = (0..t.columns.len())
            .map(|c| rows.iter().map(|r| r.get(c).cloned().flatten()).collect())
            .collect();
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = columns
            .iter()
            .map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let result = client
            .query(&prepared.triggers[entity][trigger], &params)
            .await
            .map_err(|source| ModelError::Query {
                entity: e.name.clone(),
                what: format!("trigger `{}` keys", t.table),
                source,
            })?;
        let mut keys = Vec::new();
        let mut unmappable = Vec::new();
        for row in result {
            let mut parts = Vec::with_capacity(e.def.key.len());
            let mut missing = None;
            for part in &e.def.key {
                match row.try_get::<_, Option<String>>(part.as_str()) {
                    Ok(Some(v)) => parts.push(v),
                    _ => {
                        missing = Some(part.clone());
                        break;
                    }
                }
            }
            match missing {
                None => keys.push(EntityKey(parts)),
                Some(part) => {
                    let context = row_context(&row);
                    unmappable.push(Unmappable {
                        entity: e.name.clone(),
                        table: t.qualified_table(),
                        reason: format!(
                            "a changed {} row maps to a {} key without `{part}` ({context}); \
                             the ERP row cannot be published until it has one \
                             (e.g. give the product a SKU / internal reference)",
                            t.qualified_table(),
                            e.name
                        ),
                        context,
                    });
                }
            }
        }
        Ok((keys, unmappable))
    }

    /// Every key of an entity (snapshot, truncate, reconciliation).
    pub async fn all_keys(
        &self,
        client: &impl GenericClient,
        prepared: &PreparedModels,
        entity: usize,
    ) -> Result<Vec<EntityKey>, ModelError> {
        let e = &self.entities[entity];
        let rows = client
            .query(&prepared.all_keys[entity], &[])
            .await
            .map_err(|source| ModelError::Query {
                entity: e.name.clone(),
                what: "all_keys".into(),
                source,
            })?;
        let keys: BTreeSet<EntityKey> = rows
            .iter()
            .filter_map(|row| {
                e.def
                    .key
                    .iter()
                    .map(|p| row.try_get::<_, Option<String>>(p.as_str()).ok().flatten())
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
        client: &impl GenericClient,
        prepared: &PreparedModels,
        entity: usize,
        keys: &[EntityKey],
    ) -> Result<Vec<EntityValue>, ModelError> {
        let e = &self.entities[entity];
        let arrays: Vec<Vec<&str>> = (0..e.def.key.len())
            .map(|i| keys.iter().map(|k| k.0[i].as_str()).collect())
            .collect();
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = arrays
            .iter()
            .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = client
            .query(&prepared.model[entity], &params)
            .await
            .map_err(|source| ModelError::Query {
                entity: e.name.clone(),
                what: "model".into(),
                source,
            })?;
        let mut found: HashMap<EntityKey, HashMap<String, Option<String>>> = HashMap::new();
        for row in rows {
            let mut fields = HashMap::new();
            for (i, col) in row.columns().iter().enumerate() {
                fields.insert(
                    col.name().to_owned(),
                    row.try_get::<_, Option<String>>(i).ok().flatten(),
                );
            }
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
    async fn prepare(
        &self,
        client: &Client,
        what: &str,
        sql: &str,
        params: usize,
        required_columns: &[&str],
    ) -> Result<Statement, ModelError> {
        let invalid = |reason: String| ModelError::Invalid {
            entity: self.name.clone(),
            reason,
        };
        let stmt = client.prepare(sql).await.map_err(|e| {
            invalid(format!(
                "{what} SQL does not prepare: {}",
                db_error_text(&e)
            ))
        })?;
        if stmt.params().len() != params {
            return Err(invalid(format!(
                "{what} SQL takes {} parameters, expected {params} (one text[] per {})",
                stmt.params().len(),
                if params == self.def.key.len() {
                    "key part"
                } else {
                    "trigger column"
                }
            )));
        }
        if let Some((i, t)) = stmt
            .params()
            .iter()
            .enumerate()
            .find(|(_, t)| **t != Type::TEXT_ARRAY)
        {
            return Err(invalid(format!(
                "{what} SQL parameter ${} is {t}; write it as ${}::text[]",
                i + 1,
                i + 1
            )));
        }
        for col in required_columns {
            match stmt.columns().iter().find(|c| c.name() == *col) {
                None => {
                    return Err(invalid(format!("{what} SQL returns no column `{col}`")));
                }
                Some(c) if *c.type_() != Type::TEXT && *c.type_() != Type::VARCHAR => {
                    return Err(invalid(format!(
                        "{what} SQL column `{col}` is {}; cast it to text ({col}::text)",
                        c.type_()
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(stmt)
    }

    /// The Avro record for a value at `version`. Fails (for the dead-letter
    /// topic) when the model left a required field NULL.
    pub fn to_record(
        &self,
        value: &EntityValue,
        version: Position,
        source_ts_micros: i64,
    ) -> Result<OutRecord, String> {
        let key = value.key.kafka_key();
        let mut record = Vec::with_capacity(self.fields.len());
        for (name, kind) in &self.fields {
            let v = match name.as_str() {
                "key" => Value::String(key.clone()),
                "version" => Value::Long(version.0 as i64),
                "source_ts" => Value::TimestampMicros(source_ts_micros),
                "event_id" => Value::String(format!("{}:{key}@{version}", self.topic)),
                "deleted" => Value::Boolean(value.fields.is_none()),
                _ => {
                    let from_model = match &value.fields {
                        Some(f) => f.get(name).cloned().flatten(),
                        None => self
                            .def
                            .key
                            .iter()
                            .position(|p| p == name)
                            .map(|i| value.key.0[i].clone()),
                    };
                    match (kind, from_model) {
                        (FieldKind::String, Some(s)) => Value::String(s),
                        (FieldKind::NullableString, s) => nullable_string(s),
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
            record.push((name.clone(), v));
        }
        let payload = self
            .codec
            .encode(&Value::Record(record))
            .map_err(|e| e.to_string())?;
        Ok(OutRecord {
            topic: self.topic,
            key,
            payload,
            headers: vec![("flywheel.version", version.0.to_string())],
        })
    }
}

fn row_context(row: &tokio_postgres::Row) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        let v = match *col.type_() {
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)
                .ok()
                .flatten()
                .map(|v| v.to_string()),
            Type::INT8 => row
                .try_get::<_, Option<i64>>(i)
                .ok()
                .flatten()
                .map(|v| v.to_string()),
            _ => row.try_get::<_, Option<String>>(i).ok().flatten(),
        };
        map.insert(
            col.name().into(),
            v.map_or(serde_json::Value::Null, serde_json::Value::String),
        );
    }
    serde_json::Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_key_escapes_separators() {
        let k = EntityKey(vec!["A/B".into(), "50%".into(), "WH1".into()]);
        assert_eq!(k.kafka_key(), "A%2FB/50%25/WH1");
    }
}
