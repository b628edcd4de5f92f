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
