//! The real totesys snapshot of 2024-11-15 (tests/fixtures/totesys-2024-11, Parquet), loaded
//! into a source database with the export's type changes undone (fixtures README).

use std::fmt::Write as _;
use std::path::PathBuf;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampNanosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use bytes::Bytes;
use futures_util::SinkExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio_postgres::Client;

/// Tables in an order that satisfies the foreign keys.
pub const LOAD_ORDER: [&str; 11] = [
    "address",
    "currency",
    "department",
    "design",
    "payment_type",
    "staff",
    "counterparty",
    "sales_order",
    "purchase_order",
    "transaction",
    "payment",
];

fn dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/totesys-2024-11"
    ))
}

/// Money columns: float64 in the export, numeric(10,2) in the source.
const MONEY: [&str; 3] = ["payment_amount", "unit_price", "item_unit_price"];

fn copy_escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

fn format_ns(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let ms = ns.rem_euclid(1_000_000_000) / 1_000_000;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{ms:03}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

fn rows_as_copy(batch: &RecordBatch, out: &mut String) {
    let schema = batch.schema();
    for row in 0..batch.num_rows() {
        for (i, field) in schema.fields().iter().enumerate() {
            if i > 0 {
                out.push('\t');
            }
            let col = batch.column(i);
            if col.is_null(row) {
                out.push_str("\\N");
                continue;
            }
            match field.data_type() {
                DataType::Int64 => {
                    let _ = write!(out, "{}", col.as_primitive::<Int64Type>().value(row));
                }
                DataType::Float64 => {
                    let v = col.as_primitive::<Float64Type>().value(row);
                    if v.is_nan() {
                        out.push_str("\\N");
                    } else if MONEY.contains(&field.name().as_str()) {
                        let _ = write!(out, "{v:.2}");
                    } else {
                        // A nullable integer key exported as float.
                        let _ = write!(out, "{}", v.round() as i64);
                    }
                }
                DataType::Utf8 => copy_escape(out, col.as_string::<i32>().value(row)),
                DataType::LargeUtf8 => copy_escape(out, col.as_string::<i64>().value(row)),
                DataType::Boolean => out.push(if col.as_boolean().value(row) {
                    't'
                } else {
                    'f'
                }),
                DataType::Timestamp(TimeUnit::Nanosecond, _) => out.push_str(&format_ns(
                    col.as_primitive::<TimestampNanosecondType>().value(row),
                )),
                other => panic!(
                    "fixture column {} has unexpected type {other}",
                    field.name()
                ),
            }
        }
        out.push('\n');
    }
}

/// Loads every table of the snapshot into `client`'s database (which has the totesys schema)
/// and moves the sequences past the loaded keys. Returns the row count.
pub async fn load(client: &Client) -> u64 {
    let mut total = 0;
    for table in LOAD_ORDER {
        let file =
            std::fs::File::open(dir().join(format!("{table}.parquet"))).expect("fixture file");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("parquet")
            .build()
            .expect("parquet reader");
        let mut columns: Option<Vec<String>> = None;
        let mut data = String::new();
        for batch in reader {
            let batch = batch.expect("record batch");
            total += batch.num_rows() as u64;
            columns.get_or_insert_with(|| {
                batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| format!("\"{}\"", f.name()))
                    .collect()
            });
            rows_as_copy(&batch, &mut data);
        }
        let columns = columns.unwrap_or_default();
        let sink = client
            .copy_in::<_, Bytes>(&format!(
                "COPY \"{table}\" ({}) FROM STDIN",
                columns.join(", ")
            ))
            .await
            .expect("copy");
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from(data)).await.expect("copy data");
        sink.finish()
            .await
            .unwrap_or_else(|e| panic!("loading {table}: {e}"));
        client
            .batch_execute(&format!(
                "SELECT setval(pg_get_serial_sequence('\"{table}\"', '{table}_id'), (SELECT max({table}_id) FROM \"{table}\"))"
            ))
            .await
            .expect("setval");
    }
    total
}
