//! Nothing silent: an event that cannot be applied goes to the dead letters with its reason and
//! position, and the rest of its batch lands.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use support::star::sync;
use support::{totesys, PgCluster, Proc};
use totes_cdc::apply::batch::Batch;
use totes_cdc::apply::warehouse::{Model, Warehouse};
use totes_cdc::capture;
use totes_cdc::event::{ChangeEvent, Datum, Lsn, Op, Position};
use totes_cdc::pg::PgUrl;

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn a_text_date_that_is_not_a_date_is_dead_lettered_and_the_batch_goes_on() {
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    let state = support::temp_dir("dead").to_string_lossy().into_owned();
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
        ],
        &[],
    );
    sync(&src, &wh, WAIT).await;
    // One source transaction: a good sale, a bad one, another good one.
    src.batch_execute(&format!(
        "{}{}{}",
        totesys::sale_sql(1).replace("COMMIT;", ""),
        "INSERT INTO sales_order (last_updated, design_id, staff_id, counterparty_id, units_sold, unit_price, currency_id, agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id) \
         VALUES (now(), 1, 1, 1, 5000, 3.10, 1, '2025-02-30', '2025-03-01', 1);",
        totesys::sale_sql(3).replace("BEGIN;", "")
    ))
    .await
    .unwrap();
    sync(&src, &wh, WAIT).await;
    let bad: i32 = src
        .query_one(
            "SELECT sales_order_id FROM sales_order WHERE agreed_delivery_date = '2025-02-30'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rows = wh
        .query(
            "SELECT source_table, lsn::text, seq, op, reason, event->>'sales_order_id' FROM totes_cdc.dead_letters",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one dead letter");
    let r = &rows[0];
    assert_eq!(r.get::<_, String>(0), "public.sales_order");
    assert_eq!(r.get::<_, String>(3), "c");
    assert!(
        r.get::<_, String>(4)
            .contains("agreed_delivery_date '2025-02-30' is not a date"),
        "{}",
        r.get::<_, String>(4)
    );
    assert_eq!(r.get::<_, String>(5), bad.to_string());
    // The rest of the batch landed: both good sales, their transactions and payments.
    let facts: i64 = wh
        .query_one("SELECT count(*) FROM fact_sales_order", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(facts, 2);
    let payments: i64 = wh
        .query_one("SELECT count(*) FROM fact_payment", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(payments, 2);
    // Staging still mirrors the source, the bad row included.
    let staged: i64 = wh
        .query_one("SELECT count(*) FROM staging.sales_order", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(staged, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_value_is_dead_lettered_and_the_rest_loads() {
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    let source = PgUrl::parse(&pg.url("src"), "source-url").unwrap();
    let tables = capture::describe_tables(&source, "totes_cdc", None)
        .await
        .unwrap();
    let mut wh = Warehouse::new(
        PgUrl::parse(&pg.url("wh"), "warehouse-url").unwrap(),
        "public",
        Model::Totesys,
        "apply",
        "src",
    );
    wh.setup(&tables).await.unwrap();
    let staff = tables.iter().find(|t| t.name == "staff").unwrap().clone();
    let row = |id: &str, dept: &str| -> Vec<Datum> {
        [
            id,
            "Ann",
            "O'Keefe",
            dept,
            "a@b.c",
            "2024-11-15 10:00:00",
            "2024-11-15 10:00:00",
        ]
        .iter()
        .map(|v| Datum::Text(Bytes::from(v.to_string())))
        .collect()
    };
    let ev = |seq: i32, after: Vec<Datum>| ChangeEvent {
        op: Op::Insert,
        position: Position::new(Lsn(0x1000), seq),
        xid: Some(7),
        commit_ts_us: 0,
        key: Some(ChangeEvent::key_of(&staff, &after)),
        table: Arc::clone(&staff),
        before: None,
        after: Some(after),
    };
    let batch = Batch {
        events: vec![
            ev(0, row("101", "1")),
            ev(1, row("102", "not-a-number")),
            ev(2, row("103", "2")),
        ],
        ..Default::default()
    };
    let applied = wh.apply(&batch).await.unwrap();
    assert_eq!(applied.dead_letters, 1);
    let whc = pg.connect("wh").await;
    let ids: Vec<i32> = whc
        .query("SELECT staff_id FROM staging.staff ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [101, 103]);
    let r = whc
        .query_one(
            "SELECT reason, seq, event->'after'->>'department_id' FROM totes_cdc.dead_letters",
            &[],
        )
        .await
        .unwrap();
    assert!(
        r.get::<_, String>(0)
            .contains("invalid input syntax for type integer"),
        "{}",
        r.get::<_, String>(0)
    );
    assert_eq!(r.get::<_, i32>(1), 1);
    assert_eq!(r.get::<_, String>(2), "not-a-number");
    // Applying it again changes nothing.
    wh.apply(&batch).await.unwrap();
    let n: i64 = whc
        .query_one("SELECT count(*) FROM totes_cdc.dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}
