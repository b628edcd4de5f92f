//! The change event every role passes along, and its position in the source's history.
//!
//! Values are kept in PostgreSQL's text output form (the form pgoutput and `COPY ... TO` both
//! produce under the session settings in [`crate::pg::SESSION_SETTINGS`]): the warehouse COPYs
//! them as they are, and the JSON envelope ([`json`]) renders them by their [`ValueKind`].

pub mod civil;
pub mod copy_text;
pub mod decode;
pub mod json;
pub mod value;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
pub use pgwire_replication::Lsn;

pub use value::ValueKind;

/// Now, in microseconds since the Unix epoch (the unit of `commit_ts_us`).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The first OID of user-defined objects: types below it are built in, the same on every server.
pub const FIRST_USER_OID: u32 = 16384;

/// How many times the initial snapshot may be attempted for one slot (see
/// `Position::snapshot_truncate`).
pub const SNAPSHOT_ATTEMPTS: u32 = 64;

/// Where an event sits in the source's history: the commit LSN of its transaction and its
/// ordinal within that transaction (0, 1, ...).
///
/// Rows of the initial snapshot carry the slot's consistent point with negative ordinals
/// (`i32::MIN + row number`): a transaction may commit exactly at the consistent point, and its
/// changes must still sort after every snapshot row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub lsn: Lsn,
    pub seq: i32,
}

impl Position {
    pub fn new(lsn: Lsn, seq: i32) -> Self {
        Self { lsn, seq }
    }

    /// The position of the `row`-th row of the snapshot attempt `attempt` of a slot whose
    /// consistent point is `consistent_point`: attempt 0 (the exported snapshot) at the
    /// consistent point, each redo after a crash one byte lower, so attempts never share a
    /// position and all sort before every streamed change.
    pub fn snapshot(consistent_point: Lsn, attempt: u32, row: u32) -> Self {
        Self {
            lsn: Lsn(consistent_point.0.saturating_sub(attempt as u64)),
            seq: i32::MIN.wrapping_add(row.min(i32::MAX as u32) as i32),
        }
    }

    /// The truncate that opens each table's copy in snapshot attempt `attempt`: below the rows
    /// of every attempt (so no attempt's rows are retired by another's truncate), above every
    /// change committed before the slot existed. Those commit at least a commit record plus the
    /// running-xacts record that makes the slot consistent (more than 80 bytes of WAL) before
    /// the consistent point, hence the 64-byte margin, which also bounds the attempts.
    pub fn snapshot_truncate(consistent_point: Lsn, attempt: u32) -> Self {
        Self {
            lsn: Lsn(consistent_point.0.saturating_sub(SNAPSHOT_ATTEMPTS as u64)),
            seq: i32::MIN.wrapping_add(attempt.min(SNAPSHOT_ATTEMPTS) as i32),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.lsn, self.seq)
    }
}

/// The kind of change, with the one-letter codes of the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A row of the initial snapshot.
    Read,
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
        }
    }

    pub fn from_code(code: &str) -> Option<Op> {
        Some(match code {
            "r" => Op::Read,
            "c" => Op::Insert,
            "u" => Op::Update,
            "d" => Op::Delete,
            "t" => Op::Truncate,
            _ => return None,
        })
    }
}

/// One column value as the source sent it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Datum {
    Null,
    /// The value's text output form (UTF-8).
    Text(Bytes),
    /// An unchanged TOASTed value the source did not resend: the stored value stays as it is.
    UnchangedToast,
}

impl Datum {
    pub fn as_text(&self) -> Option<&[u8]> {
        match self {
            Datum::Text(b) => Some(b),
            _ => None,
        }
    }
}

/// A column of a replicated table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    pub type_mod: i32,
    /// The type as SQL would spell it (`numeric(10,2)`, `"PaymentTypeName"`), for DDL downstream.
    pub type_name: String,
    pub kind: ValueKind,
}

impl Column {
    /// The type as the warehouse stores it, (oid, modifier): built-in types as they are (their
    /// OIDs are the same on every server), user-defined ones (enums, domains, composites) as
    /// text (25) or text[] (1009), since the warehouse does not have them.
    pub fn stored_type(&self) -> (u32, i32) {
        if self.type_oid < FIRST_USER_OID {
            (self.type_oid, self.type_mod)
        } else if matches!(self.kind, ValueKind::Array(_)) {
            (1009, -1)
        } else {
            (25, -1)
        }
    }
}

/// The shape of a replicated table at a point of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    /// Indices into `columns` of the primary key (or, without one, of the replica identity).
    pub key: Vec<usize>,
    /// No primary key or identity index: the whole row is the identity (REPLICA IDENTITY FULL).
    pub keyless: bool,
}

impl TableSchema {
    /// `schema.table`, as used in partition keys, lake paths and logs.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// One change of one row (or, for a truncate, of one table).
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub op: Op,
    pub position: Position,
    /// Source transaction id; `None` for snapshot rows.
    pub xid: Option<u32>,
    /// Commit time in microseconds since the Unix epoch (snapshot time for snapshot rows).
    pub commit_ts_us: i64,
    pub table: Arc<TableSchema>,
    /// The old row when the replica identity provides it in full (`REPLICA IDENTITY FULL`).
    pub before: Option<Vec<Datum>>,
    /// The identity of the row (key columns only, in key order): for deletes the old key,
    /// otherwise the key of `after`.
    pub key: Option<Vec<Datum>>,
    /// The new row (inserts, updates, snapshot reads).
    pub after: Option<Vec<Datum>>,
}

impl ChangeEvent {
    /// Roughly the memory the event holds: its values plus a fixed overhead per value and event.
    pub fn approx_bytes(&self) -> usize {
        fn row(r: &Option<Vec<Datum>>) -> usize {
            r.iter()
                .flatten()
                .map(|d| match d {
                    Datum::Text(b) => b.len() + 16,
                    _ => 16,
                })
                .sum()
        }
        128 + row(&self.before) + row(&self.key) + row(&self.after)
    }

    /// The key values taken from a full row, in key order.
    pub fn key_of(table: &TableSchema, row: &[Datum]) -> Vec<Datum> {
        table
            .key
            .iter()
            .map(|&i| row.get(i).cloned().unwrap_or(Datum::Null))
            .collect()
    }
}
