//! Every documented type round-trips exactly through the envelope, from the snapshot and from
//! the stream; before images follow the replica identity; unchanged TOAST is marked, not nulled.

use crate::support;

use std::time::Duration;

use serde_json::{json, Value};
use support::compare::{assert_same, materialize, source_state};
use support::{PgCluster, Proc};

const WAIT: Duration = Duration::from_secs(60);

const TYPES_DDL: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE TABLE types (
    id serial PRIMARY KEY,
    i2 smallint, i4 integer, i8 bigint,
    f4 real, f8 double precision,
    n numeric, n102 numeric(10,2),
    b boolean,
    t text, vc varchar(20), c char(5),
    j json, jb jsonb,
    by bytea,
    u uuid,
    d date, tm time(6), ttz timetz,
    ts timestamp(6), tstz timestamptz(6),
    iv interval,
    e mood,
    dom positive_int,
    ai integer[], at text[], an numeric[], a2 integer[][], ae mood[], ats timestamp[],
    m money, ip inet
);
"#;

const TYPES_ROWS: &str = r#"
INSERT INTO types (i2, i4, i8, f4, f8, n, n102, b, t, vc, c, j, jb, by, u, d, tm, ttz, ts, tstz, iv, e, dom, ai, at, an, a2, ae, ats, m, ip) VALUES
(-32768, -2147483648, -9223372036854775808, 1.5, -0.000001234,
 '123456789012345678901234567890.123456789', 12345678.90, true,
 'O''Keefe said "hi"\ttab', 'ünïcødé ✓', 'ab',
 '{"k": [1, 2.50, null], "s": "x\"y"}', '{"nested": {"a": true}}',
 '\x00ff10deadbeef', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
 '2024-11-15', '14:40:10.188123', '14:40:10.5+02', '2024-11-15 14:40:10.188123', '2024-11-15 14:40:10.188123+01',
 '1 year 2 months 3 days 04:05:06.5', 'happy', 42,
 '{1,NULL,3}', '{"a b","c\"d",NULL,"NULL",""}', '{1.10,-2.5}', '{{1,2},{3,4}}', '{sad,happy}', '{"2024-01-01 00:00:00"}',
 '12.34', '192.168.0.1/24'),
(32767, 2147483647, 9223372036854775807, 'NaN', 'Infinity',
 '-0.000000000000000000000000000001', -0.01, false,
 '', '', '     ', 'null', '[]',
 '\x', '00000000-0000-0000-0000-000000000000',
 'infinity', '00:00:00', '00:00:00+00', 'infinity', '-infinity',
 '-1 days', 'sad', 1,
 '{}', '{}', '{}', '{}', '{}', '{}',
 '-1.00', '::1'),
(NULL, NULL, NULL, '-Infinity', NULL, 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 '-infinity', NULL, NULL, '-infinity', 'infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"#;

fn args<'a>(url: &'a str, state: &'a str) -> Vec<&'a str> {
    vec![
        "stream",
        "--sink",
        "stdout",
        "--source-url",
        url,
        "--state-dir",
        state,
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_round_trips_from_snapshot_and_stream() {
    let pg = PgCluster::start();
    let db = pg.create_db("types").await;
    db.batch_execute(TYPES_DDL).await.unwrap();
    db.batch_execute(TYPES_ROWS).await.unwrap();
    db.batch_execute("CREATE PUBLICATION totes_cdc FOR TABLE types")
        .await
        .unwrap();
    let url = pg.url("types");
    let state = support::temp_dir("types").to_string_lossy().into_owned();
    let proc = Proc::spawn(&args(&url, &state), &[]);
    // The truncate marker that opens the table's copy, then its three rows.
    proc.wait_events("snapshot", WAIT, |e| e.len() >= 4);
    // The same rows again through the WAL.
    db.batch_execute(TYPES_ROWS).await.unwrap();
    proc.wait_events("stream", WAIT, |e| e.len() >= 7);
    let all = proc.events();
    assert_same(&materialize(&all), &source_state(&db, &["types"]).await);
    assert_eq!(all[0]["op"], "t");
    let events = &all[1..];

    let first = &events[3]["after"];
    assert_eq!(
        first["n"],
        json!("123456789012345678901234567890.123456789")
    );
    assert_eq!(first["n102"], json!("12345678.90"));
    assert_eq!(first["i8"], json!(-9223372036854775808i64));
    assert_eq!(first["by"], json!("AP8Q3q2+7w=="));
    assert_eq!(first["tstz"], json!("2024-11-15T13:40:10.188123+00:00"));
    assert_eq!(first["ts"], json!("2024-11-15T14:40:10.188123"));
    assert_eq!(first["iv"], json!("P1Y2M3DT4H5M6.5S"));
    assert_eq!(first["a2"], json!([[1, 2], [3, 4]]));
    assert_eq!(first["at"], json!(["a b", "c\"d", null, "NULL", ""]));
    assert_eq!(first["an"], json!(["1.10", "-2.5"]));
    assert_eq!(first["ae"], json!(["sad", "happy"]));
    assert_eq!(first["dom"], json!(42));
    assert_eq!(first["m"], json!("$12.34"));
    // JSON numbers keep the digits the source wrote.
    assert_eq!(
        first["j"]["k"],
        serde_json::from_str::<Value>("[1, 2.50, null]").unwrap()
    );
    let second = &events[4]["after"];
    assert_eq!(second["f4"], json!("NaN"));
    assert_eq!(second["f8"], json!("Infinity"));
    assert_eq!(second["t"], json!(""));
    assert_eq!(second["c"], json!("     "));
    assert_eq!(second["by"], json!(""));
    assert_eq!(second["d"], json!("infinity"));
    assert_eq!(second["tstz"], json!("-infinity"));
    let third = &events[5]["after"];
    assert_eq!(third["t"], Value::Null);
    assert_eq!(third["n"], json!("NaN"));
    assert_eq!(third["ts"], json!("-infinity"));
}

#[tokio::test(flavor = "multi_thread")]
async fn before_images_follow_replica_identity_and_toast_is_marked() {
    let pg = PgCluster::start();
    let db = pg.create_db("ident").await;
    db.batch_execute(
        "CREATE TABLE dflt (id int PRIMARY KEY, v text);
         CREATE TABLE full_ (id int PRIMARY KEY, v text);
         ALTER TABLE full_ REPLICA IDENTITY FULL;
         CREATE TABLE nokey (a int, b text);
         ALTER TABLE nokey REPLICA IDENTITY FULL;
         CREATE TABLE big (id int PRIMARY KEY, small text, blob text);
         INSERT INTO big VALUES (1, 'x', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 2000) g));
         CREATE PUBLICATION totes_cdc FOR TABLE dflt, full_, nokey, big;",
    )
    .await
    .unwrap();
    let url = pg.url("ident");
    let state = support::temp_dir("ident").to_string_lossy().into_owned();
    let proc = Proc::spawn(&args(&url, &state), &[]);
    proc.wait_events("snapshot", WAIT, |e| !e.is_empty());
    db.batch_execute(
        "INSERT INTO dflt VALUES (1, 'a'); UPDATE dflt SET v = 'b'; DELETE FROM dflt;
         INSERT INTO full_ VALUES (1, 'a'); UPDATE full_ SET v = 'b'; DELETE FROM full_;
         INSERT INTO nokey VALUES (1, 'a'); UPDATE nokey SET b = 'b'; DELETE FROM nokey;
         UPDATE big SET small = 'y';
         UPDATE dflt SET id = 2 WHERE id = 1;
         INSERT INTO dflt VALUES (5, 'k'); UPDATE dflt SET id = 6 WHERE id = 5;",
    )
    .await
    .unwrap();
    proc.wait_events("changes", WAIT, |e| e.iter().any(|e| e["after"]["id"] == 6));
    let ev = proc.events();
    let find = |table: &str, op: &str| -> Value {
        ev.iter()
            .find(|e| e["source"]["table"] == table && e["op"] == op)
            .cloned()
            .unwrap_or_else(|| panic!("no {op} on {table}"))
    };
    // DEFAULT: no before image, the key identifies the row.
    assert_eq!(find("dflt", "u")["before"], Value::Null);
    assert_eq!(find("dflt", "d")["before"], Value::Null);
    assert_eq!(find("dflt", "d")["key"], json!({"id": 1}));
    // FULL: the whole old row.
    assert_eq!(find("full_", "u")["before"], json!({"id": 1, "v": "a"}));
    assert_eq!(find("full_", "d")["before"], json!({"id": 1, "v": "b"}));
    // FULL without a key: the whole row is the identity.
    assert_eq!(find("nokey", "d")["key"], json!({"a": 1, "b": "b"}));
    assert_eq!(find("nokey", "u")["before"], json!({"a": 1, "b": "a"}));
    // The unchanged TOASTed value is marked and left out, not nulled.
    let toast = find("big", "u");
    assert_eq!(toast["unchanged_toast"], json!(["blob"]));
    assert!(toast["after"].get("blob").is_none(), "{toast}");
    assert_eq!(toast["after"]["small"], "y");
    // A key change is a delete of the old key and an insert of the new one, in order.
    let i = ev.iter().position(|e| e["after"]["id"] == 6).unwrap();
    assert_eq!(ev[i - 1]["op"], "d");
    assert_eq!(ev[i - 1]["key"], json!({"id": 5}));
    assert_eq!(ev[i]["op"], "c");
    assert_eq!(
        ev[i]["source"]["seq"].as_i64().unwrap(),
        ev[i - 1]["source"]["seq"].as_i64().unwrap() + 1
    );
    let keyed: Vec<Value> = ev
        .iter()
        .filter(|e| e["source"]["table"] != "nokey")
        .cloned()
        .collect();
    assert_same(
        &materialize(&keyed),
        &source_state(&db, &["dflt", "full_", "big"]).await,
    );
}
