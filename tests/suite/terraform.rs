//! The Terraform module (terraform/): every file parses as HCL2 (python-hcl2), every reference
//! resolves (variables, locals, resources, data sources; no variable unused), the IAM policies
//! grant each component exactly the AWS calls the code makes (every SDK call in src/ is mapped,
//! so a new call fails this test until its permission is granted), the RDS parameter group
//! turns on logical replication, and the names meet the Helm chart's.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/terraform");

fn parsed() -> BTreeMap<String, Value> {
    let v = support::python_json(
        "read_terraform.py",
        &[DIR],
        "the Terraform files do not parse",
    );
    serde_json::from_value(v).expect("parsed JSON")
}

fn source() -> String {
    let mut all = String::new();
    for e in std::fs::read_dir(DIR).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "tf") {
            all.push_str(&std::fs::read_to_string(&p).unwrap());
            all.push('\n');
        }
    }
    all
}

/// The names following `prefix` in `text` (identifier characters).
fn names_after(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

/// (block kind, type, name) of every resource and data block: `resource "t" "n"`.
fn declared(files: &BTreeMap<String, Value>, block: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in files.values() {
        for entry in f[block].as_array().into_iter().flatten() {
            for (ty, named) in entry.as_object().unwrap() {
                for name in named.as_object().unwrap().keys() {
                    out.insert(format!("{ty}.{name}"));
                }
            }
        }
    }
    out
}

#[test]
fn every_reference_resolves() {
    let files = parsed();
    let text = source();
    let vars: BTreeSet<String> = files
        .values()
        .flat_map(|f| f["variable"].as_array().into_iter().flatten())
        .flat_map(|v| v.as_object().unwrap().keys().cloned())
        .collect();
    let used = names_after(&text, "var.");
    assert_eq!(used, vars, "variables used = variables declared");
    let locals: BTreeSet<String> = files
        .values()
        .flat_map(|f| f["locals"].as_array().into_iter().flatten())
        .flat_map(|l| l.as_object().unwrap().keys().cloned())
        .collect();
    for l in names_after(&text, "local.") {
        assert!(locals.contains(&l), "local.{l} is not declared");
    }
    let resources = declared(&files, "resource");
    let data = declared(&files, "data");
    let mut rest = text.as_str();
    while let Some(i) = rest.find("aws_") {
        let before = rest[..i].chars().last();
        let is_data = rest[..i].ends_with("data.");
        rest = &rest[i..];
        let reference: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
            .collect();
        rest = &rest[reference.len().max(1)..];
        // Only references (type.name...), not the quoted type of a declaration.
        if before == Some('"') || !reference.contains('.') {
            continue;
        }
        let key: String = reference
            .splitn(3, '.')
            .take(2)
            .collect::<Vec<_>>()
            .join(".");
        if is_data {
            assert!(data.contains(&key), "data.{key} is not declared");
        } else {
            assert!(resources.contains(&key), "{key} is not declared");
        }
    }
}

/// The actions of a policy document's statements.
fn document_actions(files: &BTreeMap<String, Value>, doc: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in files.values() {
        for entry in f["data"].as_array().into_iter().flatten() {
            let Some(d) = entry["aws_iam_policy_document"][doc].as_object() else {
                continue;
            };
            for s in d["statement"].as_array().into_iter().flatten() {
                for a in s["actions"].as_array().into_iter().flatten() {
                    out.insert(a.as_str().unwrap().to_string());
                }
            }
        }
    }
    out
}

/// What each component's role is granted: the documents of its role policies.
fn role_actions(files: &BTreeMap<String, Value>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files.values() {
        for entry in f["resource"].as_array().into_iter().flatten() {
            let Some(policies) = entry["aws_iam_role_policy"].as_object() else {
                continue;
            };
            for p in policies.values() {
                let role = p["role"].as_str().unwrap();
                let component = role
                    .split('"')
                    .nth(1)
                    .unwrap_or_else(|| panic!("role {role} is not aws_iam_role.component[...]"));
                let policy = p["policy"].as_str().unwrap();
                let doc = policy
                    .strip_prefix("${data.aws_iam_policy_document.")
                    .and_then(|r| r.split(['.', '[']).next())
                    .unwrap_or_else(|| panic!("policy {policy} is not a policy document"));
                out.entry(component.to_string())
                    .or_default()
                    .extend(document_actions(files, doc));
            }
        }
    }
    out
}

/// Every AWS SDK operation the code calls: (source file, operation, IAM action, components
/// whose role needs it). `capture` is `stream` (streaming) or `run` (embedded); `replay` runs
/// with the consumers' role.
const CALLS: &[(&str, &str, &str, &[&str])] = &[
    (
        "src/transport/kinesis/producer/mod.rs",
        "put_records",
        "kinesis:PutRecords",
        &["capture"],
    ),
    (
        "src/transport/kinesis/mod.rs",
        "describe_stream_summary",
        "kinesis:DescribeStreamSummary",
        &["capture", "consume"],
    ),
    (
        "src/transport/kinesis/consumer.rs",
        "list_shards",
        "kinesis:ListShards",
        &["consume"],
    ),
    (
        "src/transport/kinesis/producer/shard_map.rs",
        "list_shards",
        "kinesis:ListShards",
        &["capture"],
    ),
    (
        "src/transport/kinesis/shard_reader.rs",
        "get_shard_iterator",
        "kinesis:GetShardIterator",
        &["consume"],
    ),
    (
        "src/transport/kinesis/shard_reader.rs",
        "get_records",
        "kinesis:GetRecords",
        &["consume"],
    ),
    (
        "src/lake/store.rs",
        "head_bucket",
        "s3:ListBucket",
        &["capture", "consume"],
    ),
    (
        "src/lake/store.rs",
        "put_object",
        "s3:PutObject",
        &["capture", "consume"],
    ),
    (
        "src/lake/store.rs",
        "get_object",
        "s3:GetObject",
        &["capture", "consume"],
    ),
    (
        "src/lake/store.rs",
        "delete_object",
        "s3:DeleteObject",
        &["capture", "consume"],
    ),
    (
        "src/lake/store.rs",
        "list_objects_v2",
        "s3:ListBucket",
        &["capture", "consume"],
    ),
    // Publishing a staged file: CopyObject (GetObject on the staged key, PutObject on the
    // place), and HeadObject when the staged one is gone (published before).
    (
        "src/lake/store.rs",
        "copy_object",
        "s3:PutObject",
        &["capture", "consume"],
    ),
    (
        "src/lake/store.rs",
        "head_object",
        "s3:GetObject",
        &["capture", "consume"],
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The statements of a policy document (as parsed).
fn document_statements(files: &BTreeMap<String, Value>, doc: &str) -> Vec<Value> {
    files
        .values()
        .flat_map(|f| f["data"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| {
            e["aws_iam_policy_document"][doc]["statement"]
                .as_array()
                .cloned()
        })
        .flatten()
        .collect()
}

#[test]
fn the_streamer_may_only_put_oversized_records_in_the_lake() {
    let tf = parsed();
    let statements = document_statements(&tf, "oversized");
    assert!(!statements.is_empty(), "no oversized policy document");
    let locals = source();
    for s in &statements {
        let actions: Vec<&str> = s["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        if actions.contains(&"s3:PutObject") {
            assert_eq!(actions, ["s3:PutObject"], "only PutObject on objects");
            assert_eq!(s["resources"][0], "${local.oversized_objects}");
        } else {
            assert!(
                actions
                    .iter()
                    .all(|a| *a == "s3:ListBucket" || a.starts_with("kms:")),
                "{actions:?}"
            );
        }
    }
    // The objects are the lake's oversized/ prefix, in both prefix cases.
    let line = locals
        .lines()
        .find(|l| l.trim_start().starts_with("oversized_objects"))
        .expect("local.oversized_objects");
    assert_eq!(line.matches("/oversized/*").count(), 2, "{line}");
    // In streaming mode the capture role gets that document, and the full lake policy only in
    // embedded mode.
    let policies: Vec<Value> = tf
        .values()
        .flat_map(|f| f["resource"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["aws_iam_role_policy"].as_object().cloned())
        .flat_map(|m| m.into_iter().collect::<Vec<_>>())
        .filter(|(name, _)| name.starts_with("capture_"))
        .map(|(_, p)| p)
        .collect();
    let count_of = |doc: &str| {
        policies
            .iter()
            .find(|p| p["policy"].as_str().unwrap().contains(doc))
            .map(|p| p["count"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no capture policy with {doc}"))
    };
    assert!(count_of("policy_document.oversized").contains("local.streaming"));
    assert!(count_of("policy_document.lake").contains("!local.streaming"));
}

#[test]
fn each_role_is_granted_the_aws_calls_its_component_makes() {
    // Every SDK request (`.send()`) in src/ is one of CALLS, in the file CALLS says.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let rel = f.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let sends = text.matches(".send()").count();
        let mapped: usize = CALLS
            .iter()
            .filter(|(file, ..)| *file == rel)
            .map(|(_, op, ..)| {
                let n = text.matches(&format!(".{op}()")).count();
                assert!(n > 0, "{rel} no longer calls {op}: update CALLS");
                n
            })
            .sum();
        assert_eq!(
            sends, mapped,
            "{rel} makes {sends} AWS requests but CALLS maps {mapped}: add the new call and its IAM permission"
        );
    }

    let tf = parsed();
    let granted = role_actions(&tf);
    for (file, op, action, components) in CALLS {
        for c in *components {
            assert!(
                granted.get(*c).is_some_and(|a| a.contains(*action)),
                "the {c} role lacks {action} ({op} in {file}); granted: {granted:?}"
            );
        }
    }
    // Nothing beyond what the code calls (and KMS for a customer key).
    let needed: BTreeSet<&str> = CALLS.iter().map(|c| c.2).collect();
    for (c, actions) in &granted {
        for a in actions {
            assert!(
                needed.contains(a.as_str()) || a.starts_with("kms:"),
                "the {c} role is granted {a}, which no code calls"
            );
        }
    }
}

#[test]
fn the_source_parameters_and_names_fit_the_binary_and_the_chart() {
    let tf = parsed();
    let rds = &tf["rds.tf"]["resource"][0]["aws_db_parameter_group"]["source"];
    let params: BTreeMap<&str, &str> = rds["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["value"].as_str().unwrap()))
        .collect();
    assert_eq!(
        params["rds.logical_replication"], "1",
        "wal_level = logical on RDS"
    );
    assert!(params.contains_key("max_slot_wal_keep_size"));
    assert_eq!(params["rds.force_ssl"], "1", "only encrypted connections");
    assert!(params.contains_key("max_replication_slots"));

    // The service accounts the roles trust are the chart's default names for release totes-cdc.
    let vars: BTreeMap<String, Value> = tf["variables.tf"]["variable"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| v.as_object().unwrap().clone())
        .collect();
    assert_eq!(
        vars["capture_service_account"]["default"],
        "totes-cdc-capture"
    );
    assert_eq!(
        vars["consume_service_account"]["default"],
        "totes-cdc-consume"
    );
    let chart_sa = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/helm/totes-cdc/templates/_helpers.tpl"
    ))
    .unwrap();
    assert!(chart_sa.contains(r#"(printf "%s-capture" (include "totes-cdc.fullname" .))"#));
    assert!(chart_sa.contains(r#"(printf "%s-consume" (include "totes-cdc.fullname" .))"#));
    // The helm_values output sets keys the chart has.
    let outputs = std::fs::read_to_string(format!("{DIR}/outputs.tf")).unwrap();
    let values = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/helm/totes-cdc/values.yaml"
    ))
    .unwrap();
    for key in ["mode", "aws", "config", "capture", "consume"] {
        assert!(
            outputs.contains(&format!("    {key} ")),
            "helm_values sets {key}"
        );
        assert!(
            values.contains(&format!("\n{key}:")) || values.starts_with(&format!("{key}:")),
            "values.yaml has {key}"
        );
    }
    for key in [
        "lake",
        "kinesis-stream",
        "region",
        "serviceAccount",
        "annotations",
    ] {
        assert!(values.contains(&format!("{key}:")), "values.yaml has {key}");
    }
}
