//! The row images of a rows event, read for capture: only the columns capture
//! wants become text; the others are stepped over by their binary size.
//!
//! mysql_common's `RowsEvent::rows` gives every image as a `BinlogRow`, and
//! for each one rebuilds the table's column descriptions (names, schema and
//! table as owned strings, the optional metadata re-parsed, each column's
//! metadata found by a walk from the first) and copies out every value. That
//! was a third of the MariaDB source's time, for the two columns of nine that
//! a `tabBin` trigger reads. Here a table's column types, metadata and
//! signedness are learnt once per table map; the wanted values are still
//! decoded by mysql_common's `BinlogValue`, so their text is the same as
//! before, and any type whose size is not plain from its metadata is decoded
//! and dropped rather than guessed. Pure: the bytes come from outside, so
//! every read is bounds-checked and a bad row is an error, never a panic.

use std::io;

use mysql_common::binlog::decimal::decimal_bin_size;
use mysql_common::binlog::events::{OptionalMetaExtractor, RowsEventData, TableMapEvent};
use mysql_common::binlog::value::BinlogValue;
use mysql_common::constants::ColumnType;
use mysql_common::io::ParseBuf;

use super::binlog_value::binlog_value_text;

/// One table's columns as its table map describes them, and which of them
/// capture wants as text.
#[derive(Debug, Clone)]
pub struct TableForm {
    columns: Vec<ColumnForm>,
}

#[derive(Debug, Clone)]
struct ColumnForm {
    ty: ColumnType,
    meta: Vec<u8>,
    unsigned: bool,
    wanted: bool,
    size: Size,
}

/// How many bytes a non-NULL value of a column takes in a row image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Size {
    Fixed(usize),
    /// A little-endian length of this many bytes, then that many bytes.
    LengthPrefixed(usize),
    /// Not plain from the metadata: decoded by mysql_common and dropped.
    Decoded,
}

/// One row image: how many columns it carries, and the wanted ones as text
/// (`None` for NULL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub present: usize,
    values: Vec<(usize, Option<String>)>,
}

impl Image {
    /// The text of wanted column `column`; `None` when NULL, absent from the
    /// image or not wanted.
    pub fn text(&self, column: usize) -> Option<&str> {
        self.values
            .iter()
            .find(|(c, _)| *c == column)
            .and_then(|(_, text)| text.as_deref())
    }
}

/// A row of a rows event: the before image (updates, deletes) and the after
/// image (inserts, updates).
pub type RowImages = (Option<Image>, Option<Image>);

impl TableForm {
    /// Learns a table map's columns; `wanted` are the indices capture reads.
    /// The table map must have passed `binlog_value::check_table_map`, which
    /// guarantees the metadata each type's size is read from.
    pub fn new(tme: &TableMapEvent<'_>, wanted: &[usize]) -> io::Result<TableForm> {
        let extractor = OptionalMetaExtractor::new(tme.iter_optional_meta())?;
        let mut signedness = extractor.iter_signedness();
        let count = tme.columns_count() as usize;
        let mut columns = Vec::with_capacity(count);
        for i in 0..count {
            let ty = match tme.get_column_type(i) {
                Ok(Some(ty)) => ty,
                Ok(None) => return Err(invalid(format!("column {i} has no type"))),
                Err(e) => return Err(invalid(format!("column {i}: {e}"))),
            };
            let meta = tme.get_column_metadata(i).unwrap_or_default().to_vec();
            // As mysql_common reads it: one signedness bit per numeric column.
            let unsigned = ty.is_numeric_type() && signedness.next().unwrap_or(false);
            let size = size_of(ty, &meta);
            columns.push(ColumnForm {
                ty,
                meta,
                unsigned,
                wanted: wanted.contains(&i),
                size,
            });
        }
        Ok(TableForm { columns })
    }

    /// Every row of a rows event of this table.
    pub fn rows(&self, event: &RowsEventData<'_>) -> io::Result<Vec<RowImages>> {
        if matches!(event, RowsEventData::PartialUpdateRowsEvent(_)) {
            return Err(invalid(
                "a partial JSON update rows event (MySQL 8), which capture does not read".into(),
            ));
        }
        let num_columns = event.num_columns() as usize;
        if num_columns > self.columns.len() {
            return Err(invalid(format!(
                "a rows event of {num_columns} columns for a table map of {}",
                self.columns.len()
            )));
        }
        let before = event
            .columns_before_image()
            .map(|c| c.iter().by_vals().collect::<Vec<bool>>());
        let after = event
            .columns_after_image()
            .map(|c| c.iter().by_vals().collect::<Vec<bool>>());
        let mut data = event.rows_data();
        let mut rows = Vec::new();
        while !data.is_empty() {
            let start = data.len();
            let before = match &before {
                Some(present) => Some(self.image(present, &mut data)?),
                None => None,
            };
            let after = match &after {
                Some(present) => Some(self.image(present, &mut data)?),
                None => None,
            };
            // An image of no columns takes no bytes; without this a
            // malformed event would yield rows forever.
            if data.len() == start {
                return Err(invalid("a row that takes no bytes".into()));
            }
            rows.push((before, after));
        }
        Ok(rows)
    }

    /// One image of the columns `present` marks, read off the front of `data`.
    fn image(&self, present: &[bool], data: &mut &[u8]) -> io::Result<Image> {
        let count = present.iter().filter(|&&p| p).count();
        let nulls = take(data, count.div_ceil(8))?;
        let mut values = Vec::new();
        let mut n = 0;
        for (i, column) in self.columns.iter().enumerate().take(present.len()) {
            if !present[i] {
                continue;
            }
            let null = nulls[n / 8] & (1 << (n % 8)) != 0;
            n += 1;
            if null {
                if column.wanted {
                    values.push((i, None));
                }
                continue;
            }
            if column.wanted {
                values.push((i, column.decode(data, true)?));
                continue;
            }
            match column.size {
                Size::Fixed(len) => {
                    take(data, len)?;
                }
                Size::LengthPrefixed(prefix) => {
                    let len = take(data, prefix)?
                        .iter()
                        .rev()
                        .fold(0usize, |len, &b| (len << 8) | b as usize);
                    take(data, len)?;
                }
                Size::Decoded => {
                    column.decode(data, false)?;
                }
            }
        }
        Ok(Image {
            present: count,
            values,
        })
    }
}

impl ColumnForm {
    /// Decodes one value off the front of `data` with mysql_common, and
    /// gives its text if `text` (else `None`).
    fn decode(&self, data: &mut &[u8], text: bool) -> io::Result<Option<String>> {
        let mut view = ParseBuf(data);
        let value: BinlogValue<'_> = view.parse((self.ty, &self.meta[..], self.unsigned, false))?;
        let used = data.len() - view.len();
        *data = &data[used..];
        Ok(if text {
            binlog_value_text(&value)
        } else {
            None
        })
    }
}

/// Takes `n` bytes off the front of `data`, or fails without moving it.
fn take<'a>(data: &mut &'a [u8], n: usize) -> io::Result<&'a [u8]> {
    if data.len() < n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("a row image needs {n} more bytes, {} left", data.len()),
        ));
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Ok(head)
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The binary size of a column type's values, where mysql_common's decoder
/// reads a size fixed by the type and metadata; `Decoded` for the rest.
fn size_of(ty: ColumnType, meta: &[u8]) -> Size {
    use ColumnType::*;
    // Fractional seconds: (dec + 1) / 2 bytes, none beyond 6 digits (as
    // mysql_common's `my_*_from_binary` read them).
    let frac = |dec: Option<&u8>| match dec {
        Some(1 | 2) => 1,
        Some(3 | 4) => 2,
        Some(5 | 6) => 3,
        _ => 0,
    };
    match ty {
        MYSQL_TYPE_TINY | MYSQL_TYPE_YEAR => Size::Fixed(1),
        MYSQL_TYPE_SHORT => Size::Fixed(2),
        MYSQL_TYPE_INT24 | MYSQL_TYPE_TIME | MYSQL_TYPE_NEWDATE => Size::Fixed(3),
        MYSQL_TYPE_LONG | MYSQL_TYPE_FLOAT | MYSQL_TYPE_TIMESTAMP => Size::Fixed(4),
        MYSQL_TYPE_LONGLONG | MYSQL_TYPE_DOUBLE | MYSQL_TYPE_DATETIME => Size::Fixed(8),
        MYSQL_TYPE_TIMESTAMP2 => Size::Fixed(4 + frac(meta.first())),
        MYSQL_TYPE_DATETIME2 => Size::Fixed(5 + frac(meta.first())),
        MYSQL_TYPE_TIME2 => Size::Fixed(3 + frac(meta.first())),
        MYSQL_TYPE_NEWDECIMAL => match meta {
            [precision, scale, ..] if scale <= precision => {
                Size::Fixed(decimal_bin_size(*precision as usize, *scale as usize))
            }
            _ => Size::Decoded,
        },
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING => match meta {
            [lo, hi, ..] if u16::from_le_bytes([*lo, *hi]) < 256 => Size::LengthPrefixed(1),
            [_, _, ..] => Size::LengthPrefixed(2),
            _ => Size::Decoded,
        },
        MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_BLOB
        | MYSQL_TYPE_GEOMETRY => match meta.first() {
            Some(&prefix @ 1..=4) => Size::LengthPrefixed(prefix as usize),
            _ => Size::Decoded,
        },
        _ => Size::Decoded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_sizes_are_mysqls() {
        // MySQL's decimal_bin_size: 9 digits in 4 bytes, leftovers by
        // dig2bytes = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4].
        assert_eq!(
            size_of(ColumnType::MYSQL_TYPE_NEWDECIMAL, &[21, 9]),
            Size::Fixed(4 + 2 + 4)
        );
        assert_eq!(
            size_of(ColumnType::MYSQL_TYPE_NEWDECIMAL, &[10, 2]),
            Size::Fixed(4 + 1)
        );
        // 35 integer digits: 3 words + 8 digits in 4 bytes; 30 fraction
        // digits: 3 words + 3 digits in 2 bytes.
        assert_eq!(
            size_of(ColumnType::MYSQL_TYPE_NEWDECIMAL, &[65, 30]),
            Size::Fixed(3 * 4 + 4 + 3 * 4 + 2)
        );
        // A scale above the precision is not sized (check_table_map refuses it).
        assert_eq!(
            size_of(ColumnType::MYSQL_TYPE_NEWDECIMAL, &[2, 5]),
            Size::Decoded
        );
    }

    #[test]
    fn string_and_time_sizes_follow_the_metadata() {
        use ColumnType::*;
        assert_eq!(
            size_of(MYSQL_TYPE_VARCHAR, &[140, 0]),
            Size::LengthPrefixed(1)
        );
        assert_eq!(
            size_of(MYSQL_TYPE_VARCHAR, &[0x30, 0x02]),
            Size::LengthPrefixed(2)
        );
        assert_eq!(size_of(MYSQL_TYPE_BLOB, &[2]), Size::LengthPrefixed(2));
        assert_eq!(size_of(MYSQL_TYPE_BLOB, &[7]), Size::Decoded);
        assert_eq!(size_of(MYSQL_TYPE_DATETIME2, &[6]), Size::Fixed(8));
        assert_eq!(size_of(MYSQL_TYPE_DATETIME2, &[0]), Size::Fixed(5));
        assert_eq!(size_of(MYSQL_TYPE_TIMESTAMP2, &[3]), Size::Fixed(6));
        assert_eq!(size_of(MYSQL_TYPE_TIME2, &[1]), Size::Fixed(4));
        assert_eq!(size_of(MYSQL_TYPE_STRING, &[0xfe, 10]), Size::Decoded);
    }

    #[test]
    fn a_short_read_fails_and_leaves_the_bytes() {
        let mut data: &[u8] = &[1, 2, 3];
        assert!(take(&mut data, 4).is_err());
        assert_eq!(data, &[1, 2, 3]);
        assert_eq!(take(&mut data, 2).ok(), Some(&[1u8, 2][..]));
        assert_eq!(data, &[3]);
    }
}
