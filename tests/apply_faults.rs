//! The promises under faults: `run` killed at random moments (and right between a warehouse
//! commit and its acknowledgement) under a steady workload, and a warehouse restarted mid-run.
//! After draining, the warehouse is the transform of the source and every fact version is
//! there exactly once — checked against an independent capture of the same changes.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::star::{assert_star, sync};
use support::{totesys, PgCluster, Proc};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(180);

/// Sales, purchases, mark-paid updates, hand edits and deletes until `stop`, surviving
/// connection loss.
fn spawn_workload(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut n: i32 = 1000;
        let mut done = 0;
        while !stop.load(Ordering::Relaxed) {
            let Ok((db, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(conn);
            while !stop.load(Ordering::Relaxed) {
                let sql = match n % 10 {
                    0..=4 => totesys::sale_sql(n),
                    5..=6 => totesys::purchase_sql(n),
                    7 => "UPDATE payment SET paid = true, last_updated = now()::timestamp(3) \
                          WHERE payment_id IN (SELECT payment_id FROM payment WHERE NOT paid ORDER BY payment_id LIMIT 3)"
                        .to_string(),
                    8 => format!(
                        "UPDATE staff SET email_address = 'e{n}@terrifictotes.com' WHERE staff_id = {};
                         UPDATE department SET manager = 'M{n}', location = CASE WHEN location = 'Leeds' THEN 'Leds' ELSE 'Leeds' END WHERE department_id = {};
                         UPDATE address SET phone = '0161 {n}' WHERE address_id = {}",
                        n % 20 + 1,
                        n % 8 + 1,
                        n % 30 + 1
                    ),
                    _ => "DELETE FROM sales_order WHERE sales_order_id = (SELECT min(sales_order_id) FROM sales_order)"
                        .to_string(),
                };
                if db.batch_execute(&sql).await.is_err() {
                    break;
                }
                n += 1;
                done += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        done
    })
}

fn run_args<'a>(src: &'a str, wh: &'a str, state: &'a str, lake: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--source-url",
        src,
        "--warehouse-url",
        wh,
        "--state-dir",
        state,
        "--lake",
        lake,
        "--batch-max-ms",
        "100",
        "--heartbeat-interval",
        "1s",
    ]
}

/// (table, key, lsn, seq) of every fact version in the warehouse.
async fn fact_versions(wh: &Client) -> BTreeSet<(String, i64, String, i64)> {
    let mut out = BTreeSet::new();
    for (fact, table, key) in [
        ("fact_sales_order", "sales_order", "sales_order_id"),
        ("fact_purchase_order", "purchase_order", "purchase_order_id"),
        ("fact_payment", "payment", "payment_id"),
    ] {
        let rows = wh
            .query(
                &format!("SELECT {key}::bigint, source_lsn::text, source_seq::bigint FROM {fact}"),
                &[],
            )
            .await
            .unwrap();
        let n = rows.len();
        for r in rows {
            out.insert((table.to_string(), r.get(0), r.get(1), r.get(2)));
        }
        let distinct = out.iter().filter(|v| v.0 == table).count();
        assert_eq!(n, distinct, "{fact} holds a version twice");
    }
    out
}

/// The same from the independent capture: every insert and update of the order tables.
fn oracle_versions(events: &[serde_json::Value]) -> BTreeSet<(String, i64, String, i64)> {
    events
        .iter()
        .filter(|e| e["op"] == "c" || e["op"] == "u" || e["op"] == "r")
        .filter_map(|e| {
            let table = e["source"]["table"].as_str()?;
            let key = match table {
                "sales_order" => "sales_order_id",
                "purchase_order" => "purchase_order_id",
                "payment" => "payment_id",
                _ => return None,
            };
            Some((
                table.to_string(),
                e["key"][key].as_i64()?,
                e["source"]["lsn"].as_str()?.to_string(),
                e["source"]["seq"].as_i64()?,
            ))
        })
        .collect()
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
    let oracle = Proc::spawn(
        &[
            "stream",
            "--sink",
            "stdout",
            "--source-url",
            &src_url,
            "--slot",
            "oracle",
            "--state-dir",
            &oracle_state,
        ],
        &[],
    );
    oracle.wait_log("streaming changes", WAIT);
    let state = support::temp_dir("kill-run").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    // The pipeline's slot exists before the orders do: every fact version is streamed.
    let first = Proc::spawn(&run_args(&src_url, &wh_url, &state, &lake), &[]);
    first.wait_log("streaming changes", WAIT);
    drop(first);

    let stop = Arc::new(AtomicBool::new(false));
    let workload = spawn_workload(src_url.clone(), stop.clone());
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
                &run_args(&src_url, &wh_url, &state, &lake),
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
            let mut p = Proc::spawn(&run_args(&src_url, &wh_url, &state, &lake), &[]);
            std::thread::sleep(Duration::from_millis(200 + rng.next(2500)));
            p.kill9();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes = workload.await.unwrap();
    assert!(writes > 50, "the workload ran ({writes} writes)");

    let _last = Proc::spawn(&run_args(&src_url, &wh_url, &state, &lake), &[]);
    sync(&src, &wh, WAIT).await;
    assert_star(&src, &wh).await;
    // Every version the independent capture saw is a fact exactly once, and nothing else is.
    let marker: i64 = src
        .query_one("SELECT max(payment_id)::bigint FROM payment", &[])
        .await
        .unwrap()
        .get(0);
    oracle.wait_events("the oracle to catch up", WAIT, |e| {
        e.iter().any(|e| {
            e["source"]["table"] == "payment" && e["key"]["payment_id"].as_i64() == Some(marker)
        })
    });
    let expected = oracle_versions(&oracle.events());
    let actual = fact_versions(&wh).await;
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
    let p = Proc::spawn(&run_args(&src_url, &wh_url, &state, &lake), &[]);
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
