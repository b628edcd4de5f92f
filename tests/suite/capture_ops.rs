//! Capture of every operation on the totesys tables: the snapshot, then inserts, updates
//! (also the ones that do not touch last_updated), deletes with their SET NULL cascade and a
//! truncate, each decoded field by field equal to what SELECT returns.

use crate::support;

use std::time::Duration;

use serde_json::Value;
use support::compare::{assert_same, materialize, source_state};
use support::{totesys, PgCluster, Proc};

const WAIT: Duration = Duration::from_secs(60);

fn stream_args<'a>(url: &'a str, state: &'a str) -> Vec<&'a str> {
    vec![
        "stream",
        "--sink",
        "stdout",
        "--source-url",
        url,
        "--state-dir",
        state,
        "--heartbeat-interval",
        "1s",
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_op_on_totesys_is_captured_field_by_field() {
    let pg = PgCluster::start();
    let db = pg.create_db("ops").await;
    totesys::create(&db).await;
    totesys::publish(&db).await;
    for n in 0..5 {
        totesys::sale(&db, n).await;
        totesys::purchase(&db, n).await;
    }
    let url = pg.url("ops");
    let state = support::temp_dir("ops");
    let state = state.to_string_lossy().into_owned();
    let proc = Proc::spawn(&stream_args(&url, &state), &[]);

    let snapshot_rows: i64 = {
        let mut n = 0;
        for t in totesys::TABLES {
            let r = db
                .query_one(&format!("SELECT count(*) FROM \"{t}\""), &[])
                .await
                .unwrap();
            n += r.get::<_, i64>(0);
        }
        n
    };
    // Each table's copy starts with a truncate marker (what the table held is replaced).
    let snapshot_events = snapshot_rows + totesys::TABLES.len() as i64;
    proc.wait_events("the snapshot", WAIT, |e| e.len() as i64 >= snapshot_events);
    let events = proc.events();
    let snapshot = &events[..snapshot_events as usize];
    assert!(snapshot.iter().all(|e| e["op"] == "r" || e["op"] == "t"));
    assert_eq!(
        snapshot.iter().filter(|e| e["op"] == "t").count(),
        totesys::TABLES.len()
    );
    assert!(snapshot.iter().all(|e| e["source"]["xid"].is_null()));
    assert_same(
        &materialize(&events),
        &source_state(&db, &totesys::TABLES).await,
    );

    // Writes like the real source, and the edits polling misses.
    for n in 5..10 {
        totesys::sale(&db, n).await;
    }
    totesys::purchase(&db, 10).await;
    db.batch_execute(
        "UPDATE payment SET paid = true, last_updated = now() WHERE payment_id <= 3;
         UPDATE staff SET email_address = 'jeremie.okeefe@terrifictotes.com' WHERE staff_id = 7;
         UPDATE department SET location = 'Leeds' WHERE department_name = 'Dispatch';
         UPDATE address SET address_line_2 = NULL, phone = '0161 496 0000' WHERE address_id = 2;
         UPDATE sales_order SET units_sold = units_sold + 1 WHERE sales_order_id = 1;
         DELETE FROM sales_order WHERE sales_order_id = 2;
         INSERT INTO currency (currency_code, last_updated) VALUES ('JPY', now());
         DELETE FROM currency WHERE currency_code = 'JPY';",
    )
    .await
    .unwrap();
    let marker = "marker-end";
    db.batch_execute(&format!(
        "INSERT INTO design (design_name, file_location, file_name, last_updated) VALUES ('{marker}', '/m', 'm.json', now())"
    ))
    .await
    .unwrap();
    proc.wait_events("the changes", WAIT, |e| {
        e.iter().any(|e| e["after"]["design_name"] == marker)
    });
    let events = proc.events();
    assert_same(
        &materialize(&events),
        &source_state(&db, &totesys::TABLES).await,
    );

    let streamed: Vec<&Value> = events
        .iter()
        .filter(|e| !e["source"]["xid"].is_null())
        .collect();
    // The delete of sales order 2 set its transaction's reference to NULL: both captured.
    let del = streamed
        .iter()
        .find(|e| e["op"] == "d" && e["source"]["table"] == "sales_order")
        .expect("delete captured");
    assert_eq!(del["key"], serde_json::json!({"sales_order_id": 2}));
    assert_eq!(
        del["before"],
        Value::Null,
        "REPLICA IDENTITY DEFAULT sends no before image"
    );
    assert!(streamed.iter().any(|e| e["op"] == "u"
        && e["source"]["table"] == "transaction"
        && e["after"]["sales_order_id"].is_null()));
    // The staff edit did not touch last_updated and is still seen.
    assert!(streamed.iter().any(|e| e["op"] == "u"
        && e["after"]["email_address"] == "jeremie.okeefe@terrifictotes.com"
        && e["after"]["last_name"] == "O'Keefe"));
    // Positions: ordered, and ordinals count up within a transaction from 0.
    let mut last = (String::new(), -1i64);
    for e in &streamed {
        let lsn = e["source"]["lsn"].as_str().unwrap().to_string();
        let seq = e["source"]["seq"].as_i64().unwrap();
        let lsn_n = lsn_value(&lsn);
        if lsn == last.0 {
            assert_eq!(seq, last.1 + 1, "ordinals within a transaction");
        } else {
            assert!(
                lsn_n > lsn_value(&last.0) || last.0.is_empty(),
                "commit LSNs ascend"
            );
            assert_eq!(seq, 0);
        }
        assert!(e["source"]["xid"].is_u64());
        assert!(e["source"]["commit_ts"].as_str().unwrap().ends_with('Z'));
        last = (lsn, seq);
    }
    // A sale is one transaction: order, transaction and payment share the commit LSN.
    let sale = streamed
        .iter()
        .find(|e| e["op"] == "c" && e["source"]["table"] == "sales_order")
        .unwrap();
    let same_tx: Vec<_> = streamed
        .iter()
        .filter(|e| e["source"]["lsn"] == sale["source"]["lsn"])
        .map(|e| e["source"]["table"].as_str().unwrap())
        .collect();
    assert_eq!(same_tx, ["sales_order", "transaction", "payment"]);

    // Truncate is an event of its own.
    db.batch_execute("TRUNCATE payment").await.unwrap();
    let real_truncate = |e: &&Value| e["op"] == "t" && !e["source"]["xid"].is_null();
    proc.wait_events("the truncate", WAIT, |e| {
        e.iter().any(|e| real_truncate(&e))
    });
    let events = proc.events();
    let t = events.iter().find(real_truncate).unwrap();
    assert_eq!(t["source"]["table"], "payment");
    assert_eq!(t["key"], Value::Null);
    assert_same(
        &materialize(&events),
        &source_state(&db, &totesys::TABLES).await,
    );
    assert!(
        !proc.stderr().contains("ERROR"),
        "unexpected errors: {}",
        proc.stderr()
    );
}

fn lsn_value(s: &str) -> u64 {
    let Some((hi, lo)) = s.split_once('/') else {
        return 0;
    };
    (u64::from_str_radix(hi, 16).unwrap_or(0) << 32) | u64::from_str_radix(lo, 16).unwrap_or(0)
}
