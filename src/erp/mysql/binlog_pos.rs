//! Binlog coordinates (file, position) and the source-neutral [`Position`]
//! they map to.

use std::fmt;

use crate::erp::position::Position;

/// A place in the server's binary log: the file name (`binlog.000042`) and
/// the byte offset just after an event, where a replica resumes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BinlogPos {
    pub file: String,
    pub pos: u64,
}

impl fmt::Display for BinlogPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

impl BinlogPos {
    pub fn new(file: impl Into<String>, pos: u64) -> BinlogPos {
        BinlogPos {
            file: file.into(),
            pos,
        }
    }

    /// The sequence number of the file: the digits after its last `.`
    /// (`binlog.000042` → 42). Servers number files upwards and never reuse a
    /// number, which is what makes [`Self::position`] grow.
    pub fn file_number(&self) -> Option<u32> {
        let (_, digits) = self.file.rsplit_once('.')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// File number × 2^32 + position: grows with every event, across files.
    /// `None` for a file name without a number or a position beyond 32 bits
    /// (binlog v4 positions are 32 bits).
    pub fn position(&self) -> Option<Position> {
        let n = self.file_number()?;
        let pos = u32::try_from(self.pos).ok()?;
        Some(Position(((n as u64) << 32) | pos as u64))
    }

    /// The coordinates of a [`Position`] in a file with the given base name
    /// (`binlog` for `binlog.000042`), digits padded to six as servers do.
    pub fn from_position(base: &str, p: Position) -> BinlogPos {
        BinlogPos {
            file: format!("{base}.{:06}", p.0 >> 32),
            pos: p.0 & 0xFFFF_FFFF,
        }
    }

    /// The file name without its number (`binlog.000042` → `binlog`).
    pub fn base_name(&self) -> &str {
        self.file.rsplit_once('.').map_or(&self.file, |(b, _)| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_grow_across_files() {
        let a = BinlogPos::new("binlog.000001", 4_000_000_000)
            .position()
            .unwrap();
        let b = BinlogPos::new("binlog.000002", 4).position().unwrap();
        assert!(b > a);
        assert_eq!(b, Position((2 << 32) | 4));
    }

    #[test]
    fn coordinates_round_trip() {
        let p = BinlogPos::new("mariadb-bin.000123", 98_765);
        let back = BinlogPos::from_position(p.base_name(), p.position().unwrap());
        assert_eq!(back, p);
    }

    #[test]
    fn names_without_a_number_have_no_position() {
        assert_eq!(BinlogPos::new("binlog", 4).position(), None);
        assert_eq!(BinlogPos::new("binlog.", 4).position(), None);
        assert_eq!(BinlogPos::new("binlog.00x1", 4).position(), None);
        assert_eq!(BinlogPos::new("binlog.000001", 1 << 33).position(), None);
    }
}
