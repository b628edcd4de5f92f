//! The star schema of the totesys model: the model's SQL transforms refresh the dimension and
//! fact rows a batch touches (each transform also fills a `produced_<table>` temporary table),
//! and the rows produced become the batch's processed lake files.

use std::collections::BTreeMap;

use tokio_postgres::Transaction;

use super::load::copy_rows;
use super::{ddl, ApplyError};
use crate::event::ChangeEvent;
use crate::lake::{self, LakeFile, WarehouseColumn};
use crate::pg::{quote_ident, PgUrl};

/// Runs the star transforms over what the batch merged into staging.
pub(super) async fn refresh(
    tx: &Transaction<'_>,
    schema: &str,
    url: &PgUrl,
) -> Result<(), ApplyError> {
    let err = |ctx: &str, e| ApplyError::Pg(url.query_error(ctx, e));
    // Consumers of different shards apply at once; a dimension joining rows that arrive
    // through different shards (staff and department) must see the other batch's rows: the
    // star refresh and the commit take turns.
    tx.batch_execute("SELECT pg_advisory_xact_lock(hashtext('totes_cdc.star'))")
        .await
        .map_err(|e| err("waiting for the star refresh lock", e))?;
    let mut sql = String::new();
    for (_, body) in ddl::STAR_TRANSFORMS {
        sql.push_str(&ddl::with_schema(body, schema));
        sql.push('\n');
    }
    tx.batch_execute(&sql)
        .await
        .map_err(|e| err("refreshing the star schema", e))
}

/// The star rows this batch produced, one processed file per star table that has any.
pub(super) async fn processed_files(
    tx: &Transaction<'_>,
    star_columns: &BTreeMap<String, Vec<WarehouseColumn>>,
    events: &[ChangeEvent],
    url: &PgUrl,
) -> Result<Vec<LakeFile>, ApplyError> {
    let first = events.iter().map(|e| e.position).min().unwrap_or_default();
    let last = events.iter().map(|e| e.position).max().unwrap_or_default();
    let date = lake::utc_date(
        events
            .iter()
            .min_by_key(|e| e.position)
            .map_or(0, |e| e.commit_ts_us),
    );
    let mut files = Vec::new();
    for (table, columns) in star_columns {
        let cols: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
        let sql = format!(
            "COPY (SELECT {} FROM produced_{table}) TO STDOUT",
            cols.join(", ")
        );
        let rows = copy_rows(tx, &sql, columns.len(), url).await?;
        if !rows.is_empty() {
            files.push(
                lake::processed_file(table, columns, &rows, first, last, &date)
                    .map_err(ApplyError::LakeFile)?,
            );
        }
    }
    Ok(files)
}
