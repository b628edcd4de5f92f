//! Reading the JSON envelope back into a change event (the Kinesis consumer's side): each value
//! returns to PostgreSQL's text input form for the column's type.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::json::ENVELOPE_VERSION;
use super::{ChangeEvent, Datum, Lsn, Op, Position, TableSchema, ValueKind};

/// The parts of an envelope before its table is known.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub op: Op,
    pub schema: String,
    pub table: String,
    pub position: Position,
    pub xid: Option<u32>,
    pub commit_ts_us: i64,
    pub key: Option<Map<String, Value>>,
    pub before: Option<Map<String, Value>>,
    pub after: Option<Map<String, Value>>,
    pub unchanged_toast: Vec<String>,
    /// Where the full envelope of an oversized record is stored.
    pub oversized: Option<String>,
    /// The table's shape as the source had it (absent in records of earlier versions).
    pub columns: Option<Vec<EnvColumn>>,
}

/// A column of the envelope's `columns`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnvColumn {
    pub name: String,
    pub type_oid: u32,
    pub type_mod: i32,
    /// 1, 2, ... for key columns in key order; 0 otherwise.
    pub key: u32,
}

fn parse_columns(v: &Value) -> Result<Vec<EnvColumn>, String> {
    let bad =
        || "columns is not a list of [name, type oid, type modifier, key ordinal]".to_string();
    let list = v.as_array().ok_or_else(bad)?;
    let mut out = Vec::with_capacity(list.len());
    for c in list {
        let c = c.as_array().filter(|c| c.len() == 4).ok_or_else(bad)?;
        out.push(EnvColumn {
            name: c[0].as_str().ok_or_else(bad)?.to_string(),
            type_oid: c[1]
                .as_u64()
                .and_then(|o| u32::try_from(o).ok())
                .ok_or_else(bad)?,
            type_mod: c[2]
                .as_i64()
                .and_then(|m| i32::try_from(m).ok())
                .ok_or_else(bad)?,
            key: c[3]
                .as_u64()
                .and_then(|k| u32::try_from(k).ok())
                .ok_or_else(bad)?,
        });
    }
    Ok(out)
}

/// A table shaped as an envelope's `columns` say; type names are filled in by the caller
/// (`type_name`, from the warehouse's `format_type`).
pub fn envelope_table(
    schema: &str,
    table: &str,
    columns: &[EnvColumn],
    type_name: impl Fn(u32, i32) -> String,
) -> Result<TableSchema, String> {
    let mut key: Vec<(u32, usize)> = Vec::new();
    let mut cols = Vec::with_capacity(columns.len());
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].iter().any(|o| o.name == c.name) {
            return Err(format!("column {} is listed twice", c.name));
        }
        if c.key > 0 {
            key.push((c.key, i));
        }
        cols.push(super::Column {
            name: c.name.clone(),
            type_oid: c.type_oid,
            type_mod: c.type_mod,
            type_name: type_name(c.type_oid, c.type_mod),
            kind: ValueKind::builtin(c.type_oid).unwrap_or(ValueKind::Text),
        });
    }
    key.sort_unstable();
    Ok(TableSchema {
        oid: 0,
        schema: schema.to_string(),
        name: table.to_string(),
        columns: cols,
        keyless: key.is_empty(),
        key: key.into_iter().map(|(_, i)| i).collect(),
    })
}

/// Parses an envelope; the error says what is wrong with it.
pub fn parse(data: &[u8]) -> Result<Envelope, String> {
    let v: Value = serde_json::from_slice(data).map_err(|e| format!("not JSON: {e}"))?;
    let o = v.as_object().ok_or("not a JSON object")?;
    let version = o
        .get("version")
        .and_then(Value::as_u64)
        .ok_or("no version")?;
    if version != ENVELOPE_VERSION as u64 {
        return Err(format!(
            "envelope version {version}, this consumer reads {ENVELOPE_VERSION}"
        ));
    }
    let op = o
        .get("op")
        .and_then(Value::as_str)
        .and_then(Op::from_code)
        .ok_or("no valid op")?;
    let src = o
        .get("source")
        .and_then(Value::as_object)
        .ok_or("no source")?;
    let text = |k: &str| -> Result<String, String> {
        src.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or(format!("no source.{k}"))
    };
    let lsn = Lsn::parse(&text("lsn")?).map_err(|e| e.to_string())?;
    let seq = src
        .get("seq")
        .and_then(Value::as_i64)
        .and_then(|s| i32::try_from(s).ok())
        .ok_or("no source.seq")?;
    let commit_ts_us = parse_utc_micros(&text("commit_ts")?)?;
    let obj = |k: &str| o.get(k).and_then(Value::as_object).cloned();
    Ok(Envelope {
        op,
        schema: text("schema")?,
        table: text("table")?,
        position: Position::new(lsn, seq),
        xid: src.get("xid").and_then(Value::as_u64).map(|x| x as u32),
        commit_ts_us,
        key: obj("key"),
        before: obj("before"),
        after: obj("after"),
        unchanged_toast: o
            .get("unchanged_toast")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        oversized: o
            .get("oversized")
            .and_then(Value::as_str)
            .map(str::to_string),
        columns: o.get("columns").map(parse_columns).transpose()?,
    })
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` → microseconds since the Unix epoch.
pub fn parse_utc_micros(s: &str) -> Result<i64, String> {
    let bad = || format!("commit_ts '{s}' is not an ISO-8601 UTC time");
    let s2 = s.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = s2.split_once('T').ok_or_else(bad)?;
    let mut d = date.split('-');
    let (y, m, dd) = (
        d.next()
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or_else(bad)?,
        d.next()
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(bad)?,
        d.next()
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(bad)?,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|v| v.parse::<i64>().ok());
    let (h, mi, se) = (
        t.next().flatten().ok_or_else(bad)?,
        t.next().flatten().ok_or_else(bad)?,
        t.next().flatten().ok_or_else(bad)?,
    );
    let digits: String = frac.chars().take(6).collect();
    let micros = digits.parse::<i64>().map_err(|_| bad())? * 10i64.pow(6 - digits.len() as u32);
    let days = crate::event::civil::days_from_civil(y, m, dd);
    Ok(((days * 24 + h) * 60 + mi) * 60 * 1_000_000 + se * 1_000_000 + micros)
}

/// A JSON value back in PostgreSQL's text input form.
pub fn pg_text(kind: &ValueKind, v: &Value) -> Result<Option<String>, String> {
    Ok(Some(match (kind, v) {
        (_, Value::Null) => return Ok(None),
        (ValueKind::Bool, Value::Bool(b)) => if *b { "t" } else { "f" }.to_string(),
        (ValueKind::Bytea, Value::String(s)) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| format!("bytea is not base64: {e}"))?;
            let mut out = String::with_capacity(2 + raw.len() * 2);
            out.push_str("\\x");
            for b in raw {
                out.push_str(&format!("{b:02x}"));
            }
            out
        }
        (ValueKind::Json, v) => v.to_string(),
        (ValueKind::Array(inner), Value::Array(items)) => array_literal(inner, items)?,
        (_, Value::String(s)) => s.clone(),
        (_, Value::Number(n)) => n.to_string(),
        (_, Value::Bool(b)) => b.to_string(),
        (_, other) => other.to_string(),
    }))
}

fn array_literal(kind: &ValueKind, items: &[Value]) -> Result<String, String> {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Value::Array(inner) => out.push_str(&array_literal(kind, inner)?),
            Value::Null => out.push_str("NULL"),
            v => {
                let t = pg_text(kind, v)?.unwrap_or_default();
                out.push('"');
                for c in t.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
        }
    }
    out.push('}');
    Ok(out)
}

fn row(
    t: &TableSchema,
    values: &Map<String, Value>,
    unchanged: &[String],
) -> Result<Vec<Datum>, String> {
    // A field the table does not have is never dropped in silence.
    if let Some(unknown) = values.keys().find(|k| t.column_index(k).is_none()) {
        return Err(format!(
            "it carries column {unknown}, which {}.{} does not have",
            t.schema, t.name
        ));
    }
    t.columns
        .iter()
        .map(|c| {
            if unchanged.contains(&c.name) {
                return Ok(Datum::UnchangedToast);
            }
            match values.get(&c.name) {
                None => Ok(Datum::Null),
                Some(v) => Ok(
                    match pg_text(&c.kind, v).map_err(|e| format!("column {}: {e}", c.name))? {
                        None => Datum::Null,
                        Some(s) => Datum::Text(Bytes::from(s)),
                    },
                ),
            }
        })
        .collect()
}

/// The change event of an envelope, for a table shaped like `t`.
pub fn to_event(env: &Envelope, t: Arc<TableSchema>) -> Result<ChangeEvent, String> {
    let after = env
        .after
        .as_ref()
        .map(|a| row(&t, a, &env.unchanged_toast))
        .transpose()?;
    let before = env.before.as_ref().map(|b| row(&t, b, &[])).transpose()?;
    let key = match &env.key {
        Some(k) => Some(
            t.key
                .iter()
                .map(|&i| {
                    let c = &t.columns[i];
                    let v = k
                        .get(&c.name)
                        .ok_or_else(|| format!("key column {} missing", c.name))?;
                    Ok(match pg_text(&c.kind, v)? {
                        None => Datum::Null,
                        Some(s) => Datum::Text(Bytes::from(s)),
                    })
                })
                .collect::<Result<Vec<_>, String>>()?,
        ),
        None if env.op == Op::Truncate => None,
        None => return Err("no key".into()),
    };
    Ok(ChangeEvent {
        op: env.op,
        position: env.position,
        xid: env.xid,
        commit_ts_us: env.commit_ts_us,
        table: t,
        before,
        key,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_micros() {
        assert_eq!(
            parse_utc_micros("1970-01-01T00:00:01.500000Z").unwrap(),
            1_500_000
        );
        assert_eq!(
            crate::event::json::format_unix_micros(
                parse_utc_micros("2024-11-15T14:40:10.188000Z").unwrap()
            ),
            "2024-11-15T14:40:10.188000Z"
        );
    }

    #[test]
    fn envelopes_describe_their_table_and_keep_every_field() {
        let env = parse(
            br#"{"version":1,"op":"c","source":{"database":"d","schema":"public","table":"t","lsn":"0/1","seq":0,"xid":1,"commit_ts":"2024-11-15T14:40:10Z"},"key":{"b":2,"a":1},"before":null,"after":{"a":1,"b":2,"n":123456789012345678901234567890,"j":{"z":1,"a":0.10000000000000000001}},"columns":[["a",23,-1,2],["b",20,-1,1],["n",1700,-1,0],["j",114,-1,0]]}"#,
        )
        .unwrap();
        let t = Arc::new(
            envelope_table("public", "t", env.columns.as_ref().unwrap(), |o, _| {
                format!("t{o}")
            })
            .unwrap(),
        );
        assert_eq!(t.key, vec![1, 0], "key columns in key order");
        assert_eq!(t.columns[1].type_name, "t20");
        let ev = to_event(&env, t.clone()).unwrap();
        let after = ev.after.unwrap();
        // Numbers keep every digit, JSON objects their key order.
        assert_eq!(
            after[2].as_text().unwrap(),
            b"123456789012345678901234567890"
        );
        assert_eq!(
            after[3].as_text().unwrap(),
            br#"{"z":1,"a":0.10000000000000000001}"#
        );
        // A field the shape does not have is an error, never dropped.
        let narrow = Arc::new(TableSchema {
            columns: t.columns[..3].to_vec(),
            ..(*t).clone()
        });
        let e = to_event(&env, narrow).unwrap_err();
        assert!(e.contains("column j"), "{e}");
    }

    #[test]
    fn values_return_to_text() {
        assert_eq!(
            pg_text(&ValueKind::Bool, &Value::Bool(true))
                .unwrap()
                .unwrap(),
            "t"
        );
        assert_eq!(
            pg_text(&ValueKind::Bytea, &Value::String("AP8Q".into()))
                .unwrap()
                .unwrap(),
            "\\x00ff10"
        );
        assert_eq!(
            pg_text(
                &ValueKind::Array(Box::new(ValueKind::Text)),
                &serde_json::json!([["a\"b", null], ["c", "d"]])
            )
            .unwrap()
            .unwrap(),
            "{{\"a\\\"b\",NULL},{\"c\",\"d\"}}"
        );
    }

    #[test]
    fn mutated_envelopes_are_values_or_errors_never_panics() {
        use crate::fuzz;
        let table = fuzz::sample_table();
        let samples: Vec<Vec<u8>> = [
            r#"{"version":1,"op":"c","source":{"database":"d","schema":"public","table":"t","lsn":"0/16B3748","seq":3,"xid":7,"commit_ts":"2024-11-15T14:40:10.188000Z"},"key":{"id":1},"before":null,"after":{"id":1,"name":"a\"b","at":"2024-11-15T14:40:10.188","tags":["x",null,"y"],"data":"AP8Q","amount":"12.50"},"columns":[["id",23,-1,1],["name",1043,54,0],["wide",20,-1,0]]}"#,
            r#"{"version":1,"op":"u","source":{"database":"d","schema":"public","table":"t","lsn":"0/1","seq":0,"xid":null,"commit_ts":"1970-01-01T00:00:00Z"},"key":{"id":2},"before":{"id":2},"after":{"id":2,"name":null},"unchanged_toast":["data"]}"#,
            r#"{"version":1,"op":"d","source":{"database":"d","schema":"public","table":"t","lsn":"FF/FFFFFFFF","seq":-2147483648,"xid":4294967295,"commit_ts":"2024-02-29T23:59:59.999999Z"},"key":{"id":3},"before":null,"after":null,"oversized":"s3://b/oversized/x.json"}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        for s in &samples {
            let env = parse(s).unwrap();
            to_event(&env, table.clone()).unwrap();
        }
        let mut rng = fuzz::Rng::new(0xe7e1);
        for _ in 0..fuzz::cases() {
            if let Ok(env) = parse(&fuzz::mutate(&samples, &mut rng)) {
                let _ = to_event(&env, table.clone());
            }
        }
    }
}
