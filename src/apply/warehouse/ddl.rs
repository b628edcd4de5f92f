//! Warehouse DDL: the pipeline's own schema, the staging mirrors of the source tables, and the
//! star schema of the model. The SQL lives in `sql/warehouse/`; the binary embeds those files.

use crate::event::TableSchema;
use crate::pg::{ident, quote_ident};

/// Bumped when the warehouse layout changes incompatibly.
pub const SCHEMA_VERSION: i32 = 6;

pub const TOTES_CDC_SQL: &str = include_str!("../../../sql/warehouse/00_totes_cdc.sql");
pub const STAR_SQL: &str = include_str!("../../../sql/warehouse/01_star.sql");
pub const ISO4217_SQL: &str = include_str!("../../../sql/warehouse/iso4217.sql");

/// The totesys model's transforms, run in this order inside every batch transaction.
pub const STAR_TRANSFORMS: &[(&str, &str)] = &[
    (
        "10_dim_location.sql",
        include_str!("../../../sql/warehouse/star/10_dim_location.sql"),
    ),
    (
        "11_dim_counterparty.sql",
        include_str!("../../../sql/warehouse/star/11_dim_counterparty.sql"),
    ),
    (
        "12_dim_staff.sql",
        include_str!("../../../sql/warehouse/star/12_dim_staff.sql"),
    ),
    (
        "13_dim_currency.sql",
        include_str!("../../../sql/warehouse/star/13_dim_currency.sql"),
    ),
    (
        "14_dim_design.sql",
        include_str!("../../../sql/warehouse/star/14_dim_design.sql"),
    ),
    (
        "15_dim_payment_type.sql",
        include_str!("../../../sql/warehouse/star/15_dim_payment_type.sql"),
    ),
    (
        "16_dim_transaction.sql",
        include_str!("../../../sql/warehouse/star/16_dim_transaction.sql"),
    ),
    (
        "20_fact_sales_order.sql",
        include_str!("../../../sql/warehouse/star/20_fact_sales_order.sql"),
    ),
    (
        "21_fact_purchase_order.sql",
        include_str!("../../../sql/warehouse/star/21_fact_purchase_order.sql"),
    ),
    (
        "22_fact_payment.sql",
        include_str!("../../../sql/warehouse/star/22_fact_payment.sql"),
    ),
];

/// The star tables of the totesys model (their changed rows go to the lake's processed files).
pub const STAR_TABLES: &[&str] = &[
    "dim_date",
    "dim_staff",
    "dim_location",
    "dim_currency",
    "dim_design",
    "dim_counterparty",
    "dim_transaction",
    "dim_payment_type",
    "fact_sales_order",
    "fact_purchase_order",
    "fact_payment",
];

/// The source tables the totesys model reads.
pub const TOTESYS_TABLES: &[&str] = &[
    "address",
    "counterparty",
    "currency",
    "department",
    "design",
    "payment",
    "payment_type",
    "purchase_order",
    "sales_order",
    "staff",
    "transaction",
];

/// Fills the `{{schema}}` placeholder.
pub fn with_schema(sql: &str, schema: &str) -> String {
    sql.replace("{{schema}}", &ident(schema))
}

/// The staging mirror's bare name: the table's name for schema public, `schema__table` otherwise
/// — unless that could name two tables or not fit: a part holding `__` or `-`, or a name longer
/// than 57 bytes (room for the batch table's `batch_` within PostgreSQL's 63). Those take
/// `<readable prefix>-<16 hex digits of a hash of schema and table>`, which no plain name has.
pub fn staging_name(schema: &str, table: &str) -> String {
    const MAX: usize = 57;
    let plain = |s: &str| !s.is_empty() && !s.contains("__") && !s.contains('-');
    let name = if schema == "public" {
        table.to_string()
    } else {
        format!("{schema}__{table}")
    };
    if plain(table) && (schema == "public" || plain(schema)) && name.len() <= MAX {
        return name;
    }
    let hash = crate::hash::fnv1a64(format!("{}\0{}", schema, table).as_bytes());
    let readable: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(MAX - 17)
        .collect();
    format!("{readable}-{hash:016x}")
}

/// `staging.<name>`, quoted.
pub fn staging_table(schema: &str, table: &str) -> String {
    format!("staging.{}", quote_ident(&staging_name(schema, table)))
}

/// The temporary table holding a batch's events of a source table, quoted.
pub fn batch_table(staging_name: &str) -> String {
    quote_ident(&format!("batch_{staging_name}"))
}

/// The column type in the warehouse: built-in types as the source spells them; user-defined
/// types (enums, domains, composites) as text, since the warehouse does not have them.
pub fn warehouse_type(c: &crate::event::Column) -> String {
    match c.stored_type() {
        (oid, _) if oid == c.type_oid => c.type_name.clone(),
        (1009, _) => "text[]".into(),
        _ => "text".into(),
    }
}

/// The columns a staging mirror adds to the source's: the event position, the tombstone flag
/// and the apply time.
pub const BOOKKEEPING_COLUMNS: [&str; 4] = ["_lsn", "_seq", "_deleted", "_applied_at"];

/// Statements creating (or completing) the staging mirror of `t`: the source columns with the
/// same types (nullable, so a delete can leave a tombstone), then the event position, the
/// deleted flag and the apply time; the primary key is the source's.
pub fn staging_ddl(t: &TableSchema) -> Vec<String> {
    let table = staging_table(&t.schema, &t.name);
    let mut cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| format!("{} {}", quote_ident(&c.name), warehouse_type(c)))
        .collect();
    cols.push("_lsn pg_lsn NOT NULL".into());
    cols.push("_seq integer NOT NULL".into());
    cols.push("_deleted boolean NOT NULL DEFAULT false".into());
    cols.push("_applied_at timestamptz NOT NULL DEFAULT now()".into());
    let key: Vec<String> = t
        .key
        .iter()
        .map(|&i| quote_ident(&t.columns[i].name))
        .collect();
    cols.push(format!("PRIMARY KEY ({})", key.join(", ")));
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n    {}\n)",
        cols.join(",\n    ")
    )];
    // A column added at the source after the mirror was made.
    for c in &t.columns {
        out.push(format!(
            "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} {}",
            quote_ident(&c.name),
            warehouse_type(c)
        ));
    }
    out.push(format!(
        "COMMENT ON TABLE {table} IS {}",
        crate::pg::quote_literal(&format!(
            "Mirror of {}.{} kept by totes-cdc: source columns, event position (_lsn, _seq), tombstone flag (_deleted), apply time.",
            t.schema, t.name
        ))
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::staging_name;

    #[test]
    fn staging_names_never_collide_and_fit() {
        assert_eq!(staging_name("public", "sales_order"), "sales_order");
        assert_eq!(staging_name("sales", "orders"), "sales__orders");
        let names = [
            staging_name("a", "b__c"),
            staging_name("a__b", "c"),
            staging_name("public", "a__b__c"),
            staging_name("public", &"x".repeat(80)),
            staging_name("public", &format!("{}y", "x".repeat(80))),
            staging_name("public", "a-b"),
            staging_name("a", "b-c"),
        ];
        for (i, n) in names.iter().enumerate() {
            assert!(n.len() <= 57, "{n}");
            for m in &names[i + 1..] {
                assert_ne!(n, m);
            }
        }
    }
}
