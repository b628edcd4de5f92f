//! The lake's writer. A batch's files are first written under hidden names (`_staging/…​.staged`,
//! a folder and a suffix no reader of `changes/` or `processed/` lists), each recorded in
//! `totes_cdc.lake_staged` before the write. The batch's warehouse transaction records the
//! files in the manifest (`totes_cdc.lake_files`) and marks them committed; only then are they
//! published (renamed, or copied on S3) to their place. So a reader listing the lake sees
//! committed files only, and each position stands in one of them:
//!
//! - a crash before the commit leaves staged files only, removed on the next start;
//! - a crash after it leaves committed staged files, published on the next start (by the same
//!   writer, or by a shard's next owner);
//! - events the embedded pipeline's slot redelivers after a restart that a committed file
//!   already holds are left out, by its highest committed position per table (its positions of
//!   a table only grow). A Kinesis shard is ordered per key only: the consumer leaves out what
//!   the staging mirror already holds instead (`merge::already_applied`).

use std::collections::HashMap;

use bytes::Bytes;
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

/// A file of a batch written under its hidden name, to be published at `path`.
#[derive(Debug, Clone)]
pub struct Staged {
    pub staged: String,
    pub path: String,
    /// Kept in the warehouse's outbox (`lake_staged.data`) rather than the store.
    pub outbox: bool,
    /// An outbox file's bytes, when this process has them.
    pub data: Option<Bytes>,
}

pub struct LakeWriter {
    store: Store,
    /// The warehouse that holds the manifest.
    url: PgUrl,
    /// Autocommit connection for the staged records.
    control: Option<Client>,
    /// The writer whose redeliveries are told apart by position (the embedded pipeline), and
    /// per source table its highest streamed position in committed files.
    by_position: Option<String>,
    hwm: HashMap<String, Position>,
    /// Makes staged names unique to this process.
    nonce: String,
    batches: u64,
    /// Staged files of batches that committed or failed, not yet published or removed: settled
    /// before the next batch (a failed commit may have committed: the manifest says).
    unsettled: Vec<Staged>,
}

impl LakeWriter {
    pub fn new(store: Store, url: PgUrl) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Self {
            store,
            url,
            control: None,
            by_position: None,
            hwm: HashMap::new(),
            nonce: format!("{:x}-{:x}", std::process::id(), nanos),
            batches: 0,
            unsettled: Vec::new(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn err(&self, context: &str, e: tokio_postgres::Error) -> WriteError {
        WriteError::Manifest(self.url.query_error(context, e))
    }

    async fn control(&mut self) -> Result<&Client, WriteError> {
        let client = match self.control.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.url.connect().await?,
        };
        Ok(self.control.insert(client))
    }

    /// Takes over what `writer` (this pipeline after a restart, or a shard's previous owner)
    /// left: its committed files are published and its uncommitted ones removed. With
    /// `by_position` (the embedded pipeline), its highest committed positions are learnt too,
    /// from its manifest rows and those written before writers were recorded.
    pub async fn recover(
        &mut self,
        client: &Client,
        writer: &str,
        by_position: bool,
    ) -> Result<(), WriteError> {
        self.remove_legacy_pending(client, writer).await?;
        let left: Vec<Staged> = client
            .query(
                "SELECT staged, path, data IS NOT NULL FROM totes_cdc.lake_staged WHERE writer = $1",
                &[&writer],
            )
            .await
            .map_err(|e| self.err("reading the lake's staged files", e))?
            .iter()
            .map(|r| Staged {
                staged: r.get(0),
                path: r.get(1),
                outbox: r.get(2),
                data: None,
            })
            .collect();
        if !left.is_empty() {
            tracing::info!(
                %writer,
                files = left.len(),
                "the lake holds staged files of an earlier run: committed ones are published, others removed"
            );
        }
        self.resolve(client, &left).await?;
        if !by_position {
            return Ok(());
        }
        let rows = client
            .query(
                "SELECT DISTINCT ON (table_name) table_name, last_lsn::text, last_seq \
                 FROM totes_cdc.lake_files \
                 WHERE kind = 'changes' AND last_seq >= 0 AND (writer = $1 OR writer IS NULL) \
                 ORDER BY table_name, last_lsn DESC, last_seq DESC",
                &[&writer],
            )
            .await
            .map_err(|e| self.err("reading the lake's committed positions", e))?;
        self.by_position = Some(writer.to_string());
        self.hwm.clear();
        for r in &rows {
            if let Ok(lsn) = Lsn::parse(r.get::<_, &str>(1)) {
                self.hwm.insert(r.get(0), Position::new(lsn, r.get(2)));
            }
        }
        Ok(())
    }

    /// Files an older version wrote in place before its batch committed (`lake_pending`):
    /// those that did not commit are removed.
    async fn remove_legacy_pending(
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

    /// Whether a committed file already holds this event the pipeline's slot redelivered.
    pub fn already_committed(&self, ev: &ChangeEvent) -> bool {
        ev.position.seq >= 0
            && self
                .hwm
                .get(&ev.table.qualified_name())
                .is_some_and(|hwm| ev.position <= *hwm)
    }

    /// Publishes what earlier batches committed and removes what they did not; what fails is
    /// kept for the next try.
    pub async fn settle(&mut self) -> Result<(), WriteError> {
        if self.unsettled.is_empty() {
            return Ok(());
        }
        let unsettled = std::mem::take(&mut self.unsettled);
        let done = match self.control().await {
            Ok(_) => match &self.control {
                Some(client) => self.resolve(client, &unsettled).await,
                None => Ok(()),
            },
            Err(e) => Err(e),
        };
        if done.is_err() {
            self.unsettled = unsettled;
        }
        done
    }

    /// Writes a batch's files under hidden names, each recorded first (so a crash after the
    /// write leaves a trace).
    pub async fn stage(
        &mut self,
        files: &[LakeFile],
        writer: &str,
    ) -> Result<Vec<Staged>, WriteError> {
        if files.is_empty() {
            return Ok(Vec::new());
        }
        self.batches += 1;
        let slug: String = writer
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let staged: Vec<Staged> = files
            .iter()
            .enumerate()
            .map(|(i, f)| Staged {
                outbox: false,
                data: None,
                staged: format!("_staging/{slug}.{}.{}.{i}.staged", self.nonce, self.batches),
                path: f.path.clone(),
            })
            .collect();
        let names: Vec<&str> = staged.iter().map(|s| s.staged.as_str()).collect();
        let paths: Vec<&str> = staged.iter().map(|s| s.path.as_str()).collect();
        let url = self.url.clone();
        self.control()
            .await?
            .execute(
                "INSERT INTO totes_cdc.lake_staged (staged, path, writer) \
                 SELECT unnest($1::text[]), unnest($2::text[]), $3",
                &[&names, &paths, &writer],
            )
            .await
            .map_err(|e| {
                WriteError::Manifest(url.query_error("recording the lake's staged files", e))
            })?;
        // The files of a batch are independent: upload (or write and fsync) them at once.
        let written = futures_util::future::try_join_all(
            files
                .iter()
                .zip(&staged)
                .map(|(f, s)| self.store.put(&s.staged, f.data.clone())),
        )
        .await;
        if let Err(e) = written {
            self.unsettled.extend(staged);
            return Err(e.into());
        }
        Ok(staged)
    }

    /// Keeps files in the warehouse's outbox, inside the batch's transaction `tx`: no network
    /// wait on the lake while the transaction holds the star refresh's lock. They commit (or
    /// vanish) with the batch and are published from there.
    pub async fn stage_in_outbox(
        &mut self,
        tx: &Transaction<'_>,
        files: &[LakeFile],
        writer: &str,
    ) -> Result<Vec<Staged>, WriteError> {
        if files.is_empty() {
            return Ok(Vec::new());
        }
        self.batches += 1;
        let staged: Vec<Staged> = files
            .iter()
            .enumerate()
            .map(|(i, f)| Staged {
                staged: format!("outbox:{}.{}.{i}", self.nonce, self.batches),
                path: f.path.clone(),
                outbox: true,
                data: Some(f.data.clone()),
            })
            .collect();
        let names: Vec<&str> = staged.iter().map(|s| s.staged.as_str()).collect();
        let paths: Vec<&str> = staged.iter().map(|s| s.path.as_str()).collect();
        let data: Vec<&[u8]> = files.iter().map(|f| f.data.as_ref()).collect();
        tx.execute(
            "INSERT INTO totes_cdc.lake_staged (staged, path, writer, committed, data) \
             SELECT unnest($1::text[]), unnest($2::text[]), $3, true, unnest($4::bytea[])",
            &[&names, &paths, &writer, &data],
        )
        .await
        .map_err(|e| self.err("keeping the star's lake files in the outbox", e))?;
        Ok(staged)
    }

    /// Records a batch's files in the manifest and marks them committed, inside the batch's
    /// transaction `tx`.
    pub async fn record(
        &self,
        tx: &Transaction<'_>,
        files: &[LakeFile],
        staged: &[Staged],
        writer: &str,
    ) -> Result<(), WriteError> {
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
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
            "INSERT INTO totes_cdc.lake_files (path, kind, table_name, first_lsn, first_seq, last_lsn, last_seq, rows, bytes, writer) \
             SELECT p, k, t, fl::pg_lsn, fs, ll::pg_lsn, ls, r, b, $10 \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::int[], $8::int[], $9::bigint[]) \
                  AS u(p, k, t, fl, fs, ll, ls, r, b) \
             ON CONFLICT (path) DO UPDATE SET rows = EXCLUDED.rows, bytes = EXCLUDED.bytes, committed_at = now()",
            &[
                &paths, &kinds, &tables, &first_lsns, &first_seqs, &last_lsns, &last_seqs, &rows, &bytes, &writer,
            ],
        )
        .await
        .map_err(|e| self.err("recording the lake files", e))?;
        let names: Vec<&str> = staged.iter().map(|s| s.staged.as_str()).collect();
        tx.execute(
            "UPDATE totes_cdc.lake_staged SET committed = true WHERE staged = ANY($1::text[])",
            &[&names],
        )
        .await
        .map_err(|e| self.err("marking the lake's staged files committed", e))?;
        Ok(())
    }

    /// The batch that staged `staged` failed: its files are published if it committed after
    /// all (a commit whose answer was lost) and removed otherwise, before the next batch.
    pub fn abandon(&mut self, staged: Vec<Staged>) {
        self.unsettled.extend(staged);
    }

    /// The batch that wrote `files` committed: its positions count as committed, and its
    /// files are published. A failure to publish is retried before the next batch (and on the
    /// next start), so the batch stays committed.
    pub async fn committed(
        &mut self,
        files: &[LakeFile],
        staged: Vec<Staged>,
        writer: &str,
    ) -> Result<(), WriteError> {
        let by_position = self.by_position.as_deref() == Some(writer);
        for f in files
            .iter()
            .filter(|f| by_position && f.kind == FileKind::Changes && f.last.seq >= 0)
        {
            let hwm = self.hwm.entry(f.table.clone()).or_default();
            *hwm = (*hwm).max(f.last);
        }
        crate::fault::point(crate::fault::Point::BeforeLakePublish);
        // Known to be committed: published without asking the manifest again. What fails is
        // settled (asking it) before the next batch.
        let done = match self.control().await {
            Ok(_) => match &self.control {
                Some(client) => self.publish(client, &staged).await,
                None => Ok(()),
            },
            Err(e) => Err(e),
        };
        if done.is_err() {
            self.unsettled.extend(staged);
        }
        done
    }

    /// Publishes the staged files whose batch committed and removes the others (file first,
    /// then its record, so a crash in between only repeats the work).
    async fn resolve(&self, client: &Client, files: &[Staged]) -> Result<(), WriteError> {
        if files.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = files.iter().map(|s| s.staged.as_str()).collect();
        // A file without a record was settled before.
        let committed: HashMap<String, bool> = client
            .query(
                "SELECT staged, committed FROM totes_cdc.lake_staged WHERE staged = ANY($1::text[])",
                &[&names],
            )
            .await
            .map_err(|e| self.err("reading the lake's staged files", e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut publish = Vec::new();
        for s in files {
            match committed.get(&s.staged) {
                Some(true) => publish.push(s.clone()),
                // (An uncommitted outbox row cannot outlive its transaction.)
                Some(false) => self.store.delete(&s.staged).await?,
                None => {}
            }
        }
        self.publish(client, &publish).await?;
        self.forget(client, files).await
    }

    /// Puts committed files in their place: a staged file moved, an outbox file uploaded from
    /// its bytes (read back when this process does not have them); then forgets their records.
    async fn publish(&self, client: &Client, files: &[Staged]) -> Result<(), WriteError> {
        if files.is_empty() {
            return Ok(());
        }
        let mut outbox = Vec::new();
        for s in files.iter().filter(|s| s.outbox) {
            let data = match &s.data {
                Some(d) => d.clone(),
                None => self.outbox_data(client, &s.staged).await?,
            };
            outbox.push((s, data));
        }
        futures_util::future::try_join_all(
            files
                .iter()
                .filter(|s| !s.outbox)
                .map(|s| self.store.publish(&s.staged, &s.path)),
        )
        .await?;
        futures_util::future::try_join_all(
            outbox
                .into_iter()
                .map(|(s, data)| self.store.put(&s.path, data)),
        )
        .await?;
        self.forget(client, files).await
    }

    async fn outbox_data(&self, client: &Client, staged: &str) -> Result<Bytes, WriteError> {
        let row = client
            .query_one(
                "SELECT data FROM totes_cdc.lake_staged WHERE staged = $1",
                &[&staged],
            )
            .await
            .map_err(|e| self.err("reading a lake file from the outbox", e))?;
        Ok(Bytes::from(row.get::<_, Vec<u8>>(0)))
    }

    async fn forget(&self, client: &Client, files: &[Staged]) -> Result<(), WriteError> {
        if files.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = files.iter().map(|s| s.staged.as_str()).collect();
        client
            .execute(
                "DELETE FROM totes_cdc.lake_staged WHERE staged = ANY($1::text[])",
                &[&names],
            )
            .await
            .map_err(|e| self.err("clearing the lake's staged files", e))?;
        Ok(())
    }
}
