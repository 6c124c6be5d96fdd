//! Decoder for the `pgoutput` logical replication protocol, version 1.
//!
//! Formats follow "Logical Replication Message Formats" in the PostgreSQL
//! documentation. Every read is bounds-checked: a short or unknown message is a
//! [`DecodeError`] naming the byte offset, never a panic, because the bytes come
//! from outside the process.

use bytes::Bytes;

use super::lsn::Lsn;

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    Type {
        id: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation_id: u32,
        new: Tuple,
    },
    Update {
        relation_id: u32,
        /// Present when the replica identity changed (`K`) or is FULL (`O`).
        old: Option<OldTuple>,
        new: Tuple,
    },
    Delete {
        relation_id: u32,
        old: OldTuple,
    },
    Truncate {
        cascade: bool,
        restart_identity: bool,
        relation_ids: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record; equals the Commit's `commit_lsn`.
    pub final_lsn: Lsn,
    /// Microseconds since 2000-01-01 UTC.
    pub commit_ts: i64,
    pub xid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub commit_lsn: Lsn,
    /// Position just after the commit record: what the slot confirms.
    pub end_lsn: Lsn,
    /// Microseconds since 2000-01-01 UTC.
    pub commit_ts: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    /// `relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

impl Relation {
    /// `schema.table`, with the empty pg_catalog namespace shown as `pg_catalog`.
    pub fn qualified_name(&self) -> String {
        let ns = if self.namespace.is_empty() {
            "pg_catalog"
        } else {
            &self.namespace
        };
        format!("{ns}.{}", self.name)
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// The old row of an update or delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldTuple {
    /// Only the replica identity columns (`K`); other columns are null.
    Key(Tuple),
    /// The whole old row (`O`, replica identity FULL).
    Full(Tuple),
}

impl OldTuple {
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tuple(pub Vec<Value>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value that the update did not change; the actual value is not sent.
    UnchangedToast,
    Text(Bytes),
    Binary(Bytes),
}

impl Value {
    /// The text form, when the value was sent as valid UTF-8 text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (at byte {offset} of a {len}-byte pgoutput message)")]
pub struct DecodeError {
    pub reason: String,
    pub offset: usize,
    pub len: usize,
}

/// Decodes one pgoutput message (the payload of an XLogData frame).
pub fn decode(buf: &Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let tag = r.u8()?;
    let msg = match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: r.lsn()?,
            commit_ts: r.i64()?,
            xid: r.u32()?,
        }),
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit(Commit {
                commit_lsn: r.lsn()?,
                end_lsn: r.lsn()?,
                commit_ts: r.i64()?,
            })
        }
        b'O' => Message::Origin {
            commit_lsn: r.lsn()?,
            name: r.cstr()?,
        },
        b'R' => {
            let id = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            let replica_identity = r.u8()?;
            let n = r.count16()?;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                columns.push(Column {
                    is_key: r.u8()? & 1 == 1,
                    name: r.cstr()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            Message::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            id: r.u32()?,
            namespace: r.cstr()?,
            name: r.cstr()?,
        },
        b'I' => {
            let relation_id = r.u32()?;
            r.expect(b'N', "insert without a new tuple")?;
            Message::Insert {
                relation_id,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation_id = r.u32()?;
            let old = match r.u8()? {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                b'N' => None,
                other => return Err(r.err(format!("update has tuple kind {:?}", other as char))),
            };
            if old.is_some() {
                r.expect(b'N', "update without a new tuple")?;
            }
            Message::Update {
                relation_id,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation_id = r.u32()?;
            let old = match r.u8()? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                other => return Err(r.err(format!("delete has tuple kind {:?}", other as char))),
            };
            Message::Delete { relation_id, old }
        }
        b'T' => {
            let n = r.u32()? as usize;
            let options = r.u8()?;
            let mut relation_ids = Vec::with_capacity(n.min(r.remaining() / 4));
            for _ in 0..n {
                relation_ids.push(r.u32()?);
            }
            Message::Truncate {
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relation_ids,
            }
        }
        b'M' => {
            let transactional = r.u8()? & 1 == 1;
            let lsn = r.lsn()?;
            let prefix = r.cstr()?;
            let len = r.u32()? as usize;
            Message::Message {
                transactional,
                lsn,
                prefix,
                content: r.bytes(len)?,
            }
        }
        other => {
            return Err(DecodeError {
                reason: format!(
                    "unknown message type {:?} (0x{other:02x}); streaming (protocol v2+) is not requested",
                    other as char
                ),
                offset: 0,
                len: buf.len(),
            });
        }
    };
    if r.remaining() != 0 {
        return Err(r.err(format!(
            "{} trailing bytes after the message",
            r.remaining()
        )));
    }
    Ok(msg)
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn err(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError {
            reason: reason.into(),
            offset: self.pos,
            len: self.buf.len(),
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let end = self.pos + N;
        let slice = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.err(format!("message ends where {N} more bytes were expected")))?;
        self.pos = end;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }

    fn count16(&mut self) -> Result<usize, DecodeError> {
        let n = i16::from_be_bytes(self.take()?);
        usize::try_from(n).map_err(|_| self.err(format!("negative column count {n}")))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take()?))
    }

    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.take()?)))
    }

    fn expect(&mut self, want: u8, what: &str) -> Result<(), DecodeError> {
        let got = self.u8()?;
        if got == want {
            Ok(())
        } else {
            Err(self.err(format!(
                "{what}: expected {:?}, got {:?}",
                want as char, got as char
            )))
        }
    }

    fn cstr(&mut self) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err("string without a terminating NUL"))?;
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|_| self.err("string is not UTF-8"))?
            .to_owned();
        self.pos += nul + 1;
        Ok(s)
    }

    fn bytes(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if len > self.remaining() {
            return Err(self.err(format!(
                "value of {len} bytes but only {} remain",
                self.remaining()
            )));
        }
        let out = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(out)
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.count16()?;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            let value = match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                b't' => {
                    let len = self.u32()? as usize;
                    Value::Text(self.bytes(len)?)
                }
                b'b' => {
                    let len = self.u32()? as usize;
                    Value::Binary(self.bytes(len)?)
                }
                other => {
                    return Err(self.err(format!("unknown tuple value kind {:?}", other as char)));
                }
            };
            values.push(value);
        }
        Ok(Tuple(values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds pgoutput bytes the way the server lays them out.
    #[derive(Default)]
    struct W(Vec<u8>);
    impl W {
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn s(mut self, v: &str) -> Self {
            self.0.extend(v.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, v: &str) -> Self {
            let mut w = self.u8(b't').u32(v.len() as u32);
            w.0.extend(v.as_bytes());
            w
        }
        fn done(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    fn text(v: &str) -> Value {
        Value::Text(Bytes::copy_from_slice(v.as_bytes()))
    }

    #[test]
    fn begin() {
        let b = W::default()
            .u8(b'B')
            .u64(0x1_0000_0010)
            .u64(777)
            .u32(42)
            .done();
        assert_eq!(
            decode(&b).unwrap(),
            Message::Begin(Begin {
                final_lsn: Lsn(0x1_0000_0010),
                commit_ts: 777,
                xid: 42
            })
        );
    }

    #[test]
    fn commit() {
        let b = W::default()
            .u8(b'C')
            .u8(0)
            .u64(100)
            .u64(148)
            .u64(999)
            .done();
        assert_eq!(
            decode(&b).unwrap(),
            Message::Commit(Commit {
                commit_lsn: Lsn(100),
                end_lsn: Lsn(148),
                commit_ts: 999
            })
        );
    }

    #[test]
    fn origin() {
        let b = W::default().u8(b'O').u64(5).s("erp-east").done();
        assert_eq!(
            decode(&b).unwrap(),
            Message::Origin {
                commit_lsn: Lsn(5),
                name: "erp-east".into()
            }
        );
    }

    #[test]
    fn relation_with_key_column() {
        let b = W::default()
            .u8(b'R')
            .u32(16384)
            .s("public")
            .s("stock_quant")
            .u8(b'f')
            .i16(2)
            .u8(1)
            .s("id")
            .u32(23)
            .i32(-1)
            .u8(0)
            .s("quantity")
            .u32(1700)
            .i32(1_048_580)
            .done();
        let Message::Relation(rel) = decode(&b).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(rel.qualified_name(), "public.stock_quant");
        assert_eq!(rel.replica_identity, b'f');
        assert!(rel.columns[0].is_key);
        assert!(!rel.columns[1].is_key);
        assert_eq!(rel.columns[1].type_oid, 1700);
        assert_eq!(rel.column_index("quantity"), Some(1));
    }

    #[test]
    fn type_message() {
        let b = W::default()
            .u8(b'Y')
            .u32(99999)
            .s("public")
            .s("mood")
            .done();
        assert_eq!(
            decode(&b).unwrap(),
            Message::Type {
                id: 99999,
                namespace: "public".into(),
                name: "mood".into()
            }
        );
    }

    #[test]
    fn insert_with_null_and_text() {
        let b = W::default()
            .u8(b'I')
            .u32(7)
            .u8(b'N')
            .i16(2)
            .text("42")
            .u8(b'n')
            .done();
        assert_eq!(
            decode(&b).unwrap(),
            Message::Insert {
                relation_id: 7,
                new: Tuple(vec![text("42"), Value::Null])
            }
        );
    }

    #[test]
    fn update_without_old_tuple_keeps_unchanged_toast() {
        let b = W::default()
            .u8(b'U')
            .u32(7)
            .u8(b'N')
            .i16(2)
            .text("1")
            .u8(b'u')
            .done();
        let Message::Update { old, new, .. } = decode(&b).unwrap() else {
            panic!("not an update")
        };
        assert_eq!(old, None);
        assert_eq!(new.0[1], Value::UnchangedToast);
        assert_eq!(new.0[0].as_text(), Some("1"));
    }

    #[test]
    fn update_with_full_old_tuple() {
        let b = W::default()
            .u8(b'U')
            .u32(7)
            .u8(b'O')
            .i16(1)
            .text("old")
            .u8(b'N')
            .i16(1)
            .text("new")
            .done();
        assert_eq!(
            decode(&b).unwrap(),
            Message::Update {
                relation_id: 7,
                old: Some(OldTuple::Full(Tuple(vec![text("old")]))),
                new: Tuple(vec![text("new")])
            }
        );
    }

    #[test]
    fn delete_with_key() {
        let b = W::default()
            .u8(b'D')
            .u32(7)
            .u8(b'K')
            .i16(1)
            .text("9")
            .done();
        assert_eq!(
            decode(&b).unwrap(),
            Message::Delete {
                relation_id: 7,
                old: OldTuple::Key(Tuple(vec![text("9")]))
            }
        );
    }

    #[test]
    fn truncate_with_options() {
        let b = W::default().u8(b'T').u32(2).u8(3).u32(10).u32(11).done();
        assert_eq!(
            decode(&b).unwrap(),
            Message::Truncate {
                cascade: true,
                restart_identity: true,
                relation_ids: vec![10, 11]
            }
        );
    }

    #[test]
    fn logical_message() {
        let mut w = W::default().u8(b'M').u8(1).u64(300).s("flywheel").u32(3);
        w.0.extend(b"hi!");
        assert_eq!(
            decode(&w.done()).unwrap(),
            Message::Message {
                transactional: true,
                lsn: Lsn(300),
                prefix: "flywheel".into(),
                content: Bytes::from_static(b"hi!")
            }
        );
    }

    #[test]
    fn binary_value() {
        let mut w = W::default().u8(b'I').u32(1).u8(b'N').i16(1).u8(b'b').u32(2);
        w.0.extend([0xde, 0xad]);
        let Message::Insert { new, .. } = decode(&w.done()).unwrap() else {
            panic!()
        };
        assert_eq!(new.0[0], Value::Binary(Bytes::from_static(&[0xde, 0xad])));
    }

    #[test]
    fn truncated_message_is_an_error_not_a_panic() {
        let full = W::default()
            .u8(b'C')
            .u8(0)
            .u64(100)
            .u64(148)
            .u64(999)
            .done();
        for cut in 0..full.len() {
            let err = decode(&full.slice(..cut)).unwrap_err();
            assert!(err.reason.contains("bytes") || err.offset == 0, "{err}");
        }
    }

    #[test]
    fn oversized_text_length_is_an_error() {
        let b = W::default()
            .u8(b'I')
            .u32(1)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .u32(u32::MAX)
            .done();
        let err = decode(&b).unwrap_err();
        assert!(err.reason.contains("only 0 remain"), "{err}");
    }

    #[test]
    fn unknown_tag_and_trailing_bytes_are_errors() {
        let err = decode(&Bytes::from_static(b"Sxyz")).unwrap_err();
        assert!(err.reason.contains("unknown message type 'S'"), "{err}");
        let b = W::default().u8(b'B').u64(1).u64(2).u32(3).u8(0).done();
        assert!(decode(&b).unwrap_err().reason.contains("trailing"));
    }

    #[test]
    fn bad_tuple_kind_is_an_error() {
        let b = W::default().u8(b'I').u32(1).u8(b'N').i16(1).u8(b'x').done();
        assert!(
            decode(&b)
                .unwrap_err()
                .reason
                .contains("unknown tuple value kind")
        );
        let b = W::default().u8(b'I').u32(1).u8(b'X').done();
        assert!(decode(&b).unwrap_err().reason.contains("expected 'N'"));
    }
}
