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
            payload: codec.encode(&value)?,
            headers,
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
}
