//! Parses a JSON document into a [`Node`] tree that holds only the parts a
//! reader declared it needs; everything else is checked for syntax and
//! skipped without being built.
//!
//! Why: a real Shopify order webhook is 6–25 KB, of which a mapping reads a
//! few dozen fields. Building the whole `serde_json::Value` and dropping it
//! again was 41% of the gateway benchmark's CPU with real bodies. A pruned
//! `Value` still cost an owned `String` per key and per string and a
//! `BTreeMap` per object, and glibc's `malloc`/`free` were a quarter of the
//! server's time; a [`Node`] borrows its strings and keys from the body
//! (unless they hold escapes) and keeps an object's fields in one `Vec`.
//!
//! The mappings read either tree through [`JsonRead`], so the same mapping
//! code serves a webhook parsed here and an API response parsed whole
//! (`shop::mapping`'s tests check both ways agree on the real samples).

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

/// Which parts of a document to keep.
#[derive(Debug)]
pub enum Shape {
    /// The whole value, whatever it is.
    Any,
    /// Of an object, only these keys, each with its own shape; of an array,
    /// each element with this shape; a scalar as it is.
    Object(&'static [(&'static str, Shape)]),
}

/// A parsed JSON value whose strings borrow from the document.
#[derive(Clone, Debug, PartialEq)]
pub enum Node<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    /// Fields in document order; a repeated key keeps every occurrence and
    /// [`JsonRead::field`] reads the last, as `serde_json::Value` keeps it.
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
}

/// What the mappings read of a JSON value, whichever tree holds it.
pub trait JsonRead: Sized {
    /// The value of `name` if this is an object that has it.
    fn field(&self, name: &str) -> Option<&Self>;
    fn as_str(&self) -> Option<&str>;
    /// A number as JSON writes it (`serde_json::Number`'s display).
    fn as_number(&self) -> Option<&Number>;
    fn as_i64(&self) -> Option<i64> {
        self.as_number().and_then(Number::as_i64)
    }
    fn as_items(&self) -> Option<&[Self]>;
    fn is_object(&self) -> bool;
}

impl JsonRead for Value {
    fn field(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
    fn as_str(&self) -> Option<&str> {
        Value::as_str(self)
    }
    fn as_number(&self) -> Option<&Number> {
        match self {
            Value::Number(n) => Some(n),
            _ => None,
        }
    }
    fn as_items(&self) -> Option<&[Value]> {
        self.as_array().map(Vec::as_slice)
    }
    fn is_object(&self) -> bool {
        Value::is_object(self)
    }
}

impl JsonRead for Node<'_> {
    fn field(&self, name: &str) -> Option<&Self> {
        match self {
            Node::Object(fields) => fields.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Node::String(s) => Some(s),
            _ => None,
        }
    }
    fn as_number(&self) -> Option<&Number> {
        match self {
            Node::Number(n) => Some(n),
            _ => None,
        }
    }
    fn as_items(&self) -> Option<&[Self]> {
        match self {
            Node::Array(items) => Some(items),
            _ => None,
        }
    }
    fn is_object(&self) -> bool {
        matches!(self, Node::Object(_))
    }
}

impl Node<'_> {
    /// The same value as a `serde_json::Value` (repeated keys: the last).
    pub fn to_value(&self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Number(n) => Value::Number(n.clone()),
            Node::String(s) => Value::String(s.to_string()),
            Node::Array(items) => Value::Array(items.iter().map(Node::to_value).collect()),
            Node::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

/// Parses `bytes` (one JSON document, nothing after it but whitespace),
/// keeping what `shape` names. Malformed JSON is an error even in the parts
/// that are skipped.
pub fn parse<'a>(bytes: &'a [u8], shape: &Shape) -> serde_json::Result<Node<'a>> {
    // serde_json checks UTF-8 only in the strings it builds; checked here
    // once, a body that is not UTF-8 is refused wherever the bad bytes are.
    let text = std::str::from_utf8(bytes).map_err(serde::de::Error::custom)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let node = Pruned(shape).deserialize(&mut de)?;
    de.end()?;
    Ok(node)
}

struct Pruned<'s>(&'s Shape);

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Node<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node<'de>, D::Error> {
        let keep = match self.0 {
            Shape::Any => None,
            Shape::Object(fields) => Some(*fields),
        };
        deserializer.deserialize_any(PrunedVisitor(keep))
    }
}

/// `None` keeps every field of an object (and of the objects in it).
struct PrunedVisitor(Option<&'static [(&'static str, Shape)]>);

impl<'de> Visitor<'de> for PrunedVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut kept = Vec::new();
        while let Some(key) = map.next_key_seed(Text)? {
            match self.0 {
                None => kept.push((key, map.next_value_seed(Pruned(&Shape::Any))?)),
                Some(fields) => match fields.iter().find(|(name, _)| *name == key) {
                    // The shape's own name: no allocation for an escaped key.
                    Some((name, shape)) => {
                        kept.push((Cow::Borrowed(*name), map.next_value_seed(Pruned(shape))?))
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                },
            }
        }
        Ok(Node::Object(kept))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let shape = self.0.map_or(Shape::Any, Shape::Object);
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(Pruned(&shape))? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node<'de>, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node<'de>, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node<'de>, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node<'de>, E> {
        // As `serde_json::Value` does: a non-finite float is null.
        Ok(Number::from_f64(v).map_or(Node::Null, Node::Number))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Owned(v)))
    }

    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }
}

/// A string borrowed from the document where it has no escapes (serde's own
/// `Cow<str>` always copies).
struct Text;

impl<'de> DeserializeSeed<'de> for Text {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Text {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
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
        let pruned = parse(body, &ORDER).unwrap().to_value();
        assert_eq!(
            pruned,
            json!({"id": 7, "customer": {"a": [1, {"b": null}]},
                   "line_items": [{"id": 1, "sku": "S"}, {"id": 2}], "empty": []})
        );
        // A listed key whose value is not an object keeps that value.
        assert_eq!(
            parse(br#"{"line_items": "none", "id": -1.5}"#, &ORDER)
                .unwrap()
                .to_value(),
            json!({"line_items": "none", "id": -1.5})
        );
        // Strings with escapes arrive decoded, as with a full parse.
        assert_eq!(
            parse(br#"{"id": "a\"b\u00e9"}"#, &ORDER)
                .unwrap()
                .to_value(),
            json!({"id": "a\"bé"})
        );
        // The last of a repeated key is what a mapping reads, as with a full parse.
        let repeated = br#"{"id": 1, "id": 2}"#;
        let whole: Value = serde_json::from_slice(repeated).unwrap();
        let node = parse(repeated, &ORDER).unwrap();
        assert_eq!(node.field("id").and_then(JsonRead::as_i64), Some(2));
        assert_eq!(
            node.field("id").and_then(JsonRead::as_i64),
            whole.field("id").and_then(JsonRead::as_i64)
        );
    }

    /// The point of `Node`: what has no escapes is not copied out of the body.
    #[test]
    fn strings_and_keys_borrow_from_the_body_unless_escaped() {
        let body = br#"{"customer": {"plain": "x", "esc\u0061ped": "a\nb"}, "id": "7"}"#;
        let node = parse(body, &ORDER).unwrap();
        assert!(matches!(
            node.field("id"),
            Some(Node::String(Cow::Borrowed("7")))
        ));
        let Some(Node::Object(fields)) = node.field("customer") else {
            panic!("customer kept whole: {node:?}");
        };
        assert!(matches!(
            &fields[0],
            (Cow::Borrowed("plain"), Node::String(Cow::Borrowed("x")))
        ));
        assert!(matches!(
            &fields[1],
            (Cow::Owned(k), Node::String(Cow::Owned(v))) if k == "escaped" && v == "a\nb"
        ));
        // A kept key that was escaped in the body matches its shape's name.
        let escaped_key = br#"{"\u0069d": 9}"#;
        assert_eq!(
            parse(escaped_key, &ORDER)
                .unwrap()
                .field("id")
                .and_then(JsonRead::as_i64),
            Some(9)
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
