//! Observability and slot safety: every role's `/metrics` scraped during a workload and parsed
//! by real Prometheus parsers, lag that rises while apply is held and falls after, `/readyz`
//! following the source, an idle slot kept bounded by heartbeats, and an invalidated slot
//! recovered by `resync`.

use crate::support;

use std::time::Duration;

use support::moto::Moto;
use support::scrape::{
    check_with_reference_parser, get, metrics_addr, scrape, wait_metrics, wait_ready,
};
use support::star::{assert_star, sync, wait_star};
use support::{consume_args, run_args, stream_kinesis_args, totesys, PgCluster, Proc};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(120);

async fn count(db: &Client, sql: &str) -> f64 {
    db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) as f64
}

#[tokio::test(flavor = "multi_thread")]
async fn run_metrics_follow_the_workload_and_lag_follows_apply() {
    // A small max_wal_size: a slot that holds a few segments leaves `reserved`.
    let pg = PgCluster::start_with(&[("max_wal_size", "32MB")]);
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    for n in 0..5 {
        totesys::sale(&src, n).await;
    }
    let state = support::temp_dir("metrics").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    let mut args = run_args(&src_url, &wh_url, &state, &lake);
    args.extend(["--slot-max-retained-wal", "8MiB"]);
    let p = Proc::spawn(&args, &[]);
    let addr = metrics_addr(&p);
    assert_eq!(get(&addr, "/healthz").0, 200);
    sync(&src, &wh, WAIT).await;
    wait_ready(&addr, 200, WAIT);

    // The snapshot, counted per table.
    let m = scrape(&addr);
    assert_eq!(
        m.sum(
            "totes_cdc_snapshot_rows_total",
            &[("table", "public.sales_order")]
        ),
        5.0
    );
    assert_eq!(
        m.sum(
            "totes_cdc_snapshot_rows_total",
            &[("table", "public.address")]
        ),
        count(&src, "SELECT count(*) FROM address").await
    );
    assert_eq!(m.sum("totes_cdc_snapshot_tables_remaining", &[]), 0.0);

    // A known workload: 10 sales, the mark-paid update, 2 deletes.
    for n in 5..15 {
        totesys::sale(&src, n).await;
    }
    let paid = src
        .execute("UPDATE payment SET paid = true WHERE payment_id <= 8", &[])
        .await
        .unwrap() as f64;
    src.batch_execute("DELETE FROM sales_order WHERE sales_order_id IN (1, 2)")
        .await
        .unwrap();
    sync(&src, &wh, WAIT).await;
    assert_star(&src, &wh).await;
    // 10 sales + 1 update + 1 delete + the sync writes.
    let m = wait_metrics(&addr, "the workload's counters", WAIT, |m| {
        m.sum(
            "totes_cdc_events_total",
            &[("table", "public.sales_order"), ("op", "d")],
        ) >= 2.0
            && m.sum("totes_cdc_transactions_total", &[]) >= 12.0
    });
    let ev = |t: &str, op: &str| {
        m.sum(
            "totes_cdc_events_total",
            &[("table", &format!("public.{t}")), ("op", op)],
        )
    };
    assert_eq!(ev("sales_order", "c"), 10.0);
    assert_eq!(ev("sales_order", "d"), 2.0);
    assert_eq!(ev("payment", "c"), 10.0);
    assert_eq!(ev("payment", "u"), paid);
    // The deletes set the sales order of their transactions to NULL: two updates.
    assert_eq!(ev("transaction", "u"), 2.0);
    // Apply: every event applied, in batches, with a lake file per table and batch.
    let applied_orders = m.sum(
        "totes_cdc_warehouse_rows_total",
        &[("table", "public.sales_order")],
    );
    assert!(
        applied_orders >= 5.0 + 10.0 + 2.0,
        "sales_order events applied: {applied_orders}"
    );
    assert!(m.sum("totes_cdc_batch_events_count", &[]) > 0.0);
    assert!(m.sum("totes_cdc_batch_events_sum", &[]) >= 5.0 + 30.0 + paid + 4.0);
    assert!(m.sum("totes_cdc_batch_apply_seconds_count", &[]) > 0.0);
    assert!(m.sum("totes_cdc_end_to_end_latency_seconds_count", &[]) > 0.0);
    assert!(m.sum("totes_cdc_lake_files_total", &[]) > 0.0);
    assert!(m.sum("totes_cdc_lake_bytes_total", &[]) > 0.0);
    assert!(m.sum("totes_cdc_applied_position_lsn", &[]) > 0.0);
    assert!(m.sum("totes_cdc_confirmed_lsn", &[]) > 0.0);
    assert!(m.sum("totes_cdc_received_lsn", &[]) >= m.sum("totes_cdc_confirmed_lsn", &[]));
    assert_eq!(m.sum("totes_cdc_dead_letters_total", &[]), 0.0);
    // The slot, as the source reports it.
    assert_eq!(m.sum("totes_cdc_slot_active", &[]), 1.0);
    assert_eq!(
        m.sum("totes_cdc_slot_wal_status", &[("status", "reserved")]),
        1.0
    );
    assert_eq!(m.sum("totes_cdc_slot_wal_status", &[]), 1.0);
    assert!(m.sum("totes_cdc_slot_retained_wal_bytes", &[]) > 0.0);
    // The process.
    let build = m.series("totes_cdc_build_info");
    assert_eq!(build.len(), 1);
    assert_eq!(build[0].0["version"], env!("CARGO_PKG_VERSION"));
    assert_ne!(build[0].0["git_sha"], "unknown");
    assert!(m.sum("totes_cdc_resident_memory_bytes", &[]) > 1e6);
    assert!(m.sum("totes_cdc_open_connections", &[]) >= 3.0);
    // The byte budget in use is sampled (at most the default channel-max-bytes, 64 MiB).
    assert_eq!(m.series("totes_cdc_channel_bytes").len(), 1);
    assert!(m.sum("totes_cdc_channel_bytes", &[]) <= 64.0 * 1024.0 * 1024.0);
    check_with_reference_parser(&m.text);

    // Hold apply: a lock on a staging table blocks the next batch's merge.
    let (holder, conn) = tokio_postgres::connect(&wh_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    holder
        .batch_execute("BEGIN; LOCK TABLE staging.sales_order IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let lsn = |sql: &'static str| {
        let src = &src;
        async move { src.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    // Nothing written from here on can be confirmed while apply is held.
    let before = lsn("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint").await;
    for n in 15..18 {
        totesys::sale(&src, n).await;
    }
    let after = lsn("SELECT (pg_current_wal_lsn() - '0/0')::bigint").await;
    let first = wait_metrics(&addr, "lag while apply is held", WAIT, |m| {
        m.sum("totes_cdc_replication_lag_seconds", &[]) > 0.0
            && m.sum("totes_cdc_replication_lag_bytes", &[]) > 0.0
    });
    let lag0 = first.sum("totes_cdc_replication_lag_seconds", &[]);
    // It keeps rising while nothing can be applied.
    let later = wait_metrics(&addr, "the lag to rise", WAIT, |m| {
        m.sum("totes_cdc_replication_lag_seconds", &[]) > lag0 + 1.0
    });
    // At least the held transactions' WAL (an acknowledgement of an earlier batch may still
    // land meanwhile, so the bytes need not grow from one scrape to the next).
    assert!(
        later.sum("totes_cdc_replication_lag_bytes", &[]) >= (after - before) as f64,
        "lag bytes {} < the held WAL {}",
        later.sum("totes_cdc_replication_lag_bytes", &[]),
        after - before
    );
    let (code, body) = get(&addr, "/readyz");
    assert_eq!(code, 200, "held apply is slow, not down: {body}");
    assert!(!body.contains("warning"), "{body}");

    // Nothing can be confirmed, so the slot pins the WAL written meanwhile: past the
    // configured threshold and past max_wal_size, both reported (and still ready).
    src.batch_execute("CREATE TABLE junk (x text)")
        .await
        .unwrap();
    // max_wal_size is two segments; the slot must hold more than three to be `extended`.
    for _ in 0..5 {
        src.batch_execute("INSERT INTO junk VALUES ('x'); SELECT pg_switch_wal()")
            .await
            .unwrap();
    }
    let pinned = wait_metrics(&addr, "the slot to leave reserved", WAIT, |m| {
        m.sum("totes_cdc_slot_wal_status", &[("status", "extended")]) == 1.0
    });
    assert!(pinned.sum("totes_cdc_slot_retained_wal_bytes", &[]) > 48.0 * 1024.0 * 1024.0);
    let body = wait_ready(&addr, 200, WAIT);
    assert!(body.contains("warning slot_retained_wal"), "{body}");
    assert!(body.contains("warning slot_wal_status"), "{body}");
    p.wait_log("retains", WAIT);
    p.wait_log("wal_status extended", WAIT);

    holder.batch_execute("ROLLBACK").await.unwrap();
    // Released: the backlog is applied and the lag falls back to about zero.
    let caught_up = wait_metrics(&addr, "the lag to fall", WAIT, |m| {
        m.sum("totes_cdc_replication_lag_seconds", &[]) == 0.0
            && m.sum("totes_cdc_replication_lag_bytes", &[]) < 64.0 * 1024.0
    });
    assert_eq!(
        caught_up.sum(
            "totes_cdc_events_total",
            &[("table", "public.sales_order"), ("op", "c")]
        ),
        13.0
    );
    sync(&src, &wh, WAIT).await;
    assert_star(&src, &wh).await;
    // Confirmed again, the slot lets go of the WAL at the next checkpoints and the warnings clear.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        src.batch_execute("CHECKPOINT").await.unwrap();
        let (_, body) = get(&addr, "/readyz");
        let m = scrape(&addr);
        if !body.contains("warning")
            && m.sum("totes_cdc_slot_wal_status", &[("status", "reserved")]) == 1.0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot warnings stayed: {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_not_ready_while_the_source_is_down() {
    let src_pg = PgCluster::start();
    let wh_pg = PgCluster::start();
    let src = src_pg.create_db("src").await;
    let wh = wh_pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    totesys::sale(&src, 1).await;
    let state = support::temp_dir("readyz").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let (src_url, wh_url) = (src_pg.url("src"), wh_pg.url("wh"));
    let p = Proc::spawn(&run_args(&src_url, &wh_url, &state, &lake), &[]);
    let addr = metrics_addr(&p);
    sync(&src, &wh, WAIT).await;
    let body = wait_ready(&addr, 200, WAIT);
    assert!(body.contains("replication: ok"), "{body}");
    assert!(body.contains("warehouse: ok"), "{body}");
    // A thousand idle connections to the endpoint do not starve the probes.
    let idle: Vec<std::net::TcpStream> = (0..1000)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    assert_eq!(get(&addr, "/healthz").0, 200);
    assert_eq!(get(&addr, "/readyz").0, 200);
    drop(idle);
    drop(src);

    src_pg.stop();
    let body = wait_ready(&addr, 503, WAIT);
    assert!(body.contains("NOT READY"), "{body}");
    // Alive all the same: a restart would not help.
    assert_eq!(get(&addr, "/healthz").0, 200);

    src_pg.start_again();
    wait_ready(&addr, 200, WAIT);
    let m = scrape(&addr);
    assert!(m.sum("totes_cdc_reconnects_total", &[]) >= 1.0);
    // And it goes on capturing.
    let src = src_pg.connect("src").await;
    totesys::sale(&src, 2).await;
    sync(&src, &wh, WAIT).await;
    assert_star(&src, &wh).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_keep_the_slot_of_an_idle_database_bounded() {
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let busy = pg.create_db("busy").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    let url = pg.url("src");
    let state = support::temp_dir("idle").to_string_lossy().into_owned();
    let p = Proc::spawn(
        &[
            "stream",
            "--sink",
            "null",
            "--source-url",
            &url,
            "--state-dir",
            &state,
            "--heartbeat-interval",
            "1s",
        ],
        &[],
    );
    let addr = metrics_addr(&p);
    p.wait_log("streaming changes", WAIT);
    wait_ready(&addr, 200, WAIT);

    // Only the other database is written to: 6 WAL segments' worth.
    busy.batch_execute("CREATE TABLE junk (x text)")
        .await
        .unwrap();
    let start: i64 = count_lsn(&busy).await;
    for _ in 0..6 {
        busy.batch_execute(
            "INSERT INTO junk SELECT repeat('x', 100) FROM generate_series(1, 1000); SELECT pg_switch_wal()",
        )
        .await
        .unwrap();
    }
    let written = (count_lsn(&busy).await - start) as f64;
    assert!(written >= 64.0 * 1024.0 * 1024.0, "{written}");
    // The slot moves on with the heartbeats' transactions in the captured database (and the
    // server's keepalives, confirmed when nothing of ours is in flight); checkpoints let the
    // server advance its restart point. It keeps a small part of what was written.
    let deadline = std::time::Instant::now() + WAIT;
    let m = loop {
        busy.batch_execute("CHECKPOINT").await.unwrap();
        let m = scrape(&addr);
        let retained = m.sum("totes_cdc_slot_retained_wal_bytes", &[]);
        if m.sum("totes_cdc_confirmed_lsn", &[]) as i64 > start + written as i64
            && retained > 0.0
            && retained < written / 3.0
        {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retained WAL stayed at {retained} of {written} written; last scrape:\n{}",
            m.text
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(m.sum("totes_cdc_heartbeats_total", &[]) >= 1.0);
    assert_eq!(m.sum("totes_cdc_events_total", &[]), 0.0);
    check_with_reference_parser(&m.text);
}

async fn count_lsn(db: &Client) -> i64 {
    db.query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalidated_slot_stops_with_the_fix_and_resync_recovers() {
    let pg = PgCluster::start_with(&[("max_slot_wal_keep_size", "32MB")]);
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    for n in 0..10 {
        totesys::sale(&src, n).await;
        totesys::purchase(&src, n).await;
    }
    let state = support::temp_dir("lost").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    let args = run_args(&src_url, &wh_url, &state, &lake);
    let mut p = Proc::spawn(&args, &[]);
    sync(&src, &wh, WAIT).await;
    assert!(p.terminate(WAIT).success());

    // While the pipeline is stopped: changes it will never see through the slot, then more
    // WAL than max_slot_wal_keep_size, and a checkpoint that invalidates the slot.
    src.batch_execute(
        "DELETE FROM sales_order WHERE sales_order_id IN (1, 2);
         DELETE FROM payment WHERE payment_id = 3;
         UPDATE staff SET email_address = 'lost.update@terrifictotes.com' WHERE staff_id = 4;
         UPDATE payment SET paid = true WHERE payment_id > 10;",
    )
    .await
    .unwrap();
    totesys::sale(&src, 100).await;
    src.batch_execute("CREATE TABLE junk (x text)")
        .await
        .unwrap();
    for _ in 0..4 {
        src.batch_execute(
            "INSERT INTO junk SELECT repeat('x', 100) FROM generate_series(1, 1000); SELECT pg_switch_wal()",
        )
        .await
        .unwrap();
    }
    src.batch_execute("CHECKPOINT").await.unwrap();
    let status: Option<String> = src
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'totes_cdc'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status.as_deref(), Some("lost"));

    // The next start stops with the documented message.
    let (status, _, err) = support::run(&args, &[]);
    assert!(!status.success());
    assert!(err.contains("invalidated"), "{err}");
    assert!(err.contains("totes-cdc resync"), "{err}");

    // resync drops the slot and the snapshot record; run copies everything again.
    let resync = ["resync", "--source-url", &src_url, "--state-dir", &state];
    let (status, out, err) = support::run(&resync, &[]);
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("dropped slot totes_cdc"), "{out}");
    // The copy crashes after its first batch (truncates and a few rows) is committed; the
    // restart redoes it, and the redo's rows are not taken for older than those truncates.
    let mut small = args.clone();
    small.extend(["--batch-max-events", "5"]);
    let (status, _, err) = support::run(&small, &[("TOTES_CDC_FAULT", "after-commit:1")]);
    assert!(!status.success());
    assert!(err.contains("fault injection"), "{err}");
    let _p = Proc::spawn(&args, &[]);
    sync(&src, &wh, WAIT).await;
    assert_star(&src, &wh).await;
    // Staging mirrors the source row for row (no row left retired by a truncate).
    let verify = [
        "verify",
        "--source-url",
        &src_url,
        "--warehouse-url",
        &wh_url,
    ];
    let (status, out, err) = support::run(&verify, &[]);
    assert!(status.success(), "{out}{err}");
    // The rows deleted while the slot was lost are gone from the warehouse too.
    let gone = count(
        &wh,
        "SELECT count(*) FROM staging.sales_order WHERE sales_order_id IN (1, 2) AND NOT _deleted",
    )
    .await;
    assert_eq!(gone, 0.0);
    let current = count(
        &wh,
        "SELECT count(*) FROM fact_sales_order WHERE sales_order_id IN (1, 2) AND is_current",
    )
    .await;
    assert_eq!(current, 0.0);
    // Idempotent: a second resync while nothing runs just re-copies (once the server has seen
    // the killed process's replication connection go).
    drop(_p);
    for _ in 0..300 {
        let active = count(
            &src,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'totes_cdc' AND active",
        )
        .await;
        if active == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, out, err) = support::run(&resync, &[]);
    assert!(status.success(), "{out}{err}");
    let _p = Proc::spawn(&args, &[]);
    sync(&src, &wh, WAIT).await;
    assert_star(&src, &wh).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_and_consume_serve_their_own_metrics() {
    let moto = Moto::start();
    moto.create_stream("obs", 2).await;
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    let e = moto.env();
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    let (ok, out, err) = support::run(
        &[
            "setup",
            "--source-url",
            &src_url,
            "--warehouse-url",
            &wh_url,
        ],
        &e,
    );
    assert!(ok.success(), "{out}{err}");
    let state = support::temp_dir("obs").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let streamer = Proc::spawn(&stream_kinesis_args("obs", &src_url, &state, &lake), &e);
    let consumer = Proc::spawn(&consume_args("obs", &wh_url, &lake), &e);
    let (s_addr, c_addr) = (metrics_addr(&streamer), metrics_addr(&consumer));
    streamer.wait_log("streaming changes", WAIT);
    for n in 0..10 {
        totesys::sale(&src, n).await;
    }
    src.batch_execute("UPDATE payment SET paid = true WHERE payment_id <= 4")
        .await
        .unwrap();
    wait_star(&src, &wh, WAIT).await;

    // The producer: every captured event acknowledged by Kinesis, nothing in flight.
    let all = moto.read_all("obs");
    let events = all.len() as f64;
    // Kinesis records: several events each when aggregated.
    let records = all
        .iter()
        .map(|r| (r["shard"].to_string(), r["seq"].to_string()))
        .collect::<std::collections::BTreeSet<_>>()
        .len() as f64;
    // What the slot streamed (the snapshot's records have no transaction id).
    let streamed = all
        .iter()
        .filter(|r| !r["data"]["source"]["xid"].is_null())
        .count() as f64;
    let s = wait_metrics(&s_addr, "the producer's counters", WAIT, |m| {
        m.sum("totes_cdc_kinesis_events_total", &[]) >= events
    });
    assert_eq!(s.sum("totes_cdc_kinesis_events_total", &[]), events);
    assert_eq!(s.sum("totes_cdc_kinesis_records_total", &[]), records);
    assert!(
        records < events,
        "events share records ({records} for {events})"
    );
    assert_eq!(
        s.sum("totes_cdc_events_total", &[]),
        streamed,
        "every streamed event is published"
    );
    assert!(s.sum("totes_cdc_kinesis_bytes_total", &[]) > events * 100.0);
    assert!(s.sum("totes_cdc_kinesis_put_seconds_count", &[]) >= 1.0);
    assert_eq!(s.sum("totes_cdc_kinesis_inflight_requests", &[]), 0.0);
    assert_eq!(s.sum("totes_cdc_kinesis_failed_records_total", &[]), 0.0);
    assert_eq!(s.sum("totes_cdc_slot_active", &[]), 1.0);
    // The producer has no warehouse.
    assert!(!s.has("totes_cdc_warehouse_rows_total"));
    check_with_reference_parser(&s.text);
    let body = wait_ready(&s_addr, 200, WAIT);
    assert!(body.contains("kinesis: ok"), "{body}");

    // The consumer: both shards owned, each one's distance to the tip, every record applied.
    let c = wait_metrics(&c_addr, "the consumer's counters", WAIT, |m| {
        m.sum("totes_cdc_warehouse_rows_total", &[]) >= events
    });
    assert_eq!(c.sum("totes_cdc_warehouse_rows_total", &[]), events);
    assert_eq!(c.sum("totes_cdc_shards_owned", &[]), 2.0);
    assert!(c.sum("totes_cdc_lease_changes_total", &[]) >= 2.0);
    assert_eq!(c.series("totes_cdc_kinesis_millis_behind_latest").len(), 2);
    assert!(c.sum("totes_cdc_end_to_end_latency_seconds_count", &[]) > 0.0);
    assert!(c.sum("totes_cdc_lake_files_total", &[]) > 0.0);
    // The consumer does not capture.
    assert!(!c.has("totes_cdc_events_total"));
    check_with_reference_parser(&c.text);
    let body = wait_ready(&c_addr, 200, WAIT);
    assert!(body.contains("warehouse: ok"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_invalidated_while_running_stops_the_pipeline_with_the_fix() {
    let pg = PgCluster::start_with(&[("max_slot_wal_keep_size", "32MB")]);
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    let state = support::temp_dir("lostrun").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    let mut p = Proc::spawn(&run_args(&src_url, &wh_url, &state, &lake), &[]);
    let addr = metrics_addr(&p);
    sync(&src, &wh, WAIT).await;

    // Apply held, so nothing is confirmed while the source writes past max_slot_wal_keep_size.
    let (holder, conn) = tokio_postgres::connect(&wh_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    holder
        .batch_execute("BEGIN; LOCK TABLE staging.sales_order IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    totesys::sale(&src, 1).await;
    wait_metrics(&addr, "the sale to wait", WAIT, |m| {
        m.sum("totes_cdc_replication_lag_seconds", &[]) > 0.0
    });
    src.batch_execute("CREATE TABLE junk (x text)")
        .await
        .unwrap();
    for _ in 0..4 {
        src.batch_execute("INSERT INTO junk VALUES ('x'); SELECT pg_switch_wal()")
            .await
            .unwrap();
    }
    src.batch_execute("CHECKPOINT").await.unwrap();
    holder.batch_execute("ROLLBACK").await.unwrap();

    // The server ends the session that held the slot; the pipeline stops with the recovery.
    let status = p.wait(WAIT);
    assert!(!status.success());
    let err = p.stderr();
    let last = support::error_report(&err);
    assert!(last.contains("has been invalidated"), "{err}");
    assert!(last.contains("totes-cdc resync"), "{err}");
}
