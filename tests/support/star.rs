//! The warehouse against the spec: the star rows computed independently from the source's
//! current rows (spec §3, written here in plain SQL on the source) compared with the warehouse.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

/// (table, expected query on the source, actual query on the warehouse). Dimensions are
/// compared for the ids the source still has (a delete leaves the dimension row); facts are
/// compared on their current versions.
const PAIRS: &[(&str, &str, &str)] = &[
    (
        "dim_staff",
        "SELECT s.staff_id, s.first_name, s.last_name, d.department_name, coalesce(d.location, '') AS location, s.email_address \
         FROM staff s JOIN department d USING (department_id)",
        "SELECT staff_id, first_name, last_name, department_name, location, email_address FROM dim_staff",
    ),
    (
        "dim_location",
        "SELECT address_id AS location_id, address_line_1, address_line_2, district, city, postal_code, country, phone FROM address",
        "SELECT location_id, address_line_1, address_line_2, district, city, postal_code, country, phone FROM dim_location",
    ),
    (
        "dim_currency",
        "SELECT currency_id, currency_code, CASE currency_code WHEN 'GBP' THEN 'Pound Sterling' WHEN 'USD' THEN 'US Dollar' \
         WHEN 'EUR' THEN 'Euro' WHEN 'JPY' THEN 'Yen' ELSE currency_code END AS currency_name FROM currency",
        "SELECT currency_id, currency_code, currency_name FROM dim_currency",
    ),
    (
        "dim_design",
        "SELECT design_id, design_name, file_location, file_name FROM design",
        "SELECT design_id, design_name, file_location, file_name FROM dim_design",
    ),
    (
        "dim_counterparty",
        "SELECT c.counterparty_id, c.counterparty_legal_name, a.address_line_1 AS counterparty_legal_address_line_1, \
           a.address_line_2 AS counterparty_legal_address_line_2, a.district AS counterparty_legal_district, \
           a.city AS counterparty_legal_city, a.postal_code AS counterparty_legal_postal_code, \
           a.country AS counterparty_legal_country, a.phone AS counterparty_legal_phone_number \
         FROM counterparty c JOIN address a ON a.address_id = c.legal_address_id",
        "SELECT counterparty_id, counterparty_legal_name, counterparty_legal_address_line_1, counterparty_legal_address_line_2, \
           counterparty_legal_district, counterparty_legal_city, counterparty_legal_postal_code, counterparty_legal_country, \
           counterparty_legal_phone_number FROM dim_counterparty",
    ),
    (
        "dim_transaction",
        "SELECT transaction_id, transaction_type::text AS transaction_type, sales_order_id, purchase_order_id FROM \"transaction\"",
        "SELECT transaction_id, transaction_type, sales_order_id, purchase_order_id FROM dim_transaction",
    ),
    (
        "dim_payment_type",
        "SELECT payment_type_id, payment_type_name::text AS payment_type_name FROM payment_type",
        "SELECT payment_type_id, payment_type_name FROM dim_payment_type",
    ),
    (
        "fact_sales_order",
        "SELECT sales_order_id, created_at::date AS created_date, created_at::time AS created_time, \
           last_updated::date AS last_updated_date, last_updated::time AS last_updated_time, staff_id AS sales_staff_id, \
           counterparty_id, units_sold, unit_price, currency_id, design_id, agreed_payment_date::date AS agreed_payment_date, \
           agreed_delivery_date::date AS agreed_delivery_date, agreed_delivery_location_id FROM sales_order",
        "SELECT sales_order_id, created_date, created_time, last_updated_date, last_updated_time, sales_staff_id, \
           counterparty_id, units_sold, unit_price, currency_id, design_id, agreed_payment_date, agreed_delivery_date, \
           agreed_delivery_location_id FROM fact_sales_order WHERE is_current",
    ),
    (
        "fact_purchase_order",
        "SELECT purchase_order_id, created_at::date AS created_date, created_at::time AS created_time, \
           last_updated::date AS last_updated_date, last_updated::time AS last_updated_time, staff_id, counterparty_id, \
           item_code, item_quantity, item_unit_price, currency_id, agreed_delivery_date::date AS agreed_delivery_date, \
           agreed_payment_date::date AS agreed_payment_date, agreed_delivery_location_id FROM purchase_order",
        "SELECT purchase_order_id, created_date, created_time, last_updated_date, last_updated_time, staff_id, \
           counterparty_id, item_code, item_quantity, item_unit_price, currency_id, agreed_delivery_date, \
           agreed_payment_date, agreed_delivery_location_id FROM fact_purchase_order WHERE is_current",
    ),
    (
        "fact_payment",
        "SELECT payment_id, created_at::date AS created_date, created_at::time AS created_time, \
           last_updated::date AS last_updated_date, last_updated::time AS last_updated_time, transaction_id, \
           counterparty_id, payment_amount, currency_id, payment_type_id, paid, payment_date::date AS payment_date FROM payment",
        "SELECT payment_id, created_date, created_time, last_updated_date, last_updated_time, transaction_id, \
           counterparty_id, payment_amount, currency_id, payment_type_id, paid, payment_date FROM fact_payment WHERE is_current",
    ),
];

async fn rows(client: &Client, sql: &str, diffs: &mut Vec<String>) -> BTreeMap<String, String> {
    let wrapped = format!("SELECT row_to_json(q)::text FROM ({sql}) q");
    let rows = client
        .query(wrapped.as_str(), &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut out = BTreeMap::new();
    for r in &rows {
        let json: String = r.get(0);
        // The first column is the id (natural key); row_to_json keeps column order.
        let id = json
            .trim_start_matches('{')
            .split_once(':')
            .map(|(_, rest)| rest.split(',').next().unwrap_or("").to_string())
            .unwrap_or_default();
        if let Some(prev) = out.insert(id.clone(), json) {
            diffs.push(format!("two rows for id {id}: {prev}"));
        }
    }
    out
}

/// Asserts the warehouse's star schema is the transform of the source's current rows: every
/// table, every column; dim_date holds exactly the dates the facts reference, spelled right.
pub async fn assert_star(source: &Client, wh: &Client) {
    let diffs = star_diffs(source, wh).await;
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Waits until the warehouse is the transform of the source (for pipelines with no single
/// order, such as several Kinesis shards); panics with the differences after `timeout`.
pub async fn wait_star(source: &Client, wh: &Client, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let diffs = star_diffs(source, wh).await;
        if diffs.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "the warehouse did not converge: {} differences:\n{}",
                diffs.len(),
                diffs
                    .iter()
                    .take(15)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The differences between the warehouse's star schema and the transform of the source.
pub async fn star_diffs(source: &Client, wh: &Client) -> Vec<String> {
    let mut diffs = Vec::new();
    for (table, expected_sql, actual_sql) in PAIRS {
        let expected = rows(source, expected_sql, &mut diffs).await;
        let mut actual = rows(wh, actual_sql, &mut diffs).await;
        if table.starts_with("dim_") {
            actual.retain(|id, _| expected.contains_key(id));
        } else if actual.len() != expected.len() {
            diffs.push(format!(
                "{table}: {} current rows, expected {}",
                actual.len(),
                expected.len()
            ));
        }
        for (id, e) in &expected {
            match actual.get(id) {
                None => diffs.push(format!("{table} {id}: missing, expected {e}")),
                Some(a) if a != e => {
                    diffs.push(format!("{table} {id}:\n  warehouse {a}\n  expected  {e}"))
                }
                _ => {}
            }
        }
    }
    // dim_date: the dates referenced by any fact version, each with its attributes.
    let referenced: BTreeSet<String> = wh
        .query(
            "SELECT DISTINCT d::text FROM ( \
               SELECT unnest(ARRAY[created_date, last_updated_date, agreed_payment_date, agreed_delivery_date]) d FROM fact_sales_order \
               UNION ALL SELECT unnest(ARRAY[created_date, last_updated_date, agreed_payment_date, agreed_delivery_date]) FROM fact_purchase_order \
               UNION ALL SELECT unnest(ARRAY[created_date, last_updated_date, payment_date]) FROM fact_payment) x",
            &[],
        )
        .await
        .expect("referenced dates")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let dim_dates = wh
        .query(
            "SELECT date_id::text, year, month, day, day_of_week, day_name::text, month_name::text, quarter FROM dim_date",
            &[],
        )
        .await
        .expect("dim_date");
    let have: BTreeSet<String> = dim_dates.iter().map(|r| r.get(0)).collect();
    if have != referenced {
        diffs.push(format!(
            "dim_date: {} dates, facts reference {} (missing {:?}, extra {:?})",
            have.len(),
            referenced.len(),
            referenced.difference(&have).take(5).collect::<Vec<_>>(),
            have.difference(&referenced).take(5).collect::<Vec<_>>()
        ));
    }
    for r in &dim_dates {
        let date: String = r.get(0);
        let expected = date_attributes(&date);
        let actual = (
            r.get::<_, i32>(1),
            r.get::<_, i32>(2),
            r.get::<_, i32>(3),
            r.get::<_, i32>(4),
            r.get::<_, String>(5),
            r.get::<_, String>(6),
            r.get::<_, i32>(7),
        );
        if actual != expected {
            diffs.push(format!(
                "dim_date {date}: {actual:?}, expected {expected:?}"
            ));
        }
    }
    diffs
}

/// (year, month, day, ISO day of week, day name, month name, quarter), computed here.
fn date_attributes(date: &str) -> (i32, i32, i32, i32, String, String, i32) {
    let p: Vec<i32> = date.split('-').filter_map(|x| x.parse().ok()).collect();
    let (y, m, d) = (p[0], p[1], p[2]);
    // Zeller-free: days from 1970-01-01 by Howard Hinnant's algorithm, 1970-01-01 a Thursday.
    let yy = if m <= 2 { y - 1 } else { y } as i64;
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let isodow = ((days + 3).rem_euclid(7) + 1) as i32;
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    (
        y,
        m,
        d,
        isodow,
        DAYS[(isodow - 1) as usize].to_string(),
        MONTHS[(m - 1) as usize].to_string(),
        (m - 1) / 3 + 1,
    )
}

/// Waits until the warehouse has applied everything the source committed so far: a harmless
/// write goes through the pipeline and the checkpoint passes it.
pub async fn sync(source: &Client, wh: &Client, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    // A write before the slot's consistent point would be part of the snapshot instead of
    // coming through the stream, so wait for the slot first.
    loop {
        // Created (the consistent point is known only at the end of the creation, and the
        // snapshot rows carry it as their position) and held.
        let active = source
            .query_opt(
                "SELECT active AND confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = 'totes_cdc'",
                &[],
            )
            .await
            .expect("slots")
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        if active {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pipeline never started streaming"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The insert position: with synchronous_commit off the write position can lag behind
    // commits that have already returned.
    let before: String = source
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .expect("lsn")
        .get(0);
    source
        .batch_execute("UPDATE currency SET last_updated = last_updated WHERE currency_id = (SELECT min(currency_id) FROM currency)")
        .await
        .expect("sync write");
    loop {
        let done = wh
            .query_opt(
                // Strictly past it: the snapshot's rows sit at the consistent point, which
                // may equal `before`; the sync write commits after it.
                "SELECT lsn > $1::text::pg_lsn FROM totes_cdc.checkpoints WHERE name = 'apply'",
                &[&before],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the warehouse did not catch up with {before}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (table, key, lsn, seq) of every fact version in the warehouse.
pub async fn fact_versions(wh: &Client) -> BTreeSet<(String, i64, String, i64)> {
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
pub fn oracle_versions(events: &[serde_json::Value]) -> BTreeSet<(String, i64, String, i64)> {
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
