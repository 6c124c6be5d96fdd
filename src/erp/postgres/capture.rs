//! From pgoutput messages to committed transactions of touched trigger rows.
//!
//! Pure logic, no I/O: the source feeds decoded messages in, and gets a
//! [`CommittedTxn`] out at each Commit, holding per (entity, trigger) the
//! distinct values of the trigger's columns in the rows the transaction changed.

use std::collections::HashMap;

use super::lsn::Lsn;
use super::pgoutput::{Begin, Message, OldTuple, Relation, Tuple, Value};
use crate::erp::committed::{CommittedTxn, TriggerRow};
use crate::erp::entity_model::EntityModels;

/// Replication origins Flywheel's ERP writers set up start with this; a
/// transaction carrying one is Flywheel's own write.
pub const OWN_ORIGIN_PREFIX: &str = "flywheel";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaptureError {
    #[error("{0} before the transaction's Begin")]
    OutsideTransaction(&'static str),
    #[error("Begin inside a transaction that has not committed")]
    NestedBegin,
    #[error("row change for relation {0}, which was never described by a Relation message")]
    UnknownRelation(u32),
    #[error("Commit for {commit} but the transaction began with final LSN {begin}")]
    LsnMismatch { begin: Lsn, commit: Lsn },
}

/// What a message meant for the stream.
#[derive(Debug)]
pub enum Captured {
    Nothing,
    Committed(CommittedTxn),
    /// A heartbeat or other message outside any transaction.
    Idle,
}

/// Microseconds between the Unix epoch and the PostgreSQL epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

pub struct Capture {
    relations: HashMap<u32, Relation>,
    current: Option<(Begin, CommittedTxn)>,
}

impl Default for Capture {
    fn default() -> Self {
        Self::new()
    }
}

impl Capture {
    pub fn new() -> Self {
        Capture {
            relations: HashMap::new(),
            current: None,
        }
    }

    /// True between a Begin and its Commit.
    pub fn in_transaction(&self) -> bool {
        self.current.is_some()
    }

    pub fn apply(&mut self, models: &EntityModels, msg: Message) -> Result<Captured, CaptureError> {
        match msg {
            Message::Begin(b) => {
                if self.current.is_some() {
                    return Err(CaptureError::NestedBegin);
                }
                self.current = Some((b, CommittedTxn::default()));
            }
            Message::Commit(c) => {
                let (begin, mut txn) = self
                    .current
                    .take()
                    .ok_or(CaptureError::OutsideTransaction("Commit"))?;
                if begin.final_lsn != c.commit_lsn {
                    return Err(CaptureError::LsnMismatch {
                        begin: begin.final_lsn,
                        commit: c.commit_lsn,
                    });
                }
                txn.txid = u64::from(begin.xid);
                txn.version = c.commit_lsn.into();
                txn.resume_at = c.end_lsn.into();
                txn.commit_ts_micros = c.commit_ts + PG_EPOCH_OFFSET_MICROS;
                return Ok(Captured::Committed(txn));
            }
            Message::Relation(r) => {
                self.relations.insert(r.id, r);
            }
            Message::Type { .. } => {}
            Message::Origin { name, .. } => {
                let (_, txn) = self
                    .current
                    .as_mut()
                    .ok_or(CaptureError::OutsideTransaction("Origin"))?;
                txn.own_write = name.starts_with(OWN_ORIGIN_PREFIX);
            }
            Message::Insert { relation_id, new } => {
                self.row(models, relation_id, None, Some(&new))?;
            }
            Message::Update {
                relation_id,
                old,
                new,
            } => {
                self.row(models, relation_id, old.as_ref(), Some(&new))?;
            }
            Message::Delete { relation_id, old } => {
                self.row(models, relation_id, Some(&old), None)?;
            }
            Message::Truncate { relation_ids, .. } => {
                let (_, txn) = self
                    .current
                    .as_mut()
                    .ok_or(CaptureError::OutsideTransaction("Truncate"))?;
                txn.row_changes += relation_ids.len() as u64;
                if txn.own_write {
                    return Ok(Captured::Nothing);
                }
                for id in relation_ids {
                    let rel = self
                        .relations
                        .get(&id)
                        .ok_or(CaptureError::UnknownRelation(id))?;
                    for (entity, _) in models.triggers_for(&rel.qualified_name()) {
                        txn.truncated.insert(*entity);
                    }
                }
            }
            Message::Message { transactional, .. } => {
                if !transactional && self.current.is_none() {
                    return Ok(Captured::Idle);
                }
            }
        }
        Ok(Captured::Nothing)
    }

    fn row(
        &mut self,
        models: &EntityModels,
        relation_id: u32,
        old: Option<&OldTuple>,
        new: Option<&Tuple>,
    ) -> Result<(), CaptureError> {
        let (_, txn) = self
            .current
            .as_mut()
            .ok_or(CaptureError::OutsideTransaction("row change"))?;
        let rel = self
            .relations
            .get(&relation_id)
            .ok_or(CaptureError::UnknownRelation(relation_id))?;
        txn.row_changes += 1;
        if txn.own_write {
            return Ok(());
        }
        let old = old.map(OldTuple::tuple);
        for &(entity, trigger) in models.triggers_for(&rel.qualified_name()) {
            let columns = &models.entities[entity].def.triggers[trigger].columns;
            let rows = txn.touched.entry((entity, trigger)).or_default();
            if let Some(new) = new {
                rows.insert(trigger_row(rel, columns, new, old));
            }
            if let Some(old) = old {
                rows.insert(trigger_row(rel, columns, old, None));
            }
        }
        Ok(())
    }
}

/// The trigger's columns from `tuple`. An unchanged TOAST value is taken from
/// the old tuple when the server sent one.
fn trigger_row(
    rel: &Relation,
    columns: &[String],
    tuple: &Tuple,
    old: Option<&Tuple>,
) -> TriggerRow {
    columns
        .iter()
        .map(|name| {
            let i = rel.column_index(name)?;
            match tuple.0.get(i)? {
                Value::UnchangedToast => old?.0.get(i)?.as_text().map(str::to_owned),
                v => v.as_text().map(str::to_owned),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::erp::connector::Connector;
    use crate::erp::postgres::pgoutput::{Column, Commit};
    use bytes::Bytes;

    fn models() -> EntityModels {
        EntityModels::new(&Connector::load(None, "odoo").unwrap()).unwrap()
    }

    fn quant_relation() -> Message {
        let col = |name: &str| Column {
            is_key: name == "id",
            name: name.into(),
            type_oid: 23,
            type_modifier: -1,
        };
        Message::Relation(Relation {
            id: 1,
            namespace: "public".into(),
            name: "stock_quant".into(),
            replica_identity: b'f',
            columns: vec![
                col("id"),
                col("product_id"),
                col("location_id"),
                col("quantity"),
            ],
        })
    }

    fn t(v: &str) -> Value {
        Value::Text(Bytes::copy_from_slice(v.as_bytes()))
    }

    fn begin(lsn: u64) -> Message {
        Message::Begin(Begin {
            final_lsn: Lsn(lsn),
            commit_ts: 0,
            xid: 1,
        })
    }

    fn commit(lsn: u64) -> Message {
        Message::Commit(Commit {
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(lsn + 8),
            commit_ts: 1_000_000,
        })
    }

    #[test]
    fn many_changes_to_one_product_location_collapse_to_one_row() {
        let m = models();
        let mut c = Capture::new();
        c.apply(&m, quant_relation()).unwrap();
        c.apply(&m, begin(100)).unwrap();
        for q in 0..50 {
            let new = Tuple(vec![t("9"), t("7"), t("12"), t(&q.to_string())]);
            c.apply(
                &m,
                Message::Update {
                    relation_id: 1,
                    old: None,
                    new,
                },
            )
            .unwrap();
        }
        let Captured::Committed(txn) = c.apply(&m, commit(100)).unwrap() else {
            panic!("no commit")
        };
        assert_eq!(txn.row_changes, 50);
        assert_eq!(txn.resume_at, Lsn(108).into());
        assert_eq!(txn.commit_ts_micros, 1_000_000 + PG_EPOCH_OFFSET_MICROS);
        let stock = m.entities.iter().position(|e| e.name == "stock").unwrap();
        let rows = &txn.touched[&(stock, 0)];
        assert_eq!(rows.len(), 1);
        assert!(rows.contains(&vec![Some("7".into()), Some("12".into())]));
    }

    #[test]
    fn flywheels_own_writes_are_not_captured() {
        let m = models();
        let mut c = Capture::new();
        c.apply(&m, quant_relation()).unwrap();
        let update = || Message::Update {
            relation_id: 1,
            old: None,
            new: Tuple(vec![t("9"), t("7"), t("12"), t("1")]),
        };
        for (origin, captured) in [("flywheel.writer.0", false), ("other_replica", true)] {
            c.apply(&m, begin(100)).unwrap();
            c.apply(
                &m,
                Message::Origin {
                    commit_lsn: Lsn(90),
                    name: origin.into(),
                },
            )
            .unwrap();
            c.apply(&m, update()).unwrap();
            let Captured::Committed(txn) = c.apply(&m, commit(100)).unwrap() else {
                panic!("no commit")
            };
            assert_eq!(txn.own_write, !captured, "{origin}");
            assert_eq!(txn.row_changes, 1);
            assert_eq!(!txn.touched.is_empty(), captured, "{origin}");
        }
    }

    #[test]
    fn update_moving_a_quant_touches_old_and_new_location() {
        let m = models();
        let mut c = Capture::new();
        c.apply(&m, quant_relation()).unwrap();
        c.apply(&m, begin(5)).unwrap();
        c.apply(
            &m,
            Message::Update {
                relation_id: 1,
                old: Some(OldTuple::Full(Tuple(vec![t("1"), t("7"), t("12"), t("3")]))),
                new: Tuple(vec![t("1"), t("7"), t("13"), Value::UnchangedToast]),
            },
        )
        .unwrap();
        let Captured::Committed(txn) = c.apply(&m, commit(5)).unwrap() else {
            panic!()
        };
        assert_eq!(txn.touched.values().next().unwrap().len(), 2);
    }

    #[test]
    fn protocol_violations_are_errors() {
        let m = models();
        let mut c = Capture::new();
        assert_eq!(
            c.apply(&m, commit(1)).unwrap_err(),
            CaptureError::OutsideTransaction("Commit")
        );
        c.apply(&m, begin(1)).unwrap();
        assert_eq!(
            c.apply(&m, begin(2)).unwrap_err(),
            CaptureError::NestedBegin
        );
        let err = c
            .apply(
                &m,
                Message::Insert {
                    relation_id: 99,
                    new: Tuple::default(),
                },
            )
            .unwrap_err();
        assert_eq!(err, CaptureError::UnknownRelation(99));
        assert!(matches!(
            c.apply(&m, commit(2)).unwrap_err(),
            CaptureError::LsnMismatch { .. }
        ));
    }

    #[test]
    fn heartbeat_outside_a_transaction_is_idle() {
        let m = models();
        let mut c = Capture::new();
        let msg = Message::Message {
            transactional: false,
            lsn: Lsn(1),
            prefix: "flywheel.heartbeat".into(),
            content: Bytes::new(),
        };
        assert!(matches!(c.apply(&m, msg).unwrap(), Captured::Idle));
    }

    #[test]
    fn truncate_marks_the_entity() {
        let m = models();
        let mut c = Capture::new();
        c.apply(&m, quant_relation()).unwrap();
        c.apply(&m, begin(9)).unwrap();
        c.apply(
            &m,
            Message::Truncate {
                cascade: false,
                restart_identity: false,
                relation_ids: vec![1],
            },
        )
        .unwrap();
        let Captured::Committed(txn) = c.apply(&m, commit(9)).unwrap() else {
            panic!()
        };
        assert_eq!(txn.truncated.len(), 1);
    }
}
