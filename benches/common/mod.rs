//! What the benchmarks share: percentiles, a process's peak RSS, waiting for the pipeline to
//! stream, the end-to-end latency of a steady sale workload, and their section of BENCHMARKS.md.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

/// The `p` quantile of sorted values (NaN when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Peak resident set size of a live process in KiB (VmHWM).
pub fn rss_peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Waits until the pipeline applies streamed changes: the slot is held by a streaming session
/// and a probe design inserted at the source has reached the warehouse's `dim_design`. Measuring
/// before that would count the initial snapshot's apply as latency of the first transactions.
pub async fn wait_streaming(src: &Client, wh: &Client) {
    loop {
        let active: bool = src
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'totes_cdc'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get(0))
            .unwrap_or(false);
        if active {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let probe: i32 = src
        .query_one(
            "INSERT INTO design (design_name, file_location, file_name, last_updated) \
             VALUES ('bench probe', '/probe', 'probe.json', now()) RETURNING design_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = wh
            .query_opt("SELECT 1 FROM dim_design WHERE design_id = $1", &[&probe])
            .await
            .ok()
            .flatten()
            .is_some();
        if seen {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the probe design never reached the warehouse"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Commit → visible latencies of a steady sale workload.
pub struct Latency {
    /// Milliseconds, sorted.
    pub ms: Vec<f64>,
    /// Peak RSS of the watched process meanwhile, KiB.
    pub peak_rss_kib: u64,
}

/// `writers` connections to `src_url` commit `sale_sql(n)` bundles at `rate` per second in all
/// for `secs`; measures from each commit returning to its sale appearing in the warehouse's
/// `fact_sales_order`, sampling the peak RSS of `pid` meanwhile.
pub async fn sale_latency(
    src_url: &str,
    wh: &Client,
    sale_sql: fn(i32) -> String,
    rate: u64,
    secs: u64,
    writers: u64,
    pid: u32,
) -> Latency {
    let committed: Arc<Mutex<Vec<(i32, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for w in 0..writers {
        let url = src_url.to_string();
        let committed = committed.clone();
        handles.push(tokio::spawn(async move {
            let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let interval = Duration::from_micros(1_000_000 * writers / rate);
            let start = Instant::now();
            let total = rate * secs / writers;
            for i in 0..total {
                tokio::time::sleep_until((start + interval * i as u32).into()).await;
                db.batch_execute(&sale_sql((w * total + i) as i32))
                    .await
                    .unwrap();
                let id: i32 = db
                    .query_one(
                        "SELECT currval(pg_get_serial_sequence('sales_order', 'sales_order_id'))::int",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                committed.lock().unwrap().push((id, Instant::now()));
            }
        }));
    }
    // Commits of concurrent writers become visible out of id order: ask for everything above
    // the highest id below which all were seen.
    let mut seen: HashMap<i32, Instant> = HashMap::new();
    let mut upto = 0;
    let mut peak = 0;
    let expected = (rate * secs / writers * writers) as usize;
    let deadline = Instant::now() + Duration::from_secs(secs + 120);
    while seen.len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let rows = wh
            .query(
                "SELECT sales_order_id FROM fact_sales_order WHERE sales_order_id > $1",
                &[&upto],
            )
            .await
            .unwrap_or_default();
        let now = Instant::now();
        for r in rows {
            seen.entry(r.get(0)).or_insert(now);
        }
        while seen.contains_key(&(upto + 1)) {
            upto += 1;
        }
        if let Some(kib) = rss_peak_kib(pid) {
            peak = peak.max(kib);
        }
    }
    for h in handles {
        h.await.unwrap();
    }
    let mut ms: Vec<f64> = committed
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(id, t)| {
            seen.get(id)
                .map(|v| v.saturating_duration_since(*t).as_secs_f64() * 1000.0)
        })
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    Latency {
        ms,
        peak_rss_kib: peak,
    }
}

/// Replaces the `key` section of BENCHMARKS.md (between `<!-- key:begin -->` and
/// `<!-- key:end -->`) with `body`, or appends it.
pub fn write_section(key: &str, body: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let (begin, finish) = (
        format!("<!-- {key}:begin -->"),
        format!("<!-- {key}:end -->"),
    );
    let section = format!("{begin}\n{body}{finish}");
    let new = match (old.find(&begin), old.find(&finish)) {
        (Some(b), Some(e)) => format!("{}{section}{}", &old[..b], &old[e + finish.len()..]),
        _ => format!("{}\n\n{section}\n", old.trim_end()),
    };
    if let Err(e) = std::fs::write(path, new) {
        eprintln!("cannot write {path}: {e}");
    }
}

/// Cores of this machine, for the section headers.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0)
}
