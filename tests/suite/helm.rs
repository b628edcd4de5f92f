//! The Helm chart (helm/totes-cdc), through Helm itself: `helm lint --strict` in both modes,
//! `helm template` (values.schema.json refusing bad values), and every manifest validated
//! against the Kubernetes 1.30 schemas, unknown fields included (kubernetes-validate).
//! Then the pods are run as the manifests describe them — the container's args and environment,
//! with only the Secret's URLs, the state volume and the AWS endpoint filled in — against real
//! PostgreSQL and moto: the setup hook prepares the source, and both deployment modes move the
//! source into the warehouse.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::moto::Moto;
use support::scrape::{metrics_addr, wait_ready};
use support::star::wait_star;
use support::{totesys, PgCluster, Proc};

const WAIT: Duration = Duration::from_secs(120);
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/totes-cdc");

/// Helm itself: `TOTES_CDC_HELM`, else the one `make deps` installs into `.tools/bin`, else
/// `helm` on the PATH.
fn helm() -> PathBuf {
    if let Ok(p) = std::env::var("TOTES_CDC_HELM") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/bin/helm"));
    if local.exists() {
        local
    } else {
        PathBuf::from("helm")
    }
}

/// Runs helm with `args`; its stdout, or its stderr when it fails.
fn run_helm(args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm())
        .args(args)
        .output()
        .expect("helm not found: `make deps` installs it into .tools/bin");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Renders the chart with `values` (YAML) over values.yaml; the manifests as JSON, each
/// validated, or the renderer's error.
fn render(values: &str) -> Result<Vec<Value>, String> {
    let dir = support::temp_dir("chart");
    let file = dir.join("values.yaml");
    std::fs::write(&file, values).expect("values file");
    let file = file.to_string_lossy().into_owned();
    let rendered = run_helm(&[
        "template",
        "totes-cdc",
        CHART,
        "--namespace",
        "cdc",
        "-f",
        &file,
    ])?;
    let mut check = Command::new("python3")
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/check_chart.py"),
            "1.30",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    {
        use std::io::Write;
        let mut stdin = check.stdin.take().expect("stdin");
        stdin
            .write_all(rendered.as_bytes())
            .expect("write manifests");
    }
    let checked = check.wait_with_output().expect("check_chart.py");
    assert!(
        checked.status.success(),
        "the rendered manifests are not valid Kubernetes objects:\n{}\n{}",
        String::from_utf8_lossy(&checked.stderr),
        rendered
    );
    Ok(serde_json::from_slice::<Vec<Value>>(&checked.stdout).expect("manifests as JSON"))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    k.sort();
    k
}

fn container(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]["containers"][0]
}

fn args(c: &Value) -> Vec<String> {
    c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// Where the chart mounts the credentials' Secrets (`<role>/<key>` below it).
const URLS: &str = "/var/run/secrets/totes-cdc/";

/// Every TOTES_CDC_* variable the container sets is one the binary reads; the URLs are files of
/// the mounted Secret, never values.
fn check_env(c: &Value) {
    let known = totes_cdc::config::env_names();
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        if name.starts_with("TOTES_CDC_") {
            assert!(
                known.contains(name),
                "{name} is not an option of the binary"
            );
        }
        assert!(
            !(name.ends_with("_URL") && name != "AWS_ENDPOINT_URL"),
            "{name}: URLs are mounted files, not variables"
        );
        if name.ends_with("_URL_FILE") {
            assert!(
                e["value"].as_str().unwrap().starts_with(URLS),
                "{name} must name a file of the mounted Secret"
            );
        }
    }
    for e in c["env"].as_array().unwrap() {
        if let Some(file) = e["value"].as_str().and_then(|v| v.strip_prefix(URLS)) {
            let role = file.split('/').next().unwrap();
            assert!(
                c["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["mountPath"] == format!("{URLS}{role}")),
                "the {role} Secret is not mounted"
            );
        }
    }
}

/// Which URL files a container is given: (source, warehouse).
fn credentials(c: &Value) -> (bool, bool) {
    let has = |n: &str| c["env"].as_array().unwrap().iter().any(|e| e["name"] == n);
    (
        has("TOTES_CDC_SOURCE_URL_FILE"),
        has("TOTES_CDC_WAREHOUSE_URL_FILE"),
    )
}

/// The probes ask the endpoints the binary serves, on the port it listens on.
fn check_probes(c: &Value) {
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["name"], "metrics");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
}

#[test]
fn the_chart_renders_valid_manifests_for_both_modes() {
    // Embedded (the default): one `run` pod with its state volume, the setup hook.
    let docs = render("{}").unwrap();
    assert_eq!(
        kinds(&docs),
        [
            "Job/totes-cdc-setup",
            "NetworkPolicy/totes-cdc",
            "Service/totes-cdc-capture",
            "ServiceAccount/totes-cdc-capture",
            "StatefulSet/totes-cdc-capture"
        ]
    );
    let sts = find(&docs, "StatefulSet", "totes-cdc-capture");
    assert_eq!(sts["spec"]["replicas"], 1, "one session holds the slot");
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "state"
    );
    let run = container(sts);
    assert_eq!(args(run), ["run"]);
    check_env(run);
    assert_eq!(credentials(run), (true, true), "run reads both databases");
    check_probes(run);
    // Only the metrics scraper may connect, on the metrics port; no pod mounts an API token.
    let policy = find(&docs, "NetworkPolicy", "totes-cdc");
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], "metrics");
    assert_eq!(
        sts["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
    let job = find(&docs, "Job", "totes-cdc-setup");
    assert_eq!(
        job["metadata"]["annotations"]["helm.sh/hook"],
        "pre-install,pre-upgrade"
    );
    assert_eq!(args(container(job)), ["setup"]);
    check_env(container(job));

    // Streaming: the streamer, three consumers with their budget, monitoring.
    let docs = render(
        "mode: streaming\n\
         consume: {replicas: 3}\n\
         capture: {serviceAccount: {annotations: {eks.amazonaws.com/role-arn: arn:aws:iam::1:role/stream}}}\n\
         metrics: {serviceMonitor: {enabled: true}, prometheusRule: {enabled: true}}\n",
    )
    .unwrap();
    let stream = container(find(&docs, "StatefulSet", "totes-cdc-capture"));
    assert_eq!(args(stream), ["stream", "--sink", "kinesis"]);
    check_env(stream);
    assert_eq!(
        credentials(stream),
        (true, false),
        "the streamer gets no warehouse credential"
    );
    check_probes(stream);
    let consumers = find(&docs, "Deployment", "totes-cdc-consume");
    assert_eq!(consumers["spec"]["replicas"], 3);
    let consume = container(consumers);
    assert_eq!(args(consume)[0], "consume");
    check_env(consume);
    assert_eq!(
        credentials(consume),
        (false, true),
        "consumers get no source credential"
    );
    check_probes(consume);
    assert!(consume["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "TOTES_CDC_CONSUMER_ID"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"));
    assert_eq!(
        find(&docs, "ServiceAccount", "totes-cdc-capture")["metadata"]["annotations"]
            ["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::1:role/stream"
    );
    find(&docs, "ServiceAccount", "totes-cdc-consume");
    find(&docs, "PodDisruptionBudget", "totes-cdc-consume");
    // The ServiceMonitor finds both metrics Services.
    let monitor = find(&docs, "ServiceMonitor", "totes-cdc");
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    for svc in ["totes-cdc-capture", "totes-cdc-consume"] {
        let labels = find(&docs, "Service", svc)["metadata"]["labels"].clone();
        for (k, v) in selector {
            assert_eq!(&labels[k], v, "Service {svc} label {k}");
        }
    }
    // The PrometheusRule carries the shipped alert rules, which are deploy/prometheus's.
    let chart_rules = std::fs::read_to_string(format!("{CHART}/files/alerts.yml")).unwrap();
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/alerts.yml"
    ))
    .unwrap();
    assert_eq!(
        chart_rules, shipped,
        "helm/totes-cdc/files/alerts.yml = deploy/prometheus/alerts.yml"
    );
    let rule = find(&docs, "PrometheusRule", "totes-cdc");
    let alerts: Vec<&str> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert_eq!(
        alerts.len(),
        shipped.matches("- alert:").count(),
        "{alerts:?}"
    );

    // A CA bundle from a ConfigMap is mounted where sslrootcert can name it.
    let docs = render("tls: {caBundle: {configMap: rds-ca}}\n").unwrap();
    for (kind, name) in [
        ("StatefulSet", "totes-cdc-capture"),
        ("Job", "totes-cdc-setup"),
    ] {
        let w = find(&docs, kind, name);
        let volumes = w["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
        assert!(
            volumes
                .iter()
                .any(|v| v["name"] == "ca" && v["configMap"]["name"] == "rds-ca"),
            "{kind}/{name}: {volumes:?}"
        );
        assert!(container(w)["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "ca" && m["mountPath"] == "/etc/totes-cdc/ca"));
    }

    // values.schema.json refuses bad values before anything renders, naming the value.
    for (values, expected) in [
        ("mode: sideways\n", "mode must be one of the following"),
        (
            "consume: {replicas: 0}\n",
            "consume.replicas: Must be greater than or equal to 1",
        ),
        (
            "moed: streaming\n",
            "Additional property moed is not allowed",
        ),
        (
            "consume: {leaseTimeout: 15}\n",
            "consume.leaseTimeout: Invalid type",
        ),
        (
            "config: {slot: Bad-Slot}\n",
            "config.slot: Does not match pattern",
        ),
    ] {
        let err = render(values).unwrap_err();
        assert!(err.contains(expected), "{values}: {err}");
    }
}

/// `helm lint` passes in both modes, and fails on a broken copy of the chart.
#[test]
fn helm_lint_passes_in_both_modes_and_fails_a_broken_chart() {
    for mode in ["embedded", "streaming"] {
        let out = run_helm(&["lint", "--strict", CHART, "--set", &format!("mode={mode}")])
            .unwrap_or_else(|e| panic!("helm lint ({mode}): {e}"));
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
    let broken = support::temp_dir("broken-chart").join("totes-cdc");
    let copy = Command::new("cp")
        .args(["-r", CHART])
        .arg(&broken)
        .status()
        .expect("cp");
    assert!(copy.success());
    std::fs::write(
        broken.join("templates/broken.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Values.nothing.here }}\n",
    )
    .unwrap();
    let err = run_helm(&["lint", "--strict", &broken.to_string_lossy()]).unwrap_err();
    assert!(err.contains("1 chart(s) failed"), "{err}");
}

/// The environment of a rendered container with the Secret's URLs, the pod name, the state
/// volume and the AWS emulator filled in.
fn pod_env(
    c: &Value,
    secret: &BTreeMap<&str, String>,
    pod: &str,
    state: &str,
    aws: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(key) = e["value"].as_str().and_then(|v| v.strip_prefix(URLS)) {
            // The mounted Secret: its key as a file of this pod's own (pods start side by side:
            // one must not read a file another is writing).
            let file = format!("{state}-{pod}-urls/{key}");
            std::fs::create_dir_all(Path::new(&file).parent().unwrap()).unwrap();
            std::fs::write(&file, &secret[key]).unwrap();
            file
        } else if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if let Some(key) = e["valueFrom"]["secretKeyRef"]["key"].as_str() {
            secret[key].clone()
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
            pod.to_string()
        } else {
            panic!("unexpected env entry {e}");
        };
        env.push((name, value));
    }
    // Side by side on one machine: a free port instead of the pod's 9898; the mounted volume.
    env.push(("TOTES_CDC_METRICS_ADDR".into(), "127.0.0.1:0".into()));
    env.push(("TOTES_CDC_STATE_DIR".into(), state.into()));
    env.extend(aws.iter().map(|&(k, v)| (k.to_string(), v.to_string())));
    env
}

/// Waits for the pod's `/readyz` to answer 200; on failure, shows the pod's log.
fn wait_pod_ready(pod: &Proc) {
    let ready = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_ready(&metrics_addr(pod), 200, WAIT);
    }));
    if ready.is_err() {
        panic!("the pod did not become ready; its log:\n{}", pod.stderr());
    }
}

fn spawn_pod(c: &Value, env: &[(String, String)]) -> Proc {
    let a = args(c);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Proc::spawn(&a, &e)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chart_s_pods_move_the_source_into_the_warehouse() {
    let moto = Moto::start();
    moto.s3()
        .await
        .create_bucket()
        .bucket("chart-lake")
        .send()
        .await
        .unwrap();
    moto.create_stream("chart-stream", 2).await;
    // moto's region wins over the chart's; everything else is the chart's.
    let aws = moto.env();
    let pg = PgCluster::start();
    let values = "config: {lake: s3://chart-lake/lake, kinesis-stream: chart-stream}\n\
                  aws: {region: us-east-1}\n";

    for (mode, db) in [("streaming", "s"), ("embedded", "e")] {
        let src = pg.create_db(&format!("{db}src")).await;
        let wh = pg.create_db(&format!("{db}wh")).await;
        totesys::create(&src).await;
        // The Secrets by mount: the replication role's, the warehouse writer's, and the
        // owner's for the setup hook (the same superuser here).
        let secret = BTreeMap::from([
            ("source/url", pg.url(&format!("{db}src"))),
            ("setup/url", pg.url(&format!("{db}src"))),
            ("warehouse/url", pg.url(&format!("{db}wh"))),
        ]);
        let mut values = format!("mode: {mode}\n{values}");
        if mode == "embedded" {
            // The two modes share one server here: each its own slot.
            values = values.replace(
                "kinesis-stream: chart-stream",
                "kinesis-stream: chart-stream, slot: embedded_slot",
            );
        }
        let docs = render(&values).unwrap();
        let state = support::temp_dir("chart-state")
            .to_string_lossy()
            .into_owned();

        // The pre-install hook: setup creates the publication and the warehouse.
        let job = container(find(&docs, "Job", "totes-cdc-setup"));
        let mut setup = spawn_pod(job, &pod_env(job, &secret, "setup", &state, &aws));
        let status = setup.wait(WAIT);
        assert!(status.success(), "{mode} setup hook: {}", setup.stderr());

        let capture = container(find(&docs, "StatefulSet", "totes-cdc-capture"));
        let capture_pod = spawn_pod(
            capture,
            &pod_env(capture, &secret, "totes-cdc-capture-0", &state, &aws),
        );
        let mut consumers = Vec::new();
        if mode == "streaming" {
            let consume = container(find(&docs, "Deployment", "totes-cdc-consume"));
            for n in 0..2 {
                let pod = format!("totes-cdc-consume-{n}");
                consumers.push(spawn_pod(
                    consume,
                    &pod_env(consume, &secret, &pod, &state, &aws),
                ));
            }
        }
        // The readiness probe's endpoint answers 200 once the pod works.
        wait_pod_ready(&capture_pod);
        for c in &consumers {
            wait_pod_ready(c);
        }
        totesys::bundles_and_edits(&src, 0, 12).await;
        wait_star(&src, &wh, WAIT).await;
        drop(consumers);
        drop(capture_pod);
    }
}
