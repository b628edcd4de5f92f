//! Reading the lake back: a changes file's name gives its table and position range, its rows
//! become change events again (values in PostgreSQL's text form, as capture produced them).
//! `replay` uses this to rebuild or repair a warehouse from a stored LSN.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    Time64MicrosecondType, TimestampMicrosecondType, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::arrow::{conv_for, Conv, DATE_INFINITY, TIMESTAMP_INFINITY};
use crate::event::civil::civil_from_days;
use crate::event::{ChangeEvent, Datum, Lsn, Op, Position, TableSchema};

/// A changes file as its path names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangesFile {
    pub path: String,
    /// `schema.table`.
    pub table: String,
    pub schema_name: String,
    pub table_name: String,
    pub first: Position,
    pub last: Position,
}

fn parse_position(s: &str) -> Option<Position> {
    let (lsn, seq) = s.split_once('.')?;
    if lsn.len() != 16 || seq.len() != 8 {
        return None;
    }
    let lsn = u64::from_str_radix(lsn, 16).ok()?;
    let seq = u32::from_str_radix(seq, 16).ok()?;
    Some(Position::new(
        Lsn(lsn),
        (seq as i64 + i32::MIN as i64) as i32,
    ))
}

/// `changes/<schema.table>/date=<date>/<first>-<last>.parquet`, or `None` for any other path.
pub fn parse_changes_path(path: &str) -> Option<ChangesFile> {
    let mut parts = path.split('/');
    let (Some("changes"), Some(table), Some(date), Some(name), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    if !date.starts_with("date=") {
        return None;
    }
    let (schema_name, table_name) = super::names::parse_table_dir(table)?;
    let (first, last) = name.strip_suffix(".parquet")?.split_once('-')?;
    Some(ChangesFile {
        path: path.to_string(),
        table: format!("{schema_name}.{table_name}"),
        schema_name,
        table_name,
        first: parse_position(first)?,
        last: parse_position(last)?,
    })
}

/// How much larger than its size a lake file may say its contents are.
const MAX_EXPANSION: i64 = 1024;

/// The events of a changes file at or after `from` (and at or before `to`), for a table shaped
/// like `table` (the warehouse's staging mirror). Columns the file does not have are NULL;
/// columns the mirror does not have are an error (the mirror must be extended first).
pub fn events_of(
    data: Bytes,
    table: &Arc<TableSchema>,
    from: Position,
    to: Option<Position>,
) -> Result<Vec<ChangeEvent>, String> {
    // The Parquet and Arrow decoders can panic on a damaged file (an offset past its buffer): a
    // damaged file is an error that names it, not the end of the replay.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_events(data, table, from, to)
    }))
    .unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(format!(
            "not a readable Parquet file: the decoder failed ({why})"
        ))
    })
}

fn decode_events(
    data: Bytes,
    table: &Arc<TableSchema>,
    from: Position,
    to: Option<Position>,
) -> Result<Vec<ChangeEvent>, String> {
    let size = data.len();
    let builder = ParquetRecordBatchReaderBuilder::try_new(data)
        .map_err(|e| format!("not a readable Parquet file: {e}"))?;
    // What the file says it holds, before anything is decoded: no more rows or bytes than its
    // size can justify (ZSTD rarely passes 1:50 on this data; a file claiming more is damaged
    // or crafted, and would make replay allocate for it).
    let meta = builder.metadata();
    let rows: i64 = meta.row_groups().iter().map(|g| g.num_rows()).sum();
    let unpacked: i64 = meta
        .row_groups()
        .iter()
        .flat_map(|g| g.columns())
        .map(|c| c.uncompressed_size().max(0))
        .sum();
    let bound = (size as i64).saturating_mul(MAX_EXPANSION).max(1 << 20);
    if rows < 0 || rows > bound || unpacked > bound {
        return Err(format!(
            "not a readable Parquet file: it claims {rows} rows and {unpacked} bytes unpacked from {size} bytes"
        ));
    }
    let reader = builder
        .build()
        .map_err(|e| format!("not a readable Parquet file: {e}"))?;
    let mut events = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| format!("reading a row group: {e}"))?;
        events_of_batch(&batch, table, from, to, &mut events)?;
    }
    Ok(events)
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, String> {
    batch
        .column_by_name(name)
        .ok_or_else(|| format!("column {name} is missing"))
}

fn events_of_batch(
    batch: &RecordBatch,
    table: &Arc<TableSchema>,
    from: Position,
    to: Option<Position>,
    out: &mut Vec<ChangeEvent>,
) -> Result<(), String> {
    let op = column(batch, "_op")?
        .as_string_opt::<i32>()
        .ok_or("_op is not text")?;
    let lsn = column(batch, "_lsn")?
        .as_primitive_opt::<UInt64Type>()
        .ok_or("_lsn is not uint64")?;
    let seq = column(batch, "_seq")?
        .as_primitive_opt::<Int32Type>()
        .ok_or("_seq is not int32")?;
    let xid = column(batch, "_xid")?
        .as_primitive_opt::<UInt32Type>()
        .ok_or("_xid is not uint32")?;
    let ts = column(batch, "_commit_ts")?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or("_commit_ts is not a timestamp")?;
    let toast = column(batch, "_unchanged_toast")?
        .as_string_opt::<i32>()
        .ok_or("_unchanged_toast is not text")?;
    for field in batch.schema().fields() {
        let name = field.name();
        if !name.starts_with('_') && table.column_index(name).is_none() {
            return Err(format!(
                "column {name} of the lake is not in the warehouse's staging.{}: extend the mirror first (totes-cdc setup)",
                table.name
            ));
        }
    }
    // Each column of the table in text form, row by row (None: not in this file).
    let mut texts: Vec<Option<Vec<Option<Bytes>>>> = Vec::with_capacity(table.columns.len());
    for c in &table.columns {
        texts.push(match batch.column_by_name(&c.name) {
            None => None,
            Some(a) => Some(
                column_texts(&conv_for(c.type_oid, c.type_mod, &c.kind), a)
                    .map_err(|e| format!("column {}: {e}", c.name))?,
            ),
        });
    }
    for row in 0..batch.num_rows() {
        let position = Position::new(Lsn(lsn.value(row)), seq.value(row));
        if position < from || to.is_some_and(|t| position > t) {
            continue;
        }
        let code = op.value(row);
        let op = Op::from_code(code).ok_or_else(|| format!("_op {code:?} is not an operation"))?;
        let unchanged: Vec<&str> = if toast.is_null(row) {
            Vec::new()
        } else {
            toast.value(row).split(',').collect()
        };
        let values: Vec<Datum> = table
            .columns
            .iter()
            .zip(&texts)
            .map(|(c, t)| {
                if unchanged.contains(&c.name.as_str()) {
                    return Datum::UnchangedToast;
                }
                match t.as_ref().and_then(|t| t[row].clone()) {
                    Some(b) => Datum::Text(b),
                    None => Datum::Null,
                }
            })
            .collect();
        let (key, after) = match op {
            // The lake keeps a deleted row's key (or its old row): the key is what a delete needs.
            Op::Delete => (Some(ChangeEvent::key_of(table, &values)), None),
            Op::Truncate => (None, None),
            Op::Read | Op::Insert | Op::Update => {
                (Some(ChangeEvent::key_of(table, &values)), Some(values))
            }
        };
        out.push(ChangeEvent {
            op,
            position,
            xid: (!xid.is_null(row)).then(|| xid.value(row)),
            commit_ts_us: ts.value(row),
            table: table.clone(),
            before: None,
            key,
            after,
        });
    }
    Ok(())
}

/// One Arrow column back in PostgreSQL's text form (the inverse of `arrow::build`).
pub fn column_texts(c: &Conv, a: &ArrayRef) -> Result<Vec<Option<Bytes>>, String> {
    fn each<A: Array>(
        a: &A,
        f: impl Fn(usize) -> Result<String, String>,
    ) -> Result<Vec<Option<Bytes>>, String> {
        (0..a.len())
            .map(|i| {
                if a.is_null(i) {
                    Ok(None)
                } else {
                    f(i).map(|s| Some(Bytes::from(s)))
                }
            })
            .collect()
    }
    let wrong = || format!("the lake's type {} does not fit {c:?}", a.data_type());
    match c {
        Conv::I16 => {
            let v = a.as_primitive_opt::<Int16Type>().ok_or_else(wrong)?;
            each(v, |i| Ok(v.value(i).to_string()))
        }
        Conv::I32 => {
            let v = a.as_primitive_opt::<Int32Type>().ok_or_else(wrong)?;
            each(v, |i| Ok(v.value(i).to_string()))
        }
        Conv::I64 => {
            let v = a.as_primitive_opt::<Int64Type>().ok_or_else(wrong)?;
            each(v, |i| Ok(v.value(i).to_string()))
        }
        Conv::F32 => {
            let v = a.as_primitive_opt::<Float32Type>().ok_or_else(wrong)?;
            each(v, |i| {
                Ok(float_text(
                    v.value(i) as f64,
                    format!("{:e}", v.value(i)),
                    6,
                ))
            })
        }
        Conv::F64 => {
            let v = a.as_primitive_opt::<Float64Type>().ok_or_else(wrong)?;
            each(v, |i| {
                Ok(float_text(v.value(i), format!("{:e}", v.value(i)), 15))
            })
        }
        Conv::Bool => {
            let v = a.as_boolean_opt().ok_or_else(wrong)?;
            each(v, |i| Ok(if v.value(i) { "t" } else { "f" }.to_string()))
        }
        Conv::Decimal(_, scale) => {
            let v = a.as_primitive_opt::<Decimal128Type>().ok_or_else(wrong)?;
            each(v, |i| Ok(decimal_text(v.value(i), *scale)))
        }
        Conv::Utf8 => {
            let v = a.as_string_opt::<i32>().ok_or_else(wrong)?;
            each(v, |i| Ok(v.value(i).to_string()))
        }
        Conv::Json(kind) => {
            let v = a.as_string_opt::<i32>().ok_or_else(wrong)?;
            let kind = kind.clone();
            each(v, |i| {
                let s = v.value(i);
                // An array text the envelope could not parse was kept as a JSON string.
                match serde_json::from_str::<serde_json::Value>(s) {
                    Ok(serde_json::Value::String(t)) => Ok(t),
                    Ok(json) => {
                        crate::event::decode::pg_text(&kind, &json).map(Option::unwrap_or_default)
                    }
                    Err(e) => Err(format!("{s:?} is not JSON: {e}")),
                }
            })
        }
        Conv::Binary => {
            let v = a.as_binary_opt::<i32>().ok_or_else(wrong)?;
            each(v, |i| {
                let raw = v.value(i);
                let mut s = String::with_capacity(2 + raw.len() * 2);
                s.push_str("\\x");
                for b in raw {
                    s.push_str(&format!("{b:02x}"));
                }
                Ok(s)
            })
        }
        Conv::Date => {
            let v = a.as_primitive_opt::<Date32Type>().ok_or_else(wrong)?;
            each(v, |i| Ok(date_text(v.value(i))))
        }
        Conv::Time => {
            let v = a
                .as_primitive_opt::<Time64MicrosecondType>()
                .ok_or_else(wrong)?;
            each(v, |i| Ok(time_text(v.value(i))))
        }
        Conv::Timestamp | Conv::TimestampTz => {
            let v = a
                .as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or_else(wrong)?;
            let zone = *c == Conv::TimestampTz;
            each(v, |i| Ok(timestamp_text(v.value(i), zone)))
        }
        Conv::Lsn => {
            let v = a.as_primitive_opt::<UInt64Type>().ok_or_else(wrong)?;
            each(v, |i| Ok(Lsn(v.value(i)).to_string()))
        }
    }
}

/// A float as PostgreSQL prints it: the shortest digits that read back exactly, fixed-point for
/// decimal exponents from -4 up to 15 (float8) or 6 (float4), otherwise `d.ddde±XX`.
fn float_text(v: f64, scientific: String, fixed_below: i32) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // `scientific` is Rust's shortest round-trip form, `-1.25e-7`.
    let (mantissa, exp) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if v == 0.0 {
        return format!("{sign}0");
    }
    if (-4..fixed_below).contains(&exp) {
        let point = exp + 1;
        if point <= 0 {
            format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!(
                "{sign}{digits}{}",
                "0".repeat(point as usize - digits.len())
            )
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{sign}{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{dot}{rest}e{esign}{:02}", exp.abs())
    }
}

fn decimal_text(v: i128, scale: i8) -> String {
    let digits = v.unsigned_abs().to_string();
    let sign = if v < 0 { "-" } else { "" };
    let scale = scale.max(0) as usize;
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

fn ymd_text(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    if y <= 0 {
        format!("{:04}-{m:02}-{d:02} BC", 1 - y)
    } else {
        format!("{y:04}-{m:02}-{d:02}")
    }
}

fn date_text(days: i32) -> String {
    match days {
        DATE_INFINITY => "infinity".into(),
        d if d == -DATE_INFINITY => "-infinity".into(),
        d => ymd_text(d as i64),
    }
}

fn time_text(us: i64) -> String {
    let (secs, micros) = (us.div_euclid(1_000_000), us.rem_euclid(1_000_000));
    let hms = format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
    if micros == 0 {
        hms
    } else {
        format!("{hms}.{micros:06}")
    }
}

fn timestamp_text(us: i64, zone: bool) -> String {
    if us == TIMESTAMP_INFINITY {
        return "infinity".into();
    }
    if us == -TIMESTAMP_INFINITY {
        return "-infinity".into();
    }
    let days = us.div_euclid(86_400_000_000);
    let date = ymd_text(days);
    let time = time_text(us.rem_euclid(86_400_000_000));
    // BC goes after the time (and the zone) in PostgreSQL's output.
    let (date, bc) = match date.strip_suffix(" BC") {
        Some(d) => (d.to_string(), " BC"),
        None => (date, ""),
    };
    let zone = if zone { "+00" } else { "" };
    format!("{date} {time}{zone}{bc}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ValueKind;
    use crate::lake::arrow::build;

    fn round_trip(c: Conv, values: &[&str]) {
        let input: Vec<Option<&[u8]>> = values.iter().map(|v| Some(v.as_bytes())).collect();
        let array = build(&c, &input).unwrap();
        let back = column_texts(&c, &array).unwrap();
        let back: Vec<&str> = back
            .iter()
            .map(|b| std::str::from_utf8(b.as_deref().unwrap()).unwrap())
            .collect();
        assert_eq!(back, values, "{c:?}");
    }

    #[test]
    fn text_forms_survive_the_lake() {
        round_trip(Conv::I16, &["-32768", "7"]);
        round_trip(Conv::I64, &["9223372036854775807"]);
        round_trip(
            Conv::F64,
            &["1.5", "NaN", "Infinity", "-Infinity", "1e+300"],
        );
        round_trip(Conv::F32, &["0.1", "-3.25"]);
        round_trip(Conv::Decimal(10, 2), &["123.45", "-0.05", "0.00", "-12.30"]);
        round_trip(Conv::Decimal(5, 0), &["-42"]);
        round_trip(Conv::Bool, &["t", "f"]);
        round_trip(
            Conv::Date,
            &["2024-11-15", "0044-03-15 BC", "infinity", "-infinity"],
        );
        round_trip(Conv::Time, &["14:40:10.188000", "00:00:00"]);
        round_trip(
            Conv::Timestamp,
            &[
                "2024-11-15 14:40:10.188000",
                "1999-12-31 23:59:59",
                "infinity",
            ],
        );
        round_trip(
            Conv::TimestampTz,
            &["2024-11-15 14:40:10.188000+00", "-infinity"],
        );
        round_trip(Conv::Binary, &["\\x00ff10"]);
        round_trip(Conv::Lsn, &["16/B374D848"]);
        round_trip(Conv::Utf8, &["plain \"text\"\t"]);
        // Arrays come back in PostgreSQL's input form, elements quoted: the same value.
        let c = Conv::Json(ValueKind::Array(Box::new(ValueKind::Int)));
        let array = build(&c, &[Some(b"{1,2,NULL}".as_slice())]).unwrap();
        let back = column_texts(&c, &array).unwrap();
        assert_eq!(back[0].as_deref(), Some(b"{\"1\",\"2\",NULL}".as_slice()));
    }

    #[test]
    fn reads_changes_paths() {
        let f = parse_changes_path(
            "changes/public.sales_order/date=2024-11-15/0000000001ECB1B0.00000000-0000000001ECB1B0.80000002.parquet",
        )
        .unwrap();
        assert_eq!(f.table, "public.sales_order");
        assert_eq!(f.first, Position::new(Lsn(0x1ECB1B0), i32::MIN));
        assert_eq!(f.last, Position::new(Lsn(0x1ECB1B0), 2));
        assert!(
            parse_changes_path("processed/fact_sales_order/date=2024-11-15/a-b.parquet").is_none()
        );
        assert!(parse_changes_path("changes/public.x/date=2024-11-15/junk.parquet").is_none());
    }

    /// Replay reads lake files it did not write: mutated changes files are events or an error,
    /// never a panic.
    #[test]
    fn mutated_changes_files_are_events_or_errors_never_panics() {
        use crate::event::decode::{parse, to_event};
        use crate::fuzz;
        let table = fuzz::sample_table();
        let envelopes = [
            r#"{"version":1,"op":"c","source":{"database":"d","schema":"public","table":"t","lsn":"0/16B3748","seq":3,"xid":7,"commit_ts":"2024-11-15T14:40:10.188000Z"},"key":{"id":1},"before":null,"after":{"id":1,"name":"a\"b","at":"2024-11-15T14:40:10.188","tags":["x",null,"y"],"data":"AP8Q","amount":"12.50","day":"2024-02-29"}}"#,
            r#"{"version":1,"op":"u","source":{"database":"d","schema":"public","table":"t","lsn":"0/16B3800","seq":0,"xid":8,"commit_ts":"2024-11-15T14:40:11Z"},"key":{"id":2},"before":null,"after":{"id":2,"name":null,"day":"infinity"},"unchanged_toast":["data"]}"#,
            r#"{"version":1,"op":"d","source":{"database":"d","schema":"public","table":"t","lsn":"0/16B3900","seq":1,"xid":9,"commit_ts":"2024-11-15T14:40:12Z"},"key":{"id":3},"before":null,"after":null}"#,
        ];
        let events: Vec<ChangeEvent> = envelopes
            .iter()
            .map(|e| to_event(&parse(e.as_bytes()).unwrap(), table.clone()).unwrap())
            .collect();
        let samples: Vec<Vec<u8>> = [&events[..1], &events[1..], &events[..]]
            .iter()
            .map(|evs| crate::lake::changes_files(evs).unwrap()[0].data.to_vec())
            .collect();
        for s in &samples {
            assert!(
                !events_of(Bytes::from(s.clone()), &table, Position::default(), None)
                    .unwrap()
                    .is_empty()
            );
        }
        // The decoders' panics are caught and answered as errors; their messages would fill
        // the test output, so this thread's are not printed.
        let prev = std::sync::Arc::new(std::panic::take_hook());
        let me = std::thread::current().id();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().id() != me {
                prev(info);
            }
        }));
        let mut rng = fuzz::Rng::new(0x1a4e);
        for _ in 0..fuzz::cases() {
            let data = Bytes::from(fuzz::mutate(&samples, &mut rng));
            let _ = events_of(data, &table, Position::default(), None);
        }
    }
}
