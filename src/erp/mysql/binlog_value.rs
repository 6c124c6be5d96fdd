//! What capture asks of binlog bytes before mysql_common decodes them (which
//! event kinds to decode, table maps it can size), and column values as the
//! text the connector's SQL compares with. Pure, and compiled into the binlog
//! fuzz target from this file (as is `row_image`), so the fuzzer decodes
//! exactly what the source decodes.

use mysql_common::Value;
use mysql_common::binlog::consts::{EventType, UnknownEventType};
use mysql_common::binlog::events::TableMapEvent;
use mysql_common::binlog::value::BinlogValue;
use mysql_common::constants::ColumnType;

/// Whether capture decodes events of this type: the others carry no rows,
/// and decoding a malformed one could allocate without bound (mysql_common
/// sizes a GTID set from its header: an abort no guard can catch).
pub fn is_read(kind: Result<EventType, UnknownEventType>) -> bool {
    use EventType::*;
    matches!(
        kind,
        Ok(ROTATE_EVENT
            | FORMAT_DESCRIPTION_EVENT
            | HEARTBEAT_EVENT
            | QUERY_EVENT
            | XID_EVENT
            | TABLE_MAP_EVENT
            | WRITE_ROWS_EVENT_V1
            | UPDATE_ROWS_EVENT_V1
            | DELETE_ROWS_EVENT_V1
            | WRITE_ROWS_EVENT
            | UPDATE_ROWS_EVENT
            | DELETE_ROWS_EVENT)
    )
}

/// Checks a table map's column metadata against what the row decoder reads
/// without failing. mysql_common 0.37.3 indexes a column's metadata bytes
/// unchecked (a truncated table map panics, as does a typed array's), and
/// sizes a DECIMAL from
/// `precision − scale` unchecked: both found by fuzz/binlog.rs, both refused
/// here with the column named.
pub fn check_table_map(tme: &TableMapEvent<'_>) -> Result<(), String> {
    use ColumnType::*;
    for i in 0..tme.columns_count() as usize {
        let Ok(Some(ty)) = tme.get_column_type(i) else {
            continue;
        };
        if ty == MYSQL_TYPE_TYPED_ARRAY {
            // MySQL 8's multi-valued index arrays: never a MariaDB column, and
            // decoded from metadata mysql_common does not check.
            return Err(format!(
                "column {i} is a typed array, which Flywheel does not read"
            ));
        }
        let needed = match ty {
            MYSQL_TYPE_STRING
            | MYSQL_TYPE_BIT
            | MYSQL_TYPE_NEWDECIMAL
            | MYSQL_TYPE_ENUM
            | MYSQL_TYPE_SET
            | MYSQL_TYPE_VARCHAR
            | MYSQL_TYPE_VAR_STRING => 2,
            MYSQL_TYPE_TIMESTAMP2
            | MYSQL_TYPE_DATETIME2
            | MYSQL_TYPE_TIME2
            | MYSQL_TYPE_BLOB
            | MYSQL_TYPE_TINY_BLOB
            | MYSQL_TYPE_MEDIUM_BLOB
            | MYSQL_TYPE_LONG_BLOB
            | MYSQL_TYPE_GEOMETRY
            | MYSQL_TYPE_JSON
            | MYSQL_TYPE_FLOAT
            | MYSQL_TYPE_DOUBLE => 1,
            _ => 0,
        };
        let meta = tme.get_column_metadata(i).unwrap_or_default();
        if meta.len() < needed {
            return Err(format!(
                "column {i} ({ty:?}) has {} metadata bytes, {needed} needed",
                meta.len()
            ));
        }
        if ty == MYSQL_TYPE_NEWDECIMAL && (meta[1] > meta[0] || meta[0] > 65) {
            return Err(format!(
                "column {i} is a DECIMAL with impossible precision {} and scale {}",
                meta[0], meta[1]
            ));
        }
    }
    Ok(())
}

/// A binlog value as the text the connector's SQL compares with; `None` for NULL.
pub fn binlog_value_text(v: &BinlogValue<'_>) -> Option<String> {
    match v {
        BinlogValue::Value(v) => value_text(v),
        BinlogValue::Jsonb(j) => serde_json::Value::try_from(j.clone())
            .ok()
            .map(|j| j.to_string()),
        // Only MySQL 8's partial JSON updates send diffs; a JSON column is no
        // sensible trigger column, so it reads as NULL.
        BinlogValue::JsonDiff(_) => None,
    }
}

/// A MariaDB/MySQL value as text, formatted as the server prints it.
pub fn value_text(v: &Value) -> Option<String> {
    Some(match v {
        Value::NULL => return None,
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Double(d) => d.to_string(),
        Value::Date(y, mo, d, h, mi, s, us) => {
            if (*h, *mi, *s, *us) == (0, 0, 0, 0) {
                format!("{y:04}-{mo:02}-{d:02}")
            } else if *us == 0 {
                format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
            } else {
                format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}")
            }
        }
        Value::Time(neg, days, h, mi, s, us) => {
            let hours = *days as u64 * 24 + *h as u64;
            let sign = if *neg { "-" } else { "" };
            if *us == 0 {
                format!("{sign}{hours:02}:{mi:02}:{s:02}")
            } else {
                format!("{sign}{hours:02}:{mi:02}:{s:02}.{us:06}")
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_the_server_prints_them() {
        assert_eq!(value_text(&Value::NULL), None);
        assert_eq!(
            value_text(&Value::Bytes(b"SKU-1".to_vec())).as_deref(),
            Some("SKU-1")
        );
        assert_eq!(value_text(&Value::Int(-7)).as_deref(), Some("-7"));
        assert_eq!(
            value_text(&Value::UInt(u64::MAX)).as_deref(),
            Some("18446744073709551615")
        );
        assert_eq!(
            value_text(&Value::Date(2026, 12, 2, 0, 0, 0, 0)).as_deref(),
            Some("2026-12-02")
        );
        assert_eq!(
            value_text(&Value::Date(2026, 12, 2, 9, 5, 1, 250)).as_deref(),
            Some("2026-12-02 09:05:01.000250")
        );
        assert_eq!(
            value_text(&Value::Time(true, 1, 2, 3, 4, 0)).as_deref(),
            Some("-26:03:04")
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_do_not_fail() {
        assert_eq!(
            value_text(&Value::Bytes(vec![0xff, b'a'])).as_deref(),
            Some("\u{fffd}a")
        );
    }
}
