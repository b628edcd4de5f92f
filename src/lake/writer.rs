//! The lake's writer: a batch's files are recorded as pending (committed at once, so a crash
//! after the write leaves a trace), written, and moved to the manifest (`totes_cdc.lake_files`)
//! inside the batch's warehouse transaction. After a restart it knows the positions already in
//! committed files (re-delivered events are left out) and the files of a batch that did not
//! commit: the same events form that batch again, and the commit removes any file not written
//! again. A consumer that takes over a shard removes its previous owner's uncommitted files.

use std::collections::HashMap;

use tokio_postgres::{Client, Transaction};

use super::{FileKind, LakeFile, Store, StoreError};
use crate::event::{ChangeEvent, Lsn, Position};
use crate::pg::{PgError, PgUrl};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The manifest (in the warehouse) could not be read or written.
    #[error(transparent)]
    Manifest(#[from] PgError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct LakeWriter {
    store: Store,
    /// The warehouse that holds the manifest.
    url: PgUrl,
    /// Autocommit connection for the pending records.
    pending: Option<Client>,
    /// Per source table, the highest streamed position in committed files.
    hwm: HashMap<String, Position>,
    /// Files of a batch that did not commit before a restart.
    orphans: Vec<String>,
    /// Events of that batch, so the same batch can be formed again.
    form_again: Option<usize>,
}

impl LakeWriter {
    pub fn new(store: Store, url: PgUrl) -> Self {
        Self {
            store,
            url,
            pending: None,
            hwm: HashMap::new(),
            orphans: Vec::new(),
            form_again: None,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn err(&self, context: &str, e: tokio_postgres::Error) -> WriteError {
        WriteError::Manifest(self.url.query_error(context, e))
    }

    /// After a (re)connect: the committed positions, and the files `writer` left uncommitted.
    pub async fn recover(&mut self, client: &Client, writer: &str) -> Result<(), WriteError> {
        let orphans = client
            .query(
                "SELECT path, batch_events FROM totes_cdc.lake_pending p \
                 WHERE writer = $1 AND NOT EXISTS (SELECT 1 FROM totes_cdc.lake_files f WHERE f.path = p.path)",
                &[&writer],
            )
            .await
            .map_err(|e| self.err("reading the lake's pending files", e))?;
        self.orphans = orphans.iter().map(|r| r.get(0)).collect();
        self.form_again = orphans.iter().map(|r| r.get::<_, i32>(1) as usize).max();
        if !self.orphans.is_empty() {
            tracing::info!(
                files = self.orphans.len(),
                "the lake holds files of a batch that did not commit: it is formed again"
            );
        }
        let rows = client
            .query(
                "SELECT DISTINCT ON (table_name) table_name, last_lsn::text, last_seq \
                 FROM totes_cdc.lake_files WHERE kind = 'changes' AND last_seq >= 0 \
                 ORDER BY table_name, last_lsn DESC, last_seq DESC",
                &[],
            )
            .await
            .map_err(|e| self.err("reading the lake's committed positions", e))?;
        self.hwm = rows
            .iter()
            .filter_map(|r| {
                let lsn = Lsn::parse(r.get::<_, &str>(1)).ok()?;
                Some((r.get::<_, String>(0), Position::new(lsn, r.get(2))))
            })
            .collect();
        Ok(())
    }

    /// The size of the batch to form again, once after `recover`.
    pub fn take_batch_to_form_again(&mut self) -> Option<usize> {
        self.form_again.take()
    }

    /// Whether a committed file already holds this (streamed) event.
    pub fn already_committed(&self, ev: &ChangeEvent) -> bool {
        ev.position.seq >= 0
            && self
                .hwm
                .get(&ev.table.qualified_name())
                .is_some_and(|hwm| ev.position <= *hwm)
    }

    /// Removes the files `writer` (a shard's previous owner) wrote for a batch that did not
    /// commit; the records are read again from the shard checkpoint.
    pub async fn remove_uncommitted(
        &mut self,
        client: &Client,
        writer: &str,
    ) -> Result<(), WriteError> {
        let rows = client
            .query(
                "SELECT path FROM totes_cdc.lake_pending p WHERE writer = $1 \
                 AND NOT EXISTS (SELECT 1 FROM totes_cdc.lake_files f WHERE f.path = p.path)",
                &[&writer],
            )
            .await
            .map_err(|e| self.err("reading the lake's pending files", e))?;
        for r in &rows {
            let path: String = r.get(0);
            self.store.delete(&path).await?;
            tracing::info!(%path, %writer, "removed a lake file of a batch that did not commit");
        }
        client
            .execute(
                "DELETE FROM totes_cdc.lake_pending WHERE writer = $1",
                &[&writer],
            )
            .await
            .map_err(|e| self.err("clearing the lake's pending files", e))?;
        Ok(())
    }

    /// Writes a batch's files: pending first (committed at once), then the files, then the
    /// manifest rows inside the batch's transaction `tx`.
    pub async fn write(
        &mut self,
        tx: &Transaction<'_>,
        files: &[LakeFile],
        batch_events: usize,
        writer: &str,
    ) -> Result<(), WriteError> {
        if self.pending.as_ref().is_none_or(|c| c.is_closed()) {
            self.pending = Some(self.url.connect().await?);
        }
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        if let Some(pending) = &self.pending {
            pending
                .execute(
                    "INSERT INTO totes_cdc.lake_pending (path, batch_events, writer) SELECT unnest($1::text[]), $2, $3 \
                     ON CONFLICT (path) DO UPDATE SET batch_events = EXCLUDED.batch_events, writer = EXCLUDED.writer",
                    &[&paths, &(batch_events as i32), &writer],
                )
                .await
                .map_err(|e| self.err("recording the lake's pending files", e))?;
        }
        // The files of a batch are independent: upload (or write and fsync) them at once.
        futures_util::future::try_join_all(
            files
                .iter()
                .map(|f| self.store.put(&f.path, f.data.clone())),
        )
        .await?;
        crate::fault::point(crate::fault::Point::AfterLakeWrite);
        // The manifest rows in one statement, column by column.
        let kinds: Vec<&str> = files.iter().map(|f| f.kind.as_str()).collect();
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
        .map_err(|e| self.err("recording the lake files", e))?;
        tx.execute(
            "DELETE FROM totes_cdc.lake_pending WHERE path = ANY($1::text[])",
            &[&paths],
        )
        .await
        .map_err(|e| self.err("clearing the lake's pending files", e))?;
        Ok(())
    }

    /// The batch that wrote `files` committed: its positions count as committed, and files a
    /// crash left behind that it did not write again are removed.
    pub async fn committed(
        &mut self,
        client: &Client,
        files: &[LakeFile],
    ) -> Result<(), WriteError> {
        for f in files
            .iter()
            .filter(|f| f.kind == FileKind::Changes && f.last.seq >= 0)
        {
            let hwm = self.hwm.entry(f.table.clone()).or_default();
            *hwm = (*hwm).max(f.last);
        }
        if self.orphans.is_empty() {
            return Ok(());
        }
        let orphans = std::mem::take(&mut self.orphans);
        let committed = client
            .query(
                "SELECT path FROM totes_cdc.lake_files WHERE path = ANY($1::text[])",
                &[&orphans],
            )
            .await
            .map_err(|e| self.err("reading the lake manifest", e))?;
        let committed: Vec<String> = committed.iter().map(|r| r.get(0)).collect();
        for path in orphans.iter().filter(|p| !committed.contains(p)) {
            self.store.delete(path).await?;
            tracing::info!(%path, "removed a lake file of a batch that did not commit");
        }
        client
            .execute(
                "DELETE FROM totes_cdc.lake_pending WHERE path = ANY($1::text[])",
                &[&orphans],
            )
            .await
            .map_err(|e| self.err("clearing the lake's pending files", e))?;
        Ok(())
    }
}
