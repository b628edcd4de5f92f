//! The source changes shape while the pipeline runs, under the workload, with a SIGKILL of
//! the capturing process right after each change, in both modes (`run`, and `stream` into
//! Kinesis with two consumers over two shards): a column added (later one with a default), a
//! column widened (int to bigint, with values past 2^31; a longer varchar), a column dropped,
//! then a type change the mirror cannot follow, which stops with its message and exit 1 and
//! catches up after the documented fix. Afterwards `verify` passes, the star schema is the
//! transform of the source with every fact version of an independent capture, and the lake,
//! read by DuckDB with `union_by_name`, holds every change once, the new values included.

use crate::support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::moto::Moto;
use support::star::{self, wait_star};
use support::{consume_args, run_args, stream_kinesis_args, totesys, PgCluster, Proc};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(180);
const PACE: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Run,
    Stream,
}

/// The pipeline of a mode: the capturing process and, streaming, two consumers.
struct Pipeline {
    capture_args: Vec<String>,
    consumer_args: Vec<Vec<String>>,
    envs: Vec<(String, String)>,
    capture: Proc,
    consumers: Vec<Proc>,
}

fn spawn(args: &[String], envs: &[(String, String)]) -> Proc {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let e: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Proc::spawn(&a, &e)
}

impl Pipeline {
    fn start(mode: Mode, src: &str, wh: &str, state: &str, moto: Option<&Moto>) -> Self {
        let lake = format!("{state}/lake");
        let envs: Vec<(String, String)> = moto
            .map(|m| {
                m.env()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let owned = |v: Vec<&str>| v.into_iter().map(String::from).collect::<Vec<_>>();
        let (capture_args, consumer_args) = match mode {
            Mode::Run => {
                let mut a = owned(run_args(src, wh, state, &lake));
                a.extend(["--heartbeat-interval".into(), "1s".into()]);
                (a, Vec::new())
            }
            Mode::Stream => {
                let e: Vec<(&str, &str)> =
                    envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                support::setup(src, wh, &e);
                let consumers = ["a", "b"]
                    .iter()
                    .map(|id| {
                        let mut a = owned(consume_args("schema", wh, &lake));
                        a.extend(["--consumer-id", id, "--lease-timeout", "3s"].map(String::from));
                        a
                    })
                    .collect();
                (
                    owned(stream_kinesis_args("schema", src, state, &lake)),
                    consumers,
                )
            }
        };
        let capture = spawn(&capture_args, &envs);
        capture.wait_log("streaming changes", WAIT);
        let consumers = consumer_args.iter().map(|a| spawn(a, &envs)).collect();
        Pipeline {
            capture_args,
            consumer_args,
            envs,
            capture,
            consumers,
        }
    }

    /// SIGKILL the capturing process (`run` or `stream`) and start it again.
    fn kill_capture(&mut self) {
        self.capture.kill9();
        self.capture = spawn(&self.capture_args, &self.envs);
    }

    /// Waits for the process that applies to stop on its own; its stderr.
    fn refused(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.consumer_args.is_empty() {
                let status = self.capture.wait(WAIT);
                assert_eq!(status.code(), Some(1), "{}", self.capture.stderr());
                return self.capture.stderr();
            }
            for c in &mut self.consumers {
                if let Some(status) = c.exited() {
                    assert_eq!(status.code(), Some(1), "{}", c.stderr());
                    return c.stderr();
                }
            }
            assert!(Instant::now() < deadline, "no consumer stopped");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts what applies again (after a fix).
    fn restart_apply(&mut self) {
        if self.consumer_args.is_empty() {
            self.capture = spawn(&self.capture_args, &self.envs);
        } else {
            for (c, args) in self.consumers.iter_mut().zip(&self.consumer_args) {
                c.kill9();
                *c = spawn(args, &self.envs);
            }
        }
    }
}

async fn one(c: &Client, sql: &str) -> Option<String> {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// Runs `verify` until it passes; its output.
fn verify_passes(src: &str, wh: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, out, err) =
            support::run(&["verify", "--source-url", src, "--warehouse-url", wh], &[]);
        if status.success() {
            assert!(out.contains("no differences"), "{out}");
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "verify never passed:\n{out}{err}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn lake_rows(lake: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let v = support::python_json("lake_query.py", &[lake, sql], "DuckDB over the lake");
    serde_json::from_value(v).expect("rows")
}

/// A pipeline of a mode over a totesys source under the workload, beside an independent
/// capture (the oracle).
struct Scenario {
    moto: Option<Moto>,
    _pg: PgCluster,
    src: Client,
    wh: Client,
    src_url: String,
    wh_url: String,
    lake: String,
    oracle: Proc,
    p: Pipeline,
    stop: Arc<AtomicBool>,
    workload: tokio::task::JoinHandle<u32>,
}

impl Scenario {
    async fn start(mode: Mode, name: &str) -> Self {
        let moto = (mode == Mode::Stream).then(Moto::start);
        if let Some(m) = &moto {
            m.create_stream("schema", 2).await;
        }
        let pg = PgCluster::start();
        let src = pg.create_db("src").await;
        let wh = pg.create_db("wh").await;
        totesys::create(&src).await;
        totesys::publish(&src).await;
        let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
        let state = support::temp_dir(name).to_string_lossy().into_owned();
        let oracle = support::spawn_oracle(&src_url, &format!("{state}/oracle"));
        let p = Pipeline::start(mode, &src_url, &wh_url, &state, moto.as_ref());
        let stop = Arc::new(AtomicBool::new(false));
        let workload = totesys::spawn_workload(src_url.clone(), stop.clone(), PACE);
        Scenario {
            moto,
            _pg: pg,
            src,
            wh,
            src_url,
            wh_url,
            lake: format!("{state}/lake"),
            oracle,
            p,
            stop,
            workload,
        }
    }
}

/// Every fact version the oracle saw is in the warehouse once, nothing else is, and nothing
/// became a dead letter.
async fn assert_fact_history(oracle: &Proc, src: &Client, wh: &Client) {
    support::wait_oracle_caught_up(oracle, src, WAIT).await;
    let expected = star::oracle_versions(&oracle.events());
    support::assert_same_sets("fact versions", &expected, &star::fact_versions(wh).await);
    let dead: i64 = wh
        .query_one("SELECT count(*) FROM totes_cdc.dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0, "no dead letters (a shape change is never one)");
}

async fn shape_changes_are_followed(mode: Mode) {
    let Scenario {
        moto,
        _pg,
        src,
        wh,
        src_url,
        wh_url,
        lake,
        oracle,
        mut p,
        stop,
        workload,
    } = Scenario::start(mode, "shapes").await;
    let pause = || std::thread::sleep(Duration::from_millis(1500));
    let steps = [
        // A new column, written at once.
        "ALTER TABLE counterparty ADD COLUMN loyalty_points integer;
         UPDATE counterparty SET loyalty_points = counterparty_id * 10 WHERE counterparty_id <= 10",
        // Widened: past 2^31 from now on; a longer varchar the star reads.
        "ALTER TABLE counterparty ALTER COLUMN loyalty_points TYPE bigint;
         ALTER TABLE currency ALTER COLUMN currency_code TYPE varchar(5);
         UPDATE currency SET last_updated = now() WHERE currency_id = 1;
         UPDATE counterparty SET loyalty_points = 3000000000 + counterparty_id WHERE counterparty_id <= 5",
        // Dropped: the mirror keeps it, newer versions hold NULL.
        "ALTER TABLE counterparty DROP COLUMN delivery_contact;
         UPDATE counterparty SET commercial_contact = 'Contact 2' WHERE counterparty_id = 2",
        // Added with a default PostgreSQL keeps out of the existing rows; one row rewritten.
        "ALTER TABLE design ADD COLUMN colour text NOT NULL DEFAULT 'blue';
         UPDATE design SET colour = 'red' WHERE design_id = 1",
    ];
    for sql in steps {
        pause();
        src.batch_execute(sql).await.unwrap();
        p.kill_capture();
    }
    pause();
    // A change the mirror cannot follow: stopped, named, nothing acknowledged past it.
    src.batch_execute(
        "ALTER TABLE counterparty ALTER COLUMN loyalty_points TYPE text USING loyalty_points::text;
         UPDATE counterparty SET loyalty_points = 'gold' WHERE counterparty_id = 4",
    )
    .await
    .unwrap();
    let stderr = p.refused();
    let report = support::error_report(&stderr);
    for needle in [
        "public.counterparty",
        "loyalty_points",
        "from bigint to text",
        "ALTER TABLE staging.counterparty ALTER COLUMN loyalty_points TYPE text",
    ] {
        assert!(report.contains(needle), "{needle} not in: {report}");
    }
    // The documented fix, then a restart catches up.
    wh.batch_execute(
        "ALTER TABLE staging.counterparty ALTER COLUMN loyalty_points TYPE text USING loyalty_points::text",
    )
    .await
    .unwrap();
    p.restart_apply();
    pause();
    stop.store(true, Ordering::Relaxed);
    assert!(workload.await.unwrap() > 50);

    wait_star(&src, &wh, WAIT).await;
    let out = verify_passes(&src_url, &wh_url);
    assert!(
        out.contains("column colour's added default blue"),
        "verify explains the added default: {out}"
    );
    assert_fact_history(&oracle, &src, &wh).await;

    // The mirror followed: values past 2^31 and the new column in staging, the dropped column
    // kept with NULL in the versions after the drop.
    assert_eq!(
        one(
            &wh,
            "SELECT loyalty_points FROM staging.counterparty WHERE counterparty_id = 1"
        )
        .await
        .as_deref(),
        Some("3000000001")
    );
    assert_eq!(
        one(
            &wh,
            "SELECT loyalty_points FROM staging.counterparty WHERE counterparty_id = 4"
        )
        .await
        .as_deref(),
        Some("gold")
    );
    assert_eq!(
        one(
            &wh,
            "SELECT delivery_contact FROM staging.counterparty WHERE counterparty_id = 2"
        )
        .await,
        None
    );
    assert!(one(
        &wh,
        "SELECT delivery_contact FROM staging.counterparty WHERE counterparty_id = 3"
    )
    .await
    .is_some());
    assert_eq!(
        one(&wh, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'staging.currency'::regclass AND attname = 'currency_code'")
            .await
            .as_deref(),
        Some("character varying(5)")
    );

    // The lake: every change once, and the new shapes readable as one table.
    support::lake::wait_settled(&wh).await;
    support::lake::assert_holds_what_the_oracle_saw(&wh, &lake, &oracle.events()).await;
    let wide = lake_rows(
        &lake,
        "SELECT count(*) FROM changes WHERE tbl = 'public.counterparty' \
         AND loyalty_points::VARCHAR = '3000000001'",
    );
    assert_ne!(
        wide[0][0].as_deref(),
        Some("0"),
        "the widened value is in the lake"
    );
    let red = lake_rows(
        &lake,
        "SELECT count(*) FROM changes WHERE tbl = 'public.design' AND colour = 'red'",
    );
    assert_eq!(
        red[0][0].as_deref(),
        Some("1"),
        "the added column is in the lake"
    );
    let gold = lake_rows(
        &lake,
        "SELECT count(*) FROM changes WHERE tbl = 'public.counterparty' \
         AND loyalty_points::VARCHAR = 'gold'",
    );
    assert_eq!(gold[0][0].as_deref(), Some("1"));
    drop(moto);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_follows_added_widened_and_dropped_columns_and_stops_on_the_rest() {
    shape_changes_are_followed(Mode::Run).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_and_consumers_follow_added_widened_and_dropped_columns_and_stop_on_the_rest() {
    shape_changes_are_followed(Mode::Stream).await;
}

/// A truncate travels on one shard while the rows it retires travel on others: inserts made
/// before it, on a shard the consumer reads late, arrive after it and must stay retired.
#[tokio::test(flavor = "multi_thread")]
async fn a_truncate_retires_older_rows_that_arrive_after_it_through_another_shard() {
    let moto = Moto::start();
    moto.create_stream("trunc", 2).await;
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    src.batch_execute(
        "CREATE TABLE bin (id integer PRIMARY KEY, v text);
         ALTER PUBLICATION totes_cdc ADD TABLE bin;",
    )
    .await
    .unwrap();
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    let e = moto.env();
    support::setup(&src_url, &wh_url, &e);
    let state = support::temp_dir("trunc").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let _streamer = Proc::spawn(&stream_kinesis_args("trunc", &src_url, &state, &lake), &e);
    _streamer.wait_log("streaming changes", WAIT);
    for id in 1..=12 {
        src.execute("INSERT INTO bin VALUES ($1, 'before')", &[&id])
            .await
            .unwrap();
    }
    src.batch_execute("TRUNCATE bin; INSERT INTO bin VALUES (100, 'after')")
        .await
        .unwrap();
    // Where the records went.
    let deadline = Instant::now() + WAIT;
    let records = loop {
        let all = moto.read_all("trunc");
        if all.iter().any(|r| r["data"]["key"]["id"] == 100) {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "the records never reached the stream"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let of_bin = |r: &&serde_json::Value| r["data"]["source"]["table"] == "bin";
    let truncate_shard = records
        .iter()
        .filter(of_bin)
        .find(|r| r["data"]["op"] == "t")
        .map(|r| r["shard"].as_str().unwrap().to_string())
        .expect("the truncate record");
    let late: Vec<i64> = records
        .iter()
        .filter(of_bin)
        .filter(|r| r["data"]["op"] == "c" && r["shard"] != truncate_shard.as_str())
        .filter_map(|r| r["data"]["key"]["id"].as_i64())
        .filter(|&id| id < 100)
        .collect();
    assert!(!late.is_empty(), "some inserts went to the other shard");
    let other_shard = records
        .iter()
        .filter(of_bin)
        .find(|r| r["data"]["key"]["id"].as_i64() == Some(late[0]))
        .and_then(|r| r["shard"].as_str())
        .unwrap()
        .to_string();
    let index: u64 = other_shard.rsplit('-').next().unwrap().parse().unwrap();
    // One consumer, holding back the first read of that shard: its inserts come after the
    // truncate.
    let consumer = Proc::spawn(
        &consume_args("trunc", &wh_url, &lake),
        &[
            e.clone(),
            vec![("TOTES_CDC_FAULT", &format!("hold-shard:{index}"))],
        ]
        .concat(),
    );
    // Both shards applied to their last record (the held one 8 s late).
    let mut last: std::collections::BTreeMap<String, String> = Default::default();
    for r in &records {
        last.insert(
            r["shard"].as_str().unwrap().to_string(),
            r["seq"].as_str().unwrap().to_string(),
        );
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let cps: std::collections::BTreeMap<String, String> = wh
            .query(
                "SELECT shard_id, sequence_number FROM totes_cdc.shard_checkpoints \
                 WHERE stream = 'trunc' AND sequence_number IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if cps == last {
            break;
        }
        assert!(Instant::now() < deadline, "the shards were never applied");
        std::thread::sleep(Duration::from_millis(200));
    }
    let applied: i64 = wh
        .query_one(
            "SELECT count(*) FROM staging.bin WHERE id = ANY($1::int8[])",
            &[&late],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        applied,
        late.len() as i64,
        "the late inserts reached staging"
    );
    let live: Vec<i32> = wh
        .query(
            "SELECT id FROM staging.bin WHERE NOT _deleted ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        live,
        vec![100],
        "only the row inserted after the truncate lives"
    );
    verify_passes(&src_url, &wh_url);
    // The late inserts are history: in the lake once each.
    support::lake::wait_settled(&wh).await;
    let in_lake = lake_rows(
        &lake,
        "SELECT count(*), count(DISTINCT id) FROM changes WHERE tbl = 'public.bin' AND _op = 'c'",
    );
    assert_eq!(
        in_lake[0],
        vec![Some("13".to_string()), Some("13".to_string())]
    );
    drop(consumer);
}

/// Table names that could escape the lake or share a mirror: quotes, slashes and dots, `..`,
/// `schema__table` look-alikes, and names at PostgreSQL's 63-byte limit.
#[tokio::test(flavor = "multi_thread")]
async fn any_table_name_gets_its_own_mirror_and_lake_folder() {
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    let long_a = format!("{}a", "t".repeat(62));
    let long_b = format!("{}b", "t".repeat(62));
    let odd = [
        ("public", "we\"ird/../../../escaped".to_string()),
        ("public", "a__b__c".to_string()),
        ("a", "b__c".to_string()),
        ("a__b", "c".to_string()),
        ("public", long_a.clone()),
        ("public", long_b.clone()),
        ("public", "..".to_string()),
    ];
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut list = Vec::new();
    for (schema, table) in &odd {
        let name = format!("{}.{}", q(schema), q(table));
        src.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE {name} (id integer PRIMARY KEY, v text);",
            q(schema)
        ))
        .await
        .unwrap();
        list.push(name);
    }
    src.batch_execute(&format!(
        "CREATE PUBLICATION totes_cdc FOR TABLE address, counterparty, currency, department, design, \
         payment, payment_type, purchase_order, sales_order, staff, \"transaction\", {}",
        list.join(", ")
    ))
    .await
    .unwrap();
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    let state = support::temp_dir("names").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let _run = Proc::spawn(&run_args(&src_url, &wh_url, &state, &lake), &[]);
    _run.wait_log("streaming changes", WAIT);
    // Each table gets rows of its own: a mirror shared by two would mix them.
    for (i, name) in list.iter().enumerate() {
        src.batch_execute(&format!(
            "INSERT INTO {name} SELECT g, '{i}' FROM generate_series(1, {}) g",
            i + 1
        ))
        .await
        .unwrap();
    }
    verify_passes(&src_url, &wh_url);
    let mirrors: i64 = wh
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'staging'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mirrors as usize, 11 + odd.len(), "one mirror per table");
    // Nothing outside the lake root, and each table's changes in a folder of its own.
    support::lake::wait_settled(&wh).await;
    fn parquet_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                parquet_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    parquet_files(std::path::Path::new(&state), &mut files);
    let outside: Vec<_> = files
        .iter()
        .filter(|f| {
            !f.starts_with(format!("{lake}/changes")) && !f.starts_with(format!("{lake}/processed"))
        })
        .collect();
    assert!(outside.is_empty(), "written outside the lake: {outside:?}");
    let per_folder = lake_rows(
        &lake,
        "SELECT tbl, count(*), min(v), max(v) FROM changes WHERE _op = 'c' GROUP BY tbl ORDER BY tbl",
    );
    assert_eq!(per_folder.len(), odd.len(), "{per_folder:?}");
    for row in &per_folder {
        let n: usize = row[1].as_deref().unwrap().parse().unwrap();
        let v: usize = row[2].as_deref().unwrap().parse().unwrap();
        assert_eq!(row[2], row[3], "one table per folder: {row:?}");
        assert_eq!(n, v + 1, "{row:?}");
    }
}

/// Writes to `loyalty` until `stop`: updates, deletes and inserts of random rows, so the copy's
/// windows see changes of the rows they read.
fn spawn_loyalty_writer(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        let mut n: i32 = 0;
        while !stop.load(Ordering::Relaxed) {
            let id = 1 + (n * 7919) % 5000;
            let sql = match n % 4 {
                0 => format!("DELETE FROM loyalty WHERE id = {id}"),
                1 => format!("INSERT INTO loyalty VALUES ({}, 'new', {n})", 5000 + n),
                _ => {
                    format!("UPDATE loyalty SET points = points + 1, tier = 'w{n}' WHERE id = {id}")
                }
            };
            if db.batch_execute(&sql).await.is_err() {
                break;
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        n as u32
    })
}

async fn new_tables_and_resyncs_copy_while_streaming(mode: Mode) {
    let Scenario {
        moto,
        _pg,
        src,
        wh,
        src_url,
        wh_url,
        lake,
        oracle,
        mut p,
        stop,
        workload,
    } = Scenario::start(mode, "copies").await;
    std::thread::sleep(Duration::from_millis(1000));

    // A table with rows joins the publication while it is being written: copied in chunks
    // (5,000 rows: three of them), its changes streamed, the capture killed right after.
    src.batch_execute(
        "CREATE TABLE loyalty (id integer PRIMARY KEY, tier text, points bigint);
         INSERT INTO loyalty SELECT g, 'base', g * 10 FROM generate_series(1, 5000) g;",
    )
    .await
    .unwrap();
    let writer = spawn_loyalty_writer(src_url.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    src.batch_execute("ALTER PUBLICATION totes_cdc ADD TABLE loyalty")
        .await
        .unwrap();
    p.kill_capture();
    std::thread::sleep(Duration::from_millis(2500));
    // And again in the middle of the copy.
    p.kill_capture();
    std::thread::sleep(Duration::from_millis(1500));

    // A mirror repaired by hand is copied again on demand; a re-copy of an unchanged table
    // adds no fact version.
    wh.batch_execute("UPDATE staging.staff SET first_name = 'wrecked' WHERE staff_id = 3")
        .await
        .unwrap();
    for table in ["staff", "sales_order"] {
        let (status, out, err) =
            support::run(&["resync", "--source-url", &src_url, "--table", table], &[]);
        assert!(status.success(), "{out}{err}");
        assert!(out.contains("copy"), "{out}");
    }
    std::thread::sleep(Duration::from_millis(2000));
    stop.store(true, Ordering::Relaxed);
    assert!(workload.await.unwrap() > 50);
    assert!(writer.await.unwrap() > 50);

    wait_star(&src, &wh, WAIT).await;
    verify_passes(&src_url, &wh_url);
    let first_name = one(
        &wh,
        "SELECT first_name FROM staging.staff WHERE staff_id = 3",
    )
    .await;
    assert_ne!(first_name.as_deref(), Some("wrecked"));
    assert_fact_history(&oracle, &src, &wh).await;
    // The lake holds each change once; the copied rows are there as reads.
    support::lake::wait_settled(&wh).await;
    support::lake::assert_each_change_once(&wh, &lake).await;
    let reads = lake_rows(
        &lake,
        "SELECT count(DISTINCT id) FROM changes WHERE tbl = 'public.loyalty' AND _op = 'r'",
    );
    let copied: usize = reads[0][0].as_deref().unwrap().parse().unwrap();
    assert!(copied > 4000, "the copy's rows are in the lake ({copied})");
    drop(moto);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_copies_new_tables_and_resyncs_while_streaming() {
    new_tables_and_resyncs_copy_while_streaming(Mode::Run).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_copies_new_tables_and_resyncs_while_streaming() {
    new_tables_and_resyncs_copy_while_streaming(Mode::Stream).await;
}

/// A table identified by its whole row (REPLICA IDENTITY FULL, no key) is refused by `setup`
/// with the reason and the fix; after the fix it is mirrored, NULLs and large values included.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_without_a_key_is_refused_by_setup_and_mirrored_after_the_fix() {
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    src.batch_execute(
        "CREATE TABLE notes (n integer, body text);
         ALTER TABLE notes REPLICA IDENTITY FULL;
         INSERT INTO notes VALUES (1, NULL), (2, repeat('x', 20000)), (3, 'three');
         ALTER PUBLICATION totes_cdc ADD TABLE notes;",
    )
    .await
    .unwrap();
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    let (status, _, err) = support::run(
        &[
            "setup",
            "--source-url",
            &src_url,
            "--warehouse-url",
            &wh_url,
        ],
        &[],
    );
    assert_eq!(status.code(), Some(1));
    let report = support::error_report(&err);
    for needle in [
        "public.notes",
        "no primary key",
        "REPLICA IDENTITY USING INDEX",
    ] {
        assert!(report.contains(needle), "{needle} not in: {report}");
    }
    // The documented fix: a unique index on NOT NULL columns as the replica identity.
    src.batch_execute(
        "ALTER TABLE notes ALTER COLUMN n SET NOT NULL;
         CREATE UNIQUE INDEX notes_n ON notes (n);
         ALTER TABLE notes REPLICA IDENTITY USING INDEX notes_n;",
    )
    .await
    .unwrap();
    support::setup(&src_url, &wh_url, &[]);
    let state = support::temp_dir("keyless").to_string_lossy().into_owned();
    let _run = Proc::spawn(
        &run_args(&src_url, &wh_url, &state, &format!("{state}/lake")),
        &[],
    );
    _run.wait_log("streaming changes", WAIT);
    src.batch_execute(
        "INSERT INTO notes VALUES (4, NULL), (5, repeat('y', 30000));
         UPDATE notes SET body = NULL WHERE n = 3;
         DELETE FROM notes WHERE n = 1;",
    )
    .await
    .unwrap();
    verify_passes(&src_url, &wh_url);
}

/// Partitions publish as their root: rows of every partition land in the root's mirror; an
/// attached partition's rows are copied, a detached one's leave the mirror, while streaming.
#[tokio::test(flavor = "multi_thread")]
async fn partitions_land_in_the_root_mirror_and_attach_and_detach_are_followed() {
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    src.batch_execute(
        "CREATE TABLE visits (id integer, region text, note text, PRIMARY KEY (id, region))
             PARTITION BY LIST (region);
         CREATE TABLE visits_eu PARTITION OF visits FOR VALUES IN ('eu');
         CREATE TABLE visits_us PARTITION OF visits FOR VALUES IN ('us');
         INSERT INTO visits SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 'n' || g
             FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    // `setup` creates the publication (every table of schema public, partitions via the root).
    support::setup(&src_url, &wh_url, &[]);
    let state = support::temp_dir("parts").to_string_lossy().into_owned();
    let _run = Proc::spawn(
        &run_args(&src_url, &wh_url, &state, &format!("{state}/lake")),
        &[],
    );
    _run.wait_log("streaming changes", WAIT);
    src.batch_execute(
        "INSERT INTO visits VALUES (101, 'eu', 'x'), (102, 'us', 'y');
         UPDATE visits SET note = 'moved' WHERE id = 3;",
    )
    .await
    .unwrap();
    verify_passes(&src_url, &wh_url);
    let partitions: i64 = wh
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'staging' AND tablename LIKE 'visits%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(partitions, 1, "one mirror for the partitioned table");
    // A partition with rows attached, another detached, while streaming.
    src.batch_execute(
        "CREATE TABLE visits_ap (LIKE visits INCLUDING ALL);
         INSERT INTO visits_ap SELECT g, 'ap', 'ap' || g FROM generate_series(1000, 1199) g;
         ALTER TABLE visits ATTACH PARTITION visits_ap FOR VALUES IN ('ap');
         ALTER TABLE visits DETACH PARTITION visits_us;
         INSERT INTO visits VALUES (2000, 'ap', 'after');",
    )
    .await
    .unwrap();
    verify_passes(&src_url, &wh_url);
    let us: i64 = wh
        .query_one(
            "SELECT count(*) FROM staging.visits WHERE region = 'us' AND NOT _deleted",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(us, 0, "the detached partition's rows left the mirror");
}
