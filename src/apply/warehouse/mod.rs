//! The Postgres warehouse, one transaction per micro-batch: COPY the events into temporary
//! tables (`load`), merge them into staging under the position guard (`merge`), refresh the
//! star rows they touch (`star`), write the batch's lake files through the lake's writer,
//! record dead letters and checkpoints (`dead_letters`, `bookkeeping`), commit. `session`
//! holds the connection and what it knows of the mirrors; `setup` and `ddl` create the
//! schemas; `phases` times a batch.

pub mod bookkeeping;
pub mod ddl;
mod dead_letters;
mod load;
mod merge;
mod phases;
mod session;
mod setup;
mod star;

use std::collections::BTreeMap;
use std::sync::Arc;

use thiserror::Error;

use super::batch::Batch;
use crate::event::{ChangeEvent, TableSchema};
use crate::lake::{self, LakeWriter, Store, StoreError, WriteError};
use crate::pg::{PgError, PgUrl};
use load::{group_by_table, load_batch_table};
use merge::merge_into_staging;
use phases::Phases;
use session::Session;

/// Which star schema is derived from staging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    /// The totesys star schemas (sql/warehouse/star).
    Totesys,
    /// Staging mirrors only.
    None,
}

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("the warehouse has no staging table for {table}")]
    NoStaging { table: String },
    #[error("model totesys needs the source tables {missing} in staging")]
    ModelTables { missing: String },
    #[error("the warehouse at {target} was set up by a newer totes-cdc (schema version {found}, this binary knows {known})")]
    NewerSchema {
        target: String,
        found: i32,
        known: i32,
    },
    #[error("lake: {0}")]
    Lake(#[from] StoreError),
    #[error("building a lake file: {0}")]
    LakeFile(String),
}

impl crate::fix::Fix for ApplyError {
    fn fix(&self) -> Option<String> {
        Some(match self {
            ApplyError::Pg(e) => return e.fix(),
            ApplyError::Lake(e) => return e.fix(),
            ApplyError::NoStaging { .. } => {
                "run `totes-cdc setup` with the same source, publication and tables".into()
            }
            ApplyError::ModelTables { .. } => {
                "capture them (the tables option), or set model = none".into()
            }
            ApplyError::NewerSchema { .. } => "upgrade totes-cdc".into(),
            ApplyError::LakeFile(_) => return None,
        })
    }
}

impl From<WriteError> for ApplyError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Manifest(e) => ApplyError::Pg(e),
            WriteError::Store(e) => ApplyError::Lake(e),
        }
    }
}

impl ApplyError {
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Pg(e) => e.is_transient(),
            ApplyError::Lake(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// What one batch did.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    pub events: usize,
    /// Events per source table (`schema.table`).
    pub per_table: BTreeMap<String, usize>,
    pub dead_letters: usize,
    /// Events already in committed lake files (re-delivered after a restart), left out.
    pub skipped: usize,
    pub lake_files: usize,
    pub lake_bytes: usize,
    /// Dead letters of this batch by kind.
    pub dead_by_reason: BTreeMap<DeadLetterKind, usize>,
}

pub use dead_letters::DeadLetterKind;

pub struct Warehouse {
    url: PgUrl,
    schema: String,
    model: Model,
    /// Checkpoint name of this writer.
    checkpoint: String,
    source_database: String,
    session: Option<Session>,
    lake: Option<LakeWriter>,
    /// Whether the lake leaves out re-delivered events by per-table position.
    lake_dedupe: bool,
}

impl Warehouse {
    pub fn new(
        url: PgUrl,
        schema: &str,
        model: Model,
        checkpoint: &str,
        source_database: &str,
    ) -> Self {
        Self {
            url,
            schema: schema.to_string(),
            model,
            checkpoint: checkpoint.to_string(),
            source_database: source_database.to_string(),
            session: None,
            lake: None,
            lake_dedupe: true,
        }
    }

    /// Also writes every batch to the lake, before its warehouse commit.
    pub fn with_lake(mut self, store: Store) -> Self {
        self.lake = Some(LakeWriter::new(store, self.url.clone()));
        self
    }

    /// Turns off the lake's per-table dedupe of re-delivered events (consumers resume from
    /// their shard checkpoints instead, and shards interleave a table's positions), whether the
    /// lake is given before or after.
    pub fn without_lake_dedupe(mut self) -> Self {
        self.lake_dedupe = false;
        self
    }

    pub fn lake(&self) -> Option<&Store> {
        self.lake.as_ref().map(LakeWriter::store)
    }

    pub fn url(&self) -> &PgUrl {
        &self.url
    }

    /// Creates or completes the warehouse for these source tables (idempotent; safe to run
    /// from several processes at once).
    pub async fn setup(&mut self, tables: &[Arc<TableSchema>]) -> Result<(), ApplyError> {
        setup::setup(&self.url, self.model, &self.schema, tables).await
    }

    /// The session, connected again if it was lost (and the lake recovered with it).
    async fn session(&mut self) -> Result<&mut Session, ApplyError> {
        if self.session.as_ref().is_some_and(|s| s.client.is_closed()) {
            self.session = None;
        }
        let session = match self.session.take() {
            Some(s) => s,
            None => {
                let s = session::open(&self.url, self.model, &self.schema).await?;
                if let Some(lake) = &mut self.lake {
                    lake.recover(&s.client, &self.checkpoint).await?;
                }
                s
            }
        };
        Ok(self.session.insert(session))
    }

    /// Connects and recovers the lake.
    pub async fn prepare(&mut self) -> Result<(), ApplyError> {
        self.session().await.map(|_| ())
    }

    /// The size of a batch to form again (the one whose lake files a crash left uncommitted),
    /// once after `prepare`.
    pub fn take_batch_to_form_again(&mut self) -> Option<usize> {
        self.lake.as_mut()?.take_batch_to_form_again()
    }

    /// A source table's shape as its staging mirror has it (for decoding envelopes): the
    /// mirror's columns and types, its primary key. `None` when there is no mirror.
    pub async fn table_schema(
        &mut self,
        schema: &str,
        table: &str,
    ) -> Result<Option<Arc<TableSchema>>, ApplyError> {
        let session = self.session().await?;
        Ok(session
            .mirrors
            .get(&ddl::staging_name(schema, table))
            .map(|m| m.table_schema(schema, table)))
    }

    /// Whether the lake already holds this (streamed) event in a committed file.
    pub fn already_committed(&self, ev: &ChangeEvent) -> bool {
        self.lake_dedupe && self.lake.as_ref().is_some_and(|l| l.already_committed(ev))
    }

    /// A consumer that takes over a shard removes the files its previous owner wrote for a
    /// batch that did not commit (the records are read again from the shard checkpoint).
    pub async fn recover_shard_lake(&mut self, shard: &str) -> Result<(), ApplyError> {
        self.session().await?;
        if let (Some(session), Some(lake)) = (&self.session, &mut self.lake) {
            lake.remove_uncommitted(&session.client, &shard_writer(shard))
                .await?;
        }
        Ok(())
    }

    /// Applies one batch in one transaction. Applying the same batch again changes nothing.
    pub async fn apply(&mut self, batch: &Batch) -> Result<Applied, ApplyError> {
        self.session().await?;
        // Streamed events already in committed lake files were committed with them: a restart
        // re-delivers from the confirmed position, which may lag the warehouse.
        let events: Vec<ChangeEvent> = batch
            .events
            .iter()
            .filter(|e| !self.already_committed(e))
            .cloned()
            .collect();
        let skipped = batch.events.len() - events.len();
        if events.is_empty() && batch.shard.is_none() && batch.rejects.is_empty() {
            return Ok(Applied {
                skipped,
                ..Default::default()
            });
        }
        // Where a batch spends its time, for `--log totes_cdc::apply=debug`.
        let mut phases = Phases::start();
        let writer = batch
            .shard
            .as_ref()
            .map_or_else(|| self.checkpoint.clone(), |s| shard_writer(&s.shard));
        let write_lake = self.lake.is_some() && !events.is_empty();
        let mut files = if write_lake {
            lake::changes_files(&events).map_err(ApplyError::LakeFile)?
        } else {
            Vec::new()
        };
        phases.mark("lake_encode");
        let groups = group_by_table(&events);
        let url = &self.url;
        let err = |ctx: &str, e| ApplyError::Pg(url.query_error(ctx, e));
        let session = self
            .session
            .as_mut()
            .ok_or_else(|| ApplyError::NoStaging { table: "?".into() })?;
        let tx = session
            .client
            .transaction()
            .await
            .map_err(|e| err("starting the batch transaction", e))?;
        let mut applied = Applied {
            events: events.len(),
            skipped,
            ..Default::default()
        };
        for (name, events) in &groups {
            let t = &events[0].table;
            let mirror = session
                .mirrors
                .get(&ddl::staging_name(&t.schema, &t.name))
                .ok_or_else(|| ApplyError::NoStaging {
                    table: name.clone(),
                })?;
            applied.per_table.insert(name.clone(), events.len());
            let dead = load_batch_table(&tx, mirror, events, &self.source_database, url).await?;
            applied.count_dead(DeadLetterKind::RefusedValue, dead);
            merge_into_staging(&tx, mirror, events, url).await?;
        }
        phases.mark("staging");
        if self.model == Model::Totesys && !events.is_empty() {
            star::refresh(&tx, &self.schema, url).await?;
        }
        phases.mark("star");
        if let (Some(lake), true) = (&mut self.lake, write_lake) {
            files.extend(star::processed_files(&tx, &session.star_columns, &events, url).await?);
            phases.mark("lake_encode");
            lake.write(&tx, &files, events.len(), &writer).await?;
            phases.mark("lake_write");
            applied.lake_files = files.len();
            applied.lake_bytes = files.iter().map(|f| f.data.len()).sum();
        }
        // Dead letters the model's SQL wrote in this transaction, by kind.
        let dead = bookkeeping::dead_letters_of_this_transaction(&tx)
            .await
            .map_err(|e| err("counting dead letters", e))?;
        for (kind, n) in dead {
            applied.count_dead(kind, n);
        }
        for r in &batch.rejects {
            bookkeeping::record_unparsed(&tx, &r.origin, &r.payload.to_string(), &r.reason)
                .await
                .map_err(|e| err("writing a dead letter", e))?;
            applied.count_dead(DeadLetterKind::UnparseableRecord, 1);
        }
        if let Some(sp) = &batch.shard {
            bookkeeping::record_shard_checkpoint(
                &tx,
                &sp.stream,
                &sp.shard,
                &sp.sequence_number,
                sp.ended,
            )
            .await
            .map_err(|e| err("recording the shard checkpoint", e))?;
        }
        if let Some(last) = events.iter().map(|e| e.position).max() {
            let ts = batch.newest_commit_ts_us.unwrap_or(0) as f64 / 1e6;
            bookkeeping::record_checkpoint(&tx, &self.checkpoint, last, ts)
                .await
                .map_err(|e| err("recording the checkpoint", e))?;
        }
        phases.mark("checkpoint");
        tx.commit()
            .await
            .map_err(|e| err("committing the batch", e))?;
        phases.mark("commit");
        tracing::debug!(events = events.len(), phases = %phases, "batch phases");
        if let (Some(lake), Some(session)) = (&mut self.lake, &self.session) {
            lake.committed(&session.client, &files).await?;
        }
        Ok(applied)
    }
}

impl Applied {
    fn count_dead(&mut self, kind: DeadLetterKind, n: usize) {
        if n > 0 {
            self.dead_letters += n;
            *self.dead_by_reason.entry(kind).or_default() += n;
        }
    }
}

/// The lake writer name of a shard's consumer.
fn shard_writer(shard: &str) -> String {
    format!("shard:{shard}")
}
