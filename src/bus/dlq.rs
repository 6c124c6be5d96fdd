//! Dead letters: input Flywheel cannot process, parked with the reason so the
//! pipeline keeps flowing and an operator can fix the cause and redrive.

use apache_avro::types::Value;

use super::BusError;
use super::avro::{AvroCodec, nullable_string};
use super::producer::OutRecord;
use super::topics::DEAD_LETTERS;

#[derive(Clone, Debug, Default)]
pub struct DeadLetter {
    pub key: String,
    /// Stable class, e.g. `unmappable_row`.
    pub error_class: String,
    /// What went wrong and what to change.
    pub reason: String,
    /// Which part of Flywheel gave up, e.g. `erp.source`.
    pub stage: String,
    pub occurred_at_micros: i64,
    pub attempts: i32,
    pub original_topic: Option<String>,
    pub original_partition: Option<i32>,
    pub original_offset: Option<i64>,
    pub source_position: Option<String>,
    /// The input as Flywheel saw it.
    pub context: Option<serde_json::Value>,
    pub payload: Option<Vec<u8>>,
}

impl DeadLetter {
    pub fn to_record(&self) -> Result<OutRecord, BusError> {
        let codec = AvroCodec::for_topic(DEAD_LETTERS)?;
        let value = Value::Record(vec![
            ("key".into(), Value::String(self.key.clone())),
            (
                "error_class".into(),
                Value::String(self.error_class.clone()),
            ),
            ("reason".into(), Value::String(self.reason.clone())),
            ("stage".into(), Value::String(self.stage.clone())),
            (
                "occurred_at".into(),
                Value::TimestampMicros(self.occurred_at_micros),
            ),
            ("attempts".into(), Value::Int(self.attempts.max(1))),
            (
                "original_topic".into(),
                nullable_string(self.original_topic.clone()),
            ),
            (
                "original_partition".into(),
                nullable(self.original_partition.map(Value::Int)),
            ),
            (
                "original_offset".into(),
                nullable(self.original_offset.map(Value::Long)),
            ),
            (
                "source_position".into(),
                nullable_string(self.source_position.clone()),
            ),
            (
                "context".into(),
                nullable_string(self.context.as_ref().map(|c| c.to_string())),
            ),
            (
                "payload".into(),
                nullable(self.payload.clone().map(Value::Bytes)),
            ),
        ]);
        let mut headers = vec![
            ("flywheel.error.class", self.error_class.clone()),
            ("flywheel.stage", self.stage.clone()),
            ("flywheel.attempts", self.attempts.max(1).to_string()),
        ];
        if let Some(t) = &self.original_topic {
            headers.push(("flywheel.original.topic", t.clone()));
        }
        if let Some(p) = self.original_partition {
            headers.push(("flywheel.original.partition", p.to_string()));
        }
        if let Some(o) = self.original_offset {
            headers.push(("flywheel.original.offset", o.to_string()));
        }
        Ok(OutRecord {
            topic: DEAD_LETTERS,
            key: self.key.clone(),
            payload: codec.encode(&value)?.into(),
            headers,
        })
    }
}

impl DeadLetter {
    /// Reads a `flywheel.dlq.v1` record back; `None` if it is not one.
    pub fn from_value(v: &Value) -> Option<DeadLetter> {
        use super::avro::{field, field_i64, field_str};
        let inner = |name: &str| match field(v, name)? {
            Value::Union(_, b) => Some(b.as_ref().clone()),
            other => Some(other.clone()),
        };
        Some(DeadLetter {
            key: field_str(v, "key")?.to_owned(),
            error_class: field_str(v, "error_class")?.to_owned(),
            reason: field_str(v, "reason")?.to_owned(),
            stage: field_str(v, "stage")?.to_owned(),
            occurred_at_micros: field_i64(v, "occurred_at")?,
            attempts: match inner("attempts")? {
                Value::Int(n) => n,
                _ => 1,
            },
            original_topic: field_str(v, "original_topic").map(str::to_owned),
            original_partition: match inner("original_partition") {
                Some(Value::Int(n)) => Some(n),
                _ => None,
            },
            original_offset: match inner("original_offset") {
                Some(Value::Long(n)) => Some(n),
                _ => None,
            },
            source_position: field_str(v, "source_position").map(str::to_owned),
            context: field_str(v, "context").and_then(|c| serde_json::from_str(c).ok()),
            payload: match inner("payload") {
                Some(Value::Bytes(b)) => Some(b),
                _ => None,
            },
        })
    }
}

fn nullable(v: Option<Value>) -> Value {
    match v {
        Some(v) => Value::Union(1, Box::new(v)),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::avro::field_str;

    #[test]
    fn encodes_with_reason_and_headers() {
        let dl = DeadLetter {
            key: "public.stock_quant".into(),
            error_class: "unmappable_row".into(),
            reason: "product 7 has no SKU".into(),
            stage: "erp.source".into(),
            context: Some(serde_json::json!({"product_id": "7"})),
            ..Default::default()
        };
        let rec = dl.to_record().unwrap();
        assert_eq!(rec.topic, DEAD_LETTERS);
        assert!(
            rec.headers
                .iter()
                .any(|(k, v)| *k == "flywheel.error.class" && v == "unmappable_row")
        );
        let back = AvroCodec::for_topic(DEAD_LETTERS)
            .unwrap()
            .decode(&rec.payload)
            .unwrap();
        assert_eq!(field_str(&back, "reason"), Some("product 7 has no SKU"));
        assert_eq!(field_str(&back, "context"), Some(r#"{"product_id":"7"}"#));
    }

    #[test]
    fn reads_back_what_it_wrote() {
        let dl = DeadLetter {
            key: "SKU-9/WH1".into(),
            error_class: "unknown_sku".into(),
            reason: "no variant".into(),
            stage: "processor.stock".into(),
            occurred_at_micros: 42,
            attempts: 2,
            original_topic: Some("erp.stock.v1".into()),
            original_partition: Some(1),
            original_offset: Some(77),
            payload: Some(vec![1, 2, 3]),
            ..Default::default()
        };
        let rec = dl.to_record().unwrap();
        let v = AvroCodec::for_topic(DEAD_LETTERS)
            .unwrap()
            .decode(&rec.payload)
            .unwrap();
        let back = DeadLetter::from_value(&v).expect("a dead letter");
        assert_eq!(back.key, dl.key);
        assert_eq!(back.attempts, 2);
        assert_eq!(back.original_topic, dl.original_topic);
        assert_eq!(back.original_partition, Some(1));
        assert_eq!(back.original_offset, Some(77));
        assert_eq!(back.payload, Some(vec![1, 2, 3]));
        assert_eq!(back.occurred_at_micros, 42);
    }
}
