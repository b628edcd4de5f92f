//! Scraping a role's `/metrics`, `/healthz` and `/readyz`: plain HTTP over a socket, the
//! exposition parsed strictly (every line must be a comment, a TYPE/HELP line or a sample with
//! a number) with the `prometheus-parse` crate, and on demand by Python's `prometheus_client`,
//! the reference parser, so a malformed line fails the test.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prometheus_parse::{LineInfo, Scrape, Value};

use super::Proc;

/// The address a role bound for its metrics (tests start every role on 127.0.0.1:0).
pub fn metrics_addr(proc: &Proc) -> String {
    proc.wait_log("serving /metrics", Duration::from_secs(60));
    let log = proc.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("serving /metrics"))
        .unwrap_or_default();
    // Text logs say addr=..., JSON logs "addr":"...".
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        if let Some(a) = v["fields"]["addr"].as_str().or(v["addr"].as_str()) {
            return a.to_string();
        }
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {line:?}"))
        .trim_matches('"')
        .to_string()
}

/// GET `path`; (status code, body).
pub fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
    (code, body.to_string())
}

/// One scrape: the samples by name, each with its labels.
pub struct Metrics {
    pub text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    /// The sum of `name` over the series whose labels include `labels` (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Whether any series of `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }

    /// Every series of `name`: labels and value.
    pub fn series(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, v)| (l.clone(), *v))
            .collect()
    }
}

/// Scrapes `/metrics` and parses it (panics on a malformed exposition).
pub fn scrape(addr: &str) -> Metrics {
    let (code, text) = get(addr, "/metrics");
    assert_eq!(code, 200, "/metrics answered {code}: {text}");
    parse(text)
}

pub fn parse(text: String) -> Metrics {
    for line in text.lines() {
        let ok = match LineInfo::parse(line) {
            LineInfo::Empty | LineInfo::Doc { .. } | LineInfo::Type { .. } => true,
            LineInfo::Sample { value, .. } => {
                matches!(value, "NaN" | "+Inf" | "-Inf") || value.parse::<f64>().is_ok()
            }
            LineInfo::Ignored => false,
        };
        assert!(ok, "malformed exposition line: {line:?}");
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse");
    let mut samples = Vec::new();
    for s in scrape.samples {
        let labels: BTreeMap<String, String> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => {
                samples.push((s.metric, labels, v))
            }
            // `_sum` and `_count` come as samples of their own.
            Value::Histogram(_) => {}
            Value::Summary(_) => {}
        }
    }
    Metrics { text, samples }
}

/// Parses the exposition with Python's prometheus_client (the reference implementation).
pub fn check_with_reference_parser(text: &str) {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\n\
             n = sum(len(f.samples) for f in p(sys.stdin.read()))\nprint(n)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejects the exposition: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(n > 0, "prometheus_client found no samples");
}

/// Scrapes until `pred` holds; panics after `timeout` with the last scrape.
pub fn wait_metrics(
    addr: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Metrics) -> bool,
) -> Metrics {
    let deadline = Instant::now() + timeout;
    loop {
        let m = scrape(addr);
        if pred(&m) {
            return m;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}; last scrape:\n{}", m.text);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Polls `/readyz` until its status is `code`; returns the body.
pub fn wait_ready(addr: &str, code: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (c, body) = get(addr, "/readyz");
        if c == code {
            return body;
        }
        if Instant::now() > deadline {
            panic!("/readyz stayed {c}, wanted {code}: {body}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
