//! From row-based binlog events to committed transactions of touched trigger
//! rows.
//!
//! Binlog events of a transaction arrive in commit order: `BEGIN` (a Query
//! event; MariaDB sends its GTID event as one to a replica that does not ask
//! for GTIDs), TABLE_MAP events naming each table, rows events with the full
//! before/after images, and the commit (an XID event, or a `COMMIT` Query event
//! for non-transactional tables). [`Capture`] folds them into one
//! [`CommittedTxn`] per commit, holding per (entity, trigger) the distinct
//! values of the trigger's columns, exactly as the PostgreSQL capture does.
//!
//! Tables in Flywheel's own database are recognised here: a row in its echo
//! mark table marks the transaction as Flywheel's own write, and its source
//! position bookkeeping is never captured (storing a position must not move it).

use std::collections::HashMap;

use mysql_common::binlog::events::{Event, EventData, OptionalMetaExtractor, TableMapEvent};

use super::binlog_pos::BinlogPos;
use super::binlog_value::{check_table_map, is_read};
use super::row_image::{Image, TableForm};
use crate::erp::committed::{CommittedTxn, TriggerRow};
use crate::erp::entity_model::EntityModels;

/// The table whose rows mark Flywheel's own ERP writes (in the state database).
pub const ECHO_MARK_TABLE: &str = "echo_marks";

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("the event does not decode: {0}")]
    Decode(String),
    #[error("a rows event for table id {0} without a TABLE_MAP event before it")]
    UnknownTable(u64),
    #[error(
        "the binlog names no columns for `{table}` and information_schema had none at start; set binlog_row_metadata=FULL on the server"
    )]
    NoColumnNames { table: String },
    #[error(
        "`{table}` has no column `{column}`, which the connector's trigger reads; fix the connector file or the table"
    )]
    MissingColumn { table: String, column: String },
    #[error(
        "a rows event for `{table}` carries {got} of its {of} columns; set binlog_row_image=FULL on the server"
    )]
    PartialImage {
        table: String,
        got: usize,
        of: usize,
    },
    #[error(
        "a statement inside a transaction (`{statement}`): the server logged it statement-based, so its row changes are invisible to Flywheel; set binlog_format=ROW (globally, and in no session override it)"
    )]
    Statement { statement: String },
    #[error("a binlog file name without a sequence number: {0}")]
    BadFileName(String),
    #[error(
        "a compressed binlog event: the server writes log_bin_compress=ON, whose events Flywheel cannot read; SET GLOBAL log_bin_compress = OFF (and in my.cnf), then re-snapshot: DELETE the source's row in flywheel.source_state and restart"
    )]
    Compressed,
    #[error(
        "malformed binlog bytes the event decoder could not read ({0}); the server or the network corrupted the stream"
    )]
    Malformed(String),
}

/// What one event meant.
#[derive(Debug)]
pub enum Captured {
    Nothing,
    /// A transaction without trigger rows committed (or a DDL statement ran):
    /// nothing to publish, and confirmable once what came before is.
    Idle,
    /// Flywheel's own bookkeeping committed. It never moves the confirmed
    /// position: storing a position would otherwise change it again.
    Bookkeeping,
    Committed(CommittedTxn),
}

impl Captured {
    /// The variant's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Captured::Nothing => "nothing",
            Captured::Idle => "idle",
            Captured::Bookkeeping => "bookkeeping",
            Captured::Committed(_) => "committed",
        }
    }
}

enum Role {
    Other,
    Bookkeeping,
    EchoMark,
    /// (entity, trigger) with the indices of the trigger's columns in the table.
    Triggers(Vec<((usize, usize), Vec<usize>)>),
}

struct MappedTable {
    name: String,
    columns: usize,
    table_id: u64,
    form: TableForm,
    role: Role,
}

struct OpenTxn {
    txn: CommittedTxn,
    bookkeeping: bool,
}

pub struct Capture {
    /// Where the stream stands: the current file, and the end of the last event.
    at: BinlogPos,
    state_db: String,
    /// Column names per `database.table`, read from information_schema at
    /// start, for servers whose TABLE_MAP events carry none.
    known_columns: HashMap<String, Vec<String>>,
    tables: HashMap<u64, MappedTable>,
    open: Option<OpenTxn>,
    /// Whether this stream's format description arrived: before it, the
    /// reader cannot know whether events end in a checksum.
    seen_format: bool,
}

impl Capture {
    /// `start`: where the stream was requested from.
    pub fn new(
        start: BinlogPos,
        state_db: &str,
        known_columns: HashMap<String, Vec<String>>,
    ) -> Capture {
        Capture {
            at: start,
            state_db: state_db.to_owned(),
            known_columns,
            tables: HashMap::new(),
            open: None,
            seen_format: false,
        }
    }

    /// The file a rotate event names. The server's first, artificial rotate
    /// comes before the format description that says events carry a CRC32,
    /// so its name may end in the 4 checksum bytes: it names the file the
    /// stream was requested from, which is then kept.
    fn rotate_name(&self, raw: &[u8]) -> String {
        let ours = self.at.file.as_bytes();
        if !self.seen_format && raw.len() == ours.len() + 4 && raw.starts_with(ours) {
            return self.at.file.clone();
        }
        String::from_utf8_lossy(raw).into_owned()
    }

    /// Whether a transaction is open (its commit not seen yet).
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Where the stream stands: after the last event applied.
    pub fn position(&self) -> &BinlogPos {
        &self.at
    }

    /// Applies the next event of the stream.
    pub fn apply(
        &mut self,
        models: &EntityModels,
        event: &Event,
    ) -> Result<Captured, CaptureError> {
        // Every event names its end in the current file, except artificial
        // ones (position 0) and those describing the stream rather than the
        // log (a re-sent format description, heartbeats).
        let log_pos = u64::from(event.header().log_pos());
        // Only the kinds Flywheel reads are decoded: the others (GTID sets,
        // incidents, MySQL 8 payloads, …) carry no rows, and decoding a
        // malformed one could allocate without bound (mysql_common sizes a
        // GTID set from its header: the fuzzer's fourth finding, an abort no
        // guard can catch).
        // MariaDB's compressed query and rows events (log_bin_compress=ON)
        // carry changes this capture cannot read: stop rather than skip them.
        if (165..=171).contains(&event.header().event_type_raw()) {
            return Err(CaptureError::Compressed);
        }
        if !is_read(event.header().event_type()) {
            if log_pos > 0 {
                self.at.pos = log_pos;
            }
            return Ok(Captured::Nothing);
        }
        let data = event
            .read_data()
            .map_err(|e| CaptureError::Decode(e.to_string()))?;
        match &data {
            Some(EventData::RotateEvent(r)) => {
                let name = self.rotate_name(r.name_raw());
                self.at = BinlogPos::new(name, r.position());
                return Ok(Captured::Nothing);
            }
            Some(EventData::FormatDescriptionEvent(_)) => {
                self.seen_format = true;
                return Ok(Captured::Nothing);
            }
            Some(EventData::HeartbeatEvent) => return Ok(Captured::Nothing),
            _ if log_pos > 0 => self.at.pos = log_pos,
            _ => {}
        }
        let end = self.at.clone();
        let end = &end;
        let Some(data) = data else {
            // Event types this library does not know (MariaDB's annotate,
            // checkpoint and GTID-list events): none carries row changes.
            return Ok(Captured::Nothing);
        };
        let commit_ts_micros = event.header().timestamp() as i64 * 1_000_000;
        match data {
            EventData::QueryEvent(q) => {
                let query = q.query();
                let statement = query.trim();
                let word = statement
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                match word.as_str() {
                    "BEGIN" => {
                        self.open = Some(OpenTxn {
                            txn: CommittedTxn::default(),
                            bookkeeping: false,
                        });
                        Ok(Captured::Nothing)
                    }
                    // A rollback is logged only when non-transactional tables
                    // kept their changes: those rows happened.
                    "COMMIT" | "ROLLBACK" if !statement.to_ascii_uppercase().contains(" TO ") => {
                        self.commit(end, commit_ts_micros)
                    }
                    "SAVEPOINT" | "ROLLBACK" | "RELEASE" => Ok(Captured::Nothing),
                    // MariaDB sends a replica that did not announce its own
                    // capabilities a comment in place of events it thinks the
                    // replica cannot read (e.g. the statement annotating a
                    // rows event): no rows in it.
                    _ if statement.starts_with('#') => Ok(Captured::Nothing),
                    _ if self.open.is_some() => Err(CaptureError::Statement {
                        statement: statement.chars().take(120).collect(),
                    }),
                    // DDL and other statements outside a transaction commit by
                    // themselves and change no rows Flywheel reads.
                    _ => Ok(Captured::Idle),
                }
            }
            EventData::XidEvent(_) => self.commit(end, commit_ts_micros),
            EventData::TableMapEvent(tme) => {
                let mapped = self.map_table(models, tme)?;
                self.tables.insert(mapped.table_id, mapped);
                Ok(Captured::Nothing)
            }
            EventData::RowsEvent(rows) => {
                let table_id = rows.table_id();
                let table = self
                    .tables
                    .get(&table_id)
                    .ok_or(CaptureError::UnknownTable(table_id))?;
                let open = self.open.get_or_insert_with(|| OpenTxn {
                    txn: CommittedTxn::default(),
                    bookkeeping: false,
                });
                let images = table
                    .form
                    .rows(&rows)
                    .map_err(|e| CaptureError::Decode(e.to_string()))?;
                for (before, after) in images {
                    open.txn.row_changes += 1;
                    match &table.role {
                        Role::Other => {}
                        Role::Bookkeeping => open.bookkeeping = true,
                        Role::EchoMark => open.txn.own_write = true,
                        Role::Triggers(triggers) => {
                            for image in [&before, &after].into_iter().flatten() {
                                if image.present != table.columns {
                                    return Err(CaptureError::PartialImage {
                                        table: table.name.clone(),
                                        got: image.present,
                                        of: table.columns,
                                    });
                                }
                                for (trigger, columns) in triggers {
                                    open.txn
                                        .touched
                                        .entry(*trigger)
                                        .or_default()
                                        .insert(trigger_row(image, columns));
                                }
                            }
                        }
                    }
                }
                Ok(Captured::Nothing)
            }
            _ => Ok(Captured::Nothing),
        }
    }

    fn commit(&mut self, end: &BinlogPos, commit_ts_micros: i64) -> Result<Captured, CaptureError> {
        let Some(OpenTxn {
            mut txn,
            bookkeeping,
        }) = self.open.take()
        else {
            return Ok(Captured::Idle);
        };
        let position = end
            .position()
            .ok_or_else(|| CaptureError::BadFileName(end.file.clone()))?;
        txn.version = position;
        txn.resume_at = position;
        txn.commit_ts_micros = commit_ts_micros;
        if txn.own_write {
            // The mark may come after the rows it covers: drop them at the
            // commit, where the whole transaction is known.
            txn.touched.clear();
            txn.truncated.clear();
        }
        Ok(if txn.has_work() || txn.own_write {
            Captured::Committed(txn)
        } else if bookkeeping {
            Captured::Bookkeeping
        } else {
            Captured::Idle
        })
    }

    fn map_table(
        &self,
        models: &EntityModels,
        tme: TableMapEvent<'_>,
    ) -> Result<MappedTable, CaptureError> {
        let db = tme.database_name().into_owned();
        let table = tme.table_name().into_owned();
        let name = format!("{db}.{table}");
        check_table_map(&tme).map_err(|problem| {
            CaptureError::Malformed(format!("table map of `{name}`: {problem}"))
        })?;
        let columns = tme.columns_count() as usize;
        let role = if db == self.state_db {
            if table == ECHO_MARK_TABLE {
                Role::EchoMark
            } else {
                Role::Bookkeeping
            }
        } else {
            let triggers = models.triggers_for(&name);
            if triggers.is_empty() {
                Role::Other
            } else {
                let names = self.column_names(&tme, &name)?;
                let mut mapped = Vec::with_capacity(triggers.len());
                for &(entity, trigger) in triggers {
                    let wanted = &models.entities[entity].def.triggers[trigger].columns;
                    let idx = wanted
                        .iter()
                        .map(|c| {
                            names.iter().position(|n| n == c).ok_or_else(|| {
                                CaptureError::MissingColumn {
                                    table: name.clone(),
                                    column: c.clone(),
                                }
                            })
                        })
                        .collect::<Result<Vec<usize>, _>>()?;
                    mapped.push(((entity, trigger), idx));
                }
                Role::Triggers(mapped)
            }
        };
        let wanted: Vec<usize> = match &role {
            Role::Triggers(triggers) => triggers.iter().flat_map(|(_, c)| c).copied().collect(),
            _ => Vec::new(),
        };
        let form = TableForm::new(&tme, &wanted)
            .map_err(|e| CaptureError::Malformed(format!("table map of `{name}`: {e}")))?;
        Ok(MappedTable {
            name,
            columns,
            table_id: tme.table_id(),
            form,
            role,
        })
    }

    /// The table's column names in order: from the event's optional metadata
    /// (`binlog_row_metadata=FULL`), else from information_schema.
    fn column_names(
        &self,
        tme: &TableMapEvent<'_>,
        name: &str,
    ) -> Result<Vec<String>, CaptureError> {
        let meta = OptionalMetaExtractor::new(tme.iter_optional_meta())
            .map_err(|e| CaptureError::Decode(e.to_string()))?;
        let names = meta
            .iter_column_name()
            .map(|n| n.map(|n| n.name().into_owned()))
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| CaptureError::Decode(e.to_string()))?;
        if names.len() == tme.columns_count() as usize {
            return Ok(names);
        }
        match self.known_columns.get(name) {
            Some(known) if known.len() == tme.columns_count() as usize => Ok(known.clone()),
            _ => Err(CaptureError::NoColumnNames {
                table: name.to_owned(),
            }),
        }
    }
}

/// The trigger's columns of one row image, as text.
fn trigger_row(image: &Image, columns: &[usize]) -> TriggerRow {
    columns
        .iter()
        .map(|&i| image.text(i).map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_rotate_loses_its_checksum_bytes_and_later_ones_are_taken_as_named() {
        let mut c = Capture::new(
            BinlogPos::new("binlog.000007", 4),
            "flywheel",
            HashMap::new(),
        );
        // Before the format description: the requested file + 4 CRC bytes.
        assert_eq!(
            c.rotate_name(b"binlog.000007\x8a\x01\xfe\x33"),
            "binlog.000007"
        );
        // A name that is not ours plus 4 bytes is taken as it is.
        assert_eq!(c.rotate_name(b"binlog.000008"), "binlog.000008");
        c.seen_format = true;
        assert_eq!(c.rotate_name(b"binlog.000007abcd"), "binlog.000007abcd");
    }
}
