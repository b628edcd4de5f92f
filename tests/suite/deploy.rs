//! The dashboard and alert rules under deploy/: every PromQL expression parses (promql-parser)
//! and every series it reads is one the binary exports, so a renamed metric cannot leave an
//! alert silently watching nothing.

use std::collections::BTreeSet;
use std::process::Command;

use promql_parser::parser::{self, Expr};
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Series names an expression reads.
fn selectors(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::Aggregate(a) => {
            selectors(&a.expr, out);
            if let Some(p) = &a.param {
                selectors(p, out);
            }
        }
        Expr::Unary(u) => selectors(&u.expr, out),
        Expr::Binary(b) => {
            selectors(&b.lhs, out);
            selectors(&b.rhs, out);
        }
        Expr::Paren(p) => selectors(&p.expr, out),
        Expr::Subquery(s) => selectors(&s.expr, out),
        Expr::VectorSelector(v) => out.push(v.name.clone().unwrap_or_default()),
        Expr::MatrixSelector(m) => out.push(m.vs.name.clone().unwrap_or_default()),
        Expr::Call(c) => c.args.args.iter().for_each(|a| selectors(a, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Parses `expr` and checks its series against what the binary exports; returns the names.
fn check(expr: &str, exported: &BTreeSet<String>, what: &str) -> Vec<String> {
    let ast = parser::parse(expr).unwrap_or_else(|e| panic!("{what}: {e}\n{expr}"));
    let mut names = Vec::new();
    selectors(&ast, &mut names);
    assert!(!names.is_empty(), "{what} reads no series: {expr}");
    for n in &names {
        assert!(
            exported.contains(n),
            "{what} reads {n:?}, which totes-cdc does not export\n{expr}"
        );
    }
    names
}

fn exported() -> BTreeSet<String> {
    let names: BTreeSet<String> = totes_cdc::metrics::exported_names().into_iter().collect();
    // Sanity: the list holds plain, vector and histogram series.
    for n in [
        "totes_cdc_replication_lag_seconds",
        "totes_cdc_events_total",
        "totes_cdc_slot_wal_status",
        "totes_cdc_batch_apply_seconds_bucket",
        "totes_cdc_build_info",
    ] {
        assert!(names.contains(n), "{n} missing from {names:?}");
    }
    names
}

#[test]
fn every_alert_rule_parses_and_reads_exported_metrics() {
    let exported = exported();
    // promtool is not installable here: PyYAML reads the file as Prometheus would (YAML).
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
            &format!("{ROOT}/deploy/prometheus/alerts.yml"),
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "alerts.yml is not YAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut alerts = BTreeSet::new();
    let mut used = BTreeSet::new();
    for group in rules["groups"].as_array().expect("groups") {
        assert!(group["name"].is_string());
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name");
            assert!(alerts.insert(name.to_string()), "{name} twice");
            let expr = rule["expr"].as_str().expect("expr");
            used.extend(check(expr, &exported, name));
            if let Some(f) = rule.get("for") {
                let f = f.as_str().expect("for is a duration");
                parser::parse(&format!("x[{f}]"))
                    .unwrap_or_else(|e| panic!("{name}: for {f:?} is not a duration: {e}"));
            }
            assert!(
                matches!(
                    rule["labels"]["severity"].as_str(),
                    Some("info" | "warning" | "critical")
                ),
                "{name}: severity"
            );
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{name}: summary"
            );
            assert!(
                rule["annotations"]["description"].is_string(),
                "{name}: description"
            );
        }
    }
    // What the issue asks to alert on.
    for (what, metric) in [
        ("lag", "totes_cdc_replication_lag_seconds"),
        ("retained WAL", "totes_cdc_slot_retained_wal_bytes"),
        ("wal_status", "totes_cdc_slot_wal_status"),
        ("dead letters", "totes_cdc_dead_letters_total"),
        ("no progress", "totes_cdc_confirmed_lsn"),
        ("no progress", "totes_cdc_batch_events_count"),
    ] {
        assert!(used.contains(metric), "no alert on {what} ({metric})");
    }
}

/// Every `expr` in the dashboard's panels, nested rows included.
fn targets(panels: &[Value], out: &mut Vec<(String, String)>) {
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default().to_string();
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((title.clone(), e.to_string()));
            }
        }
        if let Some(inner) = p["panels"].as_array() {
            targets(inner, out);
        }
    }
}

#[test]
fn every_dashboard_query_parses_and_reads_exported_metrics() {
    let exported = exported();
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/grafana/totes-cdc.json"))
        .expect("deploy/grafana/totes-cdc.json");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    let mut exprs = Vec::new();
    targets(dash["panels"].as_array().expect("panels"), &mut exprs);
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let mut used = BTreeSet::new();
    for (title, expr) in &exprs {
        // Grafana interpolates its variables before Prometheus sees the query.
        let expr = expr.replace("$__rate_interval", "1m").replace("$job", ".*");
        used.extend(check(&expr, &exported, title));
    }
    for metric in [
        "totes_cdc_replication_lag_seconds",
        "totes_cdc_replication_lag_bytes",
        "totes_cdc_events_total",
        "totes_cdc_kinesis_records_total",
        "totes_cdc_warehouse_rows_total",
        "totes_cdc_batch_apply_seconds_bucket",
        "totes_cdc_end_to_end_latency_seconds_bucket",
    ] {
        assert!(
            used.contains(metric),
            "the dashboard does not show {metric}"
        );
    }
    // The job variable's query reads an exported series too.
    for v in dash["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["definition"].as_str() {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.split(',').next())
                .expect("label_values(metric, label)");
            check(inner, &exported, "the job variable");
        }
    }
}
