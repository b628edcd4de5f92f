//! Shared test support: throwaway PostgreSQL clusters and the totes-cdc binary as a process.

pub mod compare;
pub mod fixture;
pub mod lake;
pub mod moto;
pub mod pg;
pub mod scrape;
pub mod star;
pub mod totesys;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use pg::PgCluster;

/// The binary under test (built once by cargo for all integration tests).
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_totes-cdc"))
}

/// The totesys source schema shipped in sql/source.
pub fn totesys_schema() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sql/source/totesys.sql"
    ))
    .expect("sql/source/totesys.sql")
}

/// A fresh temporary directory for a test.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "totes-cdc-test-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// The arguments of `run` with short batches.
pub fn run_args<'a>(src: &'a str, wh: &'a str, state: &'a str, lake: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--source-url",
        src,
        "--warehouse-url",
        wh,
        "--state-dir",
        state,
        "--lake",
        lake,
        "--batch-max-ms",
        "200",
    ]
}

/// The arguments of `stream --sink kinesis` into `stream`.
pub fn stream_kinesis_args<'a>(
    stream: &'a str,
    src: &'a str,
    state: &'a str,
    lake: &'a str,
) -> Vec<&'a str> {
    vec![
        "stream",
        "--sink",
        "kinesis",
        "--kinesis-stream",
        stream,
        "--source-url",
        src,
        "--state-dir",
        state,
        "--lake",
        lake,
    ]
}

/// The arguments of `consume` from `stream`, polling idle shards every 100 ms.
pub fn consume_args<'a>(stream: &'a str, wh: &'a str, lake: &'a str) -> Vec<&'a str> {
    vec![
        "consume",
        "--kinesis-stream",
        stream,
        "--warehouse-url",
        wh,
        "--lake",
        lake,
        "--poll-interval",
        "100ms",
    ]
}

/// `setup` of a source and its warehouse, which must succeed.
pub fn setup(src: &str, wh: &str, envs: &[(&str, &str)]) {
    let (status, out, err) = run(&["setup", "--source-url", src, "--warehouse-url", wh], envs);
    assert!(status.success(), "setup: {out}{err}");
}

/// Runs the binary to completion; returns (exit status, stdout, stderr).
pub fn run(args: &[&str], envs: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("TOTES_CDC_METRICS_ADDR", "127.0.0.1:0")
        .envs(envs.iter().copied())
        .env("NO_COLOR", "1")
        .output()
        .expect("run totes-cdc");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running totes-cdc process whose stdout lines are collected.
pub struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    count: Arc<AtomicU64>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    /// Starts the binary, keeping every stdout line.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::spawn_inner(args, envs, true)
    }

    /// Starts the binary, only counting stdout lines.
    pub fn spawn_counting(args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::spawn_inner(args, envs, false)
    }

    fn spawn_inner(args: &[&str], envs: &[(&str, &str)], keep: bool) -> Self {
        let mut child = Command::new(bin())
            .args(args)
            // Tests run side by side: each process takes a free port unless told otherwise.
            .env("TOTES_CDC_METRICS_ADDR", "127.0.0.1:0")
            .envs(envs.iter().copied())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn totes-cdc");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicU64::new(0));
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            let lines = lines.clone();
            let count = count.clone();
            std::thread::spawn(move || {
                for line in BufReader::with_capacity(1 << 16, out).lines() {
                    let Ok(line) = line else { break };
                    if keep {
                        if let Ok(mut l) = lines.lock() {
                            l.push(line);
                        }
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        if let Some(mut err) = child.stderr.take() {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = stderr.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        Self {
            child,
            lines,
            count,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Every stdout line parsed as JSON (panics on a line that is not; the last line of a
    /// killed process may be cut short and is left out).
    pub fn events(&self) -> Vec<Value> {
        let lines = self.lines();
        let n = lines.len();
        lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match serde_json::from_str(l) {
                Ok(v) => Some(v),
                Err(_) if i + 1 == n => None,
                Err(e) => panic!("not JSON ({e}): {l}"),
            })
            .collect()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until `pred` holds for the events so far; panics after `timeout` with the log.
    pub fn wait_events(&self, what: &str, timeout: Duration, pred: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.events()) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; {} lines so far; stderr:\n{}",
                    self.count(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stderr().contains(needle) {
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for log {needle:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Peak resident set size in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// SIGKILL, no chance to clean up.
    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Let the reader threads take the rest of the pipe.
        std::thread::sleep(Duration::from_millis(100));
    }

    /// SIGTERM and wait for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait(timeout)
    }

    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("process did not exit in time; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An independent capture to compare with: `stream --sink stdout` on a slot of its own
/// (`oracle`), streaming when this returns. Its events are what the source committed.
pub fn spawn_oracle(src_url: &str, state_dir: &str) -> Proc {
    let oracle = Proc::spawn(
        &[
            "stream",
            "--sink",
            "stdout",
            "--slot",
            "oracle",
            "--source-url",
            src_url,
            "--state-dir",
            state_dir,
        ],
        &[],
    );
    oracle.wait_log("streaming changes", Duration::from_secs(180));
    oracle
}

/// Waits until the oracle has seen the newest payment (every workload's last kind of write).
pub async fn wait_oracle_caught_up(oracle: &Proc, src: &tokio_postgres::Client, timeout: Duration) {
    let marker: i64 = src
        .query_one("SELECT max(payment_id)::bigint FROM payment", &[])
        .await
        .expect("newest payment")
        .get(0);
    oracle.wait_events("the oracle to catch up", timeout, |ev| {
        ev.iter().any(|e| {
            e["source"]["table"] == "payment" && e["key"]["payment_id"].as_i64() == Some(marker)
        })
    });
}

/// The error a command ended with, as it prints it: the last `error: ` line of its stderr and
/// the `  fix: ` line under it, if any, joined by a newline.
pub fn error_report(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    let Some(at) = lines.iter().rposition(|l| l.starts_with("error: ")) else {
        panic!("no error line in: {stderr}");
    };
    let rest = &lines[at + 1..];
    assert!(
        rest.iter().all(|l| l.starts_with("  fix: ")) && rest.len() <= 1,
        "the error is not the last thing printed: {stderr}"
    );
    lines[at..].join("\n")
}

/// Two sets that must be equal: on a difference, a few of what is missing and what is extra.
pub fn assert_same_sets<T: Ord + std::fmt::Debug>(
    what: &str,
    expected: &std::collections::BTreeSet<T>,
    actual: &std::collections::BTreeSet<T>,
) {
    let lost: Vec<_> = expected.difference(actual).take(5).collect();
    let extra: Vec<_> = actual.difference(expected).take(5).collect();
    assert!(
        lost.is_empty() && extra.is_empty(),
        "{what}: lost {lost:?}, extra {extra:?} (of {} expected)",
        expected.len()
    );
}

/// Runs `tests/support/<script>` with `args` under python3 and parses the JSON it prints;
/// panics with `what` and the script's stderr when it fails.
pub fn python_json<S: AsRef<std::ffi::OsStr>>(script: &str, args: &[S], what: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(script);
    let out = Command::new("python3")
        .arg(path)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script's JSON")
}
