//! Comparing captured events with the source: replay the envelopes into a final state per table
//! and key, and read the same shape from the source with SQL.

use std::collections::BTreeMap;

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
        // Columns whose envelope form to_jsonb does not give: numeric as decimal strings,
        // bytea as base64.
        let mut overrides = Vec::new();
        for c in &cols {
            let name: String = c.get(0);
            let ty: String = c.get(1);
            if c.get::<_, bool>(2) {
                key_cols.push(name.clone());
            }
            let expr = if ty.starts_with("numeric") && ty.ends_with("[]") {
                format!("to_jsonb(_r.\"{name}\"::text[])::text")
            } else if ty.starts_with("numeric") {
                format!("to_jsonb(_r.\"{name}\"::text)::text")
            } else if ty == "bytea" {
                format!("to_jsonb(translate(encode(_r.\"{name}\", 'base64'), E'\\n', ''))::text")
            } else {
                continue;
            };
            overrides.push((name, expr));
        }
        let mut select = vec!["to_jsonb(_r)::text".to_string()];
        select.extend(overrides.iter().map(|(_, e)| e.clone()));
        let rows = client
            .query(
                &format!("SELECT {} FROM public.\"{table}\" _r", select.join(", ")),
                &[],
            )
            .await
            .expect("rows");
        for r in &rows {
            let mut obj: Map<String, Value> =
                serde_json::from_str(r.get::<_, &str>(0)).expect("row json");
            for (j, (name, _)) in overrides.iter().enumerate() {
                let v: Option<&str> = r.get(j + 1);
                let v = v.map_or(Value::Null, |t| serde_json::from_str(t).expect("json"));
                obj.insert(name.clone(), v);
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

/// The value with every fractional number as the f64 it denotes: the envelope writes a float
/// as PostgreSQL prints it (`-1.234e-06`), `to_jsonb` in its own way (`-0.000001234`), and
/// serde_json (with `arbitrary_precision`) keeps each number's digits as written.
fn floats_as_f64(v: &Value) -> Value {
    match v {
        Value::Number(n) if n.to_string().contains(['.', 'e', 'E']) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| v.clone(), Value::Number),
        Value::Array(a) => Value::Array(a.iter().map(floats_as_f64).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), floats_as_f64(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Asserts two states are equal, printing the first differences.
pub fn assert_same(captured: &State, source: &State) {
    let mut diffs = Vec::new();
    for (k, v) in source {
        match captured.get(k) {
            None => diffs.push(format!("missing {k:?}: {v}")),
            Some(c) if floats_as_f64(c) != floats_as_f64(v) => {
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
