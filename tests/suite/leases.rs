//! Shard leases under a frozen consumer: two consumers over four shards under the workload, one
//! frozen with SIGSTOP (sockets open, as a paused pod or a partitioned node). The other takes
//! its shards once their leases expire and the warehouse catches up while the frozen one stays
//! frozen; then it resumes (SIGCONT) and its late commit changes nothing. Frozen at a random
//! moment, and frozen by a fault point right after its lake write, inside its batch
//! transaction. Afterwards the warehouse is the transform of the source with every fact version
//! once, the lake holds every change once in committed files only, a warehouse replayed from
//! the lake equals the live one, and a graceful stop gives every lease back.

use crate::support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::moto::Moto;
use support::star::{self, assert_star, wait_star};
use support::{consume_args, run, stream_kinesis_args, totesys, PgCluster, Proc};

const WAIT: Duration = Duration::from_secs(180);
const PACE: Duration = Duration::from_millis(10);
/// Short leases, so the test takes seconds.
const LEASE: &str = "3s";

fn signal(p: &Proc, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &p.pid().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill {sig}");
}

/// Whether the process is stopped (state T in /proc).
fn stopped(p: &Proc) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", p.pid()))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st == "T"))
        })
        .unwrap_or(false)
}

async fn a_frozen_consumer_changes_nothing(fault: Option<&str>) {
    let moto = Moto::start();
    moto.create_stream("totes", 4).await;
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    let rebuilt = pg.create_db("rebuilt").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    let (src_url, wh_url, rebuilt_url) = (pg.url("src"), pg.url("wh"), pg.url("rebuilt"));
    let e = moto.env();
    support::setup(&src_url, &wh_url, &e);
    support::setup(&src_url, &rebuilt_url, &e);
    let state = support::temp_dir("lease").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let oracle = support::spawn_oracle(&src_url, &format!("{state}/oracle"));
    let streamer = Proc::spawn(&stream_kinesis_args("totes", &src_url, &state, &lake), &e);
    streamer.wait_log("streaming changes", WAIT);
    let consumer = |id: &'static str| {
        let mut args = consume_args("totes", &wh_url, &lake);
        args.extend(["--consumer-id", id, "--lease-timeout", LEASE]);
        args
    };
    let mut a_env = e.clone();
    if let Some(f) = fault {
        a_env.push(("TOTES_CDC_FAULT", f));
    }
    let mut a = Proc::spawn(&consumer("a"), &a_env);
    let b = Proc::spawn(&consumer("b"), &e);
    let stop = Arc::new(AtomicBool::new(false));
    let workload = totesys::spawn_workload(src_url.clone(), stop.clone(), PACE);

    match fault {
        // Frozen by its own fault point, right after writing a batch's lake files.
        Some(_) => a.wait_log("stopping at", WAIT),
        None => {
            std::thread::sleep(Duration::from_secs(3));
            signal(&a, "-STOP");
        }
    }
    let frozen_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stopped(&a) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(stopped(&a), "consumer a is frozen");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    assert!(workload.await.unwrap() > 50);
    // The other consumer takes every shard and the warehouse catches up, a still frozen.
    wait_star(&src, &wh, WAIT).await;
    eprintln!(
        "caught up {:.1}s after the freeze (lease timeout {LEASE})",
        frozen_at.elapsed().as_secs_f64()
    );
    assert!(stopped(&a), "consumer a stayed frozen");
    let owners: Vec<String> = wh
        .query(
            "SELECT owner FROM totes_cdc.shard_leases WHERE stream = 'totes' AND owner IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !owners.is_empty() && owners.iter().all(|o| o.starts_with("b#")),
        "b holds every lease: {owners:?}"
    );

    // a resumes, mid-batch, with changes still coming.
    signal(&a, "-CONT");
    let stop = Arc::new(AtomicBool::new(false));
    let workload = totesys::spawn_workload(src_url.clone(), stop.clone(), PACE);
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    workload.await.unwrap();
    if fault.is_some() {
        a.wait_log("passed to another consumer", WAIT);
    }
    wait_star(&src, &wh, WAIT).await;
    support::wait_oracle_caught_up(&oracle, &src, WAIT).await;
    let expected = star::oracle_versions(&oracle.events());
    let actual = star::fact_versions(&wh).await;
    support::assert_same_sets("fact versions", &expected, &actual);
    // The lake: every change once, committed files only, each manifest path in place.
    support::lake::assert_holds_what_the_oracle_saw(&wh, &lake, &oracle.events()).await;
    // And the lake rebuilds the same warehouse.
    a.kill9();
    let (status, out, err) = run(
        &["replay", "--warehouse-url", &rebuilt_url, "--lake", &lake],
        &[],
    );
    assert!(status.success(), "replay: {out}{err}");
    assert_star(&src, &rebuilt).await;
    assert_eq!(star::fact_versions(&rebuilt).await, actual);
    // A graceful stop hands the shards over at once: no lease left held.
    let held_by_b = || async {
        wh.query_one(
            "SELECT count(*) FROM totes_cdc.shard_leases WHERE owner LIKE 'b#%'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    assert!(held_by_b().await > 0);
    let mut b = b;
    assert!(b.terminate(WAIT).success(), "{}", b.stderr());
    assert_eq!(held_by_b().await, 0, "b gave its leases back");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_frozen_at_a_random_moment_loses_its_shards_and_nothing_else() {
    a_frozen_consumer_changes_nothing(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_frozen_after_its_lake_write_is_fenced_when_it_resumes() {
    a_frozen_consumer_changes_nothing(Some("after-lake-write:3:stop")).await;
}
