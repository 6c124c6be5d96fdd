//! Avro codec for every Flywheel topic.
//!
//! Values use Avro *single-object encoding* (`C3 01`, the schema's 8-byte
//! CRC-64-AVRO fingerprint, then the binary datum): each record names its exact
//! schema without needing a schema registry. The schemas are the `.avsc` files in
//! `schemas/`, compiled in so the binary and the contract cannot drift apart.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use apache_avro::headers::{HeaderBuilder, RabinFingerprintHeader};
use apache_avro::schema::ResolvedSchema;
use apache_avro::types::Value;
use apache_avro::{GenericSingleObjectReader, GenericSingleObjectWriter, Schema};

/// (topic, schema text) for every topic Flywheel writes.
const SCHEMAS: &[(&str, &str)] = &[
    (
        "erp.stock.v1",
        include_str!("../../schemas/erp.stock.v1.avsc"),
    ),
    (
        "erp.price.v1",
        include_str!("../../schemas/erp.price.v1.avsc"),
    ),
    (
        "erp.order_status.v1",
        include_str!("../../schemas/erp.order_status.v1.avsc"),
    ),
    (
        "flywheel.dlq.v1",
        include_str!("../../schemas/flywheel.dlq.v1.avsc"),
    ),
    (
        "shop.orders.v1",
        include_str!("../../schemas/shop.orders.v1.avsc"),
    ),
    (
        "shop.inventory.v1",
        include_str!("../../schemas/shop.inventory.v1.avsc"),
    ),
    (
        "shop.catalog.v1",
        include_str!("../../schemas/shop.catalog.v1.avsc"),
    ),
];

/// Earlier revisions of a topic's schema (`schemas/previous/`): records
/// written with them still decode, resolved to the current schema (new fields
/// take their defaults), so a topic written before an upgrade replays.
const PREVIOUS_SCHEMAS: &[(&str, &str)] = &[(
    "erp.stock.v1",
    include_str!("../../schemas/previous/erp.stock.v1.rev1.avsc"),
)];

#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    #[error("no Avro schema for topic `{0}` (schemas/ has none)")]
    UnknownTopic(String),
    #[error("schema for `{topic}` is invalid: {reason}")]
    BadSchema { topic: String, reason: String },
    #[error("record does not match the `{topic}` schema: {source}")]
    Encode {
        topic: String,
        source: Box<apache_avro::Error>,
    },
    #[error("bytes are not a `{topic}` record: {source}")]
    Decode {
        topic: String,
        source: Box<apache_avro::Error>,
    },
}

/// Encoder/decoder for one topic's schema.
pub struct AvroCodec {
    topic: String,
    schema: Schema,
    writer: Mutex<GenericSingleObjectWriter>,
    /// The schema with its named types resolved once, and the single-object
    /// header: what [`encode_serde`](Self::encode_serde) writes with.
    resolved: ResolvedSchema<'static>,
    header: Vec<u8>,
    reader: GenericSingleObjectReader,
    /// (single-object header, writer schema) of earlier revisions.
    previous: Vec<(Vec<u8>, Schema)>,
}

impl AvroCodec {
    /// The codec for `topic`, parsed once per process.
    pub fn for_topic(topic: &str) -> Result<&'static AvroCodec, AvroError> {
        static CODECS: OnceLock<HashMap<&'static str, Result<AvroCodec, String>>> = OnceLock::new();
        let codecs = CODECS.get_or_init(|| {
            SCHEMAS
                .iter()
                .map(|(t, text)| (*t, AvroCodec::parse(t, text).map_err(|e| e.to_string())))
                .collect()
        });
        match codecs.get(topic) {
            Some(Ok(c)) => Ok(c),
            Some(Err(reason)) => Err(AvroError::BadSchema {
                topic: topic.into(),
                reason: reason.clone(),
            }),
            None => Err(AvroError::UnknownTopic(topic.into())),
        }
    }

    fn parse(topic: &str, text: &str) -> Result<AvroCodec, AvroError> {
        let bad = |e: apache_avro::Error| AvroError::BadSchema {
            topic: topic.into(),
            reason: e.to_string(),
        };
        let schema = Schema::parse_str(text).map_err(bad)?;
        let writer = GenericSingleObjectWriter::new_with_capacity(&schema, 512).map_err(bad)?;
        // The resolved names borrow their schema. Codecs live as long as the
        // process (`for_topic` parses each topic's once), so that schema is
        // leaked once per topic rather than resolved again for every record.
        let leaked: &'static Schema = Box::leak(Box::new(schema.clone()));
        let resolved = ResolvedSchema::new(leaked).map_err(bad)?;
        let header = RabinFingerprintHeader::from_schema(&schema).build_header();
        let reader = GenericSingleObjectReader::builder()
            .schema(schema.clone())
            .build()
            .map_err(bad)?;
        let mut previous = Vec::new();
        for (_, text) in PREVIOUS_SCHEMAS.iter().filter(|(t, _)| *t == topic) {
            let old = Schema::parse_str(text).map_err(bad)?;
            let header = RabinFingerprintHeader::from_schema(&old).build_header();
            previous.push((header, old));
        }
        Ok(AvroCodec {
            topic: topic.into(),
            schema,
            writer: Mutex::new(writer),
            resolved,
            header,
            reader,
            previous,
        })
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Names and types of the record's fields, in schema order.
    pub fn fields(&self) -> Vec<(&str, FieldKind)> {
        match &self.schema {
            Schema::Record(r) => r
                .fields
                .iter()
                .map(|f| (f.name.as_str(), FieldKind::of(&f.schema)))
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn encode(&self, value: &Value) -> Result<Vec<u8>, AvroError> {
        let mut out = Vec::with_capacity(256);
        let mut writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        writer
            .write_value_ref(value, &mut out)
            .map_err(|e| AvroError::Encode {
                topic: self.topic.clone(),
                source: Box::new(e),
            })?;
        Ok(out)
    }

    /// Encodes a serde value (Rust structs mirroring the schema; `Option`s
    /// become the schema's `["null", …]` unions, fields the struct lacks take
    /// the schema's defaults).
    ///
    /// Serialized straight into the bytes against the resolved schema: going
    /// through an Avro `Value` and resolving it re-walked the whole schema
    /// for every record, and was 15% of the gateway's CPU per webhook.
    pub fn encode_serde<T: serde::Serialize>(&self, value: &T) -> Result<Vec<u8>, AvroError> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&self.header);
        apache_avro::write_avro_datum_ref(&self.schema, self.resolved.get_names(), value, &mut out)
            .map_err(|e| AvroError::Encode {
                topic: self.topic.clone(),
                source: Box::new(e),
            })?;
        Ok(out)
    }

    /// Decodes into a serde type mirroring the schema.
    pub fn decode_serde<T: serde::de::DeserializeOwned>(
        &self,
        bytes: &[u8],
    ) -> Result<T, AvroError> {
        let v = self.decode(bytes)?;
        apache_avro::from_value(&v).map_err(|e| AvroError::Decode {
            topic: self.topic.clone(),
            source: Box::new(e),
        })
    }

    pub fn decode(&self, mut bytes: &[u8]) -> Result<Value, AvroError> {
        for (header, writer) in &self.previous {
            if let Some(mut datum) = bytes.strip_prefix(header.as_slice()) {
                return apache_avro::reader::datum::GenericDatumReader::builder(writer)
                    .reader_schema(&self.schema)
                    .build()
                    .and_then(|r| r.read_value(&mut datum))
                    .map_err(|e| AvroError::Decode {
                        topic: self.topic.clone(),
                        source: Box::new(e),
                    });
            }
        }
        self.reader
            .read_value(&mut bytes)
            .map_err(|e| AvroError::Decode {
                topic: self.topic.clone(),
                source: Box::new(e),
            })
    }
}

/// The field types entity models may fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    String,
    NullableString,
    Long,
    Boolean,
    Other,
}

impl FieldKind {
    fn of(schema: &Schema) -> FieldKind {
        match schema {
            Schema::String => FieldKind::String,
            Schema::Long | Schema::TimestampMicros => FieldKind::Long,
            Schema::Boolean => FieldKind::Boolean,
            Schema::Union(u) => {
                let v = u.variants();
                if v.len() == 2 && v[0] == Schema::Null && v[1] == Schema::String {
                    FieldKind::NullableString
                } else {
                    FieldKind::Other
                }
            }
            _ => FieldKind::Other,
        }
    }
}

/// Looks up a record field by name in a decoded value.
pub fn field<'a>(record: &'a Value, name: &str) -> Option<&'a Value> {
    match record {
        Value::Record(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
        _ => None,
    }
}

/// A string field, looking through `["null","string"]` unions.
pub fn field_str<'a>(record: &'a Value, name: &str) -> Option<&'a str> {
    match field(record, name)? {
        Value::String(s) => Some(s),
        Value::Union(_, inner) => match inner.as_ref() {
            Value::String(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// A long field (also timestamps).
pub fn field_i64(record: &Value, name: &str) -> Option<i64> {
    match field(record, name)? {
        Value::Long(v) | Value::TimestampMicros(v) => Some(*v),
        _ => None,
    }
}

/// `["null","string"]` value.
pub fn nullable_string(v: Option<String>) -> Value {
    match v {
        Some(s) => Value::Union(1, Box::new(Value::String(s))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_schemas_parse() {
        for (topic, _) in SCHEMAS {
            AvroCodec::for_topic(topic).unwrap();
        }
        assert!(matches!(
            AvroCodec::for_topic("nope.v1"),
            Err(AvroError::UnknownTopic(_))
        ));
    }

    #[test]
    fn stock_round_trip_uses_single_object_encoding() {
        let codec = AvroCodec::for_topic("erp.stock.v1").unwrap();
        let value = Value::Record(vec![
            ("key".into(), Value::String("SKU-1/WH1".into())),
            ("version".into(), Value::Long(42)),
            ("source_ts".into(), Value::TimestampMicros(1)),
            ("event_id".into(), Value::String("e".into())),
            ("deleted".into(), Value::Boolean(false)),
            ("sku".into(), Value::String("SKU-1".into())),
            ("warehouse".into(), Value::String("WH1".into())),
            ("on_hand".into(), nullable_string(Some("5".into()))),
            ("reserved".into(), nullable_string(Some("1".into()))),
            ("available".into(), nullable_string(Some("4".into()))),
            (
                "reserved_by_channel".into(),
                nullable_string(Some(r#"{"demo":"1"}"#.into())),
            ),
        ]);
        let bytes = codec.encode(&value).unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        let back = codec.decode(&bytes).unwrap();
        assert_eq!(field_str(&back, "available"), Some("4"));
        assert_eq!(field_i64(&back, "version"), Some(42));
        // A record of another schema is refused by its fingerprint.
        let dlq = AvroCodec::for_topic("flywheel.dlq.v1").unwrap();
        assert!(dlq.decode(&bytes).is_err());
    }

    #[test]
    fn a_record_of_the_previous_stock_schema_still_decodes() {
        let old = Schema::parse_str(PREVIOUS_SCHEMAS[0].1).unwrap();
        let mut writer = GenericSingleObjectWriter::new_with_capacity(&old, 256).unwrap();
        let value = Value::Record(vec![
            ("key".into(), Value::String("SKU-1/WH1".into())),
            ("version".into(), Value::Long(7)),
            ("source_ts".into(), Value::TimestampMicros(1)),
            ("event_id".into(), Value::String("e".into())),
            ("deleted".into(), Value::Boolean(false)),
            ("sku".into(), Value::String("SKU-1".into())),
            ("warehouse".into(), Value::String("WH1".into())),
            ("on_hand".into(), nullable_string(Some("5".into()))),
            ("reserved".into(), nullable_string(Some("1".into()))),
            ("available".into(), nullable_string(Some("4".into()))),
        ]);
        let mut bytes = Vec::new();
        writer.write_value_ref(&value, &mut bytes).unwrap();
        let codec = AvroCodec::for_topic("erp.stock.v1").unwrap();
        let back = codec.decode(&bytes).unwrap();
        assert_eq!(field_str(&back, "on_hand"), Some("5"));
        assert_eq!(field_str(&back, "reserved_by_channel"), None);
        // Garbage after a known header is an error, not a panic.
        let mut bad = bytes[..10].to_vec();
        bad.push(0xFF);
        assert!(codec.decode(&bad).is_err());
    }

    #[test]
    fn field_kinds() {
        let codec = AvroCodec::for_topic("erp.stock.v1").unwrap();
        let kinds: HashMap<_, _> = codec.fields().into_iter().collect();
        assert_eq!(kinds["sku"], FieldKind::String);
        assert_eq!(kinds["on_hand"], FieldKind::NullableString);
        assert_eq!(kinds["version"], FieldKind::Long);
        assert_eq!(kinds["deleted"], FieldKind::Boolean);
    }
}
