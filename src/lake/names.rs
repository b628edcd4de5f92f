//! A table's folder in the lake: `schema.table` with every byte outside `[A-Za-z0-9_-]` written
//! as `%XX` in each part (a dot included), so any table name — quotes, slashes, `..`, dots —
//! names exactly one folder directly under `changes/` (or `oversized/`), and the folder names
//! the table back. The totesys names are unchanged (`public.sales_order`).

fn encode(part: &str, out: &mut String) {
    for &b in part.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

fn decode(part: &str) -> Option<String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// The lake folder of `schema.table`.
pub fn table_dir(schema: &str, table: &str) -> String {
    let mut out = String::with_capacity(schema.len() + table.len() + 1);
    encode(schema, &mut out);
    out.push('.');
    encode(table, &mut out);
    out
}

/// The (schema, table) a lake folder names, or `None` when it is not one [`table_dir`] makes.
pub fn parse_table_dir(dir: &str) -> Option<(String, String)> {
    let (schema, table) = dir.split_once('.')?;
    let (schema, table) = (decode(schema)?, decode(table)?);
    (!schema.is_empty() && !table.is_empty()).then_some((schema, table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_name_is_one_folder_and_comes_back() {
        assert_eq!(table_dir("public", "sales_order"), "public.sales_order");
        for (s, t) in [
            ("public", "../../etc"),
            ("a.b", "c"),
            ("a", "b.c"),
            ("we\"ird", "sl/ash"),
            ("x", "%41"),
            ("é", "日本"),
        ] {
            let d = table_dir(s, t);
            assert!(!d.contains('/') && !d.contains(".."), "{d}");
            assert_eq!(d.matches('.').count(), 1, "{d}");
            assert_eq!(parse_table_dir(&d), Some((s.to_string(), t.to_string())));
        }
        assert_ne!(table_dir("a.b", "c"), table_dir("a", "b.c"));
        assert_eq!(parse_table_dir("no-dot"), None);
        assert_eq!(parse_table_dir("a.b/c"), None);
        assert_eq!(parse_table_dir("a.%zz"), None);
    }
}
