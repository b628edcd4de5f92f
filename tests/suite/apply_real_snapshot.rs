//! The real totesys snapshot of 2024-11-15 (about 80k rows) through `run`: the warehouse holds
//! the spec's transform of it exactly — every table, every column.

use crate::support;

use std::time::Duration;

use support::star::{assert_star, sync};
use support::{fixture, totesys, PgCluster, Proc};

#[tokio::test(flavor = "multi_thread")]
async fn the_real_snapshot_lands_as_the_spec_says() {
    let pg = PgCluster::start();
    let src = pg.create_db("totesys").await;
    let wh = pg.create_db("warehouse").await;
    src.batch_execute(&support::totesys_schema()).await.unwrap();
    let rows = fixture::load(&src).await;
    assert_eq!(
        rows,
        30 + 20 + 3 + 8 + 473 + 15_836 + 4 + 4_649 + 11_187 + 20 + 15_836
    );
    totesys::publish(&src).await;
    let state = support::temp_dir("real").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let (src_url, wh_url) = (pg.url("totesys"), pg.url("warehouse"));
    let _p = Proc::spawn(
        &[
            "run",
            "--source-url",
            &src_url,
            "--warehouse-url",
            &wh_url,
            "--state-dir",
            &state,
            "--lake",
            &lake,
        ],
        &[],
    );
    sync(&src, &wh, Duration::from_secs(300)).await;
    assert_star(&src, &wh).await;
    // Every source row is one version; staging mirrors every row.
    for (table, fact, key) in [
        ("sales_order", "fact_sales_order", "sales_order_id"),
        ("purchase_order", "fact_purchase_order", "purchase_order_id"),
        ("payment", "fact_payment", "payment_id"),
    ] {
        let n: i64 = src
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        let f: i64 = wh
            .query_one(
                &format!("SELECT count(DISTINCT ({key}, source_lsn, source_seq)) FROM {fact}"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(f, n, "{fact}");
        let s: i64 = wh
            .query_one(&format!("SELECT count(*) FROM staging.{table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(s, n, "staging.{table}");
    }
    let dead: i64 = wh
        .query_one("SELECT count(*) FROM totes_cdc.dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0);

    // verify agrees, and status reports the positions.
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
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("no differences"), "{out}");
    let (status, out, err) = support::run(
        &[
            "status",
            "--json",
            "--source-url",
            &src_url,
            "--warehouse-url",
            &wh_url,
        ],
        &[],
    );
    assert!(status.success(), "{err}");
    let s: serde_json::Value = serde_json::from_str(out.trim()).expect("status JSON");
    for key in [
        "source_current_lsn",
        "slot_confirmed_flush_lsn",
        "warehouse_applied_lsn",
        "lag_bytes",
        "lag_seconds",
        "dead_letters",
    ] {
        assert!(s.get(key).is_some(), "status lacks {key}: {s}");
    }
    assert_eq!(s["dead_letters"], 0);
    assert!(s["warehouse_applied_lsn"].is_string());

    // A warehouse that drifted: verify names the table and the key, and exits 1.
    wh.batch_execute(
        "UPDATE staging.staff SET last_name = 'Changed' WHERE staff_id = 3;
         UPDATE dim_location SET city = 'Nowhere' WHERE location_id = 5;
         UPDATE fact_payment SET paid = NOT paid WHERE payment_id = 42 AND is_current;",
    )
    .await
    .unwrap();
    let (status, out, _) = support::run(
        &[
            "verify",
            "--source-url",
            &src_url,
            "--warehouse-url",
            &wh_url,
        ],
        &[],
    );
    assert!(!status.success());
    assert!(
        out.contains("DIFF  staging public.staff") && out.contains("key 3: differs"),
        "{out}"
    );
    assert!(
        out.contains("DIFF  public.dim_location") && out.contains("Nowhere"),
        "{out}"
    );
    assert!(
        out.contains("DIFF  public.fact_payment") && out.contains("\"payment_id\": 42"),
        "{out}"
    );
}

/// `X/Y` → the LSN as a number.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// The pipeline killed more than once inside the initial snapshot of the real fixture while
/// the workload writes: the re-copies are not changes. Every change after the slot's
/// consistent point is one fact version, a key has at most one snapshot version (exactly one
/// when nothing changed it since), no two consecutive versions of a key are identical, and
/// `verify` passes.
#[tokio::test(flavor = "multi_thread")]
async fn kills_inside_the_initial_snapshot_under_load_add_no_fact_versions() {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let pg = PgCluster::start();
    let src = pg.create_db("totesys").await;
    let wh = pg.create_db("warehouse").await;
    src.batch_execute(&support::totesys_schema()).await.unwrap();
    fixture::load(&src).await;
    totesys::publish(&src).await;
    let (src_url, wh_url) = (pg.url("totesys"), pg.url("warehouse"));
    let state = support::temp_dir("real-kills")
        .to_string_lossy()
        .into_owned();
    let lake = format!("{state}/lake");
    let oracle = support::spawn_oracle(&src_url, &format!("{state}/oracle"));
    let stop = Arc::new(AtomicBool::new(false));
    let workload = totesys::spawn_workload(src_url.clone(), stop.clone(), Duration::from_millis(5));
    let args = support::run_args(&src_url, &wh_url, &state, &lake);
    let snapshot_state = format!("{state}/totes_cdc.snapshot.json");
    let read_state = || -> serde_json::Value {
        std::fs::read(&snapshot_state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    };
    let mut inside = 0;
    for wait_ms in [1500, 1200, 1000, 1500] {
        let mut p = Proc::spawn(&args, &[]);
        std::thread::sleep(Duration::from_millis(wait_ms));
        p.kill9();
        if read_state()["complete"] == false {
            inside += 1;
        }
    }
    eprintln!("{inside} kills inside the snapshot");
    assert!(inside >= 2, "the kills came inside the snapshot ({inside})");
    let _last = Proc::spawn(&args, &[]);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    assert!(workload.await.unwrap() > 50);
    sync(&src, &wh, Duration::from_secs(300)).await;
    assert_star(&src, &wh).await;
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
    assert!(status.success(), "{out}{err}");

    let cp = lsn(read_state()["consistent_point"].as_str().expect("cp"));
    support::wait_oracle_caught_up(&oracle, &src, Duration::from_secs(180)).await;
    let after_cp = |l: &str, seq: i64| lsn(l) > cp || (lsn(l) == cp && seq >= 0);
    let expected: BTreeSet<_> = support::star::oracle_versions(&oracle.events())
        .into_iter()
        .filter(|(_, _, l, s)| after_cp(l, *s))
        .collect();
    let versions = support::star::fact_versions(&wh).await;
    let streamed: BTreeSet<_> = versions.iter().filter(|v| v.3 >= 0).cloned().collect();
    support::assert_same_sets("versions after the consistent point", &expected, &streamed);
    let mut snapshot: BTreeMap<(String, i64), usize> = BTreeMap::new();
    for v in versions.iter().filter(|v| v.3 < 0) {
        *snapshot.entry((v.0.clone(), v.1)).or_default() += 1;
    }
    let twice: Vec<_> = snapshot.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        twice.is_empty(),
        "keys with two snapshot versions: {twice:?}"
    );
    // A key nothing changed since the consistent point has its snapshot version.
    let changed: BTreeSet<(String, i64)> = oracle
        .events()
        .iter()
        .filter(|e| {
            e["source"]["lsn"]
                .as_str()
                .is_some_and(|l| after_cp(l, e["source"]["seq"].as_i64().unwrap_or(-1)))
        })
        .filter_map(|e| {
            let t = e["source"]["table"].as_str()?.to_string();
            let k = e["key"].as_object()?.values().next()?.as_i64()?;
            Some((t, k))
        })
        .collect();
    for (table, key) in [
        ("sales_order", "sales_order_id"),
        ("purchase_order", "purchase_order_id"),
        ("payment", "payment_id"),
    ] {
        let ids: Vec<i64> = src
            .query(&format!("SELECT {key}::bigint FROM {table}"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let missing: Vec<_> = ids
            .iter()
            .filter(|id| !changed.contains(&(table.to_string(), **id)))
            .filter(|id| !snapshot.contains_key(&(table.to_string(), **id)))
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "{table}: no snapshot version for {missing:?}"
        );
    }
    // No version repeats the one before it.
    for (fact, key, record) in [
        ("fact_sales_order", "sales_order_id", "sales_record_id"),
        (
            "fact_purchase_order",
            "purchase_order_id",
            "purchase_record_id",
        ),
        ("fact_payment", "payment_id", "payment_record_id"),
    ] {
        let repeats: i64 = wh
            .query_one(
                &format!(
                    "SELECT count(*) FROM (SELECT v, lag(v) OVER (PARTITION BY k ORDER BY l, s) AS p FROM \
                       (SELECT {key} AS k, source_lsn AS l, source_seq AS s, \
                               to_jsonb(f) - '{record}' - 'source_lsn' - 'source_seq' - 'is_current' AS v \
                        FROM {fact} f) x) y WHERE v = p"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(repeats, 0, "{fact}: consecutive identical versions");
    }
}
