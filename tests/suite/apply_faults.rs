//! The promises under faults: `run` killed at random moments (and right between a warehouse
//! commit and its acknowledgement) under a steady workload, and a warehouse restarted mid-run.
//! After draining, the warehouse is the transform of the source and every fact version is
//! there exactly once — checked against an independent capture of the same changes.

use crate::support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::star::{self, assert_star, sync};
use support::{run_args, totesys, PgCluster, Proc};

const WAIT: Duration = Duration::from_secs(180);

/// `run` with a heartbeat every second, so the slot moves on while the workload pauses.
fn args_with_heartbeat<'a>(
    src: &'a str,
    wh: &'a str,
    state: &'a str,
    lake: &'a str,
) -> Vec<&'a str> {
    let mut args = run_args(src, wh, state, lake);
    args.extend(["--heartbeat-interval", "1s"]);
    args
}

struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_loses_and_doubles_nothing() {
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    let oracle_state = support::temp_dir("oracle").to_string_lossy().into_owned();
    let oracle = support::spawn_oracle(&src_url, &oracle_state);
    let state = support::temp_dir("kill-run").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    // The pipeline's slot exists before the orders do: every fact version is streamed.
    let first = Proc::spawn(&args_with_heartbeat(&src_url, &wh_url, &state, &lake), &[]);
    first.wait_log("streaming changes", WAIT);
    drop(first);

    let stop = Arc::new(AtomicBool::new(false));
    let workload = totesys::spawn_workload(src_url.clone(), stop.clone(), Duration::from_millis(5));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("kill schedule seed {seed}");
    let mut rng = Rng(seed);
    for round in 0..12 {
        if round % 4 == 1 {
            // Crash exactly between a warehouse commit and its acknowledgement.
            let nth = (1 + rng.next(4)).to_string();
            let mut p = Proc::spawn(
                &args_with_heartbeat(&src_url, &wh_url, &state, &lake),
                &[("TOTES_CDC_FAULT", &format!("after-commit:{nth}"))],
            );
            let status = p.wait(WAIT);
            assert!(!status.success());
            assert!(
                p.stderr().contains("crashing at after-commit"),
                "{}",
                p.stderr()
            );
        } else {
            let mut p = Proc::spawn(&args_with_heartbeat(&src_url, &wh_url, &state, &lake), &[]);
            std::thread::sleep(Duration::from_millis(200 + rng.next(2500)));
            p.kill9();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes = workload.await.unwrap();
    assert!(writes > 50, "the workload ran ({writes} writes)");

    let _last = Proc::spawn(&args_with_heartbeat(&src_url, &wh_url, &state, &lake), &[]);
    sync(&src, &wh, WAIT).await;
    assert_star(&src, &wh).await;
    // Every version the independent capture saw is a fact exactly once, and nothing else is.
    support::wait_oracle_caught_up(&oracle, &src, WAIT).await;
    let expected = star::oracle_versions(&oracle.events());
    let actual = star::fact_versions(&wh).await;
    let lost: Vec<_> = expected.difference(&actual).take(5).collect();
    let extra: Vec<_> = actual.difference(&expected).take(5).collect();
    assert!(
        lost.is_empty() && extra.is_empty(),
        "lost {lost:?}, extra {extra:?}"
    );
    let dead: i64 = wh
        .query_one("SELECT count(*) FROM totes_cdc.dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warehouse_restart_is_waited_out() {
    let source_pg = PgCluster::start();
    let wh_pg = PgCluster::start();
    let src = source_pg.create_db("src").await;
    let wh = wh_pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    let (src_url, wh_url) = (source_pg.url("src"), wh_pg.url("wh"));
    let state = support::temp_dir("whrestart")
        .to_string_lossy()
        .into_owned();
    let lake = format!("{state}/lake");
    let p = Proc::spawn(&args_with_heartbeat(&src_url, &wh_url, &state, &lake), &[]);
    sync(&src, &wh, WAIT).await;
    drop(wh);
    wh_pg.stop();
    for n in 0..30 {
        totesys::sale(&src, n).await;
    }
    p.wait_log("warehouse unavailable, retrying", WAIT);
    // Nothing was confirmed while the warehouse was down: the slot holds the changes.
    std::thread::sleep(Duration::from_secs(2));
    wh_pg.start_again();
    let wh = wh_pg.connect("wh").await;
    sync(&src, &wh, WAIT).await;
    assert_star(&src, &wh).await;
    let n: i64 = wh
        .query_one("SELECT count(*) FROM fact_sales_order", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 30);
}
