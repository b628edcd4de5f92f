//! `replay`: the lake and the Kinesis stream are durable copies of the history. A warehouse
//! rebuilt from the lake alone equals the original (every staging row, value for value, every
//! fact version); replaying again changes nothing; replaying from an LSN repairs a warehouse
//! that lost what came after it, from an S3 lake through the real SDK; a warehouse rebuilt from
//! the Kinesis stream (moto) equals the one its consumers built; bad input stops with the fix.

use crate::support;

use std::time::Duration;

use support::moto::Moto;
use support::star::{assert_star, fact_versions, sync, wait_star};
use support::{consume_args, run, run_args, stream_kinesis_args, totesys, PgCluster, Proc};

const WAIT: Duration = Duration::from_secs(120);

fn verify(src_url: &str, wh_url: &str) -> (bool, String) {
    let (status, out, err) = run(
        &["verify", "--source-url", src_url, "--warehouse-url", wh_url],
        &[],
    );
    (status.success(), format!("{out}{err}"))
}

fn replay(wh_url: &str, lake: &str, extra: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let mut args = vec!["replay", "--warehouse-url", wh_url, "--lake", lake];
    args.extend_from_slice(extra);
    let (status, out, err) = run(&args, envs);
    (status.success(), format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warehouse_rebuilt_from_the_lake_equals_the_original() {
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    let rebuilt = pg.create_db("rebuilt").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    // Values the lake must give back exactly, infinities and TOAST included.
    src.batch_execute(
        "CREATE TABLE odd_values (id int PRIMARY KEY, i2 smallint, i8 bigint, f4 real, f8 float8,
           n numeric, n10 numeric(10,2), b bytea, d date, t time, ts timestamp, tstz timestamptz,
           j jsonb, u uuid, ai int[], at text[], iv interval, big text, flag boolean);
         ALTER TABLE odd_values ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO odd_values VALUES
           (1, -7, 9223372036854775807, 1.5, -2.25, '12345678901234567890.123', '-12.30',
            '\\x00ff', '2024-02-29', '23:59:59.999999', '2024-11-15 14:40:10.188', '2024-11-15 14:40:10.188+02',
            '{\"a\": [1, \"x\"]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{1,NULL,3}', '{\"a b\",\"c\\\"d\",NULL}',
            '1 day 02:00:00', repeat('toast ', 5000), true),
           (2, NULL, NULL, 'NaN', 'Infinity', 'NaN', NULL, NULL, 'infinity', NULL, '-infinity', 'infinity',
            NULL, NULL, '{}', NULL, NULL, NULL, false),
           (3, NULL, NULL, NULL, '-Infinity', NULL, NULL, NULL, '0044-03-15 BC', NULL, '0044-03-15 10:00:00 BC', NULL,
            NULL, NULL, NULL, NULL, NULL, NULL, NULL);
         ALTER PUBLICATION totes_cdc ADD TABLE odd_values;",
    )
    .await
    .unwrap();
    totesys::bundles_and_edits(&src, 0, 15).await;
    let state = support::temp_dir("replay").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let (src_url, wh_url, rebuilt_url) = (pg.url("src"), pg.url("wh"), pg.url("rebuilt"));
    let mut p = Proc::spawn(&run_args(&src_url, &wh_url, &state, &lake), &[]);
    sync(&src, &wh, WAIT).await;
    totesys::bundles_and_edits(&src, 15, 30).await;
    // An update that leaves the TOASTed column unchanged (the lake marks it, not nulls it).
    src.batch_execute(
        "UPDATE odd_values SET i2 = 8 WHERE id = 1; DELETE FROM odd_values WHERE id = 3;
         INSERT INTO odd_values (id, d) VALUES (4, '-infinity');",
    )
    .await
    .unwrap();
    sync(&src, &wh, WAIT).await;
    p.terminate(WAIT);
    let (ok, out) = verify(&src_url, &wh_url);
    assert!(ok, "the live warehouse: {out}");
    let versions = fact_versions(&wh).await;
    assert!(versions.len() > 60, "{} fact versions", versions.len());

    // A new warehouse, set up, then filled from the lake alone.
    let (status, out, err) = run(
        &[
            "setup",
            "--source-url",
            &src_url,
            "--warehouse-url",
            &rebuilt_url,
        ],
        &[],
    );
    assert!(status.success(), "setup: {out}{err}");
    let (ok, out) = replay(&rebuilt_url, &lake, &[], &[]);
    assert!(ok, "replay: {out}");
    assert!(out.contains("replayed"), "{out}");
    let (ok, out) = verify(&src_url, &rebuilt_url);
    assert!(ok, "the rebuilt warehouse against the source: {out}");
    assert_star(&src, &rebuilt).await;
    assert_eq!(
        fact_versions(&rebuilt).await,
        versions,
        "the same fact versions"
    );

    // Again: nothing changes.
    let (ok, out) = replay(&rebuilt_url, &lake, &["--from-lsn", "0/0"], &[]);
    assert!(ok, "second replay: {out}");
    assert_eq!(
        fact_versions(&rebuilt).await,
        versions,
        "a second replay added nothing"
    );
    let (ok, out) = verify(&src_url, &rebuilt_url);
    assert!(ok, "after the second replay: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_from_an_lsn_repairs_a_warehouse_from_the_s3_lake() {
    let moto = Moto::start();
    moto.s3()
        .await
        .create_bucket()
        .bucket("replay-lake")
        .send()
        .await
        .unwrap();
    let envs = moto.env();
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    let state = support::temp_dir("replays3").to_string_lossy().into_owned();
    let lake = "s3://replay-lake/lake";
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    let mut p = Proc::spawn(&run_args(&src_url, &wh_url, &state, lake), &envs);
    totesys::bundles_and_edits(&src, 0, 10).await;
    sync(&src, &wh, WAIT).await;
    let from: String = src
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    totesys::bundles_and_edits(&src, 10, 20).await;
    sync(&src, &wh, WAIT).await;
    p.terminate(WAIT);
    let versions = fact_versions(&wh).await;
    let after: i64 = wh
        .query_one(
            "SELECT count(*) FROM fact_sales_order WHERE source_lsn >= $1::text::pg_lsn",
            &[&from],
        )
        .await
        .unwrap()
        .get(0);
    assert!(after > 0, "facts after {from}");

    // The warehouse loses everything after `from` (a restore from an older backup, say).
    wh.batch_execute(&format!(
        "DELETE FROM fact_sales_order WHERE source_lsn >= '{from}';
         DELETE FROM fact_purchase_order WHERE source_lsn >= '{from}';
         DELETE FROM fact_payment WHERE source_lsn >= '{from}';
         DELETE FROM staging.sales_order WHERE _lsn >= '{from}';
         DELETE FROM staging.payment WHERE _lsn >= '{from}';
         DELETE FROM staging.staff WHERE _lsn >= '{from}';
         DELETE FROM dim_staff WHERE staff_id = 2;"
    ))
    .await
    .unwrap();
    let (ok, _) = verify(&src_url, &wh_url);
    assert!(!ok, "the damage shows");

    let (ok, out) = replay(&wh_url, lake, &["--from-lsn", &from], &envs);
    assert!(ok, "replay: {out}");
    let (ok, out) = verify(&src_url, &wh_url);
    assert!(ok, "the repaired warehouse: {out}");
    assert_star(&src, &wh).await;
    assert_eq!(
        fact_versions(&wh).await,
        versions,
        "every lost fact version is back, none twice"
    );

    // Bad input: each stops with the cause and the fix.
    let (ok, out) = replay(&wh_url, "none", &[], &envs);
    assert!(!ok && out.contains("reads the lake"), "{out}");
    let missing = format!("{state}/no-such-lake");
    let (ok, out) = replay(&wh_url, &missing, &[], &envs);
    assert!(!ok && out.contains("does not exist"), "{out}");
    let (ok, out) = replay(&wh_url, "s3://no-such-bucket/lake", &[], &envs);
    assert!(
        !ok && out.contains("\"no-such-bucket\" does not exist"),
        "{out}"
    );
    let (ok, out) = replay(&wh_url, lake, &["--from-lsn", "FF/0"], &envs);
    assert!(
        !ok && out.contains("no changes files at or after FF/0"),
        "{out}"
    );
    let (ok, out) = replay(&wh_url, lake, &["--from-lsn", "not-an-lsn"], &envs);
    assert!(!ok && out.contains("not-an-lsn"), "{out}");
    pg.create_db("empty").await;
    let (ok, out) = replay(&pg.url("empty"), lake, &[], &envs);
    assert!(!ok && out.contains("totes-cdc setup"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warehouse_rebuilt_from_the_kinesis_stream_equals_the_one_its_consumers_built() {
    let moto = Moto::start();
    moto.create_stream("replay-stream", 2).await;
    let envs = moto.env();
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    let rebuilt = pg.create_db("rebuilt").await;
    totesys::create(&src).await;
    let (src_url, wh_url, rebuilt_url) = (pg.url("src"), pg.url("wh"), pg.url("rebuilt"));
    for url in [&wh_url, &rebuilt_url] {
        let (status, out, err) = run(
            &["setup", "--source-url", &src_url, "--warehouse-url", url],
            &[],
        );
        assert!(status.success(), "setup: {out}{err}");
    }
    let state = support::temp_dir("replayk").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let mut streamer = Proc::spawn(
        &stream_kinesis_args("replay-stream", &src_url, &state, &lake),
        &envs,
    );
    let mut consumer = Proc::spawn(&consume_args("replay-stream", &wh_url, &lake), &envs);
    totesys::bundles_and_edits(&src, 0, 15).await;
    wait_star(&src, &wh, WAIT).await;
    streamer.terminate(WAIT);
    consumer.terminate(WAIT);
    let versions = fact_versions(&wh).await;

    // From the stream alone (the lake is not read).
    let args = [
        "replay",
        "--from",
        "kinesis",
        "--kinesis-stream",
        "replay-stream",
        "--warehouse-url",
        &rebuilt_url,
        "--lake",
        "none",
    ];
    let (status, out, err) = run(&args, &envs);
    assert!(status.success(), "replay: {out}{err}");
    assert!(
        out.contains("of 2 shards of Kinesis stream replay-stream"),
        "{out}"
    );
    let (ok, out) = verify(&src_url, &rebuilt_url);
    assert!(ok, "the warehouse rebuilt from the stream: {out}");
    assert_star(&src, &rebuilt).await;
    assert_eq!(fact_versions(&rebuilt).await, versions);

    // A stream that does not exist stops with the fix.
    let mut bad = args.to_vec();
    bad[4] = "no-such-stream";
    let (status, out, err) = run(&bad, &envs);
    assert!(!status.success());
    assert!(
        format!("{out}{err}").contains("no-such-stream"),
        "{out}{err}"
    );
}
