//! Capture throughput against the physical limit: the same WAL (1M inserts + 500k updates of
//! sales_order) drained by `pg_recvlogical` (pgoutput, to /dev/null) and by `totes-cdc stream
//! --sink null`, over a plain connection and over TLS (`sslmode=require`), on the same machine
//! in the same run. Prints events/s for each, the ratios and the streamer's peak RSS and CPU;
//! `--write` records them in BENCHMARKS.md.
//!
//! Run with `make bench` (or `cargo bench --bench capture`).

mod common;
#[path = "../tests/support/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pg::{PgCluster, TestCerts};

const INSERTS: i64 = 1_000_000;
const UPDATES: i64 = 500_000;
const ROWS_PER_TX: i64 = 1_000;

/// User + system CPU seconds of a live process.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

#[tokio::main]
async fn main() {
    let events = (INSERTS + UPDATES) as f64;
    let certs = TestCerts::make();
    let pg = PgCluster::start_with_ssl(
        &[("max_wal_size", "'4GB'"), ("checkpoint_timeout", "'30min'")],
        &certs,
    );
    let db = pg.create_db("bench").await;
    db.batch_execute(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/sql/source/totesys.sql"
        ))
        .expect("schema"),
    )
    .await
    .expect("schema");
    db.batch_execute(
        "INSERT INTO address (address_line_1, city, postal_code, country, phone, last_updated) VALUES ('1 Road', 'Leeds', 'LS1', 'UK', '0', now());
         INSERT INTO currency (currency_code, last_updated) VALUES ('GBP', now());
         INSERT INTO department (department_name, last_updated) VALUES ('Sales', now());
         INSERT INTO staff (first_name, last_name, department_id, email_address, last_updated) VALUES ('A', 'B', 1, 'a@b', now());
         INSERT INTO counterparty (counterparty_legal_name, legal_address_id, last_updated) VALUES ('C', 1, now());
         INSERT INTO design (design_name, file_location, file_name, last_updated) VALUES ('D', '/d', 'd.json', now());
         CREATE PUBLICATION totes_cdc FOR TABLE sales_order;",
    )
    .await
    .expect("setup");
    // Every slot starts at the same point, before the WAL is written.
    for slot in SLOTS {
        db.execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .expect("slot");
    }

    eprintln!("building the WAL: {INSERTS} inserts + {UPDATES} updates of sales_order in transactions of {ROWS_PER_TX} rows");
    let t = Instant::now();
    for start in (0..INSERTS).step_by(ROWS_PER_TX as usize) {
        db.batch_execute(&format!(
            "INSERT INTO sales_order (last_updated, design_id, staff_id, counterparty_id, units_sold, unit_price, currency_id, agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id) \
             SELECT now(), 1, 1, 1, 1000 + g % 99000, 2.00 + (g % 200) / 100.0, 1, '2025-01-01', '2025-01-05', 1 FROM generate_series({start}, {}) g",
            start + ROWS_PER_TX - 1
        ))
        .await
        .expect("insert");
    }
    for start in (1..=UPDATES).step_by(ROWS_PER_TX as usize) {
        db.batch_execute(&format!(
            "UPDATE sales_order SET units_sold = units_sold + 1, last_updated = now() WHERE sales_order_id BETWEEN {start} AND {}",
            start + ROWS_PER_TX - 1
        ))
        .await
        .expect("update");
    }
    let end: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("lsn")
        .get(0);
    eprintln!(
        "WAL built in {:.1}s, up to {end}",
        t.elapsed().as_secs_f64()
    );

    let mut report = String::new();
    for (i, (name, mode)) in [("plain", "disable"), ("TLS", "require")]
        .iter()
        .enumerate()
    {
        let url = format!(
            "postgres://postgres@localhost:{}/bench?sslmode={mode}",
            pg.port
        );
        let recv_secs = drain_recvlogical(&url, SLOTS[2 * i], &end);
        let (totes_secs, peak, cpu) = drain_totes(&url, SLOTS[2 * i + 1], &end);
        let recv_rate = events / recv_secs;
        let totes_rate = events / totes_secs;
        let ratio = totes_rate / recv_rate;
        let peak_mib = peak as f64 / 1024.0;
        report.push_str(&format!(
            "| {name}: pg_recvlogical (pgoutput → /dev/null) | {recv_rate:>9.0} events/s | {recv_secs:.2} s |\n\
             | {name}: totes-cdc stream --sink null          | {totes_rate:>9.0} events/s | {totes_secs:.2} s |\n\
             | {name}: ratio                                 | {ratio:.2} | |\n\
             | {name}: totes-cdc peak RSS                    | {peak_mib:.1} MiB | |\n\
             | {name}: totes-cdc CPU (user + system)         | {cpu:.2} s ({:.2} µs/event) | |\n",
            cpu * 1e6 / events
        ));
    }
    println!(
        "capture: {} events (1M inserts + 500k updates of sales_order)\n{report}",
        events as u64
    );
    if std::env::args().any(|a| a == "--write") {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_default();
        common::write_section(
            "capture",
            &format!(
                "## Capture: totes-cdc against pg_recvlogical\n\n\
                 Same WAL for all (1,000,000 inserts + 500,000 updates of `sales_order`, \
                 transactions of 1,000 rows), drained in the same run on the same machine ({cpu}, \
                 {} cores), over a plain connection (`sslmode=disable`) and over TLS \
                 (`sslmode=require`). Command: `make bench` \
                 (`cargo bench --bench capture -- --write`).\n\n\
                 | | throughput | wall time |\n|---|---|---|\n{report}",
                common::cores()
            ),
        );
    }
}

/// Slots: pg_recvlogical and totes-cdc, plain then TLS.
const SLOTS: [&str; 4] = [
    "bench_recvlogical",
    "bench_totes",
    "bench_recvlogical_tls",
    "bench_totes_tls",
];

/// The physical limit: pg_recvlogical decoding the WAL with pgoutput to /dev/null; seconds.
fn drain_recvlogical(url: &str, slot: &str, end: &str) -> f64 {
    let t = Instant::now();
    let status = Command::new(pg::pg_bin().join("pg_recvlogical"))
        .args([
            "-d",
            url,
            "--slot",
            slot,
            "--start",
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=totes_cdc",
            "--endpos",
            end,
            "--no-loop",
            "-f",
            "/dev/null",
        ])
        .status()
        .expect("pg_recvlogical");
    assert!(status.success(), "pg_recvlogical failed");
    t.elapsed().as_secs_f64()
}

/// totes-cdc draining the same WAL; (seconds, peak RSS in KiB, CPU seconds).
fn drain_totes(url: &str, slot: &str, end: &str) -> (f64, u64, f64) {
    let state = std::env::temp_dir().join(format!("totes-cdc-bench-{}-{slot}", std::process::id()));
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_totes-cdc"))
        .env("TOTES_CDC_METRICS_ADDR", "127.0.0.1:0")
        .args([
            "stream",
            "--sink",
            "null",
            "--source-url",
            url,
            "--slot",
            slot,
            "--snapshot",
            "never",
            "--heartbeat-interval",
            "0",
            "--until-lsn",
            end,
            "--state-dir",
            &state.to_string_lossy(),
            "--log",
            "warn",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("totes-cdc");
    let pid = child.id();
    let mut peak = 0;
    let mut cpu = 0.0f64;
    let status = loop {
        if let Some(kib) = common::rss_peak_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(c) = cpu_secs(pid) {
            cpu = cpu.max(c);
        }
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "totes-cdc failed");
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&state);
    (secs, peak, cpu)
}
