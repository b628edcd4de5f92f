//! Kinesis benchmarks, against moto on the same machine:
//! 1. the ceiling: a plain PutRecords loop (the real SDK, 500 records of the envelope's size
//!    per request, as many records as the producer sends) at 1 and 4 requests in flight — what
//!    moto takes at most;
//! 2. the producer: `totes-cdc stream --sink kinesis` draining the same WAL (100,000 inserts of
//!    sales_order) at 1, 2, 4 and 8 requests in flight, with KPL aggregation on and off: events/s,
//!    MB/s, ratio to the ceiling, events per record, PUT payload units per 1,000 events, and the
//!    events per second one shard could carry at Kinesis' limits (1,000 records/s, 1 MiB/s).
//!    moto keeps every record in memory and slows down as it fills, so each measurement gets a
//!    fresh moto server: every one starts from the same state;
//! 3. end to end: stream + 2 consume replicas under a steady 1,000 source transactions/s (sale
//!    bundles): latency from the source commit to the sale visible in fact_sales_order, p50/p99.
//!
//! `--write` records the results in BENCHMARKS.md. Run with `make bench`.

mod common;
// A benchmark uses part of the tests' support.
#[path = "../tests/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::time::Instant;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use support::moto::Moto;
use support::PgCluster;

const ROWS: i64 = 100_000;
/// The mean size of the producer's records for these rows (the envelope of a sales_order
/// insert), so the ceiling moves the same bytes.
const RECORD_BYTES: usize = 920;
const RATE: u64 = 1_000;
const LOAD_SECS: u64 = 20;
const CONSUMERS: usize = 2;

/// Records/s and MB/s of a plain PutRecords loop.
async fn ceiling(concurrency: usize) -> (f64, f64) {
    let moto = Moto::start();
    let stream = format!("ceiling{concurrency}");
    moto.create_stream(&stream, 4).await;
    let k = moto.kinesis().await;
    let total = ROWS as usize;
    let started = Instant::now();
    let mut handles = Vec::new();
    for w in 0..concurrency {
        let k = k.clone();
        let stream = stream.clone();
        handles.push(tokio::spawn(async move {
            let mut sent = 0;
            let mut n = w * 1_000_000;
            while sent < total / concurrency {
                let entries: Vec<PutRecordsRequestEntry> = (0..500)
                    .map(|i| {
                        PutRecordsRequestEntry::builder()
                            .data(Blob::new(vec![b'x'; RECORD_BYTES]))
                            .partition_key(format!(
                                "public.sales_order/{{\"sales_order_id\":{}}}",
                                n + i
                            ))
                            .build()
                            .unwrap()
                    })
                    .collect();
                n += 500;
                k.put_records()
                    .stream_name(&stream)
                    .set_records(Some(entries))
                    .send()
                    .await
                    .unwrap();
                sent += 500;
            }
            sent
        }));
    }
    let mut records = 0;
    for h in handles {
        records += h.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = records as f64 / secs;
    (rate, rate * (RECORD_BYTES + 40) as f64 / 1e6)
}

/// What one producer run did.
struct Produced {
    events_per_sec: f64,
    mb_per_sec: f64,
    events: u64,
    records: u64,
    bytes: u64,
    payload_units: u64,
}

/// `stream --sink kinesis` draining the prepared WAL from `slot`.
async fn producer(
    pg: &PgCluster,
    slot: &str,
    concurrency: usize,
    aggregation: bool,
    until: &str,
) -> Produced {
    let moto = Moto::start();
    let stream = format!("producer{concurrency}");
    moto.create_stream(&stream, 4).await;
    let state = support::temp_dir("bench-kin");
    let env = moto.env();
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_totes-cdc"))
        .env("TOTES_CDC_METRICS_ADDR", "127.0.0.1:0")
        .args([
            "stream",
            "--sink",
            "kinesis",
            "--kinesis-stream",
            &stream,
            "--kinesis-concurrency",
            &concurrency.to_string(),
            "--kinesis-aggregation",
            if aggregation { "on" } else { "off" },
            "--source-url",
            &pg.url("bench"),
            "--slot",
            slot,
            "--snapshot",
            "never",
            "--heartbeat-interval",
            "0",
            "--until-lsn",
            until,
            "--state-dir",
            &state.to_string_lossy(),
            "--lake",
            "none",
            "--log",
            "info",
        ])
        .envs(env)
        .output()
        .expect("stream");
    let secs = started.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let field = |name: &str| -> u64 {
        err.lines()
            .find(|l| l.contains("kinesis producer done"))
            .and_then(|l| {
                l.split_whitespace()
                    .find(|w| w.starts_with(&format!("{name}=")))
            })
            .and_then(|w| w.split('=').nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let events = field("events");
    let bytes = field("bytes");
    Produced {
        events_per_sec: events as f64 / secs,
        mb_per_sec: bytes as f64 / secs / 1e6,
        events,
        records: field("records"),
        bytes,
        payload_units: field("payload_units"),
    }
}

async fn end_to_end(pg: &PgCluster) -> String {
    let moto = Moto::start();
    moto.create_stream("live", 4).await;
    let src = pg.create_db("live").await;
    let wh = pg.create_db("live_wh").await;
    support::totesys::create(&src).await;
    support::totesys::publish(&src).await;
    let envs = || moto.env();
    let state = support::temp_dir("bench-kin-e2e");
    let st = state.to_string_lossy().into_owned();
    let lake = format!("{st}/lake");
    let (ok, out, err) = support::run(
        &[
            "setup",
            "--source-url",
            &pg.url("live"),
            "--warehouse-url",
            &pg.url("live_wh"),
        ],
        &envs(),
    );
    assert!(ok.success(), "{out}{err}");
    let src_url = pg.url("live");
    let wh_url = pg.url("live_wh");
    let streamer = support::Proc::spawn(
        &[
            "stream",
            "--sink",
            "kinesis",
            "--kinesis-stream",
            "live",
            "--source-url",
            &src_url,
            "--state-dir",
            &st,
            "--lake",
            &lake,
            "--log",
            "warn",
        ],
        &envs(),
    );
    let consumers: Vec<support::Proc> = (0..CONSUMERS)
        .map(|_| {
            support::Proc::spawn(
                &[
                    "consume",
                    "--kinesis-stream",
                    "live",
                    "--warehouse-url",
                    &wh_url,
                    "--lake",
                    &lake,
                    "--poll-interval",
                    "50ms",
                    "--log",
                    "warn",
                ],
                &envs(),
            )
        })
        .collect();
    common::wait_streaming(&src, &wh).await;
    eprintln!("end to end through Kinesis: {RATE} transactions/s for {LOAD_SECS}s");
    let latency = common::sale_latency(
        &src_url,
        &wh,
        support::totesys::sale_sql,
        RATE,
        LOAD_SECS,
        4,
        consumers[0].pid(),
    )
    .await;
    let lat = latency.ms;
    drop(streamer);
    drop(consumers);
    format!(
        "| end to end at {RATE} tx/s through Kinesis (moto, 4 shards, {CONSUMERS} consumers; {} sales) | p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms |\n",
        lat.len(),
        common::percentile(&lat, 0.5),
        common::percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    )
}

#[tokio::main]
async fn main() {
    let pg = PgCluster::start_with(&[("max_wal_size", "'4GB'")]);
    let db = pg.create_db("bench").await;
    support::totesys::create(&db).await;
    db.batch_execute("CREATE PUBLICATION totes_cdc FOR TABLE sales_order")
        .await
        .unwrap();
    // (requests in flight, aggregation)
    let runs = [
        (1usize, false),
        (4, false),
        (1, true),
        (2, true),
        (4, true),
        (8, true),
    ];
    for (c, agg) in runs {
        db.execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&format!("kin{c}{agg}")],
        )
        .await
        .unwrap();
    }
    for start in (0..ROWS).step_by(1000) {
        db.batch_execute(&format!(
            "INSERT INTO sales_order (last_updated, design_id, staff_id, counterparty_id, units_sold, unit_price, currency_id, agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id) \
             SELECT now(), 1, 1, 1, 1000 + g % 99000, 2.50, 1, '2025-01-01', '2025-01-05', 1 FROM generate_series({start}, {}) g",
            start + 999
        ))
        .await
        .unwrap();
    }
    let until: String = db
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);

    let mut report = String::new();
    // `TOTES_CDC_BENCH_ONLY=end-to-end`: that measurement alone (for A/B runs).
    if std::env::var("TOTES_CDC_BENCH_ONLY").as_deref() != Ok("end-to-end") {
        let (c1, c1mb) = ceiling(1).await;
        let (c4, c4mb) = ceiling(4).await;
        report.push_str(&format!(
            "| moto ceiling: plain PutRecords loop, 500 × {RECORD_BYTES} B records per request, 1 in flight | {c1:.0} records/s, {c1mb:.1} MB/s | |\n\
             | moto ceiling, 4 in flight | {c4:.0} records/s, {c4mb:.1} MB/s | |\n"
        ));
        let best = c1.max(c4);
        for (c, agg) in runs {
            let p = producer(&pg, &format!("kin{c}{agg}"), c, agg, &until).await;
            assert_eq!(p.events, ROWS as u64, "every row published");
            let per_record = p.events as f64 / p.records.max(1) as f64;
            let bytes_per_event = p.bytes as f64 / p.events.max(1) as f64;
            // One shard takes 1,000 records/s and 1 MiB/s.
            let shard_limit = (1000.0 * per_record).min(1_048_576.0 / bytes_per_event);
            report.push_str(&format!(
                "| totes-cdc stream --sink kinesis, aggregation {}, {c} in flight ({} events in {} records) | {:.0} events/s, {:.1} MB/s | ratio {:.2} to the best ceiling; {per_record:.1} events/record, {:.1} PUT payload units per 1,000 events, one shard at Kinesis' limits: {shard_limit:.0} events/s |\n",
                if agg { "on" } else { "off" },
                p.events,
                p.records,
                p.events_per_sec,
                p.mb_per_sec,
                p.events_per_sec / best,
                p.payload_units as f64 * 1000.0 / p.events.max(1) as f64,
            ));
        }
    }
    report.push_str(&end_to_end(&pg).await);
    println!("{report}");
    if std::env::args().any(|a| a == "--write") {
        common::write_section(
            "kinesis",
            &format!(
                "## Kinesis: the streaming deployment, against moto\n\n\
                 moto (the AWS emulator, a Python server) runs on the same machine ({} cores); its \
                 own ceiling is measured in the same run with a plain PutRecords loop of the real \
                 SDK moving as many records of the same size. moto slows down as it fills, so each \
                 measurement gets a fresh moto server. Command: `make bench` (`cargo bench --bench kinesis -- --write`).\n\n\
                 | measurement | result | |\n|---|---|---|\n{report}",
                common::cores()
            ),
        );
    }
}
