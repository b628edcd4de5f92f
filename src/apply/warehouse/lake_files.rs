//! A batch's lake files: recorded as pending, written, and moved to the manifest in the
//! batch's transaction.

use tokio_postgres::{Client, Transaction};

use super::ApplyError;
use crate::lake::{LakeFile, Store};
use crate::pg::PgUrl;

/// Writes the batch's lake files: their names are recorded as pending (committed at once, so a
/// crash after the write leaves a trace), the files written, and within the batch transaction
/// they move from pending to the manifest.
pub(super) async fn write_lake(
    store: &Store,
    pending: &Client,
    tx: &Transaction<'_>,
    files: &[LakeFile],
    batch_events: usize,
    writer: &str,
    url: &PgUrl,
) -> Result<(), ApplyError> {
    let err = |ctx: &str, e: tokio_postgres::Error| ApplyError::Pg(url.query_error(ctx, e));
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    pending
        .execute(
            "INSERT INTO totes_cdc.lake_pending (path, batch_events, writer) SELECT unnest($1::text[]), $2, $3 \
             ON CONFLICT (path) DO UPDATE SET batch_events = EXCLUDED.batch_events, writer = EXCLUDED.writer",
            &[&paths, &(batch_events as i32), &writer],
        )
        .await
        .map_err(|e| err("recording the lake's pending files", e))?;
    // The files of a batch are independent: upload (or write and fsync) them at once.
    futures_util::future::try_join_all(files.iter().map(|f| store.put(&f.path, f.data.clone())))
        .await?;
    crate::fault::point(crate::fault::Point::AfterLakeWrite);
    // The manifest rows in one statement, column by column.
    let kinds: Vec<&str> = files.iter().map(|f| f.kind).collect();
    let tables: Vec<&str> = files.iter().map(|f| f.table.as_str()).collect();
    let first_lsns: Vec<String> = files.iter().map(|f| f.first.lsn.to_string()).collect();
    let first_seqs: Vec<i32> = files.iter().map(|f| f.first.seq).collect();
    let last_lsns: Vec<String> = files.iter().map(|f| f.last.lsn.to_string()).collect();
    let last_seqs: Vec<i32> = files.iter().map(|f| f.last.seq).collect();
    let rows: Vec<i32> = files.iter().map(|f| f.rows as i32).collect();
    let bytes: Vec<i64> = files.iter().map(|f| f.data.len() as i64).collect();
    tx.execute(
        "INSERT INTO totes_cdc.lake_files (path, kind, table_name, first_lsn, first_seq, last_lsn, last_seq, rows, bytes) \
         SELECT p, k, t, fl::pg_lsn, fs, ll::pg_lsn, ls, r, b \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::int[], $8::int[], $9::bigint[]) \
              AS u(p, k, t, fl, fs, ll, ls, r, b) \
         ON CONFLICT (path) DO UPDATE SET rows = EXCLUDED.rows, bytes = EXCLUDED.bytes, committed_at = now()",
        &[
            &paths, &kinds, &tables, &first_lsns, &first_seqs, &last_lsns, &last_seqs, &rows, &bytes,
        ],
    )
    .await
    .map_err(|e| err("recording the lake files", e))?;
    tx.execute(
        "DELETE FROM totes_cdc.lake_pending WHERE path = ANY($1::text[])",
        &[&paths],
    )
    .await
    .map_err(|e| err("clearing the lake's pending files", e))?;
    Ok(())
}
