//! The promises under faults: `run` killed at random moments (and right between a warehouse
//! commit and its acknowledgement, the lake write and the commit, the commit and the lake
//! files' publication) under a steady workload with a large transaction; a warehouse restarted
//! mid-run; a warehouse, then a source, that refuse connections for a while, waited out with
//! the process alive, not ready and its lag rising. After draining, the warehouse is the
//! transform of the source and every fact version is there exactly once, and the lake holds
//! every change in exactly one committed file, with nothing else visible to a glob — checked
//! against an independent capture of the same changes.

use crate::support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::scrape::{get, metrics_addr, wait_metrics, wait_ready};
use support::star::{self, assert_star, sync};
use support::{run_args, totesys, PgCluster, Proc};
use tokio_postgres::Client;

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
    // Crash exactly between a warehouse commit and its acknowledgement, between the lake write
    // and the commit, and between the commit and the lake files' publication.
    let points = ["after-commit", "after-lake-write", "before-lake-publish"];
    for round in 0..12 {
        if round == 5 {
            // A large transaction among the small ones.
            src.batch_execute(
                "UPDATE sales_order SET units_sold = units_sold + 1, last_updated = now() \
                 WHERE sales_order_id % 3 = 0",
            )
            .await
            .unwrap();
        }
        if round % 2 == 1 {
            let point = points[(round / 2) % points.len()];
            let nth = (1 + rng.next(4)).to_string();
            let mut p = Proc::spawn(
                &args_with_heartbeat(&src_url, &wh_url, &state, &lake),
                &[("TOTES_CDC_FAULT", &format!("{point}:{nth}"))],
            );
            let status = p.wait(WAIT);
            assert!(!status.success());
            assert!(
                p.stderr().contains(&format!("crashing at {point}")),
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
    support::assert_same_sets("fact versions", &expected, &actual);
    let dead: i64 = wh
        .query_one("SELECT count(*) FROM totes_cdc.dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0);
    // The lake too: each change in exactly one committed file, and every one there.
    support::lake::assert_holds_what_the_oracle_saw(&wh, &lake, &oracle.events()).await;
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

/// Closes `db` to new connections and ends its sessions (all but `keep`), as maintenance or a
/// failover does; `open` takes it back.
async fn refuse(admin: &Client, db: &str, keep: Option<i32>) {
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = '{db}' AND pid <> pg_backend_pid() AND pid <> {};",
            keep.unwrap_or(0)
        ))
        .await
        .unwrap();
}

async fn open(admin: &Client, db: &str) {
    admin
        .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn databases_that_refuse_connections_are_waited_out_alive_and_visible() {
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    let admin = pg.connect("postgres").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    let state = support::temp_dir("refuse").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let p = Proc::spawn(&args_with_heartbeat(&src_url, &wh_url, &state, &lake), &[]);
    let addr = metrics_addr(&p);
    sync(&src, &wh, WAIT).await;
    wait_ready(&addr, 200, WAIT);
    let lag_bytes = |m: &support::scrape::Metrics| m.sum("totes_cdc_replication_lag_bytes", &[]);

    // The warehouse refuses connections: the process stays up, not ready, the lag rising.
    drop(wh);
    refuse(&admin, "wh", None).await;
    for n in 0..20 {
        totesys::sale(&src, n).await;
    }
    let body = wait_ready(&addr, 503, WAIT);
    assert!(body.contains("warehouse"), "{body}");
    let first = lag_bytes(&wait_metrics(
        &addr,
        "lag while the warehouse refuses",
        WAIT,
        |m| lag_bytes(m) > 0.0,
    ));
    for n in 20..40 {
        totesys::sale(&src, n).await;
    }
    let peak = lag_bytes(&wait_metrics(&addr, "the lag rising", WAIT, |m| {
        lag_bytes(m) > first
    }));
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        get(&addr, "/healthz").0,
        200,
        "alive while the warehouse refuses"
    );
    open(&admin, "wh").await;
    wait_ready(&addr, 200, WAIT);
    let wh = pg.connect("wh").await;
    sync(&src, &wh, WAIT).await;
    assert_star(&src, &wh).await;
    wait_metrics(&addr, "the lag falling", WAIT, |m| lag_bytes(m) < peak);

    // The source refuses connections (the replication one included).
    let keep: i32 = src
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    refuse(&admin, "src", Some(keep)).await;
    for n in 40..60 {
        totesys::sale(&src, n).await;
    }
    let body = wait_ready(&addr, 503, WAIT);
    assert!(body.contains("replication"), "{body}");
    let lag_seconds =
        |m: &support::scrape::Metrics| m.sum("totes_cdc_replication_lag_seconds", &[]);
    wait_metrics(&addr, "the lag in seconds rising", WAIT, |m| {
        lag_seconds(m) > 2.0
    });
    assert_eq!(
        get(&addr, "/healthz").0,
        200,
        "alive while the source refuses"
    );
    open(&admin, "src").await;
    wait_ready(&addr, 200, WAIT);
    sync(&src, &wh, WAIT).await;
    assert_star(&src, &wh).await;
    let n: i64 = wh
        .query_one("SELECT count(*) FROM fact_sales_order", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 60, "every sale landed once");
    support::lake::assert_each_change_once(&wh, &lake).await;
    drop(p);
}
