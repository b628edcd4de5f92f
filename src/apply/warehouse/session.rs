//! The warehouse session: one connection, the staging mirrors as the catalog has them, a
//! temporary batch table for each (and, for the totesys model, one for the star rows a batch
//! produces), and the star tables' columns for the lake's processed files.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio_postgres::{Client, GenericClient};

use super::{ddl, ApplyError, Model};
use crate::event::{Column, TableSchema, ValueKind};
use crate::lake::WarehouseColumn;
use crate::pg::{quote_ident, PgUrl};

/// What the warehouse knows about one staging mirror.
#[derive(Debug, Clone)]
pub(super) struct Mirror {
    pub staging: String,
    pub batch: String,
    pub key: Vec<String>,
    pub columns: Vec<String>,
    /// (type oid, type modifier, SQL type name) of each column.
    pub types: Vec<(u32, i32, String)>,
}

impl Mirror {
    /// The SQL name of a column's type.
    pub fn column_type(&self, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == column)?;
        Some(self.types[i].2.as_str())
    }

    /// The source table's shape as the mirror has it (for decoding envelopes).
    pub fn table_schema(&self, schema: &str, table: &str) -> Arc<TableSchema> {
        let columns: Vec<Column> = self
            .columns
            .iter()
            .zip(&self.types)
            .map(|(name, (oid, typmod, type_name))| Column {
                name: name.clone(),
                type_oid: *oid,
                type_mod: *typmod,
                type_name: type_name.clone(),
                kind: ValueKind::builtin(*oid).unwrap_or(ValueKind::Text),
            })
            .collect();
        let key = self
            .key
            .iter()
            .filter_map(|k| columns.iter().position(|c| &c.name == k))
            .collect();
        Arc::new(TableSchema {
            oid: 0,
            schema: schema.to_string(),
            name: table.to_string(),
            columns,
            key,
            keyless: false,
        })
    }
}

pub(super) struct Session {
    pub client: Client,
    /// Staging table name → mirror.
    pub mirrors: HashMap<String, Mirror>,
    /// Columns of the star tables, for the processed files.
    pub star_columns: BTreeMap<String, Vec<WarehouseColumn>>,
}

/// The staging mirrors as the catalog has them (only `only`'s, when given), by bare name.
pub(super) async fn read_mirrors(
    client: &impl GenericClient,
    only: Option<&str>,
) -> Result<HashMap<String, Mirror>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.relname::text, a.attname::text, a.atttypid, a.atttypmod, \
                    format_type(a.atttypid, a.atttypmod), array_position(i.indkey::int2[], a.attnum) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary \
             WHERE n.nspname = 'staging' AND c.relkind = 'r' AND a.attname <> ALL($1::text[]) \
               AND ($2::text IS NULL OR c.relname = $2) \
             ORDER BY c.relname, a.attnum",
            &[&ddl::BOOKKEEPING_COLUMNS.as_slice(), &only],
        )
        .await?;
    let mut mirrors: HashMap<String, Mirror> = HashMap::new();
    let mut key_order: HashMap<String, Vec<(i32, String)>> = HashMap::new();
    for r in &rows {
        let name: String = r.get(0);
        let column: String = r.get(1);
        let m = mirrors.entry(name.clone()).or_insert_with(|| Mirror {
            staging: format!("staging.{}", quote_ident(&name)),
            batch: ddl::batch_table(&name),
            key: Vec::new(),
            columns: Vec::new(),
            types: Vec::new(),
        });
        m.columns.push(column.clone());
        m.types.push((r.get(2), r.get(3), r.get(4)));
        if let Some(pos) = r.get::<_, Option<i32>>(5) {
            key_order.entry(name).or_default().push((pos, column));
        }
    }
    for (name, mut key) in key_order {
        key.sort();
        if let Some(m) = mirrors.get_mut(&name) {
            m.key = key.into_iter().map(|(_, c)| c).collect();
        }
    }
    Ok(mirrors)
}

/// The session's temporary batch table of a mirror: its columns, then position, op and the
/// unchanged-TOAST list.
pub(super) fn batch_table_ddl(m: &Mirror) -> String {
    let cols: Vec<String> = m.columns.iter().map(|c| quote_ident(c)).collect();
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS \
         SELECT {}, _lsn, _seq, ''::text AS _op, NULL::text[] AS _unchanged FROM {} WITH NO DATA;\n",
        m.batch,
        cols.join(", "),
        m.staging
    )
}

/// Connects, reads the mirrors and creates the session's batch tables.
pub(super) async fn open(url: &PgUrl, model: Model, schema: &str) -> Result<Session, ApplyError> {
    let client = url.connect().await?;
    let err = |ctx: &str, e| ApplyError::Pg(url.query_error(ctx, e));
    let mirrors = read_mirrors(&client, None)
        .await
        .map_err(|e| err("reading the staging mirrors", e))?;
    let mut ddl_sql = String::new();
    for m in mirrors.values() {
        ddl_sql.push_str(&batch_table_ddl(m));
    }
    let mut star_columns = BTreeMap::new();
    if model == Model::Totesys {
        let schema = crate::pg::ident(schema);
        for t in ddl::STAR_TABLES {
            ddl_sql.push_str(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS produced_{t} ON COMMIT DELETE ROWS AS \
                 SELECT * FROM {schema}.{t} WITH NO DATA;\n"
            ));
            // Surrogate keys (serial) are left out: a rebuild would renumber them, and the lake
            // is reproducible from the events (natural key + position).
            let cols = client
                .query(
                    "SELECT a.attname::text, a.atttypid, a.atttypmod FROM pg_attribute a \
                     LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                     WHERE a.attrelid = ($1 || '.' || $2)::regclass AND a.attnum > 0 AND NOT a.attisdropped \
                       AND coalesce(pg_get_expr(d.adbin, d.adrelid), '') NOT LIKE 'nextval(%' \
                     ORDER BY a.attnum",
                    &[&schema, t],
                )
                .await
                .map_err(|e| err("reading the star tables' columns", e))?;
            star_columns.insert(
                t.to_string(),
                cols.iter()
                    .map(|r| WarehouseColumn {
                        name: r.get(0),
                        type_oid: r.get(1),
                        type_mod: r.get(2),
                    })
                    .collect(),
            );
        }
    }
    client
        .batch_execute(&ddl_sql)
        .await
        .map_err(|e| err("creating the batch tables", e))?;
    Ok(Session {
        client,
        mirrors,
        star_columns,
    })
}
