//! The Parquet lake: every event with exact types, read back by DuckDB (not our reader) and
//! compared with the source; exactly the committed files; crashes between the lake write and
//! the warehouse commit, and between the commit and the files' publication, leave nothing
//! uncommitted in sight; S3 through the real SDK against moto, and a missing bucket stops with
//! the fix.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::moto::Moto;
use support::star::{assert_star, sync};
use support::{run_args, totesys, PgCluster, Proc};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(120);

/// A position as (lsn, seq).
type Pos = (u64, i32);

/// Every file DuckDB reads: (path, schema as (column, DuckDB type), rows as column → text).
type Dump = Vec<(
    String,
    Vec<(String, String)>,
    Vec<BTreeMap<String, Option<String>>>,
)>;

fn duckdb_read(files: &[PathBuf]) -> Dump {
    let v = support::python_json("read_lake.py", files, "DuckDB could not read the lake");
    v.as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let schema = f["schema"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c[0].as_str().unwrap().to_string(),
                        c[1].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            let rows = f["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    r.as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string)))
                        .collect()
                })
                .collect();
            (f["path"].as_str().unwrap().to_string(), schema, rows)
        })
        .collect()
}

fn files_on_disk(root: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, root, out);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// (path, kind, table, first, last) of every committed file, first/last as (lsn, seq).
async fn manifest(wh: &Client) -> Vec<(String, String, String, Pos, Pos)> {
    wh.query(
        "SELECT path, kind, table_name, (first_lsn - '0/0')::bigint, first_seq, (last_lsn - '0/0')::bigint, last_seq \
         FROM totes_cdc.lake_files ORDER BY path",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get(0),
            r.get(1),
            r.get(2),
            (r.get::<_, i64>(3) as u64, r.get(4)),
            (r.get::<_, i64>(5) as u64, r.get(6)),
        )
    })
    .collect()
}

/// The source table's rows in text form (COPY), keyed by the first column.
async fn source_rows(
    src: &Client,
    table: &str,
) -> BTreeMap<String, BTreeMap<String, Option<String>>> {
    let cols: Vec<String> = src
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&format!("public.\"{table}\"")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let select: Vec<String> = cols.iter().map(|c| format!("\"{c}\"::text")).collect();
    let rows = src
        .query(
            &format!("SELECT {} FROM \"{table}\"", select.join(", ")),
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let m: BTreeMap<String, Option<String>> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let v: Option<String> = r.get(i);
                    // DuckDB spells booleans out.
                    let v = v.map(|s| match s.as_str() {
                        "true" | "t" => "true".to_string(),
                        "false" | "f" => "false".to_string(),
                        _ => s,
                    });
                    (c.clone(), v)
                })
                .collect();
            (m[&cols[0]].clone().unwrap_or_default(), m)
        })
        .collect()
}

/// Folds a table's change files into its final rows (newest position wins, deletes remove).
fn fold(dump: &Dump, table: &str) -> BTreeMap<String, BTreeMap<String, Option<String>>> {
    let mut rows: Vec<&BTreeMap<String, Option<String>>> = dump
        .iter()
        .filter(|(p, _, _)| p.contains(&format!("changes/public.{table}/")))
        .flat_map(|(_, _, r)| r.iter())
        .collect();
    let pos = |r: &BTreeMap<String, Option<String>>| -> (u64, i64) {
        (
            r["_lsn"].as_deref().unwrap_or("0").parse().unwrap_or(0),
            r["_seq"].as_deref().unwrap_or("0").parse().unwrap_or(0),
        )
    };
    rows.sort_by_key(|r| pos(r));
    let mut out = BTreeMap::new();
    let key = format!("{table}_id");
    for r in rows {
        let k = r[&key].clone().unwrap_or_default();
        match r["_op"].as_deref() {
            Some("d") => {
                out.remove(&k);
            }
            // A truncate (also the marker that opens each table's snapshot) empties the table.
            Some("t") => out.clear(),
            _ => {
                let mut row = r.clone();
                row.retain(|c, _| !c.starts_with('_'));
                out.insert(k, row);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_disk_lake_holds_every_event_with_exact_types() {
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    src.batch_execute(
        "CREATE TABLE lake_types (id int PRIMARY KEY, i2 smallint, i8 bigint, f4 real, f8 float8,
           n numeric, n30 numeric(30,10), b bytea, d date, t time, ts timestamp, tstz timestamptz,
           j jsonb, u uuid, ai int[], iv interval);
         INSERT INTO lake_types VALUES
           (1, -7, 9223372036854775807, 1.5, -2.25, '12345678901234567890.123', '-12345678901234567890.1234567891',
            '\\x00ff', '2024-02-29', '23:59:59.999999', '2024-11-15 14:40:10.188', '2024-11-15 14:40:10.188+02',
            '{\"a\": 1}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{1,2}', '1 day'),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
           (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'infinity', NULL, '-infinity', 'infinity', NULL, NULL, NULL, NULL);
         ALTER PUBLICATION totes_cdc ADD TABLE lake_types;",
    )
    .await
    .unwrap();
    totesys::bundles_and_edits(&src, 0, 20).await;
    let state = support::temp_dir("lake").to_string_lossy().into_owned();
    let lake = format!("{state}/lake");
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    let _p = Proc::spawn(&run_args(&src_url, &wh_url, &state, &lake), &[]);
    sync(&src, &wh, WAIT).await;
    totesys::bundles_and_edits(&src, 20, 40).await;
    src.batch_execute("UPDATE lake_types SET i2 = 8 WHERE id = 1")
        .await
        .unwrap();
    sync(&src, &wh, WAIT).await;
    assert_star(&src, &wh).await;

    // Exactly the committed files are in the lake.
    support::lake::wait_settled(&wh).await;
    let files = manifest(&wh).await;
    let listed: BTreeSet<String> = files.iter().map(|f| f.0.clone()).collect();
    assert_eq!(
        files_on_disk(Path::new(&lake)),
        listed,
        "lake files = manifest"
    );
    let pending: i64 = wh
        .query_one("SELECT count(*) FROM totes_cdc.lake_staged", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 0);
    // No two change files of a table hold the same position.
    let mut by_table: BTreeMap<&str, Vec<(Pos, Pos)>> = BTreeMap::new();
    for f in files.iter().filter(|f| f.1 == "changes") {
        by_table.entry(&f.2).or_default().push((f.3, f.4));
    }
    for (t, mut ranges) in by_table {
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(w[0].1 < w[1].0, "{t}: files overlap {:?} {:?}", w[0], w[1]);
        }
    }

    let paths: Vec<PathBuf> = files.iter().map(|f| Path::new(&lake).join(&f.0)).collect();
    let dump = duckdb_read(&paths);
    // Every value, folded to the final state, equals the source's.
    for table in [
        "sales_order",
        "purchase_order",
        "payment",
        "transaction",
        "staff",
        "address",
        "currency",
        "design",
    ] {
        let lake_rows = fold(&dump, table);
        let source = source_rows(&src, table).await;
        assert_eq!(lake_rows.len(), source.len(), "{table}: rows");
        for (k, row) in &source {
            let l = lake_rows
                .get(k)
                .unwrap_or_else(|| panic!("{table} {k} missing in the lake"));
            for (c, v) in row {
                let lv = l.get(c).cloned().flatten();
                let v = v.clone();
                // DuckDB prints timestamps without trailing zeros in the fraction, as PG does.
                assert_eq!(lv, v, "{table} {k} column {c}");
            }
        }
    }
    // Exact types.
    let schema_of = |needle: &str| -> BTreeMap<String, String> {
        dump.iter()
            .find(|(p, _, _)| p.contains(needle))
            .map(|(_, s, _)| s.iter().cloned().collect())
            .unwrap_or_else(|| panic!("no file for {needle}"))
    };
    let so = schema_of("changes/public.sales_order/");
    assert_eq!(so["sales_order_id"], "INTEGER");
    assert_eq!(so["unit_price"], "DECIMAL(10,2)");
    assert_eq!(so["created_at"], "TIMESTAMP");
    assert_eq!(so["agreed_delivery_date"], "VARCHAR");
    assert_eq!(so["_lsn"], "UBIGINT");
    assert_eq!(so["_seq"], "INTEGER");
    assert_eq!(so["_xid"], "UINTEGER");
    assert_eq!(so["_commit_ts"], "TIMESTAMP WITH TIME ZONE");
    assert_eq!(so["_op"], "VARCHAR");
    assert_eq!(schema_of("changes/public.payment/")["paid"], "BOOLEAN");
    assert_eq!(
        schema_of("changes/public.payment_type/")["payment_type_name"],
        "VARCHAR"
    );
    let lt = schema_of("changes/public.lake_types/");
    for (c, ty) in [
        ("i2", "SMALLINT"),
        ("i8", "BIGINT"),
        ("f4", "FLOAT"),
        ("f8", "DOUBLE"),
        ("n", "VARCHAR"),
        ("n30", "DECIMAL(30,10)"),
        ("b", "BLOB"),
        ("d", "DATE"),
        ("t", "TIME"),
        ("ts", "TIMESTAMP"),
        ("tstz", "TIMESTAMP WITH TIME ZONE"),
        ("j", "VARCHAR"),
        ("u", "VARCHAR"),
        ("ai", "VARCHAR"),
        ("iv", "VARCHAR"),
    ] {
        assert_eq!(lt[c], ty, "lake_types.{c}");
    }
    let row1 = dump
        .iter()
        .filter(|(p, _, _)| p.contains("changes/public.lake_types/"))
        .flat_map(|(_, _, r)| r.iter())
        .find(|r| r["id"].as_deref() == Some("1") && r["_op"].as_deref() == Some("r"))
        .unwrap()
        .clone();
    let get = |c: &str| row1[c].clone().unwrap_or_default();
    assert_eq!(get("n"), "12345678901234567890.123");
    assert_eq!(get("n30"), "-12345678901234567890.1234567891");
    assert_eq!(get("b"), "\\x00\\xFF");
    assert_eq!(get("d"), "2024-02-29");
    assert_eq!(get("t"), "23:59:59.999999");
    assert_eq!(get("ts"), "2024-11-15 14:40:10.188");
    assert_eq!(get("tstz"), "2024-11-15 12:40:10.188+00");
    assert_eq!(get("ai"), "[1,2]");
    assert_eq!(get("f4"), "1.5");
    // Infinities are DuckDB's infinities, not nulls.
    let row3 = dump
        .iter()
        .filter(|(p, _, _)| p.contains("changes/public.lake_types/"))
        .flat_map(|(_, _, r)| r.iter())
        .find(|r| r["id"].as_deref() == Some("3"))
        .unwrap();
    assert_eq!(row3["d"].as_deref(), Some("infinity"));
    assert_eq!(row3["ts"].as_deref(), Some("-infinity"));
    assert_eq!(row3["tstz"].as_deref(), Some("infinity"));
    assert_eq!(get("i8"), "9223372036854775807");
    // The processed files hold the facts the warehouse holds.
    let processed: usize = dump
        .iter()
        .filter(|(p, _, _)| p.contains("processed/fact_sales_order/"))
        .map(|(_, _, r)| r.len())
        .sum();
    let facts: i64 = wh
        .query_one("SELECT count(*) FROM fact_sales_order", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(processed as i64, facts);
    let fs = schema_of("processed/fact_sales_order/");
    assert_eq!(fs["unit_price"], "DECIMAL(10,2)");
    assert_eq!(fs["created_date"], "DATE");
    assert_eq!(fs["created_time"], "TIME");
    assert_eq!(fs["is_current"], "BOOLEAN");
    assert_eq!(fs["source_lsn"], "UBIGINT");
    assert!(dump
        .iter()
        .any(|(p, _, _)| p.contains("processed/dim_date/")));
}

#[tokio::test(flavor = "multi_thread")]
async fn crashes_around_the_commit_leave_only_committed_files_in_sight() {
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    let state = support::temp_dir("lakecrash")
        .to_string_lossy()
        .into_owned();
    let lake = format!("{state}/lake");
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    let staged = |committed: bool| {
        let wh = &wh;
        async move {
            wh.query(
                "SELECT path FROM totes_cdc.lake_staged WHERE committed = $1",
                &[&committed],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<BTreeSet<String>>()
        }
    };
    // The snapshot's batch commits, the next one crashes between its lake write and its commit.
    let mut p = Proc::spawn(
        &run_args(&src_url, &wh_url, &state, &lake),
        &[("TOTES_CDC_FAULT", "after-lake-write:2")],
    );
    std::thread::sleep(Duration::from_secs(2));
    totesys::bundles_and_edits(&src, 0, 10).await;
    assert!(!p.wait(WAIT).success());
    assert!(
        p.stderr().contains("crashing at after-lake-write"),
        "{}",
        p.stderr()
    );
    assert!(
        !staged(false).await.is_empty(),
        "the crash left staged files"
    );
    assert!(files_on_disk(Path::new(&lake))
        .iter()
        .any(|f| f.starts_with("_staging/")));
    // A reader globbing the lake sees the committed files only.
    let listed = support::lake::manifest_paths(&wh).await;
    assert_eq!(support::lake::glob(&lake).files, listed);

    // The next start removes them; its first batch commits and crashes before publishing.
    let mut p = Proc::spawn(
        &run_args(&src_url, &wh_url, &state, &lake),
        &[("TOTES_CDC_FAULT", "before-lake-publish:1")],
    );
    assert!(!p.wait(WAIT).success());
    assert!(
        p.stderr().contains("crashing at before-lake-publish"),
        "{}",
        p.stderr()
    );
    assert!(
        staged(false).await.is_empty(),
        "uncommitted staged files were removed"
    );
    let unpublished = staged(true).await;
    assert!(!unpublished.is_empty());
    let listed = support::lake::manifest_paths(&wh).await;
    let seen = support::lake::glob(&lake).files;
    // Committed and not yet in place: nothing a reader sees is uncommitted.
    assert!(seen.is_subset(&listed));
    assert_eq!(
        listed.difference(&seen).cloned().collect::<BTreeSet<_>>(),
        unpublished
    );

    // The next start publishes them; everything lands, each change once.
    totesys::bundles_and_edits(&src, 10, 15).await;
    let _p = Proc::spawn(&run_args(&src_url, &wh_url, &state, &lake), &[]);
    sync(&src, &wh, WAIT).await;
    assert_star(&src, &wh).await;
    support::lake::assert_each_change_once(&wh, &lake).await;
    assert!(files_on_disk(Path::new(&lake))
        .iter()
        .all(|f| !f.ends_with(".staged")));
    let files = manifest(&wh).await;
    let paths: Vec<PathBuf> = files.iter().map(|f| Path::new(&lake).join(&f.0)).collect();
    let dump = duckdb_read(&paths);
    for table in ["sales_order", "payment", "transaction"] {
        assert_eq!(
            fold(&dump, table).len(),
            source_rows(&src, table).await.len(),
            "{table}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_s3_lake_works_through_the_real_sdk() {
    let moto = Moto::start();
    let s3 = moto.s3().await;
    s3.create_bucket()
        .bucket("totes-lake")
        .send()
        .await
        .unwrap();
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    totesys::bundles_and_edits(&src, 0, 10).await;
    let state = support::temp_dir("s3lake").to_string_lossy().into_owned();
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    let env = moto.env();

    // A missing bucket stops with the fix.
    let (status, _, err) = support::run(
        &run_args(&src_url, &wh_url, &state, "s3://no-such-bucket/lake"),
        &env,
    );
    assert!(!status.success());
    let line = support::error_report(&err);
    assert!(
        line.contains("bucket \"no-such-bucket\" does not exist") && line.contains("create it"),
        "{err}"
    );

    let _p = Proc::spawn(
        &run_args(&src_url, &wh_url, &state, "s3://totes-lake/lake"),
        &env,
    );
    sync(&src, &wh, WAIT).await;
    totesys::bundles_and_edits(&src, 10, 20).await;
    sync(&src, &wh, WAIT).await;
    assert_star(&src, &wh).await;
    support::lake::wait_settled(&wh).await;
    let files = manifest(&wh).await;
    let mut keys = BTreeSet::new();
    let mut token = None;
    loop {
        let out = s3
            .list_objects_v2()
            .bucket("totes-lake")
            .prefix("lake/")
            .set_continuation_token(token)
            .send()
            .await
            .unwrap();
        for o in out.contents() {
            keys.insert(
                o.key()
                    .unwrap_or_default()
                    .trim_start_matches("lake/")
                    .to_string(),
            );
        }
        token = out.next_continuation_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    let listed: BTreeSet<String> = files.iter().map(|f| f.0.clone()).collect();
    assert_eq!(keys, listed, "objects in the bucket = manifest");
    // Download them and read them with DuckDB.
    let dir = support::temp_dir("s3dl");
    let mut paths = Vec::new();
    for f in &files {
        let obj = s3
            .get_object()
            .bucket("totes-lake")
            .key(format!("lake/{}", f.0))
            .send()
            .await
            .unwrap();
        let data = obj.body.collect().await.unwrap().into_bytes();
        let p = dir.join(f.0.replace('/', "_"));
        std::fs::write(&p, &data).unwrap();
        paths.push(p);
    }
    let dump = duckdb_read(&paths);
    let rows: usize = dump
        .iter()
        .filter(|(p, _, _)| p.contains("changes_public.sales_order"))
        .map(|(_, _, r)| r.len())
        .sum();
    // Less the truncate marker that opens the table's snapshot (it changes no row).
    let rows = rows - 1;
    let versions: i64 = wh
        .query_one("SELECT count(*) FROM fact_sales_order", &[])
        .await
        .unwrap()
        .get(0);
    let deletes: i64 = wh
        .query_one(
            "SELECT count(*) FROM staging.sales_order WHERE _deleted",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as i64, versions + deletes, "sales_order events in S3");
}
