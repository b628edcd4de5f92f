//! Exactly-once effect: the events of a real capture applied in order, every batch twice, in a
//! shuffled order, and all at once, give the same warehouse — the one the spec says.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use support::star::assert_star;
use support::{totesys, PgCluster};
use tokio_postgres::Client;
use totes_cdc::apply::batch::Batch;
use totes_cdc::apply::warehouse::{Model, Warehouse};
use totes_cdc::capture::stream::CaptureStats;
use totes_cdc::capture::{self, CaptureConfig, SnapshotMode};
use totes_cdc::channel::{self, ItemKind};
use totes_cdc::event::{ChangeEvent, Lsn};
use totes_cdc::pg::PgUrl;

/// Captures everything up to now with the library's capture and an in-memory sink.
async fn capture_all(
    pg: &PgCluster,
    db: &str,
    src: &Client,
    state: &std::path::Path,
) -> Vec<ChangeEvent> {
    let until: String = src
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let cfg = CaptureConfig {
        source: PgUrl::parse(&pg.url(db), "source-url").unwrap(),
        slot: "oracle".into(),
        publication: "totes_cdc".into(),
        tables: None,
        state_dir: state.to_path_buf(),
        snapshot: SnapshotMode::Initial,
        snapshot_parallelism: 2,
        snapshot_chunk_pages: 4096,
        heartbeat: Some(Duration::from_millis(200)),
        status_interval: Duration::from_millis(200),
        buffer_events: 256,
        drain_timeout: Duration::from_secs(10),
        until: Some(Lsn::parse(&until).unwrap()),
        slot_max_retained_wal: 1 << 30,
    };
    let (tx, mut rx, acker) = channel::channel(256, 1 << 30);
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(item) = rx.recv().await {
            if let ItemKind::Change(ev) = item.kind {
                events.push(ev);
            }
            acker.ack(item.seqno);
        }
        events
    });
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    capture::run(
        cfg,
        tx,
        shutdown,
        Arc::new(CaptureStats::default()),
        totes_cdc::metrics::server::Health::new(),
    )
    .await
    .expect("capture");
    collector.await.unwrap()
}

async fn warehouse(pg: &PgCluster, name: &str, src_db: &str) -> (Warehouse, Client) {
    let client = pg.create_db(name).await;
    let source = PgUrl::parse(&pg.url(src_db), "source-url").unwrap();
    let tables = capture::describe_tables(&source, "totes_cdc", None)
        .await
        .unwrap();
    let mut wh = Warehouse::new(
        PgUrl::parse(&pg.url(name), "warehouse-url").unwrap(),
        "public",
        Model::Totesys,
        "apply",
        src_db,
    );
    wh.setup(&tables).await.unwrap();
    (wh, client)
}

fn batch(events: &[ChangeEvent]) -> Batch {
    Batch {
        events: events.to_vec(),
        ..Default::default()
    }
}

fn assert_same_dump(actual: &[String], expected: &[String], what: &str) {
    let missing: Vec<&String> = expected.iter().filter(|l| !actual.contains(l)).collect();
    let extra: Vec<&String> = actual.iter().filter(|l| !expected.contains(l)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}:\nmissing {missing:#?}\nextra {extra:#?}"
    );
}

/// Everything the warehouse holds, minus surrogate keys and apply times.
async fn dump(wh: &Client) -> Vec<String> {
    let mut out = Vec::new();
    for (table, drop) in [
        ("staging.address", "_applied_at"),
        ("staging.counterparty", "_applied_at"),
        ("staging.currency", "_applied_at"),
        ("staging.department", "_applied_at"),
        ("staging.design", "_applied_at"),
        ("staging.payment", "_applied_at"),
        ("staging.payment_type", "_applied_at"),
        ("staging.purchase_order", "_applied_at"),
        ("staging.sales_order", "_applied_at"),
        ("staging.staff", "_applied_at"),
        ("staging.\"transaction\"", "_applied_at"),
        ("dim_date", ""),
        ("dim_staff", ""),
        ("dim_location", ""),
        ("dim_currency", ""),
        ("dim_design", ""),
        ("dim_counterparty", ""),
        ("dim_transaction", ""),
        ("dim_payment_type", ""),
        ("fact_sales_order", "sales_record_id"),
        ("fact_purchase_order", "purchase_record_id"),
        ("fact_payment", "payment_record_id"),
        ("totes_cdc.checkpoints", "updated_at"),
    ] {
        let sql = format!("SELECT (to_jsonb(t) - '{drop}')::text AS r FROM {table} t ORDER BY 1");
        for r in wh.query(sql.as_str(), &[]).await.unwrap() {
            out.push(format!("{table} {}", r.get::<_, String>(0)));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_and_reordering_change_nothing() {
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    for n in 0..10 {
        totesys::sale(&src, n).await;
    }
    // Capture in two steps so both the snapshot and the stream are in the history.
    let state = support::temp_dir("idem");
    let mut events = capture_all(&pg, "src", &src, &state).await;
    for n in 10..25 {
        totesys::sale(&src, n).await;
        totesys::purchase(&src, n).await;
    }
    src.batch_execute(
        "UPDATE payment SET paid = true, last_updated = now()::timestamp(3) WHERE payment_id % 3 = 0;
         UPDATE department SET location = 'Leeds' WHERE department_name = 'Dispatch';
         UPDATE address SET phone = '0113 000 0000' WHERE address_id = 2;
         UPDATE sales_order SET units_sold = units_sold + 5 WHERE sales_order_id IN (1, 4, 12);
         UPDATE sales_order SET units_sold = units_sold + 5 WHERE sales_order_id = 12;
         DELETE FROM sales_order WHERE sales_order_id IN (3, 13);
         UPDATE staff SET last_name = 'O''Brien' WHERE staff_id = 5;",
    )
    .await
    .unwrap();
    events.extend(capture_all(&pg, "src", &src, &state).await);
    assert!(events.len() > 200, "{} events", events.len());

    // In order, batches of 37.
    let (mut a, a_db) = warehouse(&pg, "wh_a", "src").await;
    for chunk in events.chunks(37) {
        a.apply(&batch(chunk)).await.unwrap();
    }
    assert_star(&src, &a_db).await;
    let expected = dump(&a_db).await;

    // Every batch twice, batches in a shuffled order, and one batch of duplicates at the end.
    let (mut b, b_db) = warehouse(&pg, "wh_b", "src").await;
    let chunks: Vec<&[ChangeEvent]> = events.chunks(23).collect();
    let mut order: Vec<usize> = (0..chunks.len()).collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..order.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    for &i in &order {
        b.apply(&batch(chunks[i])).await.unwrap();
        b.apply(&batch(chunks[i])).await.unwrap();
    }
    let dupes: Vec<ChangeEvent> = events.iter().step_by(5).cloned().collect();
    b.apply(&batch(&dupes)).await.unwrap();
    assert_same_dump(
        &dump(&b_db).await,
        &expected,
        "shuffled and doubled batches differ",
    );

    // Everything in one batch, with its events reversed.
    let (mut c, c_db) = warehouse(&pg, "wh_c", "src").await;
    let mut reversed = events.clone();
    reversed.reverse();
    c.apply(&batch(&reversed)).await.unwrap();
    assert_same_dump(&dump(&c_db).await, &expected, "one reversed batch differs");
}
