//! The Postgres warehouse, one transaction per micro-batch: COPY the events into temporary
//! tables (`load`), merge them into staging under the position guard (`merge`), refresh the
//! star rows they touch (`star`), write the batch's lake files through the lake's writer,
//! record dead letters and checkpoints (`dead_letters`, `bookkeeping`), commit. `session`
//! holds the connection and what it knows of the mirrors; `setup` and `ddl` create the
//! schemas; `phases` times a batch.

pub mod bookkeeping;
pub mod ddl;
mod dead_letters;
mod evolve;
mod load;
mod merge;
mod phases;
mod session;
mod setup;
mod star;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use super::batch::Batch;
use crate::event::decode::EnvColumn;
use crate::event::{ChangeEvent, TableSchema};
use crate::lake::{self, LakeWriter, Store, StoreError, WriteError};
use crate::pg::{PgError, PgUrl};
use load::{group_by_table, load_batch_table};
use merge::{already_applied, merge_into_staging};
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
    /// A column's type changed in a way the mirror cannot follow without losing values.
    #[error("{table}: column {column} changed type from {from} to {to}, which the staging mirror {mirror} cannot follow without losing or reinterpreting values; nothing after this change was acknowledged")]
    Reshape {
        table: String,
        column: String,
        from: String,
        to: String,
        mirror: String,
    },
    #[error("{table} has no primary key or replica identity index, so its staging mirror has no key to merge changes by")]
    NoKey { table: String },
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
    /// Another consumer took the shard's lease: this batch is not committed, and is theirs.
    #[error(
        "the lease of shard {shard} was taken by another consumer; its batch was not committed"
    )]
    Fenced { shard: String },
}

impl crate::fix::Fix for ApplyError {
    fn fix(&self) -> Option<String> {
        Some(match self {
            ApplyError::Pg(e) => return e.fix(),
            ApplyError::Lake(e) => return e.fix(),
            ApplyError::NoStaging { .. } => {
                "run `totes-cdc setup` with the same source, publication and tables".into()
            }
            ApplyError::Reshape { column, mirror, to, .. } => format!(
                "alter the mirror by hand to a type that holds the old and the new values (in the warehouse: ALTER TABLE {mirror} ALTER COLUMN {} TYPE {to} USING ...), or undo the change at the source; then start totes-cdc again: it resumes at this change",
                crate::pg::ident(column)
            ),
            ApplyError::NoKey { table } => format!(
                "give {table} a primary key at the source, or a unique index on NOT NULL columns and ALTER TABLE {table} REPLICA IDENTITY USING INDEX <index>"
            ),
            ApplyError::ModelTables { .. } => {
                "capture them (the tables option), or set model = none".into()
            }
            ApplyError::NewerSchema { .. } => "upgrade totes-cdc".into(),
            ApplyError::LakeFile(_) | ApplyError::Fenced { .. } => return None,
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

/// An envelope's `columns` and the table shape made of them.
type KnownShape = (Vec<EnvColumn>, Arc<TableSchema>);

pub struct Warehouse {
    url: PgUrl,
    schema: String,
    model: Model,
    /// Checkpoint name of this writer.
    checkpoint: String,
    source_database: String,
    session: Option<Session>,
    lake: Option<LakeWriter>,
    /// How long the warehouse lets a batch transaction sit idle before it ends the session (a
    /// frozen or partitioned writer then gives its locks back).
    idle_in_transaction: Duration,
    /// Table shapes of envelopes seen, by (schema, table).
    shapes: HashMap<(String, String), Vec<KnownShape>>,
    /// SQL names of column types, by (oid, modifier).
    type_names: HashMap<(u32, i32), String>,
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
            idle_in_transaction: Duration::from_secs(60),
            shapes: HashMap::new(),
            type_names: HashMap::new(),
        }
    }

    /// Also writes every batch to the lake, before its warehouse commit.
    pub fn with_lake(mut self, store: Store) -> Self {
        self.lake = Some(LakeWriter::new(store, self.url.clone()));
        self
    }

    /// Sets how long a batch transaction may sit idle (waiting on the lake) before the warehouse
    /// ends the session.
    pub fn with_idle_in_transaction_timeout(mut self, d: Duration) -> Self {
        self.idle_in_transaction = d;
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
                s.client
                    .batch_execute(&format!(
                        "SET idle_in_transaction_session_timeout = {}",
                        self.idle_in_transaction.as_millis().max(1)
                    ))
                    .await
                    .map_err(|e| ApplyError::Pg(self.url.query_error("setting the session", e)))?;
                if let Some(lake) = &mut self.lake {
                    lake.recover(&s.client, &self.checkpoint, true).await?;
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

    /// The shape of the table an envelope carries: its own `columns` (the source's shape when
    /// the change was made) or, for records written before envelopes had them, the mirror's.
    /// `None` when neither exists.
    pub async fn envelope_schema(
        &mut self,
        env: &crate::event::decode::Envelope,
    ) -> Result<Option<Result<Arc<TableSchema>, String>>, ApplyError> {
        let Some(columns) = &env.columns else {
            return Ok(self.table_schema(&env.schema, &env.table).await?.map(Ok));
        };
        let key = (env.schema.clone(), env.table.clone());
        if let Some(t) = self
            .shapes
            .get(&key)
            .and_then(|known| known.iter().find(|(c, _)| c == columns))
        {
            return Ok(Some(Ok(t.1.clone())));
        }
        let missing: Vec<(u32, i32)> = columns
            .iter()
            .map(|c| (c.type_oid, c.type_mod))
            .filter(|t| !self.type_names.contains_key(t))
            .collect();
        if !missing.is_empty() {
            let session = self.session().await?;
            let (oids, mods): (Vec<u32>, Vec<i32>) = missing.iter().copied().unzip();
            let rows = session
                .client
                .query(
                    "SELECT format_type(t, m) FROM unnest($1::oid[], $2::int4[]) \
                     WITH ORDINALITY AS u(t, m, o) ORDER BY o",
                    &[&oids, &mods],
                )
                .await
                .map_err(|e| ApplyError::Pg(self.url.query_error("naming column types", e)))?;
            for (t, r) in missing.into_iter().zip(rows) {
                let name: Option<String> = r.get(0);
                self.type_names
                    .insert(t, name.unwrap_or_else(|| "text".to_string()));
            }
        }
        let names = &self.type_names;
        let t = match crate::event::decode::envelope_table(
            &env.schema,
            &env.table,
            columns,
            |oid, m| {
                names
                    .get(&(oid, m))
                    .cloned()
                    .unwrap_or_else(|| "text".into())
            },
        ) {
            Ok(t) => Arc::new(t),
            Err(e) => return Ok(Some(Err(e))),
        };
        let known = self.shapes.entry(key).or_default();
        // A table's shapes are few; a stream of ever-new shapes must not grow this unbounded.
        if known.len() >= 16 {
            known.remove(0);
        }
        known.push((columns.clone(), t.clone()));
        Ok(Some(Ok(t)))
    }

    /// Whether the lake already holds this event the pipeline's slot redelivered (after a
    /// restart) in a committed file; such events were committed with it.
    pub fn already_committed(&self, ev: &ChangeEvent) -> bool {
        self.lake.as_ref().is_some_and(|l| l.already_committed(ev))
    }

    /// A consumer that takes over a shard settles what its previous owner left in the lake:
    /// committed files published, uncommitted ones removed (their records are read again from
    /// the shard checkpoint).
    pub async fn recover_shard_lake(&mut self, shard: &str) -> Result<(), ApplyError> {
        self.session().await?;
        if let (Some(session), Some(lake)) = (&self.session, &mut self.lake) {
            lake.recover(&session.client, &shard_writer(shard), false)
                .await?;
        }
        Ok(())
    }

    /// Applies one batch in one transaction. Applying the same batch again changes nothing.
    pub async fn apply(&mut self, batch: &Batch) -> Result<Applied, ApplyError> {
        self.session().await?;
        if let Some(lake) = &mut self.lake {
            lake.settle().await?;
        }
        let writer = batch
            .shard
            .as_ref()
            .map_or_else(|| self.checkpoint.clone(), |s| shard_writer(&s.shard));
        // Events already in the pipeline's committed lake files were committed with them: a
        // restart redelivers from the confirmed position, which may lag the warehouse. (A
        // shard's redeliveries are found in the transaction: its order is per key, not per
        // table.) An event twice in one batch counts once.
        let mut seen = std::collections::HashSet::new();
        let events: Vec<ChangeEvent> = batch
            .events
            .iter()
            .filter(|e| batch.shard.is_some() || !self.already_committed(e))
            .filter(|e| seen.insert((e.table.schema.as_str(), e.table.name.as_str(), e.position)))
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
        let mut lake_files = match (&self.lake, events.is_empty()) {
            (Some(_), false) => lake::changes_files(&events).map_err(ApplyError::LakeFile)?,
            _ => Vec::new(),
        };
        phases.mark("lake_encode");
        let mut staged = Vec::new();
        let done = self
            .transact(
                batch,
                &events,
                &writer,
                &mut lake_files,
                &mut staged,
                &mut phases,
            )
            .await;
        let Some(lake) = &mut self.lake else {
            return done;
        };
        let mut applied = match done {
            Ok(applied) => applied,
            Err(e) => {
                lake.abandon(staged);
                // A fenced batch is not retried: remove its files now rather than before a
                // next batch that may never come.
                if matches!(e, ApplyError::Fenced { .. }) {
                    if let Err(s) = lake.settle().await {
                        tracing::warn!("removing a fenced batch's staged lake files failed (retried before the next batch): {s}");
                    }
                }
                return Err(e);
            }
        };
        applied.skipped = skipped;
        // Committed: a failure to publish is retried before the next batch, which waits for it.
        if let Err(e) = lake.committed(&lake_files, staged, &writer).await {
            tracing::warn!(
                "publishing the batch's lake files failed (retried before the next batch): {e}"
            );
        }
        phases.mark("lake_publish");
        tracing::debug!(events = events.len(), phases = %phases, "batch phases");
        Ok(applied)
    }

    /// The batch's transaction: staging, star, the lake's files staged and recorded, dead
    /// letters and checkpoints, commit.
    async fn transact(
        &mut self,
        batch: &Batch,
        events: &[ChangeEvent],
        writer: &str,
        files: &mut Vec<lake::LakeFile>,
        staged: &mut Vec<lake::writer::Staged>,
        phases: &mut Phases,
    ) -> Result<Applied, ApplyError> {
        let groups = group_by_table(events);
        let url = &self.url;
        let err = |ctx: &str, e| ApplyError::Pg(url.query_error(ctx, e));
        let session = self
            .session
            .as_mut()
            .ok_or_else(|| ApplyError::NoStaging { table: "?".into() })?;
        // Columns added or widened at the source, and tables new to the mirror, first.
        evolve::follow(session, &groups, url).await?;
        let tx = session
            .client
            .transaction()
            .await
            .map_err(|e| err("starting the batch transaction", e))?;
        let mut applied = Applied {
            events: events.len(),
            ..Default::default()
        };
        // Kinesis may deliver an event twice, through different shards after a reshard; the
        // embedded pipeline's redeliveries are left out before (by position).
        let redelivered_possible = batch.shard.is_some() && !files.is_empty();
        let mut redelivered = std::collections::HashSet::new();
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
            if redelivered_possible {
                redelivered.extend(already_applied(&tx, mirror, url).await?);
            }
            merge_into_staging(&tx, mirror, events, url).await?;
        }
        if !redelivered.is_empty() && !files.is_empty() {
            // The lake holds each change once: rebuild the changes files without them.
            let fresh: Vec<ChangeEvent> = events
                .iter()
                .filter(|e| !redelivered.contains(&e.position))
                .cloned()
                .collect();
            *files = lake::changes_files(&fresh).map_err(ApplyError::LakeFile)?;
            tracing::debug!(
                events = redelivered.len(),
                "events delivered again left out of the lake"
            );
        }
        phases.mark("staging");
        // The changes files upload before the star refresh takes its lock (shared by every
        // consumer); the star's own files go to the outbox in this transaction and upload after
        // the commit: no network wait on the lake while the lock is held.
        let write_lake = self.lake.is_some() && !files.is_empty();
        if let (Some(lake), true) = (&mut self.lake, write_lake) {
            staged.extend(lake.stage(files, writer).await?);
            phases.mark("lake_write");
        }
        if self.model == Model::Totesys && !events.is_empty() {
            star::refresh(&tx, &self.schema, url).await?;
        }
        phases.mark("star");
        if let (Some(lake), true) = (&mut self.lake, write_lake) {
            let processed = star::processed_files(&tx, &session.star_columns, events, url).await?;
            phases.mark("lake_encode");
            staged.extend(lake.stage_in_outbox(&tx, &processed, writer).await?);
            files.extend(processed);
            crate::fault::point(crate::fault::Point::AfterLakeWrite);
            lake.record(&tx, files, staged, writer).await?;
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
        // Last before the commit: the lease is still this batch's (a former owner's late
        // commit changes nothing).
        if let Some(sp) = &batch.shard {
            let held = bookkeeping::hold_lease(&tx, &sp.stream, &sp.shard, &sp.owner, sp.epoch)
                .await
                .map_err(|e| err("checking the shard lease", e))?;
            if !held {
                return Err(ApplyError::Fenced {
                    shard: sp.shard.clone(),
                });
            }
        }
        phases.mark("checkpoint");
        tx.commit()
            .await
            .map_err(|e| err("committing the batch", e))?;
        phases.mark("commit");
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
