//! Creating or completing the warehouse: the `totes_cdc` bookkeeping schema, the ISO 4217
//! names, a staging mirror per source table and, for the totesys model, the star schema. One
//! transaction under an advisory lock, so several processes may run it at once.

use std::sync::Arc;

use super::{ddl, ApplyError, Model};
use crate::event::TableSchema;
use crate::pg::PgUrl;

/// Creates or completes the warehouse for these source tables (idempotent).
pub(super) async fn setup(
    url: &PgUrl,
    model: Model,
    schema: &str,
    tables: &[Arc<TableSchema>],
) -> Result<(), ApplyError> {
    let err = |ctx: &str, e| ApplyError::Pg(url.query_error(ctx, e));
    let mut client = url.connect().await?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| err("starting setup", e))?;
    tx.batch_execute("SELECT pg_advisory_xact_lock(hashtext('totes_cdc.setup'))")
        .await
        .map_err(|e| err("locking setup", e))?;
    tx.batch_execute(ddl::TOTES_CDC_SQL)
        .await
        .map_err(|e| err("creating schema totes_cdc", e))?;
    let found = super::bookkeeping::schema_version(&tx)
        .await
        .map_err(|e| err("reading the schema version", e))?;
    if let Some(found) = found.filter(|&v| v > ddl::SCHEMA_VERSION) {
        return Err(ApplyError::NewerSchema {
            target: url.target(),
            found,
            known: ddl::SCHEMA_VERSION,
        });
    }
    tx.batch_execute(ddl::ISO4217_SQL)
        .await
        .map_err(|e| err("loading ISO 4217 currency names", e))?;
    for t in tables {
        // A mirror is keyed by the source's primary key or replica identity index: a table
        // identified by its whole row (REPLICA IDENTITY FULL, no key) could hold NULLs and
        // values too large for an index there.
        if t.keyless || t.key.is_empty() {
            return Err(ApplyError::NoKey {
                table: t.qualified_name(),
            });
        }
        for stmt in ddl::staging_ddl(t) {
            tx.batch_execute(&stmt).await.map_err(|e| {
                err(
                    &format!("creating the staging mirror of {}", t.qualified_name()),
                    e,
                )
            })?;
        }
    }
    if model == Model::Totesys {
        let have: Vec<&str> = tables
            .iter()
            .filter(|t| t.schema == "public")
            .map(|t| t.name.as_str())
            .collect();
        let missing: Vec<&str> = ddl::TOTESYS_TABLES
            .iter()
            .copied()
            .filter(|t| !have.contains(t))
            .collect();
        if !missing.is_empty() {
            return Err(ApplyError::ModelTables {
                missing: missing.join(", "),
            });
        }
        tx.batch_execute(&ddl::with_schema(ddl::STAR_SQL, schema))
            .await
            .map_err(|e| err("creating the star schema", e))?;
    }
    tx.execute(
        "INSERT INTO totes_cdc.schema_version (version) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&ddl::SCHEMA_VERSION],
    )
    .await
    .map_err(|e| err("recording the schema version", e))?;
    tx.commit().await.map_err(|e| err("committing setup", e))?;
    Ok(())
}
