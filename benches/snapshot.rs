//! The initial snapshot against its physical limit, on the same machine in the same run:
//! 1. the limit: a plain `COPY sales_order TO STDOUT` drained by `psql` (to /dev/null);
//! 2. `totes-cdc run` copying the same table (5,000,000 rows, a fresh warehouse each time) into
//!    the warehouse's staging mirror, the star schema and the Parquet lake, until the consistent
//!    point: rows/s, ratio to the limit, peak RSS; with 1 connection (the table whole) and with
//!    the table split into page ranges copied by 2 and 4 connections.
//!
//! `TOTES_CDC_BENCH_ROWS` changes the table's size. `--write` records the results in
//! BENCHMARKS.md. Run with `make bench`.

mod common;
// A benchmark uses part of the tests' support.
#[path = "../tests/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{pg, PgCluster};

/// Seconds for `psql` to drain `COPY sales_order TO STDOUT`, and the bytes it moved.
fn psql_copy(url: &str) -> (f64, u64) {
    let t = Instant::now();
    let mut child = Command::new(pg::pg_bin().join("psql"))
        .args([url, "-X", "-q", "-c", "COPY sales_order TO STDOUT"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("psql");
    let mut stdout = child.stdout.take().expect("psql stdout");
    let bytes = std::io::copy(&mut stdout, &mut std::io::sink()).expect("draining psql");
    assert!(
        child.wait().expect("waiting for psql").success(),
        "psql COPY failed"
    );
    (t.elapsed().as_secs_f64(), bytes)
}

/// `run` from a new slot into a new warehouse until `until`: (seconds, peak RSS in KiB).
async fn totes_run(pg: &PgCluster, n: usize, parallelism: usize, until: &str) -> (f64, u64) {
    let wh_db = format!("wh{n}");
    let wh = pg.create_db(&wh_db).await;
    let (src_url, wh_url) = (pg.url("snap"), pg.url(&wh_db));
    support::setup(&src_url, &wh_url, &[]);
    let state = support::temp_dir("bench-snap");
    let st = state.to_string_lossy().into_owned();
    let lake = format!("{st}/lake");
    let slot = format!("snap{n}");
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_totes-cdc"))
        .env("TOTES_CDC_METRICS_ADDR", "127.0.0.1:0")
        .args([
            "run",
            "--source-url",
            &src_url,
            "--warehouse-url",
            &wh_url,
            "--slot",
            &slot,
            "--state-dir",
            &st,
            "--lake",
            &lake,
            "--snapshot-parallelism",
            &parallelism.to_string(),
            "--heartbeat-interval",
            "0",
            "--until-lsn",
            until,
            "--log",
            "warn",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("totes-cdc run");
    let pid = child.id();
    let mut peak = 0;
    let status = loop {
        peak = peak.max(common::rss_peak_kib(pid).unwrap_or(0));
        if let Some(status) = child.try_wait().expect("waiting for run") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let secs = t.elapsed().as_secs_f64();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(status.success(), "run: {err}");
    let copied: i64 = wh
        .query_one("SELECT count(*) FROM staging.sales_order", &[])
        .await
        .unwrap()
        .get(0);
    let facts: i64 = wh
        .query_one("SELECT count(*) FROM fact_sales_order", &[])
        .await
        .unwrap()
        .get(0);
    let src = pg.connect("snap").await;
    let rows: i64 = src
        .query_one("SELECT count(*) FROM sales_order", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(copied, rows, "every row in the staging mirror");
    assert_eq!(facts, rows, "every row a fact");
    src.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    (secs, peak)
}

#[tokio::main]
async fn main() {
    let rows: i64 = std::env::var("TOTES_CDC_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    let pg = PgCluster::start_with(&[
        ("max_wal_size", "'8GB'"),
        ("checkpoint_timeout", "'30min'"),
        ("max_replication_slots", "20"),
    ]);
    let src = pg.create_db("snap").await;
    support::totesys::create(&src).await;
    support::totesys::publish(&src).await;
    eprintln!("loading {rows} sales orders...");
    let step = 1_000_000;
    for start in (0..rows).step_by(step as usize) {
        src.batch_execute(&format!(
            "INSERT INTO sales_order (last_updated, design_id, staff_id, counterparty_id, units_sold, unit_price, currency_id, agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id) \
             SELECT now(), 1 + g % 7, 1 + g % 5, 1 + g % 3, 1000 + g % 99000, 2.50 + (g % 300) / 100.0, 1 + g % 3, '2025-01-01', '2025-01-05', 1 + g % 5 FROM generate_series({start}, {}) g",
            (start + step).min(rows) - 1
        ))
        .await
        .unwrap();
    }
    src.batch_execute("VACUUM ANALYZE sales_order")
        .await
        .unwrap();
    let until: String = src
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let url = pg.url("snap");
    // Warm the cache the same way for both.
    let _ = psql_copy(&url);
    let (limit_secs, bytes) = psql_copy(&url);
    let limit = rows as f64 / limit_secs;
    let mut report = format!(
        "| limit: `COPY sales_order TO STDOUT` drained by psql ({rows} rows, {:.0} MB of text) | {limit:.0} rows/s | {limit_secs:.1} s |\n",
        bytes as f64 / 1e6
    );
    for (n, parallelism) in [1usize, 2, 4].into_iter().enumerate() {
        let (secs, peak) = totes_run(&pg, n, parallelism, &until).await;
        let rate = rows as f64 / secs;
        let how = if parallelism == 1 {
            "1 connection, the table whole".to_string()
        } else {
            format!("{parallelism} connections, the table in page ranges")
        };
        report.push_str(&format!(
            "| totes-cdc run: initial snapshot into staging, star and lake, {how} | {rate:.0} rows/s, ratio {:.2} | {secs:.1} s, peak RSS {:.0} MiB |\n",
            rate / limit,
            peak as f64 / 1024.0
        ));
        eprint!("{report}");
    }
    println!("{report}");
    if std::env::args().any(|a| a == "--write") {
        common::write_section(
            "snapshot",
            &format!(
                "## Initial snapshot: totes-cdc against COPY\n\n\
                 One PostgreSQL 15 server holds the source and the warehouses, on the same machine \
                 as totes-cdc ({} cores). The limit is a plain `COPY … TO STDOUT` of the same table \
                 drained by psql, measured in the same run after a warm-up read. totes-cdc's time \
                 runs from the process's start to its exit at the consistent point: the copy, the \
                 staging mirror, the star schema's facts and the Parquet lake. Command: `make \
                 bench` (`cargo bench --bench snapshot -- --write`).\n\n\
                 | measurement | result | |\n|---|---|---|\n{report}",
                common::cores()
            ),
        );
    }
}
