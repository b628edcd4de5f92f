//! The embedded pipeline end to end: a totesys source under a realistic workload, `run`, and a
//! warehouse that holds the spec's transform of the source.

use crate::support;

use std::time::Duration;

use support::star::{assert_star, sync};
use support::{totesys, PgCluster, Proc};

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn run_follows_a_realistic_workload() {
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    for n in 0..20 {
        totesys::sale(&src, n).await;
        totesys::purchase(&src, n).await;
    }
    let state = support::temp_dir("apply").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    let p = Proc::spawn(
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
            "--batch-max-ms",
            "200",
        ],
        &[],
    );
    sync(&src, &wh, WAIT).await;
    assert_star(&src, &wh).await;

    // The day's business: new bundles, the 07:55 "mark paid", hand edits that do not touch
    // last_updated, and deletes of orders whose transaction is then SET NULL.
    for n in 20..30 {
        totesys::sale(&src, n).await;
        totesys::purchase(&src, n).await;
    }
    src.batch_execute(
        "UPDATE payment SET paid = true, last_updated = now()::timestamp(3) WHERE payment_date <= '2025-02-05';
         UPDATE staff SET email_address = 'jeremie.okeefe@terrifictotes.com' WHERE staff_id = 7;
         UPDATE department SET location = 'Leeds' WHERE department_name = 'Dispatch';
         UPDATE address SET phone = '0161 496 0000' WHERE address_id = (SELECT legal_address_id FROM counterparty WHERE counterparty_id = 3);
         UPDATE sales_order SET units_sold = units_sold + 1 WHERE sales_order_id = 1;
         UPDATE sales_order SET units_sold = units_sold + 1 WHERE sales_order_id = 1;
         DELETE FROM sales_order WHERE sales_order_id = 2;
         DELETE FROM purchase_order WHERE purchase_order_id = 3;",
    )
    .await
    .unwrap();
    sync(&src, &wh, WAIT).await;
    assert_star(&src, &wh).await;

    // One fact version per change: order 1 was inserted and updated twice.
    let versions: i64 = wh
        .query_one(
            "SELECT count(*) FROM fact_sales_order WHERE sales_order_id = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions, 3);
    // The deleted order keeps its history, none of it current.
    let r = wh
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE is_current) FROM fact_sales_order WHERE sales_order_id = 2",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (1, 0));
    // Its transaction lost the reference (ON DELETE SET NULL), and the dimension followed.
    let so: Option<i32> = wh
        .query_one("SELECT t.sales_order_id FROM dim_transaction t JOIN staging.\"transaction\" s USING (transaction_id) WHERE s.transaction_type = 'SALE' AND s.sales_order_id IS NULL LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(so, None);
    // Staging mirrors the source, with a tombstone for the deleted order.
    let tomb: bool = wh
        .query_one(
            "SELECT _deleted FROM staging.sales_order WHERE sales_order_id = 2",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(tomb);
    drop(p);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_toast_value_keeps_the_stored_one() {
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    src.batch_execute(
        "CREATE TABLE doc (id int PRIMARY KEY, title text, body text);
         INSERT INTO doc VALUES (1, 'a', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 2000) g));
         CREATE PUBLICATION totes_cdc FOR TABLE doc;",
    )
    .await
    .unwrap();
    let state = support::temp_dir("toast").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
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
            "--model",
            "none",
            "--batch-max-ms",
            "100",
        ],
        &[],
    );
    let deadline = std::time::Instant::now() + WAIT;
    let applied = |n: i64| {
        let wh = &wh;
        async move {
            wh.query_opt("SELECT count(*) FROM staging.doc WHERE title = 'c'", &[])
                .await
                .ok()
                .flatten()
                .map(|r| r.get::<_, i64>(0))
                == Some(n)
        }
    };
    // One update in its own batch (the body comes from staging), then two in one batch (the
    // second takes the body of the first).
    src.batch_execute("UPDATE doc SET title = 'b' WHERE id = 1")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    src.batch_execute("BEGIN; UPDATE doc SET body = 'short now' WHERE id = 1; UPDATE doc SET title = 'c' WHERE id = 1; COMMIT;")
        .await
        .unwrap();
    while !applied(1).await {
        assert!(std::time::Instant::now() < deadline, "not applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body: String = wh
        .query_one("SELECT body FROM staging.doc WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(body, "short now");
    src.batch_execute("UPDATE doc SET body = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 3000) g) WHERE id = 1")
        .await
        .unwrap();
    src.batch_execute("UPDATE doc SET title = 'd' WHERE id = 1")
        .await
        .unwrap();
    let expected: String = src
        .query_one("SELECT body FROM doc WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    loop {
        let r = wh
            .query_one("SELECT title, body FROM staging.doc WHERE id = 1", &[])
            .await
            .unwrap();
        if r.get::<_, String>(0) == "d" {
            assert_eq!(
                r.get::<_, Option<String>>(1).as_deref(),
                Some(expected.as_str()),
                "the TOASTed body was lost"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rows of a megabyte each, 300 of them in one transaction: capture waits while the change
/// events not yet applied hold `channel-max-bytes`, batches close at `batch-max-bytes`, so the
/// process holds a few budgets' worth, not the transaction. (Bounded by items alone, as before,
/// the same run grew by more than the transaction's 300 MB.) Every row lands intact.
#[tokio::test(flavor = "multi_thread")]
async fn rows_of_a_megabyte_stay_within_the_byte_bounds() {
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    src.batch_execute(
        "CREATE TABLE blobs (id int PRIMARY KEY, body text);
         ALTER TABLE blobs ALTER COLUMN body SET STORAGE EXTERNAL;
         ALTER PUBLICATION totes_cdc ADD TABLE blobs;",
    )
    .await
    .unwrap();
    let state = support::temp_dir("blobs").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    let mut args = support::run_args(&src_url, &wh_url, &state, &lake);
    args.extend(["--channel-max-bytes", "8MiB", "--batch-max-bytes", "4MiB"]);
    let p = Proc::spawn(&args, &[]);
    sync(&src, &wh, WAIT).await;
    let baseline = p.peak_rss_kib();
    src.batch_execute(
        "INSERT INTO blobs SELECT g, repeat(md5(g::text), 32768) FROM generate_series(1, 300) g",
    )
    .await
    .unwrap();
    sync(&src, &wh, Duration::from_secs(600)).await;
    let peak = p.peak_rss_kib();
    assert!(
        peak < baseline + 150 * 1024,
        "peak RSS grew from {baseline} KiB to {peak} KiB for a 300 MB transaction"
    );
    let digest = "SELECT count(*)::int, md5(string_agg(md5(body), ',' ORDER BY id)) FROM ";
    let a = src
        .query_one(&format!("{digest} blobs"), &[])
        .await
        .unwrap();
    let b = wh
        .query_one(&format!("{digest} staging.blobs WHERE NOT _deleted"), &[])
        .await
        .unwrap();
    assert_eq!(a.get::<_, i32>(0), 300);
    assert_eq!(
        (a.get::<_, i32>(0), a.get::<_, String>(1)),
        (b.get::<_, i32>(0), b.get::<_, String>(1))
    );
    // Several batches, none above the bound (4 MiB of ~1 MB rows: at most 5 events).
    let files: i64 = wh
        .query_one(
            "SELECT count(*) FROM totes_cdc.lake_files WHERE table_name = 'public.blobs' AND rows > 5",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(files, 0, "a batch went past batch-max-bytes");
}
