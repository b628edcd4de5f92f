//! PostgreSQL's COPY text format: rows of `COPY ... TO STDOUT` parsed into [`Datum`]s (the
//! snapshot, the warehouse's bookkeeping reads), and values encoded for `COPY ... FROM STDIN`
//! (the warehouse's batch tables).
//!
//! Fields are tab-separated, `\N` is NULL, and backslash escapes stand for special bytes. Fields
//! without escapes are sliced out of the row buffer without copying.

use bytes::{Bytes, BytesMut};

use super::Datum;

/// Splits one row (without its newline) into fields.
pub fn parse_row(row: &Bytes, expected: usize) -> Result<Vec<Datum>, String> {
    let mut out = Vec::with_capacity(expected);
    let mut start = 0;
    loop {
        let end = row[start..]
            .iter()
            .position(|&b| b == b'\t')
            .map_or(row.len(), |p| start + p);
        out.push(parse_field(row, start, end)?);
        if end == row.len() {
            break;
        }
        start = end + 1;
    }
    if out.len() != expected {
        return Err(format!(
            "COPY row has {} fields, expected {expected}",
            out.len()
        ));
    }
    Ok(out)
}

fn parse_field(row: &Bytes, start: usize, end: usize) -> Result<Datum, String> {
    let f = &row[start..end];
    if f == b"\\N" {
        return Ok(Datum::Null);
    }
    if !f.contains(&b'\\') {
        return Ok(Datum::Text(row.slice(start..end)));
    }
    let mut v = BytesMut::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        let b = f[i];
        if b != b'\\' {
            v.extend_from_slice(&[b]);
            i += 1;
            continue;
        }
        let Some(&e) = f.get(i + 1) else {
            return Err("COPY field ends in a lone backslash".into());
        };
        i += 2;
        let byte = match e {
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 0x0b,
            b'0'..=b'7' => {
                let mut n = (e - b'0') as u32;
                let mut k = 0;
                while k < 2 && i < f.len() && (b'0'..=b'7').contains(&f[i]) {
                    n = n * 8 + (f[i] - b'0') as u32;
                    i += 1;
                    k += 1;
                }
                n as u8
            }
            b'x' => {
                let mut n = 0u32;
                let mut k = 0;
                while k < 2 && i < f.len() && f[i].is_ascii_hexdigit() {
                    n = n * 16 + (f[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    k += 1;
                }
                n as u8
            }
            other => other,
        };
        v.extend_from_slice(&[byte]);
    }
    Ok(Datum::Text(v.freeze()))
}

/// Appends one field: `\N` for NULL, the text with COPY's escapes otherwise.
pub fn field(buf: &mut Vec<u8>, d: &Datum) {
    match d {
        Datum::Text(t) => text(buf, t),
        Datum::Null | Datum::UnchangedToast => buf.extend_from_slice(b"\\N"),
    }
}

/// Appends text with COPY's escapes.
pub fn text(buf: &mut Vec<u8>, t: &[u8]) {
    let mut start = 0;
    for (i, &b) in t.iter().enumerate() {
        let esc: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        buf.extend_from_slice(&t[start..i]);
        buf.extend_from_slice(esc);
        start = i + 1;
    }
    buf.extend_from_slice(&t[start..]);
}

/// A text[] literal of names (`{"a","b"}`), as a COPY field.
pub fn name_array(buf: &mut Vec<u8>, names: &[&str]) {
    let mut lit = Vec::new();
    lit.push(b'{');
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            lit.push(b',');
        }
        lit.push(b'"');
        for &b in n.as_bytes() {
            if b == b'"' || b == b'\\' {
                lit.push(b'\\');
            }
            lit.push(b);
        }
        lit.push(b'"');
    }
    lit.push(b'}');
    text(buf, &lit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_nulls_and_escapes() {
        let row = Bytes::from_static(b"1\t\\N\tO'Keefe\\tx\\\\y\\ny\t\t\\x41\\101");
        let d = parse_row(&row, 5).unwrap();
        assert_eq!(d[0], Datum::Text(Bytes::from_static(b"1")));
        assert_eq!(d[1], Datum::Null);
        assert_eq!(d[2], Datum::Text(Bytes::from_static(b"O'Keefe\tx\\y\ny")));
        assert_eq!(d[3], Datum::Text(Bytes::from_static(b"")));
        assert_eq!(d[4], Datum::Text(Bytes::from_static(b"AA")));
        assert!(parse_row(&row, 4).is_err());
    }

    #[test]
    fn escapes() {
        let mut b = Vec::new();
        field(&mut b, &Datum::Text(Bytes::from_static(b"a\tb\\c\nd")));
        b.push(b'\t');
        field(&mut b, &Datum::Null);
        b.push(b'\t');
        name_array(&mut b, &["x", "we\"ird"]);
        assert_eq!(b, b"a\\tb\\\\c\\nd\t\\N\t{\"x\",\"we\\\\\"ird\"}");
    }

    #[test]
    fn what_is_encoded_parses_back() {
        let values = [
            Datum::Text(Bytes::from_static(b"tab\there\\ and a\nnewline\r")),
            Datum::Null,
            Datum::Text(Bytes::from_static(b"")),
        ];
        let mut row = Vec::new();
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                row.push(b'\t');
            }
            field(&mut row, v);
        }
        assert_eq!(parse_row(&Bytes::from(row), 3).unwrap(), values);
    }

    #[test]
    fn mutated_rows_are_values_or_errors_never_panics() {
        use crate::fuzz;
        let samples: Vec<Vec<u8>> = vec![
            b"1\t\\N\tO'Keefe\\tx\\\\y\\ny\t\t\\x41\\101".to_vec(),
            b"\\N\t\\N\t\\N\t\\N\t\\N".to_vec(),
            b"a\\bb\\fc\\rd\\ve\tx\ty\tz\t\\0".to_vec(),
        ];
        let mut rng = fuzz::Rng::new(0xc0b7);
        for _ in 0..fuzz::cases() {
            let row = Bytes::from(fuzz::mutate(&samples, &mut rng));
            let _ = parse_row(&row, 5);
        }
    }
}
