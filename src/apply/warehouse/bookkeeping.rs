//! The bookkeeping tables of the `totes_cdc` schema, one function per query: the apply
//! checkpoint, Kinesis shard checkpoints and dead letters. (The lake's manifest and pending
//! files are kept by `lake_files` and the warehouse's recovery.) Callers add the context.

use std::collections::HashMap;

use tokio_postgres::{Error, GenericClient};

use super::DeadLetterKind;
use crate::event::Position;

/// The newest schema version `setup` recorded (none before the first setup).
pub async fn schema_version<C: GenericClient>(db: &C) -> Result<Option<i32>, Error> {
    Ok(db
        .query_one("SELECT max(version) FROM totes_cdc.schema_version", &[])
        .await?
        .get(0))
}

/// Moves checkpoint `name` forward to `last` (never back), with the newest commit time applied.
pub async fn record_checkpoint<C: GenericClient>(
    db: &C,
    name: &str,
    last: Position,
    commit_ts_seconds: f64,
) -> Result<(), Error> {
    db.execute(
        "INSERT INTO totes_cdc.checkpoints AS c (name, lsn, seq, commit_ts, updated_at) \
         VALUES ($1, $2::text::pg_lsn, $3, to_timestamp($4), now()) \
         ON CONFLICT (name) DO UPDATE SET lsn = EXCLUDED.lsn, seq = EXCLUDED.seq, \
           commit_ts = EXCLUDED.commit_ts, updated_at = now() \
         WHERE (c.lsn, c.seq) < (EXCLUDED.lsn, EXCLUDED.seq)",
        &[&name, &last.lsn.to_string(), &last.seq, &commit_ts_seconds],
    )
    .await
    .map(|_| ())
}

/// Checkpoint `name`: its LSN and how many seconds ago it moved, if it exists.
pub async fn checkpoint_age<C: GenericClient>(
    db: &C,
    name: &str,
) -> Result<Option<(Option<String>, Option<f64>)>, Error> {
    Ok(db
        .query_opt(
            "SELECT lsn::text, extract(epoch FROM now() - updated_at)::float8 \
             FROM totes_cdc.checkpoints WHERE name = $1",
            &[&name],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// Moves a shard's checkpoint forward to `sequence_number` (never back) and marks it ended.
pub async fn record_shard_checkpoint<C: GenericClient>(
    db: &C,
    stream: &str,
    shard: &str,
    sequence_number: &Option<String>,
    ended: bool,
) -> Result<(), Error> {
    db.execute(
        "INSERT INTO totes_cdc.shard_checkpoints AS c (stream, shard_id, sequence_number, ended, updated_at) \
         VALUES ($1, $2, $3, $4, now()) \
         ON CONFLICT (stream, shard_id) DO UPDATE SET \
           sequence_number = CASE WHEN c.sequence_number IS NULL OR EXCLUDED.sequence_number::numeric > c.sequence_number::numeric \
                                  THEN coalesce(EXCLUDED.sequence_number, c.sequence_number) ELSE c.sequence_number END, \
           ended = c.ended OR EXCLUDED.ended, updated_at = now()",
        &[&stream, &shard, sequence_number, &ended],
    )
    .await
    .map(|_| ())
}

/// Whether `owner` still holds the lease of `shard` at `epoch`; the lease row stays locked
/// (FOR SHARE) until the transaction ends, so no other replica takes it before this commit.
pub async fn hold_lease<C: GenericClient>(
    db: &C,
    stream: &str,
    shard: &str,
    owner: &str,
    epoch: i64,
) -> Result<bool, Error> {
    Ok(db
        .query_opt(
            "SELECT 1 FROM totes_cdc.shard_leases \
             WHERE stream = $1 AND shard_id = $2 AND owner = $3 AND epoch = $4 FOR SHARE",
            &[&stream, &shard, &owner, &epoch],
        )
        .await?
        .is_some())
}

/// Every shard checkpoint of `stream`: shard → (last applied sequence number, ended).
pub async fn shard_checkpoints<C: GenericClient>(
    db: &C,
    stream: &str,
) -> Result<HashMap<String, (Option<String>, bool)>, Error> {
    let rows = db
        .query(
            "SELECT shard_id, sequence_number, ended FROM totes_cdc.shard_checkpoints WHERE stream = $1",
            &[&stream],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// How many dead letters there are.
pub async fn dead_letter_count<C: GenericClient>(db: &C) -> Result<i64, Error> {
    Ok(db
        .query_one("SELECT count(*) FROM totes_cdc.dead_letters", &[])
        .await?
        .get(0))
}

/// The dead letters the current transaction wrote at its top level (the model's SQL writes
/// some; those of subtransactions, the values staging refused, are counted as they are
/// written), by kind.
pub async fn dead_letters_of_this_transaction<C: GenericClient>(
    db: &C,
) -> Result<Vec<(DeadLetterKind, usize)>, Error> {
    let rows = db
        .query(
            "SELECT kind, count(*) FROM totes_cdc.dead_letters \
             WHERE xmin = pg_current_xact_id()::xid GROUP BY 1",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let kind: Option<&str> = r.get(0);
            // Every writer sets the kind; one without is counted as a refused value.
            let kind = kind
                .and_then(DeadLetterKind::parse)
                .unwrap_or(DeadLetterKind::RefusedValue);
            (kind, r.get::<_, i64>(1) as usize)
        })
        .collect())
}

/// A record that is not an envelope, with where it came from and why it was refused.
pub async fn record_unparsed<C: GenericClient>(
    db: &C,
    origin: &str,
    payload: &str,
    reason: &str,
) -> Result<(), Error> {
    db.execute(
        "INSERT INTO totes_cdc.dead_letters (source_table, origin, event, reason, kind) \
         VALUES ($1, $2, $3::text::jsonb, $4, $5) ON CONFLICT DO NOTHING",
        &[
            &"(unparsed)",
            &origin,
            &payload,
            &reason,
            &DeadLetterKind::UnparseableRecord.as_str(),
        ],
    )
    .await
    .map(|_| ())
}
