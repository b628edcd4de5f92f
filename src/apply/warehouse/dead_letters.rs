//! Dead letters: an event that cannot be applied is recorded with its reason, and the batch
//! goes on.

use tokio_postgres::Transaction;

use super::ApplyError;
use crate::event::ChangeEvent;
use crate::pg::PgUrl;

pub(super) async fn dead_letter(
    tx: &Transaction<'_>,
    ev: &ChangeEvent,
    database: &str,
    reason: &str,
    url: &PgUrl,
) -> Result<(), ApplyError> {
    let mut json = Vec::new();
    crate::event::json::write_envelope(&mut json, ev, database);
    let json = String::from_utf8_lossy(&json).into_owned();
    tracing::warn!(table = %ev.table.qualified_name(), position = %ev.position, %reason, "event sent to the dead letters");
    tx.execute(
        "INSERT INTO totes_cdc.dead_letters (source_table, lsn, seq, op, event, reason) \
         VALUES ($1, $2::text::pg_lsn, $3, $4, $5::text::jsonb, $6) ON CONFLICT DO NOTHING",
        &[
            &ev.table.qualified_name(),
            &ev.position.lsn.to_string(),
            &ev.position.seq,
            &ev.op.code(),
            &json,
            &reason,
        ],
    )
    .await
    .map_err(|e| ApplyError::Pg(url.query_error("writing a dead letter", e)))?;
    Ok(())
}
