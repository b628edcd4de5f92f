//! Dead letters: an event that cannot be applied is recorded with its reason, and the batch
//! goes on.

use tokio_postgres::Transaction;

use super::ApplyError;
use crate::event::ChangeEvent;
use crate::pg::PgUrl;

/// Why an event became a dead letter; the `kind` column and the metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeadLetterKind {
    /// A text date the model needs is not a date (written by the model's SQL).
    InvalidDate,
    /// The staging mirror refused the value (too long, out of range, ...).
    RefusedValue,
    /// A Kinesis record that is not a totes-cdc envelope, or does not fit the warehouse.
    UnparseableRecord,
}

impl DeadLetterKind {
    pub const ALL: [DeadLetterKind; 3] = [
        DeadLetterKind::InvalidDate,
        DeadLetterKind::RefusedValue,
        DeadLetterKind::UnparseableRecord,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::InvalidDate => "invalid_date",
            DeadLetterKind::RefusedValue => "refused_value",
            DeadLetterKind::UnparseableRecord => "unparseable_record",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Records an event the warehouse refused, with the reason; the batch goes on.
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
        "INSERT INTO totes_cdc.dead_letters (source_table, lsn, seq, op, event, reason, kind) \
         VALUES ($1, $2::text::pg_lsn, $3, $4, $5::text::jsonb, $6, $7) ON CONFLICT DO NOTHING",
        &[
            &ev.table.qualified_name(),
            &ev.position.lsn.to_string(),
            &ev.position.seq,
            &ev.op.code(),
            &json,
            &reason,
            &DeadLetterKind::RefusedValue.as_str(),
        ],
    )
    .await
    .map_err(|e| ApplyError::Pg(url.query_error("writing a dead letter", e)))?;
    Ok(())
}
