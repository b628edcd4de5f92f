//! COPY text format encoding of event values (the same text forms the source produced).

use crate::event::Datum;

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
    use bytes::Bytes;

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
}
