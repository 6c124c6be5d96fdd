//! Where a change sits in the ERP's change stream, whatever the database:
//! the version of every ERP event.

use std::fmt;

/// A position that only grows as the ERP's change stream advances, so it
/// doubles as the per-key version of ERP events (a processor applies an
/// event only if its version is newer than the one it applied last).
/// PostgreSQL: the commit LSN. A binlog source: the file number × 2^32 plus
/// the end position of the commit event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub u64);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
