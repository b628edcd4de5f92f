//! How a column's text form is rendered: one [`ValueKind`] per PostgreSQL type.
//!
//! Built-in types are known by OID; user types (enums, domains, arrays of them) are resolved
//! from the catalog by the capture (see `capture::catalog`). Anything unknown is text.

/// What a column's text output means, for rendering it into JSON or typed formats.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ValueKind {
    /// int2, int4, int8, oid: a JSON number.
    Int,
    /// float4, float8: a JSON number, or a string for NaN and ±Infinity.
    Float,
    /// numeric: a decimal string, never a float.
    Numeric,
    Bool,
    /// text, varchar, bpchar, name, enums, and anything not known.
    Text,
    /// json, jsonb: embedded as JSON.
    Json,
    /// bytea: base64.
    Bytea,
    /// timestamp without time zone: ISO-8601 without offset.
    Timestamp,
    /// timestamp with time zone: ISO-8601 with offset.
    TimestampTz,
    Date,
    Time,
    TimeTz,
    /// interval: ISO-8601 duration (the session uses `IntervalStyle=iso_8601`).
    Interval,
    Uuid,
    /// An array whose elements are of the inner kind: a JSON array.
    Array(Box<ValueKind>),
}

impl ValueKind {
    /// The kind of a built-in type, or `None` when the catalog must be asked.
    pub fn builtin(oid: u32) -> Option<ValueKind> {
        use ValueKind::*;
        Some(match oid {
            16 => Bool,
            17 => Bytea,
            18 | 19 | 25 | 1042 | 1043 => Text,
            20 | 21 | 23 | 26 | 28 => Int,
            700 | 701 => Float,
            1700 => Numeric,
            114 | 3802 => Json,
            1082 => Date,
            1083 => Time,
            1266 => TimeTz,
            1114 => Timestamp,
            1184 => TimestampTz,
            1186 => Interval,
            2950 => Uuid,
            // arrays of the above
            1000 => Array(Box::new(Bool)),
            1001 => Array(Box::new(Bytea)),
            1002 | 1003 | 1009 | 1014 | 1015 => Array(Box::new(Text)),
            1005 | 1007 | 1016 | 1028 | 1011 => Array(Box::new(Int)),
            1021 | 1022 => Array(Box::new(Float)),
            1231 => Array(Box::new(Numeric)),
            199 | 3807 => Array(Box::new(Json)),
            1182 => Array(Box::new(Date)),
            1183 => Array(Box::new(Time)),
            1270 => Array(Box::new(TimeTz)),
            1115 => Array(Box::new(Timestamp)),
            1185 => Array(Box::new(TimestampTz)),
            1187 => Array(Box::new(Interval)),
            2951 => Array(Box::new(Uuid)),
            _ => return None,
        })
    }

    /// The name used in the schema part of the envelope documentation and the lake.
    pub fn name(&self) -> String {
        use ValueKind::*;
        match self {
            Int => "int".into(),
            Float => "float".into(),
            Numeric => "numeric".into(),
            Bool => "bool".into(),
            Text => "text".into(),
            Json => "json".into(),
            Bytea => "bytea".into(),
            Timestamp => "timestamp".into(),
            TimestampTz => "timestamptz".into(),
            Date => "date".into(),
            Time => "time".into(),
            TimeTz => "timetz".into(),
            Interval => "interval".into(),
            Uuid => "uuid".into(),
            Array(inner) => format!("{}[]", inner.name()),
        }
    }
}
