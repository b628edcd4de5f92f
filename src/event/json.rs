//! The documented JSON record envelope (format version 1), one object per change event.
//!
//! ```json
//! {"version":1,"op":"u",
//!  "source":{"database":"totesys","schema":"public","table":"staff","lsn":"0/1A2B3C8","seq":0,
//!            "xid":750,"commit_ts":"2024-11-15T14:40:10.188000Z"},
//!  "key":{"staff_id":7},"before":null,"after":{"staff_id":7,"first_name":"Jeremie",...}}
//! ```
//!
//! The field names `version`, `op`, `source`, `key`, `before`, `after` are fixed. When an update
//! leaves a TOASTed column unchanged the source does not resend it: the column is left out of
//! `after` and listed in `unchanged_toast` (never turned into null). README documents the types.

use std::io::Write as _;

use base64::Engine;

use super::civil::civil_from_days;
use super::{ChangeEvent, Datum, TableSchema, ValueKind};

pub const ENVELOPE_VERSION: u32 = 1;

/// Appends the envelope of `ev` (no trailing newline).
pub fn write_envelope(buf: &mut Vec<u8>, ev: &ChangeEvent, database: &str) {
    let t = &ev.table;
    buf.extend_from_slice(b"{\"version\":1,\"op\":\"");
    buf.extend_from_slice(ev.op.code().as_bytes());
    buf.extend_from_slice(b"\",\"source\":{\"database\":");
    write_str(buf, database.as_bytes());
    buf.extend_from_slice(b",\"schema\":");
    write_str(buf, t.schema.as_bytes());
    buf.extend_from_slice(b",\"table\":");
    write_str(buf, t.name.as_bytes());
    buf.extend_from_slice(b",\"lsn\":\"");
    buf.extend_from_slice(ev.position.lsn.to_string().as_bytes());
    buf.extend_from_slice(b"\",\"seq\":");
    buf.extend_from_slice(ev.position.seq.to_string().as_bytes());
    buf.extend_from_slice(b",\"xid\":");
    match ev.xid {
        Some(x) => buf.extend_from_slice(x.to_string().as_bytes()),
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"commit_ts\":\"");
    buf.extend_from_slice(format_unix_micros(ev.commit_ts_us).as_bytes());
    buf.extend_from_slice(b"\"},\"key\":");
    write_key(buf, ev);
    buf.extend_from_slice(b",\"before\":");
    write_row(buf, t, ev.before.as_deref());
    buf.extend_from_slice(b",\"after\":");
    write_row(buf, t, ev.after.as_deref());
    buf.extend_from_slice(b",\"columns\":");
    write_columns(buf, t);
    if let Some(after) = &ev.after {
        let mut first = true;
        for (i, d) in after.iter().enumerate() {
            if matches!(d, Datum::UnchangedToast) {
                buf.extend_from_slice(if first {
                    b",\"unchanged_toast\":[".as_slice()
                } else {
                    b",".as_slice()
                });
                first = false;
                write_str(buf, t.columns[i].name.as_bytes());
            }
        }
        if !first {
            buf.push(b']');
        }
    }
    buf.push(b'}');
}

/// Appends the table's shape: `[[name, type oid, type modifier, key ordinal], ...]` in column
/// order; the key ordinal is 1, 2, ... for key columns and 0 otherwise. User-defined types are
/// given as the warehouse keeps them: text (25) or text[] (1009).
pub fn write_columns(buf: &mut Vec<u8>, t: &TableSchema) {
    buf.push(b'[');
    for (i, c) in t.columns.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.push(b'[');
        write_str(buf, c.name.as_bytes());
        let (oid, typmod) = c.stored_type();
        let key = t.key.iter().position(|&k| k == i).map_or(0, |p| p + 1);
        // Into the buffer directly: this runs for every column of every envelope.
        let _ = write!(buf, ",{oid},{typmod},{key}]");
    }
    buf.push(b']');
}

/// Appends the event's key as a JSON object (`null` for a truncate).
pub fn write_key(buf: &mut Vec<u8>, ev: &ChangeEvent) {
    let t = &ev.table;
    match &ev.key {
        Some(key) => {
            buf.push(b'{');
            for (n, (&col, datum)) in t.key.iter().zip(key).enumerate() {
                if n > 0 {
                    buf.push(b',');
                }
                write_field(buf, t, col, datum);
            }
            buf.push(b'}');
        }
        None => buf.extend_from_slice(b"null"),
    }
}

fn write_row(buf: &mut Vec<u8>, t: &TableSchema, row: Option<&[Datum]>) {
    let Some(row) = row else {
        buf.extend_from_slice(b"null");
        return;
    };
    buf.push(b'{');
    let mut first = true;
    for (i, datum) in row.iter().enumerate() {
        if matches!(datum, Datum::UnchangedToast) || i >= t.columns.len() {
            continue;
        }
        if !first {
            buf.push(b',');
        }
        first = false;
        write_field(buf, t, i, datum);
    }
    buf.push(b'}');
}

fn write_field(buf: &mut Vec<u8>, t: &TableSchema, col: usize, datum: &Datum) {
    let c = &t.columns[col];
    write_str(buf, c.name.as_bytes());
    buf.push(b':');
    match datum {
        Datum::Text(text) => write_value(buf, &c.kind, text),
        Datum::Null | Datum::UnchangedToast => buf.extend_from_slice(b"null"),
    }
}

/// Renders one value from its PostgreSQL text form.
pub fn write_value(buf: &mut Vec<u8>, kind: &ValueKind, text: &[u8]) {
    match kind {
        ValueKind::Int => {
            if is_json_number(text) {
                buf.extend_from_slice(text)
            } else {
                write_str(buf, text)
            }
        }
        ValueKind::Float => {
            // NaN and ±Infinity have no JSON number form.
            if is_json_number(text) {
                buf.extend_from_slice(text)
            } else {
                write_str(buf, text)
            }
        }
        ValueKind::Bool => buf.extend_from_slice(match text {
            b"t" | b"true" => b"true",
            b"f" | b"false" => b"false",
            _ => b"null",
        }),
        ValueKind::Json => {
            if text.is_empty() {
                buf.extend_from_slice(b"null")
            } else {
                buf.extend_from_slice(text)
            }
        }
        ValueKind::Bytea => {
            let mut s = String::new();
            match decode_bytea_hex(text) {
                Some(raw) => base64::engine::general_purpose::STANDARD.encode_string(raw, &mut s),
                None => s = String::from_utf8_lossy(text).into_owned(),
            }
            write_str(buf, s.as_bytes());
        }
        ValueKind::Timestamp => write_str(buf, &iso_timestamp(text, false)),
        ValueKind::TimestampTz => write_str(buf, &iso_timestamp(text, true)),
        ValueKind::Array(inner) => match parse_array(text) {
            Some(tree) => write_array(buf, inner, &tree),
            None => write_str(buf, text),
        },
        ValueKind::Numeric
        | ValueKind::Text
        | ValueKind::Date
        | ValueKind::Time
        | ValueKind::TimeTz
        | ValueKind::Interval
        | ValueKind::Uuid => write_str(buf, text),
    }
}

fn is_json_number(text: &[u8]) -> bool {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    !digits.is_empty()
        && digits[0].is_ascii_digit()
        && (digits[0] != b'0' || digits.len() == 1 || digits[1] == b'.' || digits[1] == b'e')
        && digits
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
}

/// `2024-11-15 14:40:10.188` → `2024-11-15T14:40:10.188`; with a zone, `+00` → `+00:00`.
/// Infinities and BC dates keep their text form.
pub fn iso_timestamp(text: &[u8], with_zone: bool) -> Vec<u8> {
    let mut out = text.to_vec();
    if out.len() < 19 || out[10] != b' ' || out.ends_with(b" BC") {
        return out;
    }
    out[10] = b'T';
    if with_zone {
        // The offset starts at the last '+' or '-' after the time.
        if let Some(p) = out[19..].iter().rposition(|&b| b == b'+' || b == b'-') {
            let off = 19 + p;
            if out.len() - off == 3 {
                out.extend_from_slice(b":00");
            }
        }
    }
    out
}

/// Decodes bytea's hex output form (`\x0aff`).
pub fn decode_bytea_hex(text: &[u8]) -> Option<Vec<u8>> {
    let hex = text.strip_prefix(b"\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let nib = |b: u8| -> Option<u8> {
        Some(match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        })
    };
    hex.chunks(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

/// A parsed array literal: elements are text or NULL, or nested arrays.
#[derive(Debug, PartialEq, Eq)]
pub enum ArrayNode {
    Null,
    Elem(Vec<u8>),
    List(Vec<ArrayNode>),
}

/// Parses PostgreSQL's array output (`{1,2,NULL}`, `{{"a b","c\"d"}}`, `[0:1]={x,y}`).
pub fn parse_array(text: &[u8]) -> Option<ArrayNode> {
    let mut s = text;
    if s.first() == Some(&b'[') {
        let eq = s.iter().position(|&b| b == b'=')?;
        s = &s[eq + 1..];
    }
    let mut pos = 0;
    let node = parse_list(s, &mut pos)?;
    (pos == s.len()).then_some(node)
}

fn parse_list(s: &[u8], pos: &mut usize) -> Option<ArrayNode> {
    if s.get(*pos) != Some(&b'{') {
        return None;
    }
    *pos += 1;
    let mut items = Vec::new();
    if s.get(*pos) == Some(&b'}') {
        *pos += 1;
        return Some(ArrayNode::List(items));
    }
    loop {
        match s.get(*pos)? {
            b'{' => items.push(parse_list(s, pos)?),
            b'"' => {
                *pos += 1;
                let mut v = Vec::new();
                loop {
                    match *s.get(*pos)? {
                        b'\\' => {
                            v.push(*s.get(*pos + 1)?);
                            *pos += 2;
                        }
                        b'"' => {
                            *pos += 1;
                            break;
                        }
                        b => {
                            v.push(b);
                            *pos += 1;
                        }
                    }
                }
                items.push(ArrayNode::Elem(v));
            }
            _ => {
                let start = *pos;
                while !matches!(s.get(*pos)?, b',' | b'}') {
                    *pos += 1;
                }
                let raw = &s[start..*pos];
                items.push(if raw == b"NULL" {
                    ArrayNode::Null
                } else {
                    ArrayNode::Elem(raw.to_vec())
                });
            }
        }
        match s.get(*pos)? {
            b',' => *pos += 1,
            b'}' => {
                *pos += 1;
                return Some(ArrayNode::List(items));
            }
            _ => return None,
        }
    }
}

fn write_array(buf: &mut Vec<u8>, kind: &ValueKind, node: &ArrayNode) {
    match node {
        ArrayNode::Null => buf.extend_from_slice(b"null"),
        ArrayNode::Elem(v) => write_value(buf, kind, v),
        ArrayNode::List(items) => {
            buf.push(b'[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    buf.push(b',');
                }
                write_array(buf, kind, item);
            }
            buf.push(b']');
        }
    }
}

/// Writes `s` (UTF-8) as a JSON string.
pub fn write_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.push(b'"');
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&s[start..i]);
        if esc.is_empty() {
            buf.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            buf.extend_from_slice(esc);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&s[start..]);
    buf.push(b'"');
}

/// Formats microseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn format_unix_micros(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(kind: ValueKind, text: &str) -> String {
        let mut buf = Vec::new();
        write_value(&mut buf, &kind, text.as_bytes());
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn scalars() {
        assert_eq!(render(ValueKind::Int, "-42"), "-42");
        assert_eq!(render(ValueKind::Float, "NaN"), "\"NaN\"");
        assert_eq!(render(ValueKind::Float, "-Infinity"), "\"-Infinity\"");
        assert_eq!(render(ValueKind::Float, "1.5e-07"), "1.5e-07");
        assert_eq!(
            render(ValueKind::Numeric, "123456789012345678901234567890.5"),
            "\"123456789012345678901234567890.5\""
        );
        assert_eq!(render(ValueKind::Bool, "t"), "true");
        assert_eq!(render(ValueKind::Bytea, "\\x00ff10"), "\"AP8Q\"");
        assert_eq!(
            render(ValueKind::Json, "{\"a\": [1, 2]}"),
            "{\"a\": [1, 2]}"
        );
        assert_eq!(
            render(ValueKind::Text, "O'Keefe \"q\"\n\u{1}é"),
            "\"O'Keefe \\\"q\\\"\\n\\u0001é\""
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            render(ValueKind::Timestamp, "2024-11-15 14:40:10.188"),
            "\"2024-11-15T14:40:10.188\""
        );
        assert_eq!(
            render(ValueKind::TimestampTz, "2024-11-15 14:40:10.188123+00"),
            "\"2024-11-15T14:40:10.188123+00:00\""
        );
        assert_eq!(
            render(ValueKind::TimestampTz, "2024-11-15 14:40:10+05:30"),
            "\"2024-11-15T14:40:10+05:30\""
        );
        assert_eq!(render(ValueKind::Timestamp, "infinity"), "\"infinity\"");
        assert_eq!(
            render(ValueKind::Timestamp, "0044-03-15 12:00:00 BC"),
            "\"0044-03-15 12:00:00 BC\""
        );
    }

    #[test]
    fn arrays() {
        assert_eq!(
            render(ValueKind::Array(Box::new(ValueKind::Int)), "{1,NULL,3}"),
            "[1,null,3]"
        );
        assert_eq!(
            render(
                ValueKind::Array(Box::new(ValueKind::Text)),
                r#"{{"a b","c\"d"},{NULL,"NULL"}}"#
            ),
            r#"[["a b","c\"d"],[null,"NULL"]]"#
        );
        assert_eq!(
            render(ValueKind::Array(Box::new(ValueKind::Int)), "[0:1]={7,8}"),
            "[7,8]"
        );
        assert_eq!(
            render(ValueKind::Array(Box::new(ValueKind::Int)), "{}"),
            "[]"
        );
    }

    #[test]
    fn unix_micros() {
        assert_eq!(format_unix_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_unix_micros(1_731_681_610_188_000),
            "2024-11-15T14:40:10.188000Z"
        );
        assert_eq!(format_unix_micros(-1), "1969-12-31T23:59:59.999999Z");
    }
}
