//! The Kinesis transport through the real AWS SDK against moto: `stream --sink kinesis` and
//! `consume` replicas sharing the shards, under kills, injected PutRecords failures, a
//! resharding, an oversized record and an unparseable one; records read back with boto3.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::moto::Moto;
use support::star::{self, wait_star};
use support::{consume_args, stream_kinesis_args, totesys, PgCluster, Proc};
use totes_cdc::transport::kinesis::aggregate::deaggregate;

const WAIT: Duration = Duration::from_secs(180);
/// One source transaction every 10 ms. (moto 5.2 re-puts a shard's records during SplitShard,
/// and numbers records without a lock; tests/support/moto_server.py makes both atomic.)
const PACE: Duration = Duration::from_millis(10);

#[tokio::test(flavor = "multi_thread")]
async fn stream_publishes_envelopes_a_plain_client_reads() {
    let moto = Moto::start();
    moto.create_stream("plain", 2).await;
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    let url = pg.url("src");
    let state = support::temp_dir("kplain").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let e = moto.env();
    let p = Proc::spawn(&stream_kinesis_args("plain", &url, &state, &lake), &e);
    p.wait_log("streaming changes", WAIT);
    totesys::sale(&src, 1).await;
    src.batch_execute("UPDATE payment SET paid = true WHERE payment_id = 1")
        .await
        .unwrap();
    // A row too big for one Kinesis record.
    src.batch_execute(
        "INSERT INTO design (design_name, file_location, file_name, last_updated) \
         VALUES (repeat('w', 1500000), '/big', 'big.json', now())",
    )
    .await
    .unwrap();
    let mut records = Vec::new();
    for _ in 0..120 {
        records = moto.read_all("plain");
        if records.iter().any(|r| r["data"].get("oversized").is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Every record is a version-1 envelope, keyed by table and primary key.
    for r in &records {
        let d = &r["data"];
        assert_eq!(d["version"], 1, "{r}");
        let table = format!(
            "{}.{}",
            d["source"]["schema"].as_str().unwrap(),
            d["source"]["table"].as_str().unwrap()
        );
        assert_eq!(
            r["key"].as_str().unwrap(),
            format!("{table}/{}", d["key"]),
            "partition key"
        );
    }
    let pay: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["data"]["source"]["table"] == "payment" && r["data"]["key"]["payment_id"] == 1
        })
        .collect();
    assert_eq!(pay.len(), 2, "insert and update of payment 1");
    assert_eq!(pay[0]["shard"], pay[1]["shard"], "one row, one shard");
    assert_eq!(pay[0]["data"]["op"], "c");
    assert_eq!(pay[1]["data"]["op"], "u");
    assert_eq!(pay[1]["data"]["after"]["paid"], true);
    // The oversized row went to the lake; the stream has a pointer to it.
    let big = records
        .iter()
        .find(|r| r["data"].get("oversized").is_some())
        .expect("a pointer record");
    assert_eq!(big["data"]["after"], Value::Null);
    let location = big["data"]["oversized"].as_str().unwrap();
    let full: Value =
        serde_json::from_slice(&std::fs::read(location).expect("oversized file")).unwrap();
    assert_eq!(
        full["after"]["design_name"].as_str().unwrap().len(),
        1_500_000
    );
    assert!(p.stderr().contains("record over 1 MiB"), "{}", p.stderr());
}

/// Issue 16: events bound for one shard travel in one KPL-aggregated record; AWS's own
/// deaggregator (aws-kinesis-agg, in read_kinesis.py) reads them back as exactly the envelopes
/// `stream --sink stdout` prints for the same WAL, in the same order per key. With
/// `--kinesis-aggregation off` every record is one envelope.
#[tokio::test(flavor = "multi_thread")]
async fn aggregated_records_are_the_envelopes_awss_deaggregator_reads() {
    let moto = Moto::start();
    moto.create_stream("agg", 3).await;
    moto.create_stream("single", 3).await;
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    for slot in ["s_out", "s_agg", "s_single"] {
        src.execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();
    }
    for i in 1..=200 {
        totesys::sale(&src, i).await;
    }
    // Several versions of one row in a row, and a transaction touching many rows.
    for _ in 0..5 {
        src.batch_execute("UPDATE payment SET paid = NOT paid WHERE payment_id = 7")
            .await
            .unwrap();
    }
    src.batch_execute("UPDATE payment SET paid = true WHERE payment_id % 3 = 0")
        .await
        .unwrap();
    let until: String = src
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let url = pg.url("src");
    let e = moto.env();
    let stream = |slot: &str, sink: &[&str]| {
        let state = support::temp_dir(slot).to_string_lossy().into_owned();
        let mut args = vec!["stream"];
        args.extend_from_slice(sink);
        args.extend_from_slice(&[
            "--source-url",
            &url,
            "--slot",
            slot,
            "--snapshot",
            "never",
            "--heartbeat-interval",
            "0",
            "--until-lsn",
            &until,
            "--state-dir",
            &state,
            "--lake",
            "none",
        ]);
        let (status, out, err) = support::run(&args, &e);
        assert!(status.success(), "{err}");
        (out, err)
    };
    let (printed, _) = stream("s_out", &["--sink", "stdout"]);
    let want: Vec<Value> = printed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v.get("op").is_some())
        .collect();
    assert!(want.len() > 600, "{} envelopes", want.len());
    let (_, agg_log) = stream("s_agg", &["--sink", "kinesis", "--kinesis-stream", "agg"]);
    let (_, single_log) = stream(
        "s_single",
        &[
            "--sink",
            "kinesis",
            "--kinesis-stream",
            "single",
            "--kinesis-aggregation",
            "off",
        ],
    );
    let canonical = |vs: &[Value]| {
        let mut out: Vec<String> = vs.iter().map(|v| v.to_string()).collect();
        out.sort();
        out
    };
    // Per partition key, the envelopes in stream order.
    let by_key = |records: &[Value]| {
        let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for r in records {
            m.entry(r["key"].as_str().unwrap().to_string())
                .or_default()
                .push(r["data"].clone());
        }
        m
    };
    let mut want_by_key: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for v in &want {
        let table = format!(
            "{}.{}",
            v["source"]["schema"].as_str().unwrap(),
            v["source"]["table"].as_str().unwrap()
        );
        want_by_key
            .entry(format!("{table}/{}", v["key"]))
            .or_default()
            .push(v.clone());
    }
    for (name, log) in [("agg", &agg_log), ("single", &single_log)] {
        let records = moto.read_all(name);
        let got: Vec<Value> = records.iter().map(|r| r["data"].clone()).collect();
        assert_eq!(
            canonical(&got),
            canonical(&want),
            "{name}: every envelope once"
        );
        assert!(by_key(&records) == want_by_key, "{name}: order per key");
        let kinesis_records: BTreeSet<(String, String)> = records
            .iter()
            .map(|r| (r["shard"].to_string(), r["seq"].to_string()))
            .collect();
        let aggregated = records.iter().filter(|r| r["aggregated"] == true).count();
        eprintln!(
            "{name}: {} envelopes in {} records ({aggregated} de-aggregated)",
            records.len(),
            kinesis_records.len()
        );
        if name == "agg" {
            assert!(
                kinesis_records.len() * 10 < records.len(),
                "aggregation packs many events per record"
            );
            assert!(aggregated * 10 > records.len() * 9);
        } else {
            assert_eq!(kinesis_records.len(), records.len(), "one event per record");
            assert_eq!(aggregated, 0);
        }
        let done = log
            .lines()
            .find(|l| l.contains("kinesis producer done"))
            .unwrap_or_else(|| panic!("{log}"));
        assert!(done.contains(&format!("events={}", want.len())), "{done}");
        assert!(
            done.contains(&format!("records={}", kinesis_records.len())),
            "{done}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_and_two_consumers_lose_and_double_nothing_through_kills_and_a_reshard() {
    let moto = Moto::start();
    moto.create_stream("totes", 4).await;
    let kinesis = moto.kinesis().await;
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    let e = moto.env();
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
    let state = support::temp_dir("kin").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let oracle_state = format!("{state}/oracle");
    let oracle = support::spawn_oracle(&src_url, &oracle_state);
    let stream_args = stream_kinesis_args("totes", &src_url, &state, &lake);
    let consumer_args = |id: &'static str| {
        let mut args = consume_args("totes", &wh_url, &lake);
        args.extend(["--consumer-id", id]);
        args
    };
    let mut streamer = Proc::spawn(&stream_args, &e);
    streamer.wait_log("streaming changes", WAIT);
    let mut a = Proc::spawn(&consumer_args("a"), &e);
    let b = Proc::spawn(&consumer_args("b"), &e);
    let stop = Arc::new(AtomicBool::new(false));
    let workload = totesys::spawn_workload(src_url.clone(), stop.clone(), PACE);

    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(1500));
        a.kill9();
        std::thread::sleep(Duration::from_millis(1500));
        if round == 1 {
            // Split a shard mid-run: its children are read once it is finished.
            let shards = kinesis
                .list_shards()
                .stream_name("totes")
                .send()
                .await
                .unwrap();
            let s0 = &shards.shards()[0];
            let range = s0.hash_key_range().unwrap();
            let lo: u128 = range.starting_hash_key().parse().unwrap();
            let hi: u128 = range.ending_hash_key().parse().unwrap();
            kinesis
                .split_shard()
                .stream_name("totes")
                .shard_to_split(s0.shard_id())
                .new_starting_hash_key(((lo + hi) / 2).to_string())
                .send()
                .await
                .unwrap();
            // And a record that is not an envelope.
            kinesis
                .put_record()
                .stream_name("totes")
                .partition_key("garbage")
                .data(aws_sdk_kinesis::primitives::Blob::new(
                    b"{not json".to_vec(),
                ))
                .send()
                .await
                .unwrap();
        }
        if round >= 1 {
            streamer.kill9();
            streamer = Proc::spawn(&stream_args, &e);
        }
        a = Proc::spawn(&consumer_args("a"), &e);
    }
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    assert!(workload.await.unwrap() > 50);

    wait_star(&src, &wh, WAIT).await;
    support::wait_oracle_caught_up(&oracle, &src, WAIT).await;
    let expected = star::oracle_versions(&oracle.events());
    let actual = star::fact_versions(&wh).await;
    support::assert_same_sets("fact versions", &expected, &actual);
    // The garbage record is a dead letter with its place in the stream; nothing else is.
    let dead = wh
        .query(
            "SELECT coalesce(origin, ''), reason FROM totes_cdc.dead_letters",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        dead.len(),
        1,
        "{:?}",
        dead.iter()
            .map(|r| r.get::<_, String>(1))
            .collect::<Vec<_>>()
    );
    assert!(dead[0]
        .get::<_, String>(0)
        .starts_with("kinesis:totes/shardId-"));
    assert!(dead[0]
        .get::<_, String>(1)
        .contains("not a totes-cdc envelope"));
    // Every shard was read to its last record. (moto 5 keeps routing records to a split
    // shard's parent and never ends its iterators, unlike Kinesis: the order of parents and
    // children is covered by the consumer's unit test.)
    let cps: BTreeMap<String, String> = wh
        .query("SELECT shard_id, sequence_number FROM totes_cdc.shard_checkpoints WHERE stream = 'totes'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()))
        .collect();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for r in moto.read_all("totes") {
        last.insert(
            r["shard"].as_str().unwrap().to_string(),
            r["seq"].as_str().unwrap().to_string(),
        );
    }
    assert_eq!(cps, last, "checkpoints = the last record of every shard");
    // The lake holds each change once, in committed files only.
    support::lake::assert_holds_what_the_oracle_saw(&wh, &lake, &oracle.events()).await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_and_throttled_entries_are_retried_without_loss_or_reordering() {
    let moto = Moto::start();
    moto.create_stream("flaky", 2).await;
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    let url = pg.url("src");
    let state = support::temp_dir("kflaky").to_string_lossy().into_owned();
    let oracle_state = format!("{state}/oracle");
    let oracle = support::spawn_oracle(&url, &oracle_state);
    let mut e = moto.env();
    // A third of all entries fail as throttled (PutRecords partial failures).
    e.push(("TOTES_CDC_FAULT", "kinesis-fail:33"));
    let lake = format!("{state}/lake");
    let mut args = stream_kinesis_args("flaky", &url, &state, &lake);
    args.extend(["--kinesis-concurrency", "4"]);
    let p = Proc::spawn(&args, &e);
    p.wait_log("streaming changes", WAIT);
    let stop = Arc::new(AtomicBool::new(false));
    let workload = totesys::spawn_workload(url.clone(), stop.clone(), PACE);
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    workload.await.unwrap();
    support::wait_oracle_caught_up(&oracle, &src, WAIT).await;
    let want: BTreeSet<(String, String, String, i64)> = oracle
        .events()
        .iter()
        // The oracle's own snapshot (rows and truncate markers, without xid) is not streamed.
        .filter(|e| !e["source"]["xid"].is_null())
        .map(|e| {
            (
                e["source"]["table"].as_str().unwrap().to_string(),
                e["key"].to_string(),
                e["source"]["lsn"].as_str().unwrap().to_string(),
                e["source"]["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut records = Vec::new();
    for _ in 0..240 {
        records = moto.read_all("flaky");
        let got: BTreeSet<(String, String, String, i64)> = records
            .iter()
            .map(|r| {
                let d = &r["data"];
                (
                    d["source"]["table"].as_str().unwrap().to_string(),
                    d["key"].to_string(),
                    d["source"]["lsn"].as_str().unwrap().to_string(),
                    d["source"]["seq"].as_i64().unwrap(),
                )
            })
            .collect();
        if want.is_subset(&got) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Nothing lost.
    let got: BTreeSet<(String, String, String, i64)> = records
        .iter()
        .map(|r| {
            let d = &r["data"];
            (
                d["source"]["table"].as_str().unwrap().to_string(),
                d["key"].to_string(),
                d["source"]["lsn"].as_str().unwrap().to_string(),
                d["source"]["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    let missing: Vec<_> = want.difference(&got).take(5).collect();
    assert!(missing.is_empty(), "lost {missing:?}");
    // Per key, versions are in the stream in position order.
    let lsn = |s: &str| {
        let (hi, lo) = s.split_once('/').unwrap();
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
    };
    let mut by_key: BTreeMap<String, Vec<(u128, u64, i64)>> = BTreeMap::new();
    for r in &records {
        let d = &r["data"];
        by_key
            .entry(r["key"].as_str().unwrap().to_string())
            .or_default()
            .push((
                r["seq"].as_str().unwrap().parse().unwrap(),
                lsn(d["source"]["lsn"].as_str().unwrap()),
                d["source"]["seq"].as_i64().unwrap(),
            ));
    }
    let mut reordered = 0;
    for (key, mut v) in by_key {
        v.sort();
        for w in v.windows(2) {
            if (w[1].1, w[1].2) < (w[0].1, w[0].2) {
                reordered += 1;
                eprintln!("{key}: {:?} after {:?}", w[1], w[0]);
            }
        }
    }
    assert_eq!(reordered, 0, "versions of a key out of order");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_stream_or_an_unreachable_endpoint_stops_with_the_fix() {
    let moto = Moto::start();
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    let _ = wh;
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    let state = support::temp_dir("kbad").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let e = moto.env();
    let last_line = support::error_report;
    let (status, _, err) = support::run(&stream_kinesis_args("nope", &src_url, &state, &lake), &e);
    assert!(!status.success());
    let line = last_line(&err);
    assert!(
        line.contains("Kinesis stream \"nope\" does not exist in region us-east-1")
            && line.contains("kinesis-stream"),
        "{line}"
    );
    let (status, _, err) = support::run(&consume_args("nope", &wh_url, &lake), &e);
    assert!(!status.success());
    assert!(last_line(&err).contains("does not exist"), "{err}");
    let nowhere = format!("http://127.0.0.1:{}", support::pg::free_port());
    let dead: Vec<(&str, &str)> = e
        .iter()
        .map(|&(k, v)| {
            if k == "AWS_ENDPOINT_URL" {
                (k, nowhere.as_str())
            } else {
                (k, v)
            }
        })
        .collect();
    let (status, _, err) =
        support::run(&stream_kinesis_args("nope", &src_url, &state, &lake), &dead);
    assert!(!status.success());
    let line = last_line(&err);
    assert!(
        line.contains("cannot reach the Kinesis endpoint") && line.contains("AWS_ENDPOINT_URL"),
        "{line}"
    );
    // Nothing was captured: the slot was not even created.
    let slots: i64 = src
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
}

/// A small xorshift generator for the kill schedule; the seed is printed so a failing run can
/// be repeated (`TOTES_CDC_TEST_SEED`).
struct Dice(u64);

impl Dice {
    fn new() -> Self {
        let seed = std::env::var("TOTES_CDC_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
                    | 1
            });
        eprintln!("kill schedule seed {seed}");
        Self(seed)
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(lo + self.0 % (hi - lo + 1))
    }
}

/// (table, key, lsn, seq) of a change envelope.
fn change_of(d: &Value) -> Option<(String, String, String, i64)> {
    Some((
        d["source"]["table"].as_str()?.to_string(),
        d["key"].to_string(),
        d["source"]["lsn"].as_str()?.to_string(),
        d["source"]["seq"].as_i64()?,
    ))
}

fn lsn_of(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).expect("hex") << 32) | u64::from_str_radix(lo, 16).expect("hex")
}

/// Issue 17: the real fixture, the totesys workload, `stream --sink kinesis` and two consumers
/// over 4 shards, the streamer killed during its initial snapshot and during streaming, the
/// consumers killed too. Afterwards every change committed after the slot's consistent point is
/// in the stream, `verify` finds staging equal to the source, the star is the transform, and
/// the facts hold one version per change (and at most one snapshot version per row).
async fn kills_through_kinesis_lose_nothing(extra: &[&str], fault: Option<&str>) {
    let mut dice = Dice::new();
    let moto = Moto::start();
    moto.create_stream("real", 4).await;
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    src.batch_execute(&support::totesys_schema()).await.unwrap();
    support::fixture::load(&src).await;
    totesys::publish(&src).await;
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    let mut e = moto.env();
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
    let state = support::temp_dir("kreal").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let oracle_state = format!("{state}/oracle");
    let oracle = support::spawn_oracle(&src_url, &oracle_state);
    if let Some(f) = fault {
        e.push(("TOTES_CDC_FAULT", f));
    }
    let mut stream_args = stream_kinesis_args("real", &src_url, &state, &lake);
    stream_args.extend(extra);
    let consumer_args = |id: &'static str| {
        let mut args = consume_args("real", &wh_url, &lake);
        args.extend(["--consumer-id", id]);
        args
    };
    // The source is busy before the slot exists and all along.
    let stop = Arc::new(AtomicBool::new(false));
    let workload = totesys::spawn_workload(src_url.clone(), stop.clone(), Duration::from_millis(5));
    let mut a = Proc::spawn(&consumer_args("a"), &e);
    let mut b = Proc::spawn(&consumer_args("b"), &e);

    // Kills inside the initial snapshot, each redo included.
    let mut streamer = Proc::spawn(&stream_args, &e);
    let mut in_snapshot = 0;
    for _ in 0..3 {
        streamer.wait_log("initial snapshot started", WAIT);
        std::thread::sleep(dice.millis(300, 1500));
        let done = streamer.stderr().contains("initial snapshot complete");
        streamer.kill9();
        if !done {
            in_snapshot += 1;
        }
        streamer = Proc::spawn(&stream_args, &e);
        if done {
            break;
        }
    }
    assert!(
        in_snapshot >= 1,
        "no kill landed inside the initial snapshot"
    );
    // Kills while streaming: the streamer, then each consumer, at random moments.
    streamer.wait_log("streaming changes", WAIT);
    for round in 0..4 {
        std::thread::sleep(dice.millis(500, 2500));
        match round % 3 {
            0 => {
                streamer.kill9();
                streamer = Proc::spawn(&stream_args, &e);
            }
            1 => {
                a.kill9();
                a = Proc::spawn(&consumer_args("a"), &e);
            }
            _ => {
                b.kill9();
                b = Proc::spawn(&consumer_args("b"), &e);
            }
        }
    }
    std::thread::sleep(dice.millis(500, 1500));
    stop.store(true, Ordering::Relaxed);
    assert!(workload.await.unwrap() > 50);

    // Drained: the star is the transform of the source.
    wait_star(&src, &wh, Duration::from_secs(600)).await;
    support::wait_oracle_caught_up(&oracle, &src, WAIT).await;
    let snapshot_state: Value = serde_json::from_slice(
        &std::fs::read(format!("{state}/totes_cdc.snapshot.json")).expect("snapshot state"),
    )
    .unwrap();
    let cp = lsn_of(snapshot_state["consistent_point"].as_str().unwrap());
    assert!(
        snapshot_state["attempt"].as_u64().unwrap() >= 1,
        "{snapshot_state}"
    );

    // Every change committed after the consistent point is in the stream.
    let events = oracle.events();
    let after_cp: Vec<&Value> = events
        .iter()
        .filter(|e| !e["source"]["xid"].is_null())
        .filter(|e| lsn_of(e["source"]["lsn"].as_str().unwrap()) >= cp)
        .collect();
    let want: BTreeSet<_> = after_cp.iter().filter_map(|e| change_of(e)).collect();
    let got: BTreeSet<_> = moto
        .read_all("real")
        .iter()
        .filter_map(|r| change_of(&r["data"]))
        .collect();
    let missing: Vec<_> = want.difference(&got).take(10).collect();
    assert!(
        missing.is_empty(),
        "{} of {} changes are in no record, e.g. {missing:?}",
        want.difference(&got).count(),
        want.len()
    );

    // verify: staging equals the source row for row.
    let (status, out, err) = support::run(
        &[
            "verify",
            "--source-url",
            &src_url,
            "--warehouse-url",
            &wh_url,
        ],
        &[],
    );
    assert!(
        status.success() && out.contains("no differences"),
        "{out}{err}"
    );

    // One fact version per change after the consistent point, at most one snapshot version
    // per row, and every row untouched since the consistent point has its snapshot version.
    let streamed: Vec<Value> = after_cp.into_iter().cloned().collect();
    let expected = star::oracle_versions(&streamed);
    let actual = star::fact_versions(&wh).await;
    let (snap, changes): (BTreeSet<_>, BTreeSet<_>) = actual.into_iter().partition(|v| v.3 < 0);
    let lost: Vec<_> = expected.difference(&changes).take(5).collect();
    let extra: Vec<_> = changes.difference(&expected).take(5).collect();
    assert!(
        lost.is_empty() && extra.is_empty(),
        "fact versions of changes: lost {lost:?}, extra {extra:?}"
    );
    let mut per_key: BTreeMap<(String, i64), usize> = BTreeMap::new();
    for v in &snap {
        *per_key.entry((v.0.clone(), v.1)).or_default() += 1;
    }
    let twice: Vec<_> = per_key.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(
        twice.is_empty(),
        "rows with two snapshot versions: {twice:?}"
    );
    let touched: BTreeSet<(String, i64)> = expected.iter().map(|v| (v.0.clone(), v.1)).collect();
    for (table, key) in [
        ("sales_order", "sales_order_id"),
        ("purchase_order", "purchase_order_id"),
        ("payment", "payment_id"),
    ] {
        let rows = src
            .query(&format!("SELECT {key}::bigint FROM {table}"), &[])
            .await
            .unwrap();
        let unversioned: Vec<i64> = rows
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .filter(|k| {
                !touched.contains(&(table.to_string(), *k))
                    && !per_key.contains_key(&(table.to_string(), *k))
            })
            .take(5)
            .collect();
        assert!(
            unversioned.is_empty(),
            "{table} rows untouched since the snapshot without a version: {unversioned:?}"
        );
    }
    drop((a, b, streamer));
}

#[tokio::test(flavor = "multi_thread")]
async fn kills_lose_nothing_on_the_real_fixture_with_the_defaults() {
    kills_through_kinesis_lose_nothing(&[], None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kills_lose_nothing_with_one_request_a_small_budget_and_partial_failures() {
    kills_through_kinesis_lose_nothing(
        &["--kinesis-concurrency", "1", "--channel-max-bytes", "1MiB"],
        Some("kinesis-fail:20"),
    )
    .await;
}

/// Against moto as it is, which can answer two concurrent PutRecords entries with one
/// sequence number and keep only one of them: the producer sees the collision, sends both again,
/// and nothing is lost (without that check this loses records at about 1.5%).
#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_that_stores_two_records_under_one_number_loses_nothing() {
    let moto = Moto::start_unlocked();
    moto.create_stream("twins", 4).await;
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    let url = pg.url("src");
    let state = support::temp_dir("ktwins").to_string_lossy().into_owned();
    let oracle_state = format!("{state}/oracle");
    let oracle = support::spawn_oracle(&url, &oracle_state);
    let lake = format!("{state}/lake");
    let mut args = stream_kinesis_args("twins", &url, &state, &lake);
    args.extend(["--kinesis-concurrency", "8"]);
    let p = Proc::spawn(&args, &moto.env());
    p.wait_log("streaming changes", WAIT);
    let stop = Arc::new(AtomicBool::new(false));
    let workload = totesys::spawn_workload(url.clone(), stop.clone(), Duration::from_millis(2));
    std::thread::sleep(Duration::from_secs(15));
    stop.store(true, Ordering::Relaxed);
    workload.await.unwrap();
    support::wait_oracle_caught_up(&oracle, &src, WAIT).await;
    let want: BTreeSet<_> = oracle
        .events()
        .iter()
        .filter(|e| !e["source"]["xid"].is_null())
        .filter_map(change_of)
        .collect();
    let mut missing = want.len();
    for _ in 0..240 {
        let got: BTreeSet<_> = moto
            .read_all("twins")
            .iter()
            .filter_map(|r| change_of(&r["data"]))
            .collect();
        missing = want.difference(&got).count();
        if missing == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let collisions = p
        .stderr()
        .lines()
        .filter(|l| l.contains("two records with one sequence number"))
        .count();
    eprintln!("{collisions} collisions seen and repaired");
    assert_eq!(
        missing,
        0,
        "{missing} of {} changes lost ({collisions} collisions seen)",
        want.len()
    );
}

/// Every record of `stream`, read through the SDK: the `key.id` of each envelope.
async fn ids_in_stream(kinesis: &aws_sdk_kinesis::Client, stream: &str) -> Vec<i64> {
    let shards = kinesis
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    let mut ids = Vec::new();
    for s in shards.shards() {
        let mut it = kinesis
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(s.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator()
            .map(str::to_string);
        while let Some(i) = it {
            let page = kinesis
                .get_records()
                .shard_iterator(i)
                .limit(50)
                .send()
                .await
                .unwrap();
            for r in page.records() {
                let data = r.data().as_ref();
                let users: Vec<&[u8]> = match deaggregate(data) {
                    Some(users) => users.unwrap().into_iter().map(|u| u.data).collect(),
                    None => vec![data],
                };
                for d in users {
                    let v: Value = serde_json::from_slice(d).unwrap();
                    if let Some(id) = v["key"]["id"].as_i64() {
                        ids.push(id);
                    }
                }
            }
            if page.records().is_empty() && page.millis_behind_latest() == Some(0) {
                break;
            }
            it = page.next_shard_iterator().map(str::to_string);
        }
    }
    ids.sort();
    ids
}

/// Issue 13: under sustained throttling (every PutRecords entry refused for 20 s) the producer
/// holds at most `channel-max-bytes` of events, records waiting for a retry included; then
/// everything lands, once.
#[tokio::test(flavor = "multi_thread")]
async fn sustained_throttling_keeps_the_producer_within_its_byte_budget() {
    let moto = Moto::start();
    moto.create_stream("big", 2).await;
    let kinesis = moto.kinesis().await;
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    src.batch_execute(
        "CREATE TABLE blobs (id int PRIMARY KEY, body text);
         ALTER TABLE blobs ALTER COLUMN body SET STORAGE EXTERNAL;
         ALTER PUBLICATION totes_cdc ADD TABLE blobs;",
    )
    .await
    .unwrap();
    let src_url = pg.url("src");
    let state = support::temp_dir("throttled")
        .to_string_lossy()
        .into_owned();
    let lake = format!("{state}/lake");
    let mut args = stream_kinesis_args("big", &src_url, &state, &lake);
    args.extend(["--channel-max-bytes", "16MiB"]);
    let mut e = moto.env();
    e.push(("TOTES_CDC_FAULT", "kinesis-throttle-secs:20"));
    let p = Proc::spawn(&args, &e);
    p.wait_log("streaming changes", WAIT);
    let baseline = p.peak_rss_kib();
    // 300 rows of 900 KB (each record under Kinesis's 1 MiB), 270 MB in all.
    src.batch_execute(
        "INSERT INTO blobs SELECT g, repeat(md5(g::text), 28800) FROM generate_series(1, 300) g",
    )
    .await
    .unwrap();
    let end: String = src
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    // Done once the slot confirmed past the insert: Kinesis acknowledged every record.
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let confirmed: Option<String> = src
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'totes_cdc'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if confirmed
            .as_ref()
            .is_some_and(|c| lsn_of(c) >= lsn_of(&end))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stream never caught up: {}",
            p.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let peak = p.peak_rss_kib();
    eprintln!(
        "peak RSS {peak} KiB, {} KiB over the baseline",
        peak.saturating_sub(baseline)
    );
    // The budget bounds the events held (16 MiB); on top come the PutRecords bodies the SDK
    // builds from them (base64 in JSON, a copy per attempt) and what the allocator keeps. Five
    // runs measured 88–124 MiB over the baseline (the last in the full suite); without the
    // budget held until Kinesis acknowledges, 330 MiB.
    assert!(
        peak < baseline + 160 * 1024,
        "peak RSS grew from {baseline} KiB to {peak} KiB (channel-max-bytes 16 MiB) while throttled"
    );
    let m = support::scrape::scrape(&support::scrape::metrics_addr(&p));
    assert!(
        m.sum("totes_cdc_kinesis_failed_records_total", &[]) > 0.0,
        "the throttling happened"
    );
    let ids = ids_in_stream(&kinesis, "big").await;
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique, (1..=300).collect::<Vec<i64>>(), "every row landed");
}
