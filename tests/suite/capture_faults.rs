//! Faults: kill -9 and restart re-deliver everything after the confirmed LSN with the same
//! positions; a server restart is ridden out by the running process; a 1,000,000-row
//! transaction streams through a small channel without memory growing with it.

use crate::support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::compare::{assert_same, materialize, source_state};
use support::{totesys, PgCluster, Proc};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(120);

fn args<'a>(url: &'a str, state: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "stream",
        "--sink",
        "stdout",
        "--source-url",
        url,
        "--state-dir",
        state,
        "--heartbeat-interval",
        "1s",
    ];
    a.extend_from_slice(extra);
    a
}

fn lsn_value(s: &str) -> u64 {
    let Some((hi, lo)) = s.split_once('/') else {
        return 0;
    };
    (u64::from_str_radix(hi, 16).unwrap_or(0) << 32) | u64::from_str_radix(lo, 16).unwrap_or(0)
}

async fn confirmed_lsn(db: &Client) -> u64 {
    let r = db
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'totes_cdc'",
            &[],
        )
        .await
        .unwrap();
    lsn_value(r.get(0))
}

async fn marker(db: &Client) -> i32 {
    let r = db
        .query_one(
            "INSERT INTO design (design_name, file_location, file_name, last_updated) \
             VALUES ('marker', '/m', 'm.json', now()) RETURNING design_id",
            &[],
        )
        .await
        .unwrap();
    r.get(0)
}

fn has_marker(events: &[Value], id: i32) -> bool {
    events
        .iter()
        .any(|e| e["source"]["table"] == "design" && e["key"]["design_id"] == id)
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_and_restart_redelivers_everything_after_the_confirmed_lsn() {
    let pg = PgCluster::start();
    let db = pg.create_db("kill").await;
    totesys::create(&db).await;
    totesys::publish(&db).await;
    for n in 0..50 {
        totesys::sale(&db, n).await;
    }
    let url = pg.url("kill");
    let state = support::temp_dir("kill").to_string_lossy().into_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let workload = totesys::spawn_workload(url.clone(), stop.clone(), Duration::ZERO);

    let mut runs: Vec<Vec<Value>> = Vec::new();
    for round in 0..3 {
        let mut p = Proc::spawn(&args(&url, &state, &[]), &[]);
        p.wait_events("streamed changes", WAIT, |e| {
            e.iter().filter(|e| e["op"] == "c").count() > 20 + round * 5
        });
        p.kill9();
        let confirmed = confirmed_lsn(&db).await;
        let killed = p.events();
        // The next run must re-deliver every event at or after the confirmed position.
        let mut next = Proc::spawn(&args(&url, &state, &[]), &[]);
        let must: Vec<&Value> = killed
            .iter()
            .filter(|e| {
                e["op"] != "r" && lsn_value(e["source"]["lsn"].as_str().unwrap()) >= confirmed
            })
            .collect();
        next.wait_events("re-delivery", WAIT, |e| {
            must.iter().all(|m| e.iter().any(|x| x == *m))
        });
        next.kill9();
        runs.push(killed);
        runs.push(next.events());
    }
    let last = Proc::spawn(&args(&url, &state, &[]), &[]);
    stop.store(true, Ordering::Relaxed);
    workload.await.unwrap();
    let m = marker(&db).await;
    last.wait_events("the marker", WAIT, |e| has_marker(e, m));
    let mut all: Vec<Value> = runs.into_iter().flatten().collect();
    all.extend(last.events());
    // No position carries two different events.
    let mut by_pos: HashMap<(String, String, i64), &Value> = HashMap::new();
    for e in &all {
        let k = (
            e["source"]["table"].to_string(),
            e["source"]["lsn"].to_string(),
            e["source"]["seq"].as_i64().unwrap(),
        );
        if let Some(prev) = by_pos.insert(k, e) {
            if e["op"] != "r" {
                assert_eq!(prev, e, "one position, two events");
            }
        }
    }
    assert_same(
        &materialize(&all),
        &source_state(&db, &totesys::TABLES).await,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_restart_is_ridden_out() {
    let pg = PgCluster::start();
    let db = pg.create_db("restart").await;
    totesys::create(&db).await;
    totesys::publish(&db).await;
    let url = pg.url("restart");
    let state = support::temp_dir("restart").to_string_lossy().into_owned();
    let p = Proc::spawn(&args(&url, &state, &[]), &[]);
    p.wait_log("streaming changes", WAIT);
    for n in 0..10 {
        totesys::sale(&db, n).await;
    }
    p.wait_events("first changes", WAIT, |e| {
        e.iter()
            .filter(|e| e["source"]["table"] == "sales_order" && e["op"] == "c")
            .count()
            == 10
    });
    drop(db);
    pg.restart();
    let db = pg.connect("restart").await;
    for n in 10..20 {
        totesys::sale(&db, n).await;
    }
    let m = marker(&db).await;
    p.wait_events("changes after the restart", WAIT, |e| has_marker(e, m));
    assert!(p.stderr().contains("retrying"), "{}", p.stderr());
    assert_same(
        &materialize(&p.events()),
        &source_state(&db, &totesys::TABLES).await,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_million_row_transaction_streams_in_bounded_memory() {
    let pg = PgCluster::start_with(&[("logical_decoding_work_mem", "'64MB'")]);
    let db = pg.create_db("big").await;
    db.batch_execute(
        "CREATE TABLE wide (id bigint PRIMARY KEY, a text, b numeric(12,2), c timestamp);
         CREATE PUBLICATION totes_cdc FOR TABLE wide;",
    )
    .await
    .unwrap();
    let url = pg.url("big");
    let state = support::temp_dir("big").to_string_lossy().into_owned();
    let p = Proc::spawn_counting(&args(&url, &state, &["--channel-capacity", "64"]), &[]);
    p.wait_log("streaming changes", WAIT);
    let baseline = p.peak_rss_kib();
    db.batch_execute(
        "INSERT INTO wide SELECT g, repeat('x', 80) || g, g * 1.25, '2024-11-15 08:00:00'::timestamp + g * interval '1 second' \
         FROM generate_series(1, 1000000) g",
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while p.count() < 1_000_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of 1,000,000 events",
            p.count()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let peak = p.peak_rss_kib();
    // The transaction's JSON alone is ~170 MB: holding it (or its decoded rows) would show.
    assert!(
        peak < baseline + 64 * 1024,
        "peak RSS grew from {baseline} KiB to {peak} KiB while streaming one big transaction"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_source_still_moves_the_slot_forward() {
    let pg = PgCluster::start();
    let db = pg.create_db("idle").await;
    totesys::create(&db).await;
    totesys::publish(&db).await;
    let other = pg.create_db("elsewhere").await;
    other
        .batch_execute("CREATE TABLE noise (id serial PRIMARY KEY, pad text)")
        .await
        .unwrap();
    let url = pg.url("idle");
    let state = support::temp_dir("idle").to_string_lossy().into_owned();
    let p = Proc::spawn(&args(&url, &state, &[]), &[]);
    p.wait_log("streaming changes", WAIT);
    // Only another database writes: nothing for this slot to send.
    for _ in 0..5 {
        other
            .batch_execute(
                "INSERT INTO noise (pad) SELECT repeat('n', 500) FROM generate_series(1, 20000)",
            )
            .await
            .unwrap();
    }
    let written = {
        let r = other
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .unwrap();
        lsn_value(r.get(0))
    };
    let deadline = std::time::Instant::now() + WAIT;
    while confirmed_lsn(&db).await < written {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot stayed behind the WAL written elsewhere"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        p.events().iter().all(|e| e["source"]["xid"].is_null()),
        "nothing of this database changed after the snapshot"
    );
}
