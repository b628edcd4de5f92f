//! `totes-cdc verify`: reconciliation for operators. Each staging mirror is compared with its
//! source table row for row; then the star schema is recomputed from staging in full (the
//! model's own SQL, into temporary tables, rolled back) and compared with what incremental
//! apply built. Differences are reported by table and key; any difference exits 1.

use std::collections::HashMap;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::{pin_mut, StreamExt};
use tokio_postgres::Client;

use crate::apply::warehouse::ddl;
use crate::apply::warehouse::Model;
use crate::capture;
use crate::config::VerifyArgs;
use crate::event::TableSchema;
use crate::pg::quote_ident;

/// One table's differences.
struct Report {
    table: String,
    rows: usize,
    diffs: Vec<String>,
    /// What differs for a known, documented reason (not counted as a difference).
    notes: Vec<String>,
}

async fn copy_lines(client: &Client, sql: &str) -> Result<Vec<Bytes>> {
    let stream = client
        .copy_out(sql)
        .await
        .with_context(|| format!("running {sql}"))?;
    pin_mut!(stream);
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
    }
    let all = buf.freeze();
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, &b) in all.iter().enumerate() {
        if b == b'\n' {
            lines.push(all.slice(start..i));
            start = i + 1;
        }
    }
    Ok(lines)
}

fn key_of(line: &[u8], key_idx: &[usize]) -> String {
    let fields: Vec<&[u8]> = line.split(|&b| b == b'\t').collect();
    key_idx
        .iter()
        .map(|&i| String::from_utf8_lossy(fields.get(i).copied().unwrap_or_default()).into_owned())
        .collect::<Vec<_>>()
        .join(",")
}

/// The columns of a staging mirror, as the warehouse has them.
async fn mirror_columns(
    wh: &impl tokio_postgres::GenericClient,
    t: &TableSchema,
) -> Result<Vec<String>> {
    Ok(wh
        .query(
            "SELECT attname::text FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
            &[&ddl::staging_table(&t.schema, &t.name)],
        )
        .await
        .context("reading a staging mirror's columns")?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Source columns added with a default that PostgreSQL did not write into the existing rows
/// (`atthasmissing`): those rows changed in nothing the WAL carries, so the mirror keeps NULL
/// there until a change rewrites them. By column: the default's text.
async fn added_defaults(src: &Client, t: &TableSchema) -> Result<HashMap<String, String>> {
    Ok(src
        .query(
            "SELECT attname::text, (attmissingval::text::text[])[1] FROM pg_attribute \
             WHERE attrelid = $1 AND atthasmissing AND NOT attisdropped",
            &[&t.oid],
        )
        .await
        .context("reading the source's added column defaults")?
        .iter()
        .filter_map(|r| Some((r.get(0), r.get::<_, Option<String>>(1)?)))
        .collect())
}

/// Staging (live rows) against the source table, by key.
async fn compare_mirror(src: &Client, wh: &Client, t: &TableSchema) -> Result<Report> {
    let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let order: Vec<String> = t.key.iter().map(|&i| cols[i].clone()).collect();
    let in_mirror = mirror_columns(wh, t).await?;
    let defaults = added_defaults(src, t).await?;
    // A column no change has carried yet is not in the mirror: NULL there.
    let staged_cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            if in_mirror.contains(&c.name) {
                quote_ident(&c.name)
            } else {
                "NULL".to_string()
            }
        })
        .collect();
    let source_rows = copy_lines(
        src,
        &format!(
            "COPY (SELECT {} FROM {}.{} ORDER BY {}) TO STDOUT",
            cols.join(", "),
            quote_ident(&t.schema),
            quote_ident(&t.name),
            order.join(", ")
        ),
    )
    .await?;
    let staging_rows = copy_lines(
        wh,
        &format!(
            "COPY (SELECT {} FROM {} WHERE NOT _deleted ORDER BY {}) TO STDOUT",
            staged_cols.join(", "),
            ddl::staging_table(&t.schema, &t.name),
            order.join(", ")
        ),
    )
    .await?;
    let mut staged: HashMap<String, Bytes> = staging_rows
        .into_iter()
        .map(|l| (key_of(&l, &t.key), l))
        .collect();
    let mut diffs = Vec::new();
    let mut kept_defaults: std::collections::BTreeMap<&str, usize> = Default::default();
    let rows = source_rows.len();
    for line in source_rows {
        let key = key_of(&line, &t.key);
        match staged.remove(&key) {
            None => diffs.push(format!("key {key}: missing in staging")),
            Some(s) if s != line => match only_added_defaults(&line, &s, t, &defaults) {
                Some(columns) => {
                    for c in columns {
                        *kept_defaults.entry(c).or_default() += 1;
                    }
                }
                None => diffs.push(format!(
                    "key {key}: differs\n      source  {}\n      staging {}",
                    String::from_utf8_lossy(&line),
                    String::from_utf8_lossy(&s)
                )),
            },
            _ => {}
        }
    }
    for key in staged.keys() {
        diffs.push(format!("key {key}: in staging, not in the source"));
    }
    diffs.sort();
    let notes = kept_defaults
        .into_iter()
        .map(|(c, n)| {
            format!(
                "{n} rows hold column {c}'s added default {} at the source and NULL in the mirror: the column was added with a default no change has written into them yet",
                defaults.get(c).map_or("", String::as_str)
            )
        })
        .collect();
    Ok(Report {
        table: format!("staging {}", t.qualified_name()),
        rows,
        diffs,
        notes,
    })
}

/// When two COPY lines differ only where the source holds an added column's default and
/// staging NULL: those columns.
fn only_added_defaults<'a>(
    source: &[u8],
    staged: &[u8],
    t: &'a TableSchema,
    defaults: &HashMap<String, String>,
) -> Option<Vec<&'a str>> {
    if defaults.is_empty() {
        return None;
    }
    let a: Vec<&[u8]> = source.split(|&b| b == b'\t').collect();
    let b: Vec<&[u8]> = staged.split(|&b| b == b'\t').collect();
    if a.len() != b.len() || a.len() != t.columns.len() {
        return None;
    }
    let mut columns = Vec::new();
    for (i, c) in t.columns.iter().enumerate() {
        if a[i] == b[i] {
            continue;
        }
        let default = defaults.get(&c.name)?;
        if b[i] != b"\\N" || a[i] != default.as_bytes() {
            return None;
        }
        columns.push(c.name.as_str());
    }
    Some(columns)
}

const DIMS: &[(&str, &str)] = &[
    ("dim_staff", "staff_id"),
    ("dim_location", "location_id"),
    ("dim_currency", "currency_id"),
    ("dim_design", "design_id"),
    ("dim_counterparty", "counterparty_id"),
    ("dim_transaction", "transaction_id"),
    ("dim_payment_type", "payment_type_id"),
];

const FACTS: &[(&str, &str, &str)] = &[
    ("fact_sales_order", "sales_order_id", "sales_record_id"),
    (
        "fact_purchase_order",
        "purchase_order_id",
        "purchase_record_id",
    ),
    ("fact_payment", "payment_id", "payment_record_id"),
];

/// The star schema recomputed in full from staging, against what apply built.
async fn compare_star(
    wh: &mut Client,
    schema: &str,
    tables: &[std::sync::Arc<TableSchema>],
) -> Result<Vec<Report>> {
    let s = crate::pg::ident(schema);
    let tx = wh.transaction().await?;
    let mut setup = String::new();
    for t in tables {
        let name = ddl::staging_name(&t.schema, &t.name);
        let in_mirror = mirror_columns(&tx, t).await?;
        let cols: Vec<String> = t
            .columns
            .iter()
            .filter(|c| in_mirror.contains(&c.name))
            .map(|c| quote_ident(&c.name))
            .collect();
        setup.push_str(&format!(
            "CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {}, _lsn, _seq, 'r'::text AS _op, NULL::text[] AS _unchanged \
             FROM {} WHERE NOT _deleted;\n",
            ddl::batch_table(&name),
            cols.join(", "),
            ddl::staging_table(&t.schema, &t.name)
        ));
    }
    for (dim, id) in DIMS {
        setup.push_str(&format!(
            "CREATE TEMP TABLE {dim} ON COMMIT DROP AS SELECT * FROM {s}.{dim} WITH NO DATA; \
             ALTER TABLE pg_temp.{dim} ADD PRIMARY KEY ({id});\n"
        ));
    }
    setup.push_str("CREATE TEMP SEQUENCE verify_record_ids;\n");
    for (fact, key, record) in FACTS {
        setup.push_str(&format!(
            "CREATE TEMP TABLE {fact} ON COMMIT DROP AS SELECT * FROM {s}.{fact} WITH NO DATA; \
             ALTER TABLE pg_temp.{fact} ALTER COLUMN {record} SET DEFAULT nextval('verify_record_ids'); \
             CREATE UNIQUE INDEX ON pg_temp.{fact} ({key}, source_lsn, source_seq);\n"
        ));
    }
    setup.push_str(&format!(
        "CREATE TEMP TABLE dim_date ON COMMIT DROP AS SELECT * FROM {s}.dim_date WITH NO DATA; \
         ALTER TABLE pg_temp.dim_date ADD PRIMARY KEY (date_id);\n"
    ));
    for t in ddl::STAR_TABLES {
        setup.push_str(&format!(
            "CREATE TEMP TABLE IF NOT EXISTS produced_{t} ON COMMIT DROP AS SELECT * FROM {s}.{t} WITH NO DATA;\n"
        ));
    }
    for (_, body) in ddl::STAR_TRANSFORMS {
        setup.push_str(&ddl::with_schema(body, "pg_temp"));
        setup.push('\n');
    }
    tx.batch_execute(&setup)
        .await
        .context("recomputing the star schema from staging")?;

    let mut reports = Vec::new();
    for (dim, id) in DIMS {
        let expected = format!("SELECT to_jsonb(e)::text FROM pg_temp.{dim} e");
        let actual = format!(
            "SELECT to_jsonb(a)::text FROM {s}.{dim} a WHERE a.{id} IN (SELECT {id} FROM pg_temp.{dim})"
        );
        let label = format!("{schema}.{dim}");
        reports.push(compare(&tx, label, dim, &expected, &actual).await?);
    }
    for (fact, _, record) in FACTS {
        let expected = format!("SELECT (to_jsonb(e) - '{record}')::text FROM pg_temp.{fact} e");
        let actual =
            format!("SELECT (to_jsonb(a) - '{record}')::text FROM {s}.{fact} a WHERE a.is_current");
        let label = format!("{schema}.{fact} (current versions)");
        reports.push(compare(&tx, label, fact, &expected, &actual).await?);
    }
    // Every date a fact references is in dim_date.
    let missing = tx
        .query(
            &format!(
                "SELECT DISTINCT 'missing ' || d::text FROM ( \
                   SELECT unnest(ARRAY[created_date, last_updated_date, agreed_payment_date, agreed_delivery_date]) d FROM {s}.fact_sales_order \
                   UNION ALL SELECT unnest(ARRAY[created_date, last_updated_date, agreed_delivery_date, agreed_payment_date]) FROM {s}.fact_purchase_order \
                   UNION ALL SELECT unnest(ARRAY[created_date, last_updated_date, payment_date]) FROM {s}.fact_payment) x \
                 WHERE NOT EXISTS (SELECT 1 FROM {s}.dim_date WHERE date_id = d) ORDER BY 1"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let dates: i64 = tx
        .query_one(&format!("SELECT count(*) FROM {s}.dim_date"), &[])
        .await?
        .get(0);
    reports.push(Report {
        table: format!("{schema}.dim_date"),
        rows: dates as usize,
        diffs: missing,
        notes: Vec::new(),
    });
    tx.rollback().await?;
    Ok(reports)
}

pub async fn run(args: VerifyArgs) -> Result<()> {
    let source = super::source_url(&args.source.url, "verify")?;
    let wh_url = super::run::warehouse_url(&args.warehouse)?;
    let tables = capture::describe_tables(
        &source,
        &args.source.publication,
        args.source.tables().as_deref(),
    )
    .await?;
    let src = source.connect().await?;
    let mut wh = wh_url.connect().await?;
    let started = std::time::Instant::now();
    let mut reports = Vec::new();
    for t in &tables {
        reports.push(compare_mirror(&src, &wh, t).await?);
    }
    if args.warehouse.model == Model::Totesys {
        reports.extend(compare_star(&mut wh, &args.warehouse.warehouse_schema, &tables).await?);
    }
    let mut total = 0;
    for r in &reports {
        if r.diffs.is_empty() {
            println!("ok    {:<48} {} rows", r.table, r.rows);
            for n in &r.notes {
                println!("      note: {n}");
            }
        } else {
            total += r.diffs.len();
            println!("DIFF  {:<48} {} differences", r.table, r.diffs.len());
            for d in r.diffs.iter().take(args.show) {
                println!("      {d}");
            }
            if r.diffs.len() > args.show {
                println!("      ... and {} more", r.diffs.len() - args.show);
            }
        }
    }
    println!(
        "verified {} tables in {:.1}s: {}",
        reports.len(),
        started.elapsed().as_secs_f64(),
        if total == 0 {
            "no differences".to_string()
        } else {
            format!("{total} differences")
        }
    );
    if total > 0 {
        anyhow::bail!("the warehouse differs from the source in {total} places (see above)");
    }
    Ok(())
}

/// The rows of `expected` (recomputed into `pg_temp.<recomputed>`) and `actual` that differ.
async fn compare(
    tx: &tokio_postgres::Transaction<'_>,
    table: String,
    recomputed: &str,
    expected: &str,
    actual: &str,
) -> Result<Report> {
    let rows: i64 = tx
        .query_one(&format!("SELECT count(*) FROM pg_temp.{recomputed}"), &[])
        .await?
        .get(0);
    let sql = format!(
        "SELECT 'expected ' || e FROM ({expected} EXCEPT {actual}) x(e) \
         UNION ALL SELECT 'found    ' || a FROM ({actual} EXCEPT {expected}) y(a) ORDER BY 1"
    );
    let diffs = tx
        .query(sql.as_str(), &[])
        .await?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    Ok(Report {
        table,
        rows: rows as usize,
        diffs,
        notes: Vec::new(),
    })
}
