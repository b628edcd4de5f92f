//! PostgreSQL text values to exact Arrow types: integers by width, numeric(p,s) as
//! Decimal128(p,s), timestamps in microseconds (UTC for timestamptz), date as Date32, time as
//! Time64(µs), bytea as Binary. What Arrow cannot hold exactly is text: unconstrained numeric
//! (a decimal string), json, enums, intervals, arrays (their JSON form).

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow_array::ArrayRef;
use arrow_schema::{DataType, TimeUnit};

use crate::event::json::{decode_bytea_hex, write_value};
use crate::event::ValueKind;

/// ±infinity of a date in the lake: ±i32::MAX days, as DuckDB spells them (PostgreSQL's own are
/// the same magnitudes), so readers see infinity and `replay` gives the value back.
pub const DATE_INFINITY: i32 = i32::MAX;
/// ±infinity of a timestamp in the lake: ±i64::MAX µs, as DuckDB spells them.
pub const TIMESTAMP_INFINITY: i64 = i64::MAX;

/// How one column's text values become an Arrow array.
#[derive(Debug, Clone, PartialEq)]
pub enum Conv {
    I16,
    I32,
    I64,
    F32,
    F64,
    Decimal(u8, i8),
    Bool,
    Utf8,
    Binary,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    /// pg_lsn text (`16/B374D848`) as its 64-bit value.
    Lsn,
    /// Rendered as the envelope's JSON (arrays).
    Json(ValueKind),
}

/// The conversion for a column of type `oid` with modifier `typmod`.
pub fn conv_for(oid: u32, typmod: i32, kind: &ValueKind) -> Conv {
    match oid {
        21 => Conv::I16,
        23 => Conv::I32,
        20 | 26 => Conv::I64,
        700 => Conv::F32,
        701 => Conv::F64,
        16 => Conv::Bool,
        17 => Conv::Binary,
        1082 => Conv::Date,
        1083 => Conv::Time,
        1114 => Conv::Timestamp,
        1184 => Conv::TimestampTz,
        3220 => Conv::Lsn,
        1700 if typmod >= 4 => {
            let precision = ((typmod - 4) >> 16) & 0xffff;
            let scale = (typmod - 4) & 0x7ff;
            if (1..=38).contains(&precision) && scale <= precision {
                Conv::Decimal(precision as u8, scale as i8)
            } else {
                Conv::Utf8
            }
        }
        _ => match kind {
            ValueKind::Array(_) => Conv::Json(kind.clone()),
            _ => Conv::Utf8,
        },
    }
}

pub fn data_type(c: &Conv) -> DataType {
    match c {
        Conv::I16 => DataType::Int16,
        Conv::I32 => DataType::Int32,
        Conv::I64 => DataType::Int64,
        Conv::F32 => DataType::Float32,
        Conv::F64 => DataType::Float64,
        Conv::Decimal(p, s) => DataType::Decimal128(*p, *s),
        Conv::Bool => DataType::Boolean,
        Conv::Utf8 | Conv::Json(_) => DataType::Utf8,
        Conv::Binary => DataType::Binary,
        Conv::Date => DataType::Date32,
        Conv::Time => DataType::Time64(TimeUnit::Microsecond),
        Conv::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        Conv::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        Conv::Lsn => DataType::UInt64,
    }
}

fn text(v: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(v).map_err(|_| "not UTF-8".to_string())
}

fn parse<T: std::str::FromStr>(v: &[u8]) -> Result<T, String> {
    let s = text(v)?;
    s.parse::<T>().map_err(|_| format!("'{s}' is not a number"))
}

/// Builds one column. `None` is NULL; ±infinity dates and timestamps become the infinity
/// sentinels above; numeric NaN in a decimal column, which Decimal128 cannot hold, becomes NULL.
pub fn build(c: &Conv, values: &[Option<&[u8]>]) -> Result<ArrayRef, String> {
    macro_rules! prim {
        ($builder:ty, $f:expr) => {{
            let mut b = <$builder>::with_capacity(values.len());
            for v in values {
                match v {
                    None => b.append_null(),
                    Some(v) => match $f(v)? {
                        Some(x) => b.append_value(x),
                        None => b.append_null(),
                    },
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(match c {
        Conv::I16 => prim!(Int16Builder, |v: &[u8]| parse::<i16>(v).map(Some)),
        Conv::I32 => prim!(Int32Builder, |v: &[u8]| parse::<i32>(v).map(Some)),
        Conv::I64 => prim!(Int64Builder, |v: &[u8]| parse::<i64>(v).map(Some)),
        Conv::F32 => prim!(Float32Builder, |v: &[u8]| parse_float(v)
            .map(|f| Some(f as f32))),
        Conv::F64 => prim!(Float64Builder, |v: &[u8]| parse_float(v).map(Some)),
        Conv::Bool => prim!(BooleanBuilder, |v: &[u8]| Ok::<_, String>(Some(
            v == b"t" || v == b"true"
        ))),
        Conv::Date => prim!(Date32Builder, |v: &[u8]| parse_date(text(v)?)),
        Conv::Time => prim!(Time64MicrosecondBuilder, |v: &[u8]| parse_time(text(v)?)
            .map(Some)),
        Conv::Timestamp => {
            prim!(TimestampMicrosecondBuilder, |v: &[u8]| parse_timestamp(
                text(v)?,
                false
            ))
        }
        Conv::TimestampTz => {
            let mut b =
                TimestampMicrosecondBuilder::with_capacity(values.len()).with_timezone("UTC");
            for v in values {
                match v
                    .map(|v| text(v).and_then(|t| parse_timestamp(t, true)))
                    .transpose()?
                {
                    Some(Some(x)) => b.append_value(x),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        Conv::Lsn => prim!(UInt64Builder, |v: &[u8]| {
            crate::event::Lsn::parse(text(v)?)
                .map(|l| Some(l.0))
                .map_err(|e| e.to_string())
        }),
        Conv::Decimal(p, s) => {
            let mut b = Decimal128Builder::with_capacity(values.len());
            for v in values {
                match v {
                    None => b.append_null(),
                    Some(v) => match parse_decimal(text(v)?, *s)? {
                        Some(x) => b.append_value(x),
                        None => b.append_null(),
                    },
                }
            }
            Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .map_err(|e| e.to_string())?,
            )
        }
        Conv::Utf8 => {
            let mut b = StringBuilder::with_capacity(values.len(), values.len() * 16);
            for v in values {
                match v {
                    None => b.append_null(),
                    Some(v) => b.append_value(text(v)?),
                }
            }
            Arc::new(b.finish())
        }
        Conv::Json(kind) => {
            let mut b = StringBuilder::with_capacity(values.len(), values.len() * 16);
            let mut buf = Vec::new();
            for v in values {
                match v {
                    None => b.append_null(),
                    Some(v) => {
                        buf.clear();
                        write_value(&mut buf, kind, v);
                        b.append_value(text(&buf)?);
                    }
                }
            }
            Arc::new(b.finish())
        }
        Conv::Binary => {
            let mut b = BinaryBuilder::with_capacity(values.len(), values.len() * 16);
            for v in values {
                match v {
                    None => b.append_null(),
                    Some(v) => b.append_value(
                        decode_bytea_hex(v)
                            .ok_or_else(|| "bytea is not in hex form".to_string())?,
                    ),
                }
            }
            Arc::new(b.finish())
        }
    })
}

fn parse_float(v: &[u8]) -> Result<f64, String> {
    match v {
        b"NaN" => Ok(f64::NAN),
        b"Infinity" => Ok(f64::INFINITY),
        b"-Infinity" => Ok(f64::NEG_INFINITY),
        _ => parse::<f64>(v),
    }
}

fn num(s: &str) -> Result<i64, String> {
    s.parse::<i64>()
        .map_err(|_| format!("'{s}' is not a number"))
}

/// `YYYY-MM-DD[ BC]` → days since the epoch; infinities as ±DATE_INFINITY.
fn parse_date(s: &str) -> Result<Option<i32>, String> {
    match s {
        "infinity" => return Ok(Some(DATE_INFINITY)),
        "-infinity" => return Ok(Some(-DATE_INFINITY)),
        _ => {}
    }
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(r) => (r, true),
        None => (s, false),
    };
    let mut p = s.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (p.next(), p.next(), p.next()) else {
        return Err(format!("'{s}' is not a date"));
    };
    let mut y = num(y)?;
    if bc {
        y = 1 - y;
    }
    Ok(Some(
        crate::event::civil::days_from_civil(y, num(m)? as u32, num(d)? as u32) as i32,
    ))
}

/// `HH:MM:SS[.ffffff]` → microseconds since midnight.
fn parse_time(s: &str) -> Result<i64, String> {
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut p = hms.splitn(3, ':');
    let (Some(h), Some(m), Some(sec)) = (p.next(), p.next(), p.next()) else {
        return Err(format!("'{s}' is not a time"));
    };
    let mut micros: i64 = 0;
    let digits: String = frac.chars().take(6).collect();
    if !digits.is_empty() {
        micros = num(&digits)? * 10i64.pow(6 - digits.len() as u32);
    }
    Ok(((num(h)? * 60 + num(m)?) * 60 + num(sec)?) * 1_000_000 + micros)
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]]` → microseconds since the epoch (UTC).
fn parse_timestamp(s: &str, with_zone: bool) -> Result<Option<i64>, String> {
    match s {
        "infinity" => return Ok(Some(TIMESTAMP_INFINITY)),
        "-infinity" => return Ok(Some(-TIMESTAMP_INFINITY)),
        _ => {}
    }
    let (date, rest) = s
        .split_once(' ')
        .or_else(|| s.split_once('T'))
        .ok_or_else(|| format!("'{s}' is not a timestamp"))?;
    let (rest, bc) = match rest.strip_suffix(" BC") {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let (time, offset) = if with_zone {
        match rest.rfind(['+', '-']) {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        }
    } else {
        (rest, None)
    };
    let date = if bc {
        format!("{date} BC")
    } else {
        date.to_string()
    };
    let Some(days) = parse_date(&date)? else {
        return Ok(None);
    };
    let mut us = days as i64 * 86_400_000_000 + parse_time(time)?;
    if let Some(off) = offset {
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let mut parts = off[1..].split(':');
        let h = num(parts.next().unwrap_or("0"))?;
        let m = parts.next().map(num).transpose()?.unwrap_or(0);
        let sec = parts.next().map(num).transpose()?.unwrap_or(0);
        us -= sign * ((h * 60 + m) * 60 + sec) * 1_000_000;
    }
    Ok(Some(us))
}

/// A decimal string at `scale` as the scaled integer; NaN has no decimal form.
fn parse_decimal(s: &str, scale: i8) -> Result<Option<i128>, String> {
    if s == "NaN" {
        return Ok(None);
    }
    let (neg, digits) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let scale = scale.max(0) as usize;
    let mut frac: String = frac.chars().take(scale).collect();
    while frac.len() < scale {
        frac.push('0');
    }
    let joined = format!("{int}{frac}");
    let v: i128 = joined
        .parse()
        .map_err(|_| format!("'{s}' is not a decimal"))?;
    Ok(Some(if neg { -v } else { v }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_forms() {
        assert_eq!(parse_date("1970-01-02").unwrap(), Some(1));
        assert_eq!(parse_date("2024-11-15").unwrap(), Some(20_042));
        assert_eq!(parse_date("infinity").unwrap(), Some(DATE_INFINITY));
        assert_eq!(
            parse_timestamp("-infinity", true).unwrap(),
            Some(-TIMESTAMP_INFINITY)
        );
        assert_eq!(parse_time("14:40:10.188").unwrap(), 52_810_188_000);
        assert_eq!(
            parse_timestamp("1970-01-01 00:00:01.5", false).unwrap(),
            Some(1_500_000)
        );
        assert_eq!(
            parse_timestamp("1970-01-01 01:00:00+01", true).unwrap(),
            Some(0)
        );
        assert_eq!(parse_decimal("-12.3", 2).unwrap(), Some(-1230));
        assert_eq!(parse_decimal("3.50", 2).unwrap(), Some(350));
        assert_eq!(
            conv_for(1700, (10 << 16) + 2 + 4, &ValueKind::Numeric),
            Conv::Decimal(10, 2)
        );
        assert_eq!(conv_for(1700, -1, &ValueKind::Numeric), Conv::Utf8);
    }
}
