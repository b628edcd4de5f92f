//! The Kinesis transport through the real AWS SDK against moto: `stream --sink kinesis` and
//! `consume` replicas sharing the shards, under kills, injected PutRecords failures, a
//! resharding, an oversized record and an unparseable one; records read back with boto3.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::moto::Moto;
use support::star::{self, wait_star};
use support::{consume_args, stream_kinesis_args, totesys, PgCluster, Proc};

const WAIT: Duration = Duration::from_secs(180);
/// One source transaction every 10 ms. moto 5.2 re-puts a shard's records during SplitShard
/// without a lock, and a PutRecords racing it can vanish inside the emulator; at this pace the
/// race has not been seen, at twice the pace it shows up now and then.
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
    let oracle = Proc::spawn(
        &[
            "stream",
            "--sink",
            "stdout",
            "--slot",
            "oracle",
            "--source-url",
            &src_url,
            "--state-dir",
            &oracle_state,
        ],
        &[],
    );
    oracle.wait_log("streaming changes", WAIT);
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
    let marker: i64 = src
        .query_one("SELECT max(payment_id)::bigint FROM payment", &[])
        .await
        .unwrap()
        .get(0);
    oracle.wait_events("the oracle", WAIT, |ev| {
        ev.iter().any(|e| {
            e["source"]["table"] == "payment" && e["key"]["payment_id"].as_i64() == Some(marker)
        })
    });
    let expected = star::oracle_versions(&oracle.events());
    let actual = star::fact_versions(&wh).await;
    let lost: Vec<_> = expected.difference(&actual).take(5).collect();
    let extra: Vec<_> = actual.difference(&expected).take(5).collect();
    assert!(
        lost.is_empty() && extra.is_empty(),
        "lost {lost:?}, extra {extra:?}"
    );
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
    let oracle = Proc::spawn(
        &[
            "stream",
            "--sink",
            "stdout",
            "--slot",
            "oracle",
            "--source-url",
            &url,
            "--state-dir",
            &oracle_state,
        ],
        &[],
    );
    oracle.wait_log("streaming changes", WAIT);
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
    let marker: i64 = src
        .query_one("SELECT max(payment_id)::bigint FROM payment", &[])
        .await
        .unwrap()
        .get(0);
    oracle.wait_events("the oracle", WAIT, |ev| {
        ev.iter().any(|e| {
            e["source"]["table"] == "payment" && e["key"]["payment_id"].as_i64() == Some(marker)
        })
    });
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
    let last_line = |err: &str| err.lines().last().unwrap_or_default().to_string();
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
