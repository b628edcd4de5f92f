//! Comparing captured events with the source: replay the envelopes into a final state per table
//! and key, and read the same shape from the source with SQL.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Map, Value};
use tokio_postgres::Client;

/// (table, key as JSON text) → row.
pub type State = BTreeMap<(String, String), Value>;

/// Applies envelopes in order: reads, inserts and updates set the row, deletes remove it,
/// truncates empty the table. Unchanged TOAST columns keep the earlier value.
pub fn materialize(events: &[Value]) -> State {
    let mut state = State::new();
    for ev in events {
        let table = ev["source"]["table"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match ev["op"].as_str().unwrap_or_default() {
            "r" | "c" | "u" => {
                let key = ev["key"].to_string();
                let mut after = ev["after"].as_object().cloned().unwrap_or_default();
                if let Some(cols) = ev.get("unchanged_toast").and_then(Value::as_array) {
                    let old = state.get(&(table.clone(), key.clone())).cloned();
                    for c in cols {
                        let c = c.as_str().unwrap_or_default();
                        let v = old.as_ref().map(|o| o[c].clone()).unwrap_or(Value::Null);
                        after.insert(c.to_string(), v);
                    }
                }
                state.insert((table, key), Value::Object(after));
            }
            "d" => {
                state.remove(&(table, ev["key"].to_string()));
            }
            "t" => state.retain(|(t, _), _| *t != table),
            other => panic!("unknown op {other}"),
        }
    }
    state
}

/// The rows of `tables` (schema public) in the envelope's JSON conventions: `to_jsonb`, with
/// numeric as a decimal string and bytea as base64.
pub async fn source_state(client: &Client, tables: &[&str]) -> State {
    client
        .batch_execute("SET IntervalStyle = iso_8601; SET TimeZone = 'UTC'")
        .await
        .expect("session settings");
    let mut state = State::new();
    for table in tables {
        let cols = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                   coalesce(a.attnum = ANY(i.indkey), false) \
                 FROM pg_attribute a LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
                 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&format!("public.\"{table}\"")],
            )
            .await
            .expect("columns");
        let mut key_cols = Vec::new();
        let mut numeric = Vec::new();
        let mut bytea = Vec::new();
        for c in &cols {
            let name: String = c.get(0);
            let ty: String = c.get(1);
            if c.get::<_, bool>(2) {
                key_cols.push(name.clone());
            }
            if ty.starts_with("numeric") {
                numeric.push(name.clone());
            }
            if ty == "bytea" {
                bytea.push(name);
            }
        }
        let rows = client
            .query(
                &format!("SELECT to_jsonb(t)::text FROM public.\"{table}\" t"),
                &[],
            )
            .await
            .expect("rows");
        // Numeric and bytea columns need their text forms, which to_jsonb does not keep.
        let extra_sql = numeric
            .iter()
            .map(|c| format!("\"{c}\"::text"))
            .chain(bytea.iter().map(|c| format!("\"{c}\"::text")))
            .collect::<Vec<_>>();
        let extras = if extra_sql.is_empty() {
            None
        } else {
            Some(
                client
                    .query(
                        &format!("SELECT {} FROM public.\"{table}\" t", extra_sql.join(", ")),
                        &[],
                    )
                    .await
                    .expect("extras"),
            )
        };
        for (i, r) in rows.iter().enumerate() {
            let mut obj: Map<String, Value> =
                serde_json::from_str(r.get::<_, &str>(0)).expect("row json");
            if let Some(extras) = &extras {
                let e = &extras[i];
                for (j, c) in numeric.iter().chain(bytea.iter()).enumerate() {
                    let v: Option<String> = e.get(j);
                    let v = match v {
                        None => Value::Null,
                        Some(s) if j >= numeric.len() => {
                            let raw = hex_decode(s.trim_start_matches("\\x"));
                            Value::String(base64::engine::general_purpose::STANDARD.encode(raw))
                        }
                        Some(s) => Value::String(s),
                    };
                    obj.insert(c.clone(), v);
                }
            }
            let mut key = Map::new();
            for k in &key_cols {
                key.insert(k.clone(), obj[k].clone());
            }
            state.insert(
                (table.to_string(), Value::Object(key).to_string()),
                Value::Object(obj),
            );
        }
    }
    state
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Asserts two states are equal, printing the first differences.
pub fn assert_same(captured: &State, source: &State) {
    let mut diffs = Vec::new();
    for (k, v) in source {
        match captured.get(k) {
            None => diffs.push(format!("missing {k:?}: {v}")),
            Some(c) if c != v => {
                diffs.push(format!("differs {k:?}:\n  captured {c}\n  source   {v}"))
            }
            _ => {}
        }
    }
    for k in captured.keys() {
        if !source.contains_key(k) {
            diffs.push(format!("extra {k:?}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences (captured {} rows, source {}):\n{}",
        diffs.len(),
        captured.len(),
        source.len(),
        diffs
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
