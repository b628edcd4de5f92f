//! Apply benchmarks:
//! 1. apply alone — a captured totesys mix (order bundles and mark-paid updates) applied into
//!    staging and the star schema in batches of 10,000 events: events/s;
//! 2. end to end — `totes-cdc run` under a steady 1,000 source transactions/s (one sale bundle
//!    each): latency from the source commit returning to the sale being visible in
//!    fact_sales_order, p50/p99/max, and the process's peak RSS.
//!
//! `--write` records the results in BENCHMARKS.md. Run with `make bench`.

mod common;
// A benchmark uses part of the tests' support.
#[path = "../tests/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::PgCluster;
use totes_cdc::apply::batch::Batch;
use totes_cdc::apply::warehouse::{Model, Warehouse};
use totes_cdc::capture::stream::CaptureStats;
use totes_cdc::capture::{self, CaptureConfig, SnapshotMode};
use totes_cdc::channel::{self, ItemKind};
use totes_cdc::event::{ChangeEvent, Lsn};
use totes_cdc::pg::PgUrl;

const BUNDLES: i32 = 25_000;
const RATE: u64 = 1_000;
const LOAD_SECS: u64 = 30;

async fn capture_all(pg: &PgCluster, db: &str, until: Lsn) -> Vec<ChangeEvent> {
    let cfg = CaptureConfig {
        source: PgUrl::parse(&pg.url(db), "source-url").unwrap(),
        slot: "bench_apply".into(),
        publication: "totes_cdc".into(),
        tables: None,
        state_dir: support::temp_dir("bench-apply"),
        snapshot: SnapshotMode::Never,
        snapshot_parallelism: 1,
        snapshot_chunk_pages: 4096,
        heartbeat: None,
        status_interval: Duration::from_millis(200),
        buffer_events: 4096,
        drain_timeout: Duration::from_secs(10),
        until: Some(until),
        slot_max_retained_wal: 1 << 30,
    };
    let (tx, mut rx, acker) = channel::channel(4096, 1 << 30);
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(item) = rx.recv().await {
            if let ItemKind::Change(ev) = item.kind {
                events.push(ev);
            }
            acker.ack(item.seqno);
        }
        events
    });
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    capture::run(
        cfg,
        tx,
        shutdown,
        Arc::new(CaptureStats::default()),
        totes_cdc::metrics::server::Health::new(),
    )
    .await
    .expect("capture");
    collector.await.unwrap()
}

async fn apply_alone(pg: &PgCluster) -> String {
    let src = pg.create_db("mix").await;
    support::totesys::create(&src).await;
    support::totesys::publish(&src).await;
    src.batch_execute("SELECT pg_create_logical_replication_slot('bench_apply', 'pgoutput')")
        .await
        .unwrap();
    eprintln!("apply alone: writing {BUNDLES} order bundles and the mark-paid updates");
    for start in (0..BUNDLES).step_by(500) {
        let mut sql = String::from("BEGIN;");
        for n in start..start + 500 {
            let one = if n % 10 < 7 {
                support::totesys::sale_sql(n)
            } else {
                support::totesys::purchase_sql(n)
            };
            sql.push_str(&one.replace("BEGIN;", "").replace("COMMIT;", ""));
        }
        sql.push_str("COMMIT;");
        src.batch_execute(&sql).await.unwrap();
        src.batch_execute(&format!(
            "UPDATE payment SET paid = true, last_updated = now()::timestamp(3) WHERE payment_id % 4 = 0 AND payment_id > {start} AND NOT paid"
        ))
        .await
        .unwrap();
    }
    let until: String = src
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let events = capture_all(pg, "mix", Lsn::parse(&until).unwrap()).await;
    let n = events.len();
    pg.create_db("mix_wh").await;
    let source = PgUrl::parse(&pg.url("mix"), "source-url").unwrap();
    let tables = capture::describe_tables(&source, "totes_cdc", None)
        .await
        .unwrap();
    let mut wh = Warehouse::new(
        PgUrl::parse(&pg.url("mix_wh"), "warehouse-url").unwrap(),
        "public",
        Model::Totesys,
        "apply",
        "mix",
    );
    wh.setup(&tables).await.unwrap();
    let started = Instant::now();
    let mut batch_ms = Vec::new();
    for chunk in events.chunks(10_000) {
        let t = Instant::now();
        wh.apply(&Batch {
            events: chunk.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        batch_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let secs = started.elapsed().as_secs_f64();
    batch_ms.sort_by(|a, b| a.total_cmp(b));
    format!(
        "| apply alone: {n} events (sale/purchase bundles + mark-paid updates), batches of 10,000 | {:.0} events/s | batch p50 {:.0} ms, max {:.0} ms |\n",
        n as f64 / secs,
        common::percentile(&batch_ms, 0.5),
        batch_ms.last().copied().unwrap_or(0.0)
    )
}

async fn end_to_end(pg: &PgCluster) -> String {
    let src = pg.create_db("live").await;
    let wh = pg.create_db("live_wh").await;
    support::totesys::create(&src).await;
    support::totesys::publish(&src).await;
    let state = support::temp_dir("bench-e2e");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_totes-cdc"))
        .env("TOTES_CDC_METRICS_ADDR", "127.0.0.1:0")
        .args([
            "run",
            "--source-url",
            &pg.url("live"),
            "--warehouse-url",
            &pg.url("live_wh"),
            "--state-dir",
            &state.to_string_lossy(),
            "--lake",
            &state.join("lake").to_string_lossy(),
            "--log",
            "warn",
        ])
        .spawn()
        .expect("run");
    let pid = child.id();
    common::wait_streaming(&src, &wh).await;
    eprintln!("end to end: {RATE} transactions/s for {LOAD_SECS}s");
    let latency = common::sale_latency(
        &pg.url("live"),
        &wh,
        support::totesys::sale_sql,
        RATE,
        LOAD_SECS,
        4,
        pid,
    )
    .await;
    let lat = latency.ms;
    let _ = child.kill();
    let _ = child.wait();
    // Batches are lake files too: how many the run wrote.
    let files = std::process::Command::new("find")
        .arg(state.join("lake/changes"))
        .args(["-name", "*.parquet"])
        .output()
        .map(|o| o.stdout.iter().filter(|&&b| b == b'\n').count())
        .unwrap_or(0);
    format!(
        "| end to end at {RATE} tx/s ({} sale bundles, {} events, lake on local disk), commit → visible in fact_sales_order | p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms | run peak RSS {:.1} MiB, {files} changes files |\n",
        lat.len(),
        lat.len() * 3,
        common::percentile(&lat, 0.5),
        common::percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        latency.peak_rss_kib as f64 / 1024.0
    )
}

#[tokio::main]
async fn main() {
    let pg = PgCluster::start_with(&[("max_wal_size", "'4GB'"), ("checkpoint_timeout", "'30min'")]);
    // `TOTES_CDC_BENCH_ONLY=apply-alone` or `end-to-end`: one measurement only (for A/B runs).
    let only = std::env::var("TOTES_CDC_BENCH_ONLY").unwrap_or_default();
    let mut report = String::new();
    if only != "end-to-end" {
        report.push_str(&apply_alone(&pg).await);
    }
    if only != "apply-alone" {
        report.push_str(&end_to_end(&pg).await);
    }
    println!("{report}");
    if std::env::args().any(|a| a == "--write") {
        common::write_section(
            "apply",
            &format!(
                "## Apply: the warehouse path\n\n\
                 Source and warehouse are two databases of one PostgreSQL 15 server on the same \
                 machine as totes-cdc ({} cores). Command: `make bench` (`cargo bench --bench apply \
                 -- --write`). Latency is measured from the moment a probe row has streamed \
                 through (the initial snapshot applied); batches form as a group commit (taken when \
                 the applier is free, `batch-max-ms` = 1 s only an upper bound).\n\n| measurement | result | |\n|---|---|---|\n{report}",
                common::cores()
            ),
        );
    }
}
