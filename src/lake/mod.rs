//! The immutable Parquet lake. Every micro-batch is written, before its warehouse commit, as
//!
//! - `changes/<schema>.<table>/date=YYYY-MM-DD/<first>-<last>.parquet`: the raw change events of
//!   a table (one column per source column, exact Arrow types, plus `_op`, `_lsn`, `_seq`,
//!   `_xid`, `_commit_ts`, `_unchanged_toast`), partitioned by commit date;
//! - `processed/<warehouse table>/date=YYYY-MM-DD/<first>-<last>.parquet`: the star rows the
//!   batch produced (new fact versions, changed dimension rows).
//!
//! `<first>` and `<last>` are the positions the file holds, spelled so names sort by position
//! (`<lsn as 16 hex digits>.<seq + 2^31 as 8 hex digits>`). Each committed file is recorded in
//! `totes_cdc.lake_files` in the batch's transaction. A file appears at its place only once
//! its batch committed: until then it lies in `_staging/` under a `.staged` name (`writer`).

pub mod arrow;
pub mod names;
pub mod read;
pub mod store;
pub mod writer;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{
    Int32Builder, StringBuilder, TimestampMicrosecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use self::arrow::{build, conv_for, data_type, Conv};
use crate::event::civil::civil_from_days;
use crate::event::{ChangeEvent, Datum, Position};
pub use store::{Store, StoreError};
pub use writer::{LakeWriter, WriteError};

/// The `lake` option: a directory, `s3://bucket/prefix`, or `none` (no lake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Off,
    At(String),
}

impl Location {
    /// Where the lake is, unless it is off.
    pub fn at(&self) -> Option<&str> {
        match self {
            Location::Off => None,
            Location::At(s) => Some(s),
        }
    }
}

impl std::str::FromStr for Location {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" => {
                Err("an empty lake location: give a directory, s3://bucket/prefix, or none".into())
            }
            "none" => Ok(Location::Off),
            s => Ok(Location::At(s.to_string())),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.at().unwrap_or("none"))
    }
}

/// What a lake file holds; also the top folder of its path and its manifest `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Raw change events of a source table.
    Changes,
    /// Star rows a batch produced.
    Processed,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Changes => "changes",
            FileKind::Processed => "processed",
        }
    }
}

/// A file of the lake, built in memory.
#[derive(Debug, Clone)]
pub struct LakeFile {
    pub path: String,
    pub kind: FileKind,
    /// `schema.table` for changes, the warehouse table for processed.
    pub table: String,
    pub first: Position,
    pub last: Position,
    pub rows: usize,
    pub data: Bytes,
}

/// A position as it appears in file names: sortable, fixed width.
pub fn position_name(p: Position) -> String {
    format!(
        "{:016X}.{:08X}",
        p.lsn.0,
        (p.seq as i64 - i32::MIN as i64) as u32
    )
}

/// `YYYY-MM-DD` (UTC) of a time in microseconds since the Unix epoch.
pub fn utc_date(us: i64) -> String {
    let (y, m, d) = civil_from_days(us.div_euclid(86_400_000_000));
    format!("{y:04}-{m:02}-{d:02}")
}

fn parquet_bytes(batch: &RecordBatch) -> Result<Bytes, String> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).map_err(|e| e.to_string())?,
        ))
        .set_created_by("totes-cdc".into())
        .build();
    let mut w =
        ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props)).map_err(|e| e.to_string())?;
    w.write(batch).map_err(|e| e.to_string())?;
    w.into_inner().map(Bytes::from).map_err(|e| e.to_string())
}

/// The row an event leaves in the lake: the new row, else the old one, else the key alone.
fn row_of(ev: &ChangeEvent) -> Vec<Option<&[u8]>> {
    let t = &ev.table;
    fn text(d: &Datum) -> Option<&[u8]> {
        d.as_text()
    }
    if let Some(after) = ev.after.as_ref().or(ev.before.as_ref()) {
        return after.iter().map(text).collect();
    }
    let mut row = vec![None; t.columns.len()];
    if let Some(key) = &ev.key {
        for (k, &i) in t.key.iter().enumerate() {
            row[i] = key.get(k).and_then(text);
        }
    }
    row
}

/// The changes files of a batch: one per table and commit date.
pub fn changes_files(events: &[ChangeEvent]) -> Result<Vec<LakeFile>, String> {
    // A table whose shape changed within the batch gets a file per shape.
    let mut shapes: Vec<&Arc<crate::event::TableSchema>> = Vec::new();
    let mut groups: BTreeMap<(String, String, usize), Vec<&ChangeEvent>> = BTreeMap::new();
    for ev in events {
        let shape = match shapes.iter().position(|s| **s == ev.table) {
            Some(i) => i,
            None => {
                shapes.push(&ev.table);
                shapes.len() - 1
            }
        };
        groups
            .entry((ev.table.qualified_name(), utc_date(ev.commit_ts_us), shape))
            .or_default()
            .push(ev);
    }
    let mut files = Vec::with_capacity(groups.len());
    for ((table, date, _), evs) in groups {
        let t = &evs[0].table;
        let mut fields = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        let rows: Vec<Vec<Option<&[u8]>>> = evs.iter().map(|e| row_of(e)).collect();
        for (i, c) in t.columns.iter().enumerate() {
            let conv = conv_for(c.type_oid, c.type_mod, &c.kind);
            let values: Vec<Option<&[u8]>> =
                rows.iter().map(|r| r.get(i).copied().flatten()).collect();
            columns.push(build(&conv, &values).map_err(|e| format!("{table}.{}: {e}", c.name))?);
            fields.push(Field::new(&c.name, data_type(&conv), true));
        }
        let mut op = StringBuilder::new();
        let mut lsn = UInt64Builder::new();
        let mut seq = Int32Builder::new();
        let mut xid = UInt32Builder::new();
        let mut ts = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        let mut toast = StringBuilder::new();
        for e in &evs {
            op.append_value(e.op.code());
            lsn.append_value(e.position.lsn.0);
            seq.append_value(e.position.seq);
            xid.append_option(e.xid);
            ts.append_value(e.commit_ts_us);
            let unchanged: Vec<&str> = e
                .after
                .iter()
                .flatten()
                .enumerate()
                .filter(|(_, d)| matches!(d, Datum::UnchangedToast))
                .map(|(i, _)| t.columns[i].name.as_str())
                .collect();
            if unchanged.is_empty() {
                toast.append_null();
            } else {
                toast.append_value(unchanged.join(","));
            }
        }
        fields.push(Field::new("_op", DataType::Utf8, false));
        fields.push(Field::new("_lsn", DataType::UInt64, false));
        fields.push(Field::new("_seq", DataType::Int32, false));
        fields.push(Field::new("_xid", DataType::UInt32, true));
        fields.push(Field::new(
            "_commit_ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ));
        fields.push(Field::new("_unchanged_toast", DataType::Utf8, true));
        columns.push(Arc::new(op.finish()));
        columns.push(Arc::new(lsn.finish()));
        columns.push(Arc::new(seq.finish()));
        columns.push(Arc::new(xid.finish()));
        columns.push(Arc::new(ts.finish()));
        columns.push(Arc::new(toast.finish()));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(|e| format!("{table}: {e}"))?;
        let first = evs.iter().map(|e| e.position).min().unwrap_or_default();
        let last = evs.iter().map(|e| e.position).max().unwrap_or_default();
        files.push(LakeFile {
            path: format!(
                "changes/{}/date={date}/{}-{}.parquet",
                names::table_dir(&t.schema, &t.name),
                position_name(first),
                position_name(last)
            ),
            kind: FileKind::Changes,
            table,
            first,
            last,
            rows: evs.len(),
            data: parquet_bytes(&batch)?,
        });
    }
    Ok(files)
}

/// A warehouse table's column for the processed files.
#[derive(Debug, Clone)]
pub struct WarehouseColumn {
    pub name: String,
    pub type_oid: u32,
    pub type_mod: i32,
}

/// The processed file of one warehouse table for a batch (rows in COPY text form).
pub fn processed_file(
    table: &str,
    columns: &[WarehouseColumn],
    rows: &[Vec<Option<Bytes>>],
    first: Position,
    last: Position,
    date: &str,
) -> Result<LakeFile, String> {
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        let conv: Conv = conv_for(c.type_oid, c.type_mod, &crate::event::ValueKind::Text);
        let values: Vec<Option<&[u8]>> = rows
            .iter()
            .map(|r| r.get(i).and_then(|v| v.as_deref()))
            .collect();
        arrays.push(build(&conv, &values).map_err(|e| format!("{table}.{}: {e}", c.name))?);
        fields.push(Field::new(&c.name, data_type(&conv), true));
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| format!("{table}: {e}"))?;
    Ok(LakeFile {
        path: format!(
            "processed/{table}/date={date}/{}-{}.parquet",
            position_name(first),
            position_name(last)
        ),
        kind: FileKind::Processed,
        table: table.to_string(),
        first,
        last,
        rows: rows.len(),
        data: parquet_bytes(&batch)?,
    })
}
