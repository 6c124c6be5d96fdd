//! Parses a JSON document into a `serde_json::Value` that holds only the
//! parts a reader declared it needs; everything else is checked for syntax
//! and skipped without being built.
//!
//! Why: a real Shopify order webhook is 6–25 KB, of which a mapping reads a
//! few dozen fields. Building the whole `Value` and dropping it again was 41%
//! of the gateway benchmark's CPU with real bodies. The reader still gets a
//! `Value`, so the mapping code is the same whichever way the body was parsed
//! (`shop::mapping`'s tests check both ways agree on the real samples).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Which parts of a document to keep.
#[derive(Debug)]
pub enum Shape {
    /// The whole value, whatever it is.
    Any,
    /// Of an object, only these keys, each with its own shape; of an array,
    /// each element with this shape; a scalar as it is.
    Object(&'static [(&'static str, Shape)]),
}

/// Parses `bytes` (one JSON document, nothing after it but whitespace),
/// keeping what `shape` names. Malformed JSON is an error even in the parts
/// that are skipped.
pub fn parse(bytes: &[u8], shape: &Shape) -> serde_json::Result<Value> {
    // serde_json checks UTF-8 only in the strings it builds; checked here
    // once, a body that is not UTF-8 is refused wherever the bad bytes are.
    let text = std::str::from_utf8(bytes).map_err(serde::de::Error::custom)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Pruned(shape).deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

struct Pruned<'s>(&'s Shape);

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        match self.0 {
            Shape::Any => serde::Deserialize::deserialize(deserializer),
            Shape::Object(fields) => deserializer.deserialize_any(PrunedVisitor(fields)),
        }
    }
}

struct PrunedVisitor(&'static [(&'static str, Shape)]);

impl<'de> Visitor<'de> for PrunedVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut kept = Map::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match self.0.iter().find(|(name, _)| *name == key) {
                Some((name, shape)) => {
                    // A repeated key: the last one wins, as in `serde_json::Value`.
                    kept.insert((*name).to_owned(), map.next_value_seed(Pruned(shape))?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(kept))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let shape = Shape::Object(self.0);
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(Pruned(&shape))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // As `serde_json::Value` does: a non-finite float is null.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ITEM: &[(&str, Shape)] = &[("id", Shape::Any), ("sku", Shape::Any)];
    const ORDER: Shape = Shape::Object(&[
        ("id", Shape::Any),
        ("customer", Shape::Any),
        ("line_items", Shape::Object(ITEM)),
        ("empty", Shape::Object(ITEM)),
    ]);

    #[test]
    fn keeps_what_the_shape_names_and_nothing_else() {
        let body = br#"{"id": 7, "note": "x", "customer": {"a": [1, {"b": null}]},
            "line_items": [{"id": 1, "sku": "S", "tax_lines": [{"rate": 0.2}]}, {"id": 2}],
            "empty": [], "flag": true}"#;
        let pruned = parse(body, &ORDER).unwrap();
        assert_eq!(
            pruned,
            json!({"id": 7, "customer": {"a": [1, {"b": null}]},
                   "line_items": [{"id": 1, "sku": "S"}, {"id": 2}], "empty": []})
        );
        // A listed key whose value is not an object keeps that value.
        assert_eq!(
            parse(br#"{"line_items": "none", "id": -1.5}"#, &ORDER).unwrap(),
            json!({"line_items": "none", "id": -1.5})
        );
        // Strings with escapes arrive decoded, as with a full parse.
        assert_eq!(
            parse(br#"{"id": "a\"b\u00e9"}"#, &ORDER).unwrap(),
            json!({"id": "a\"bé"})
        );
        // The last of a repeated key wins, as with a full parse.
        assert_eq!(
            parse(br#"{"id": 1, "id": 2}"#, &ORDER).unwrap(),
            serde_json::from_slice::<Value>(br#"{"id": 1, "id": 2}"#).unwrap()
        );
    }

    #[test]
    fn malformed_json_fails_even_where_it_is_skipped() {
        for bad in [
            &br#"{"id": 1, "note": [1, 2}"#[..],
            br#"{"id": 1, "note": tru}"#,
            br#"{"id": 1} trailing"#,
            br#"{"id": 1"#,
            b"",
            b"\xff",
            b"{\"id\": 1, \"note\": \"\xff\"}",
        ] {
            assert!(
                parse(bad, &ORDER).is_err(),
                "{:?} parsed",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
