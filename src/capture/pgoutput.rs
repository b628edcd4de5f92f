//! Decoder for the pgoutput logical replication protocol, version 1.
//!
//! pgwire-replication hands over Begin, Commit and Message itself; every other message arrives
//! as raw XLogData and is decoded here (PostgreSQL docs, "Logical Replication Message Formats").
//! Tuple values are sliced out of the message buffer without copying.

use bytes::Bytes;
use thiserror::Error;

use crate::event::{Datum, Lsn};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("malformed pgoutput message '{tag}': {what}")]
    Malformed { tag: char, what: String },
    #[error(
        "unknown pgoutput message type {0:?} (is the slot using the pgoutput plugin, protocol 1?)"
    )]
    UnknownTag(char),
}

/// A column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelColumn {
    /// Bit 1: part of the replica identity key.
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    pub type_mod: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationMsg {
    pub oid: u32,
    /// Empty for pg_catalog.
    pub namespace: String,
    pub name: String,
    /// 'd' default, 'n' nothing, 'f' full, 'i' index.
    pub replica_identity: u8,
    pub columns: Vec<RelColumn>,
}

/// Which old tuple an update or delete carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldTuple {
    /// 'K': only the replica identity key columns are set (others null).
    Key,
    /// 'O': the whole old row (REPLICA IDENTITY FULL).
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: Lsn,
        commit_ts: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts: i64,
    },
    Origin {
        lsn: Lsn,
        name: String,
    },
    Relation(RelationMsg),
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        rel: u32,
        new: Vec<Datum>,
    },
    Update {
        rel: u32,
        old: Option<(OldTuple, Vec<Datum>)>,
        new: Vec<Datum>,
    },
    Delete {
        rel: u32,
        old: (OldTuple, Vec<Datum>),
    },
    Truncate {
        /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
        options: u8,
        rels: Vec<u32>,
    },
    LogicalMessage {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

struct Reader {
    buf: Bytes,
    pos: usize,
    tag: char,
}

impl Reader {
    fn err(&self, what: impl Into<String>) -> DecodeError {
        DecodeError::Malformed {
            tag: self.tag,
            what: what.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], DecodeError> {
        if self.buf.len() - self.pos < n {
            return Err(self.err(format!("truncated {what} at byte {}", self.pos)));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Bytes not read yet: what a count read from the message may justify allocating.
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn i16(&mut self, what: &str) -> Result<i16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, what: &str) -> Result<i32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self, what: &str) -> Result<i64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    fn lsn(&mut self, what: &str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.i64(what)? as u64))
    }

    fn cstr(&mut self, what: &str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err(format!("unterminated {what}")))?;
        let s = std::str::from_utf8(&rest[..end])
            .map_err(|_| self.err(format!("{what} is not UTF-8")))?
            .to_owned();
        self.pos += end + 1;
        Ok(s)
    }

    fn bytes(&mut self, n: usize, what: &str) -> Result<Bytes, DecodeError> {
        if self.buf.len() - self.pos < n {
            return Err(self.err(format!("truncated {what} at byte {}", self.pos)));
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    fn tuple(&mut self) -> Result<Vec<Datum>, DecodeError> {
        let n = self.i16("column count")?;
        if n < 0 {
            return Err(self.err("negative column count"));
        }
        // Every value takes at least its kind byte: a count the message cannot hold is not
        // allocated for.
        let mut row = Vec::with_capacity((n as usize).min(self.remaining()));
        for _ in 0..n {
            row.push(match self.u8("column kind")? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b't' => {
                    let len = self.i32("value length")?;
                    if len < 0 {
                        return Err(self.err("negative value length"));
                    }
                    Datum::Text(self.bytes(len as usize, "value")?)
                }
                b'b' => {
                    return Err(self.err(
                        "binary tuple data (the stream must use text format: binary 'false')",
                    ))
                }
                k => return Err(self.err(format!("unknown column kind {:?}", k as char))),
            });
        }
        Ok(row)
    }

    fn done(&self) -> Result<(), DecodeError> {
        if self.pos != self.buf.len() {
            return Err(self.err(format!(
                "{} unexpected trailing bytes",
                self.buf.len() - self.pos
            )));
        }
        Ok(())
    }
}

/// Decodes one pgoutput message.
pub fn decode(buf: Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = buf.first() else {
        return Err(DecodeError::Malformed {
            tag: '?',
            what: "empty message".into(),
        });
    };
    let mut r = Reader {
        buf,
        pos: 1,
        tag: tag as char,
    };
    let msg = match tag {
        b'B' => Message::Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_ts: r.i64("commit time")?,
            xid: r.i32("xid")? as u32,
        },
        b'C' => Message::Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_ts: r.i64("commit time")?,
        },
        b'O' => Message::Origin {
            lsn: r.lsn("origin LSN")?,
            name: r.cstr("origin name")?,
        },
        b'R' => {
            let oid = r.i32("relation oid")? as u32;
            let namespace = r.cstr("namespace")?;
            let name = r.cstr("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            let n = r.i16("column count")?;
            if n < 0 {
                return Err(r.err("negative column count"));
            }
            let mut columns = Vec::with_capacity((n as usize).min(r.remaining() / 10));
            for _ in 0..n {
                columns.push(RelColumn {
                    flags: r.u8("column flags")?,
                    name: r.cstr("column name")?,
                    type_oid: r.i32("column type")? as u32,
                    type_mod: r.i32("column type modifier")?,
                });
            }
            Message::Relation(RelationMsg {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.i32("type oid")? as u32,
            namespace: r.cstr("type namespace")?,
            name: r.cstr("type name")?,
        },
        b'I' => {
            let rel = r.i32("relation oid")? as u32;
            match r.u8("tuple marker")? {
                b'N' => {}
                m => return Err(r.err(format!("expected 'N', got {:?}", m as char))),
            }
            Message::Insert {
                rel,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let rel = r.i32("relation oid")? as u32;
            let mut old = None;
            let mut marker = r.u8("tuple marker")?;
            if marker == b'K' || marker == b'O' {
                let kind = if marker == b'K' {
                    OldTuple::Key
                } else {
                    OldTuple::Full
                };
                old = Some((kind, r.tuple()?));
                marker = r.u8("tuple marker")?;
            }
            if marker != b'N' {
                return Err(r.err(format!("expected 'N', got {:?}", marker as char)));
            }
            Message::Update {
                rel,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let rel = r.i32("relation oid")? as u32;
            let kind = match r.u8("tuple marker")? {
                b'K' => OldTuple::Key,
                b'O' => OldTuple::Full,
                m => return Err(r.err(format!("expected 'K' or 'O', got {:?}", m as char))),
            };
            Message::Delete {
                rel,
                old: (kind, r.tuple()?),
            }
        }
        b'T' => {
            let n = r.i32("relation count")?;
            if n < 0 {
                return Err(r.err("negative relation count"));
            }
            let options = r.u8("options")?;
            let mut rels = Vec::with_capacity((n as usize).min(r.remaining() / 4));
            for _ in 0..n {
                rels.push(r.i32("relation oid")? as u32);
            }
            Message::Truncate { options, rels }
        }
        b'M' => {
            let transactional = r.u8("flags")? & 1 != 0;
            let lsn = r.lsn("message LSN")?;
            let prefix = r.cstr("prefix")?;
            let len = r.i32("content length")?;
            if len < 0 {
                return Err(r.err("negative content length"));
            }
            Message::LogicalMessage {
                transactional,
                lsn,
                prefix,
                content: r.bytes(len as usize, "content")?,
            }
        }
        other => return Err(DecodeError::UnknownTag(other as char)),
    };
    r.done()?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(vals: &[Option<&str>]) -> Vec<u8> {
        let mut v = (vals.len() as i16).to_be_bytes().to_vec();
        for val in vals {
            match val {
                None => v.push(b'n'),
                Some("\u{0}toast") => v.push(b'u'),
                Some(s) => {
                    v.push(b't');
                    v.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    v.extend_from_slice(s.as_bytes());
                }
            }
        }
        v
    }

    #[test]
    fn relation() {
        let mut m = vec![b'R'];
        m.extend_from_slice(&16384u32.to_be_bytes());
        m.extend_from_slice(b"public\0staff\0");
        m.push(b'd');
        m.extend_from_slice(&2i16.to_be_bytes());
        m.push(1);
        m.extend_from_slice(b"staff_id\0");
        m.extend_from_slice(&23u32.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
        m.push(0);
        m.extend_from_slice(b"first_name\0");
        m.extend_from_slice(&25u32.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
        let Message::Relation(r) = decode(Bytes::from(m)).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(r.name, "staff");
        assert_eq!(r.columns[0].flags, 1);
        assert_eq!(r.columns[1].name, "first_name");
    }

    #[test]
    fn update_with_old_key_and_toast() {
        let mut m = vec![b'U'];
        m.extend_from_slice(&7u32.to_be_bytes());
        m.push(b'K');
        m.extend(tuple(&[Some("1"), None]));
        m.push(b'N');
        m.extend(tuple(&[Some("2"), Some("\u{0}toast")]));
        let msg = decode(Bytes::from(m)).unwrap();
        assert_eq!(
            msg,
            Message::Update {
                rel: 7,
                old: Some((
                    OldTuple::Key,
                    vec![Datum::Text(Bytes::from("1")), Datum::Null]
                )),
                new: vec![Datum::Text(Bytes::from("2")), Datum::UnchangedToast],
            }
        );
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let mut m = vec![b'I'];
        m.extend_from_slice(&7u32.to_be_bytes());
        m.push(b'N');
        m.extend(tuple(&[Some("hello")]));
        for cut in 0..m.len() {
            assert!(
                decode(Bytes::copy_from_slice(&m[..cut])).is_err(),
                "cut {cut}"
            );
        }
        assert!(decode(Bytes::from(m)).is_ok());
        assert_eq!(
            decode(Bytes::from_static(b"Z")),
            Err(DecodeError::UnknownTag('Z'))
        );
    }

    #[test]
    fn mutated_messages_are_values_or_errors_never_panics() {
        use crate::fuzz;
        let mut insert = vec![b'I'];
        insert.extend_from_slice(&7u32.to_be_bytes());
        insert.push(b'N');
        insert.extend(tuple(&[Some("hello"), None, Some("\u{0}toast")]));
        let mut update = vec![b'U'];
        update.extend_from_slice(&7u32.to_be_bytes());
        update.push(b'K');
        update.extend(tuple(&[Some("1"), None]));
        update.push(b'N');
        update.extend(tuple(&[Some("2"), Some("x")]));
        let mut truncate = vec![b'T'];
        truncate.extend_from_slice(&2i32.to_be_bytes());
        truncate.push(0);
        truncate.extend_from_slice(&7u32.to_be_bytes());
        truncate.extend_from_slice(&8u32.to_be_bytes());
        let mut relation = vec![b'R'];
        relation.extend_from_slice(&16384u32.to_be_bytes());
        relation.extend_from_slice(b"public\0staff\0d");
        relation.extend_from_slice(&1i16.to_be_bytes());
        relation.push(1);
        relation.extend_from_slice(b"staff_id\0");
        relation.extend_from_slice(&23u32.to_be_bytes());
        relation.extend_from_slice(&(-1i32).to_be_bytes());
        let mut begin = vec![b'B'];
        begin.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 4]);
        let mut message = vec![b'M', 1, 0, 0, 0, 0, 0, 0, 0, 9];
        message.extend_from_slice(b"totes\0");
        message.extend_from_slice(&3i32.to_be_bytes());
        message.extend_from_slice(b"abc");
        let samples = [insert, update, truncate, relation, begin, message];
        for s in &samples {
            assert!(decode(Bytes::copy_from_slice(s)).is_ok(), "{s:?}");
        }
        let mut rng = fuzz::Rng::new(0x5eed);
        for _ in 0..fuzz::cases() {
            let _ = decode(Bytes::from(fuzz::mutate(&samples, &mut rng)));
        }
    }
}
