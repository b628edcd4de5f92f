//! The initial snapshot meets the stream exactly: rows written while the copy runs appear once
//! in the final state, and a crash during the copy redoes only the unfinished tables. Large
//! tables are copied in pieces of pages in parallel (`snapshot-chunk-pages`): each row once,
//! every position distinct, and a kill inside a piece loses and doubles nothing. SIGTERM inside
//! the copy stops it at once; the restart finishes it.

use crate::support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::compare::{assert_same, materialize, source_state};
use support::{PgCluster, Proc};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(120);

async fn make_tables(db: &Client, rows: i32) {
    db.batch_execute(&format!(
        "CREATE TABLE items (id serial PRIMARY KEY, v int NOT NULL, note text NOT NULL);
         CREATE TABLE parts (id serial PRIMARY KEY, item int NOT NULL, label text NOT NULL);
         CREATE TABLE tags (id serial PRIMARY KEY, name text NOT NULL);
         INSERT INTO items (v, note) SELECT g, repeat('x', 50) FROM generate_series(1, {rows}) g;
         INSERT INTO parts (item, label) SELECT g, 'part ' || g FROM generate_series(1, {rows}) g;
         INSERT INTO tags (name) SELECT 'tag ' || g FROM generate_series(1, {rows}) g;
         CREATE PUBLICATION totes_cdc FOR TABLE items, parts, tags;"
    ))
    .await
    .unwrap();
}

/// Inserts, updates and deletes in small transactions until `stop`.
fn spawn_writer(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut n: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            let i = (n % 5000) as i32 + 1;
            db.batch_execute(&format!(
                "BEGIN;
                 INSERT INTO items (v, note) VALUES ({n}, 'new');
                 UPDATE items SET v = v + 1000000 WHERE id = {i};
                 DELETE FROM parts WHERE id = {i} + 7;
                 UPDATE tags SET name = name || '!' WHERE id = {i} * 3;
                 COMMIT;"
            ))
            .await
            .unwrap();
            n += 1;
        }
        n
    })
}

fn args<'a>(url: &'a str, state: &'a str, parallelism: &'a str) -> Vec<&'a str> {
    vec![
        "stream",
        "--sink",
        "stdout",
        "--source-url",
        url,
        "--state-dir",
        state,
        "--snapshot-parallelism",
        parallelism,
    ]
}

async fn marker(db: &Client) -> i32 {
    let r = db
        .query_one(
            "INSERT INTO tags (name) VALUES ('marker') RETURNING id",
            &[],
        )
        .await
        .unwrap();
    r.get(0)
}

fn has_marker(events: &[Value], id: i32) -> bool {
    events
        .iter()
        .any(|e| e["source"]["table"] == "tags" && e["key"]["id"] == id)
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_written_during_the_snapshot_appear_exactly_once() {
    let pg = PgCluster::start();
    let db = pg.create_db("snap").await;
    make_tables(&db, 60_000).await;
    let url = pg.url("snap");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(url.clone(), stop.clone());
    // Let the writer get going so the slot is created in the middle of the traffic.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = support::temp_dir("snap").to_string_lossy().into_owned();
    // Tables of ~400-800 pages, in pieces of at least 50.
    let mut a = args(&url, &state, "2");
    a.extend(["--snapshot-chunk-pages", "50"]);
    let proc = Proc::spawn(&a, &[]);
    proc.wait_log("initial snapshot complete", WAIT);
    assert!(
        proc.stderr().contains("copied in pieces"),
        "{}",
        proc.stderr()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert!(written > 0);
    let m = marker(&db).await;
    proc.wait_events("the marker", WAIT, |e| has_marker(e, m));
    let events = proc.events();

    // Each row is read once by the snapshot.
    let mut reads: HashMap<(String, String), u32> = HashMap::new();
    for e in events.iter().filter(|e| e["op"] == "r") {
        *reads
            .entry((e["source"]["table"].to_string(), e["key"].to_string()))
            .or_default() += 1;
    }
    assert!(reads.values().all(|&n| n == 1), "a row was read twice");
    // No two rows of a table share a position, whichever piece read them.
    let mut positions = std::collections::HashSet::new();
    for e in events.iter().filter(|e| e["op"] == "r") {
        assert!(
            positions.insert((
                e["source"]["table"].to_string(),
                e["source"]["seq"].to_string()
            )),
            "two rows at one position: {e}"
        );
    }
    // Snapshot rows sort before every streamed change.
    let cp = events
        .iter()
        .find(|e| e["op"] == "r")
        .map(|e| e["source"]["lsn"].clone())
        .unwrap();
    for e in events.iter().filter(|e| e["op"] == "r") {
        assert_eq!(e["source"]["lsn"], cp);
        assert!(e["source"]["seq"].as_i64().unwrap() < 0);
    }
    assert_same(
        &materialize(&events),
        &source_state(&db, &["items", "parts", "tags"]).await,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_during_the_snapshot_redoes_only_unfinished_tables() {
    let pg = PgCluster::start();
    let db = pg.create_db("snapcrash").await;
    make_tables(&db, 150_000).await;
    let url = pg.url("snapcrash");
    let state = support::temp_dir("snapcrash")
        .to_string_lossy()
        .into_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(url.clone(), stop.clone());

    // One table at a time, so the crash lands between tables: the first is done, others not.
    let mut first = Proc::spawn(&args(&url, &state, "1"), &[]);
    first.wait_log("snapshot of table copied", WAIT);
    // Its acknowledgement is recorded right after; give the state file a moment, then crash.
    let state_file = std::path::Path::new(&state).join("totes_cdc.snapshot.json");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = std::fs::read_to_string(&state_file).unwrap_or_default();
        if s.contains("public.") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no table recorded as done"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill9();
    let recorded: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    assert_eq!(
        recorded["complete"], false,
        "crash landed after the snapshot"
    );
    let done: Vec<String> = recorded["done_tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert!(!done.is_empty());

    let second = Proc::spawn(&args(&url, &state, "1"), &[]);
    second.wait_log("initial snapshot complete", WAIT);
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let m = marker(&db).await;
    second.wait_events("the marker", WAIT, |e| has_marker(e, m));

    // The finished table was not copied again; the others were.
    let again = second.events();
    for t in &done {
        let table = t.trim_start_matches("public.");
        assert!(
            !again
                .iter()
                .any(|e| e["op"] == "r" && e["source"]["table"] == table),
            "{t} was copied again"
        );
    }
    assert!(again.iter().any(|e| e["op"] == "r"));
    // Nothing is missing: both runs together give the source's state.
    let mut all = first.events();
    all.extend(again);
    assert_same(
        &materialize(&all),
        &source_state(&db, &["items", "parts", "tags"]).await,
    );
}

/// A kill inside a piece of a split table: the restart copies the unfinished tables again (as
/// they were at the consistent point), and together the two runs give the source's state,
/// with no row read twice by one run.
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_inside_a_piece_of_a_split_table_loses_and_doubles_nothing() {
    let pg = PgCluster::start();
    let db = pg.create_db("snappiece").await;
    make_tables(&db, 100_000).await;
    let url = pg.url("snappiece");
    let state = support::temp_dir("snappiece")
        .to_string_lossy()
        .into_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(url.clone(), stop.clone());
    let mut a = args(&url, &state, "3");
    a.extend(["--snapshot-chunk-pages", "40"]);
    let mut first = Proc::spawn(&a, &[]);
    first.wait_log("copied in pieces", WAIT);
    // Somewhere inside the pieces: a third of the rows out.
    let deadline = std::time::Instant::now() + WAIT;
    while first.count() < 100_000 {
        assert!(std::time::Instant::now() < deadline, "{}", first.stderr());
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill9();
    let second = Proc::spawn(&a, &[]);
    second.wait_log("initial snapshot complete", WAIT);
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let m = marker(&db).await;
    second.wait_events("the marker", WAIT, |e| has_marker(e, m));
    for run in [first.events(), second.events()] {
        let mut reads: HashMap<(String, String), u32> = HashMap::new();
        for e in run.iter().filter(|e| e["op"] == "r") {
            *reads
                .entry((e["source"]["table"].to_string(), e["key"].to_string()))
                .or_default() += 1;
        }
        assert!(
            reads.values().all(|&n| n == 1),
            "a row was read twice in one run"
        );
    }
    let mut all = first.events();
    all.extend(second.events());
    assert_same(
        &materialize(&all),
        &source_state(&db, &["items", "parts", "tags"]).await,
    );
}

/// SIGTERM inside the copy of a split table (the process frozen at a snapshot row, then
/// terminated and resumed): the copy stops and the process exits cleanly without copying the
/// rest, as a pod's grace period needs; the restart copies the unfinished tables again, and
/// together the two runs give the source's state.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_inside_the_snapshot_stops_the_copy_and_the_restart_finishes_it() {
    let pg = PgCluster::start();
    let db = pg.create_db("snapterm").await;
    make_tables(&db, 100_000).await;
    let url = pg.url("snapterm");
    let state = support::temp_dir("snapterm").to_string_lossy().into_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(url.clone(), stop.clone());
    let mut a = args(&url, &state, "3");
    a.extend(["--snapshot-chunk-pages", "40"]);
    let mut first = Proc::spawn(&a, &[("TOTES_CDC_FAULT", "snapshot-row:30000:stop")]);
    first.wait_log("stopping at snapshot-row", WAIT);
    let pid = first.pid().to_string();
    for signal in ["-TERM", "-CONT"] {
        let sent = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    }
    let status = first.wait(WAIT);
    let log = first.stderr();
    assert!(status.success(), "{log}");
    assert!(log.contains("the initial snapshot stopped"), "{log}");
    assert!(!log.contains("initial snapshot complete"), "{log}");
    let reads = first.events().iter().filter(|e| e["op"] == "r").count();
    assert!(reads < 300_000, "the copy went on to the end: {reads} rows");

    let second = Proc::spawn(&a, &[]);
    second.wait_log("copying the unfinished tables again", WAIT);
    second.wait_log("initial snapshot complete", WAIT);
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let m = marker(&db).await;
    second.wait_events("the marker", WAIT, |e| has_marker(e, m));
    let mut all = first.events();
    all.extend(second.events());
    assert_same(
        &materialize(&all),
        &source_state(&db, &["items", "parts", "tags"]).await,
    );
}
