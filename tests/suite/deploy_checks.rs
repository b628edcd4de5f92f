//! The deployment under the tools its users run (scripts/deploy-check.sh): helm lint, checkov
//! over the rendered chart and the Terraform module, hadolint, yamllint, actionlint and
//! terraform fmt pass on the repository with no unexplained finding, and each of them fails on
//! a deliberately broken copy.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs the checks named with the environment given; (passed, output).
fn deploy_check(checks: &[&str], env: &[(&str, &Path)]) -> (bool, String) {
    let out = Command::new(format!("{ROOT}/scripts/deploy-check.sh"))
        .args(checks)
        .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
        .output()
        .expect("scripts/deploy-check.sh");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A copy of `path` (a file or a directory) in a fresh temporary directory.
fn copy_of(path: &str) -> PathBuf {
    let dir = support::temp_dir("deploy-check");
    let status = Command::new("cp")
        .args(["-r", &format!("{ROOT}/{path}")])
        .arg(&dir)
        .status()
        .expect("cp");
    assert!(status.success());
    dir.join(Path::new(path).file_name().expect("a name"))
}

fn replace(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).expect("read");
    assert!(text.contains(from), "{} lacks {from}", file.display());
    std::fs::write(file, text.replacen(from, to, 1)).expect("write");
}

#[test]
fn the_deployment_passes_every_check() {
    let (ok, out) = deploy_check(&[], &[]);
    assert!(ok, "{out}");
    for check in [
        "helm lint",
        "checkov: the rendered chart",
        "checkov: terraform",
        "hadolint",
        "yamllint",
        "actionlint",
        "terraform fmt",
    ] {
        assert!(
            out.contains(&format!("== {check}")),
            "{check} did not run:\n{out}"
        );
    }
}

#[test]
fn each_check_fails_on_a_broken_copy() {
    // A root user in the image.
    let dockerfile = copy_of("Dockerfile");
    replace(&dockerfile, "USER 65532:65532", "USER root");
    let (ok, out) = deploy_check(&["hadolint"], &[("TOTES_CDC_DOCKERFILE", &dockerfile)]);
    assert!(!ok && out.contains("DL3002"), "{out}");

    // An IAM statement allowing every action.
    let terraform = copy_of("terraform");
    replace(
        &terraform.join("iam.tf"),
        r#"actions   = ["kinesis:PutRecords", "kinesis:ListShards", "kinesis:DescribeStreamSummary"]"#,
        r#"actions   = ["*"]"#,
    );
    let (ok, out) = deploy_check(
        &["checkov-terraform"],
        &[("TOTES_CDC_TERRAFORM", &terraform)],
    );
    assert!(!ok && out.contains("CKV_AWS_49"), "{out}");

    // Pods anyone may connect to, and a template that does not render.
    let chart = copy_of("helm/totes-cdc");
    replace(
        &chart.join("values.yaml"),
        "networkPolicy:\n  enabled: true",
        "networkPolicy:\n  enabled: false",
    );
    let (ok, out) = deploy_check(&["checkov-chart"], &[("TOTES_CDC_CHART", &chart)]);
    assert!(!ok && out.contains("CKV2_K8S_6"), "{out}");
    std::fs::write(
        chart.join("templates/broken.yaml"),
        "kind: ConfigMap\nmetadata:\n  name: {{ .Values.nothing.here }}\n",
    )
    .unwrap();
    let (ok, out) = deploy_check(&["helm"], &[("TOTES_CDC_CHART", &chart)]);
    assert!(!ok && out.contains("nil pointer"), "{out}");

    // A workflow with a duplicate key, and one with an unknown context property.
    let workflows = copy_of(".github/workflows");
    let ci = workflows.join("ci.yml");
    replace(&ci, "permissions:\n", "name: again\npermissions:\n");
    let (ok, out) = deploy_check(&["yamllint"], &[("TOTES_CDC_WORKFLOWS", &workflows)]);
    assert!(!ok && out.contains("key-duplicates"), "{out}");
    replace(&ci, "name: again\n", "");
    replace(
        &ci,
        "run: ./.ci/run",
        "run: ./.ci/run ${{ github.no_such_thing }}",
    );
    let (ok, out) = deploy_check(&["actionlint"], &[("TOTES_CDC_WORKFLOWS", &workflows)]);
    assert!(!ok && out.contains("no_such_thing"), "{out}");

    // A Terraform file out of format (where terraform is installed).
    if Command::new("terraform").arg("version").output().is_ok() {
        let terraform = copy_of("terraform");
        replace(&terraform.join("kinesis.tf"), " = ", "    =    ");
        let (ok, out) = deploy_check(&["terraform-fmt"], &[("TOTES_CDC_TERRAFORM", &terraform)]);
        assert!(!ok, "{out}");
    }
}
