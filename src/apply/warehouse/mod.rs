//! The Postgres warehouse: setup of its schemas, and one transaction per micro-batch — COPY
//! the events into temporary tables (`load`), merge them into staging under the position guard
//! (`merge`), refresh the star rows they touch (the model's SQL), write the batch's lake files
//! (`lake_files`), record dead letters and checkpoints (`dead_letters`, `bookkeeping`), commit.
//! `ddl` creates the schemas; `phases` times a batch.

pub mod bookkeeping;
pub mod ddl;
mod dead_letters;
mod lake_files;
mod load;
mod merge;
mod phases;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use thiserror::Error;
use tokio_postgres::Client;

use super::batch::Batch;
use crate::event::{ChangeEvent, Lsn, Position, TableSchema};
use crate::lake::{self, Store, StoreError, WarehouseColumn};
use crate::pg::{quote_ident, PgError, PgUrl};
use lake_files::write_lake;
use load::{copy_rows, group_by_table, load_batch_table};
use merge::merge_into_staging;
use phases::Phases;

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
    #[error("the warehouse has no staging table for {table}. Run `totes-cdc setup` with the same source, publication and tables")]
    NoStaging { table: String },
    #[error("model totesys needs the source tables {missing} in staging; capture them (tables option) or set model = none")]
    ModelTables { missing: String },
    #[error("the warehouse at {target} was set up by a newer totes-cdc (schema version {found}, this binary knows {known}); upgrade totes-cdc")]
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

impl ApplyError {
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Pg(e) => e.is_transient(),
            ApplyError::Lake(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// What the warehouse knows about one staging mirror.
#[derive(Debug, Clone)]
struct Mirror {
    staging: String,
    batch: String,
    key: Vec<String>,
    columns: Vec<String>,
    /// (type oid, type modifier, SQL type name) of each column.
    types: Vec<(u32, i32, String)>,
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
    /// Dead letters of this batch by kind: invalid_date, refused_value, unparseable_record.
    pub dead_by_reason: BTreeMap<String, usize>,
}

pub struct Warehouse {
    url: PgUrl,
    schema: String,
    model: Model,
    /// Checkpoint name of this writer.
    checkpoint: String,
    source_database: String,
    client: Option<Client>,
    mirrors: HashMap<String, Mirror>,
    lake: Option<Store>,
    /// Autocommit connection for the lake's pending records.
    pending: Option<Client>,
    /// Per source table, the highest streamed position in committed lake files.
    lake_hwm: HashMap<String, Position>,
    /// Columns of the star tables, for the processed files.
    star_columns: BTreeMap<String, Vec<WarehouseColumn>>,
    /// Files of a batch that did not commit before a restart; the next commit removes those it
    /// did not write again.
    orphans: Vec<String>,
    /// Events of that batch, so the same batch can be formed again.
    replay_events: Option<usize>,
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
            client: None,
            mirrors: HashMap::new(),
            lake: None,
            pending: None,
            lake_hwm: HashMap::new(),
            star_columns: BTreeMap::new(),
            orphans: Vec::new(),
            replay_events: None,
            lake_dedupe: true,
        }
    }

    /// Also writes every batch to the lake, before its warehouse commit.
    pub fn with_lake(mut self, store: Store) -> Self {
        self.lake = Some(store);
        self
    }

    pub fn lake(&self) -> Option<&Store> {
        self.lake.as_ref()
    }

    pub fn url(&self) -> &PgUrl {
        &self.url
    }

    fn err(&self, context: impl Into<String>, e: tokio_postgres::Error) -> ApplyError {
        ApplyError::Pg(self.url.query_error(context, e))
    }

    /// Creates or completes the warehouse for these source tables (idempotent; safe to run
    /// from several processes at once).
    pub async fn setup(&mut self, tables: &[Arc<TableSchema>]) -> Result<(), ApplyError> {
        let mut client = self.url.connect().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.err("starting setup", e))?;
        tx.batch_execute("SELECT pg_advisory_xact_lock(hashtext('totes_cdc.setup'))")
            .await
            .map_err(|e| self.err("locking setup", e))?;
        tx.batch_execute(ddl::TOTES_CDC_SQL)
            .await
            .map_err(|e| self.err("creating schema totes_cdc", e))?;
        let found: Option<i32> = tx
            .query_one("SELECT max(version) FROM totes_cdc.schema_version", &[])
            .await
            .map_err(|e| self.err("reading the schema version", e))?
            .get(0);
        if let Some(found) = found.filter(|&v| v > ddl::SCHEMA_VERSION) {
            return Err(ApplyError::NewerSchema {
                target: self.url.target(),
                found,
                known: ddl::SCHEMA_VERSION,
            });
        }
        tx.batch_execute(ddl::ISO4217_SQL)
            .await
            .map_err(|e| self.err("loading ISO 4217 currency names", e))?;
        for t in tables {
            for stmt in ddl::staging_ddl(t) {
                tx.batch_execute(&stmt).await.map_err(|e| {
                    self.err(
                        format!("creating the staging mirror of {}", t.qualified_name()),
                        e,
                    )
                })?;
            }
        }
        if self.model == Model::Totesys {
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
            tx.batch_execute(&ddl::with_schema(ddl::STAR_SQL, &self.schema))
                .await
                .map_err(|e| self.err("creating the star schema", e))?;
        }
        tx.execute(
            "INSERT INTO totes_cdc.schema_version (version) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&ddl::SCHEMA_VERSION],
        )
        .await
        .map_err(|e| self.err("recording the schema version", e))?;
        tx.commit()
            .await
            .map_err(|e| self.err("committing setup", e))?;
        Ok(())
    }

    /// The session: connected, with a batch table for every staging mirror.
    async fn session(&mut self) -> Result<&mut Client, ApplyError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let client = self.url.connect().await?;
            let rows = client
                .query(
                    "SELECT c.relname::text, \
                       array(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid \
                             AND a.attnum > 0 AND NOT a.attisdropped \
                             AND a.attname NOT IN ('_lsn', '_seq', '_deleted', '_applied_at') ORDER BY a.attnum), \
                       array(SELECT a.attname::text FROM pg_index i JOIN pg_attribute a \
                             ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                             WHERE i.indrelid = c.oid AND i.indisprimary \
                             ORDER BY array_position(i.indkey::int2[], a.attnum)), \
                       array(SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = c.oid \
                             AND a.attnum > 0 AND NOT a.attisdropped \
                             AND a.attname NOT IN ('_lsn', '_seq', '_deleted', '_applied_at') ORDER BY a.attnum), \
                       array(SELECT a.atttypmod FROM pg_attribute a WHERE a.attrelid = c.oid \
                             AND a.attnum > 0 AND NOT a.attisdropped \
                             AND a.attname NOT IN ('_lsn', '_seq', '_deleted', '_applied_at') ORDER BY a.attnum), \
                       array(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = c.oid \
                             AND a.attnum > 0 AND NOT a.attisdropped \
                             AND a.attname NOT IN ('_lsn', '_seq', '_deleted', '_applied_at') ORDER BY a.attnum) \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = 'staging' AND c.relkind = 'r'",
                    &[],
                )
                .await
                .map_err(|e| self.err("reading the staging mirrors", e))?;
            let mut mirrors = HashMap::new();
            let mut ddl_sql = String::new();
            for r in rows {
                let name: String = r.get(0);
                let columns: Vec<String> = r.get(1);
                let key: Vec<String> = r.get(2);
                let oids: Vec<u32> = r.get(3);
                let mods: Vec<i32> = r.get(4);
                let names: Vec<String> = r.get(5);
                let m = Mirror {
                    staging: format!("staging.{}", quote_ident(&name)),
                    batch: ddl::batch_table(&name),
                    key,
                    columns,
                    types: oids
                        .into_iter()
                        .zip(mods)
                        .zip(names)
                        .map(|((o, m), n)| (o, m, n))
                        .collect(),
                };
                let cols: Vec<String> = m.columns.iter().map(|c| quote_ident(c)).collect();
                ddl_sql.push_str(&format!(
                    "CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS \
                     SELECT {}, _lsn, _seq, ''::text AS _op, NULL::text[] AS _unchanged FROM {} WITH NO DATA;\n",
                    m.batch,
                    cols.join(", "),
                    m.staging
                ));
                mirrors.insert(name, m);
            }
            let mut star_columns = BTreeMap::new();
            if self.model == Model::Totesys {
                let schema = crate::pg::ident(&self.schema);
                for t in ddl::STAR_TABLES {
                    ddl_sql.push_str(&format!(
                        "CREATE TEMP TABLE IF NOT EXISTS produced_{t} ON COMMIT DELETE ROWS AS \
                         SELECT * FROM {schema}.{t} WITH NO DATA;\n"
                    ));
                    // Surrogate keys (serial) are left out: a rebuild would renumber them, and
                    // the lake is reproducible from the events (natural key + position).
                    let cols = client
                        .query(
                            "SELECT a.attname::text, a.atttypid, a.atttypmod FROM pg_attribute a \
                             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                             WHERE a.attrelid = ($1 || '.' || $2)::regclass AND a.attnum > 0 AND NOT a.attisdropped \
                               AND coalesce(pg_get_expr(d.adbin, d.adrelid), '') NOT LIKE 'nextval(%' \
                             ORDER BY a.attnum",
                            &[&schema, t],
                        )
                        .await
                        .map_err(|e| self.url.query_error("reading the star tables' columns", e))?;
                    star_columns.insert(
                        t.to_string(),
                        cols.iter()
                            .map(|r| WarehouseColumn {
                                name: r.get(0),
                                type_oid: r.get(1),
                                type_mod: r.get(2),
                            })
                            .collect(),
                    );
                }
            }
            client
                .batch_execute(&ddl_sql)
                .await
                .map_err(|e| self.url.query_error("creating the batch tables", e))?;
            self.mirrors = mirrors;
            self.star_columns = star_columns;
            self.client = Some(client);
            if self.lake.is_some() {
                self.recover_lake().await?;
            }
        }
        self.client
            .as_mut()
            .ok_or_else(|| ApplyError::NoStaging { table: "?".into() })
    }

    /// The lake after a restart: the positions already in committed files are loaded (events
    /// re-delivered with them are left out), and the files of a batch that did not commit are
    /// remembered: the same events form that batch again and rewrite them, and the commit
    /// removes any not rewritten.
    async fn recover_lake(&mut self) -> Result<(), ApplyError> {
        let url = self.url.clone();
        let err = |ctx: &str, e: tokio_postgres::Error| ApplyError::Pg(url.query_error(ctx, e));
        let Some(client) = self.client.as_ref() else {
            return Ok(());
        };
        let orphans = client
            .query(
                "SELECT path, batch_events FROM totes_cdc.lake_pending p \
                 WHERE writer = $1 AND NOT EXISTS (SELECT 1 FROM totes_cdc.lake_files f WHERE f.path = p.path)",
                &[&self.checkpoint],
            )
            .await
            .map_err(|e| err("reading the lake's pending files", e))?;
        self.orphans = orphans.iter().map(|r| r.get(0)).collect();
        self.replay_events = orphans.iter().map(|r| r.get::<_, i32>(1) as usize).max();
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
            .map_err(|e| err("reading the lake's committed positions", e))?;
        self.lake_hwm = rows
            .iter()
            .filter_map(|r| {
                let lsn = Lsn::parse(r.get::<_, &str>(1)).ok()?;
                Some((r.get::<_, String>(0), Position::new(lsn, r.get(2))))
            })
            .collect();
        Ok(())
    }

    /// Connects and recovers the lake; returns the size of a batch to form again (the one whose
    /// files a crash left uncommitted), if any.
    pub async fn prepare(&mut self) -> Result<Option<usize>, ApplyError> {
        self.session().await?;
        Ok(self.replay_events.take())
    }

    /// A source table's shape as its staging mirror has it (for decoding envelopes): the
    /// mirror's columns and types, its primary key. `None` when there is no mirror.
    pub async fn table_schema(
        &mut self,
        schema: &str,
        table: &str,
    ) -> Result<Option<Arc<TableSchema>>, ApplyError> {
        self.session().await?;
        let Some(m) = self.mirrors.get(&ddl::staging_name(schema, table)) else {
            return Ok(None);
        };
        let columns: Vec<crate::event::Column> = m
            .columns
            .iter()
            .zip(&m.types)
            .map(|(name, (oid, typmod, type_name))| crate::event::Column {
                name: name.clone(),
                type_oid: *oid,
                type_mod: *typmod,
                type_name: type_name.clone(),
                kind: crate::event::ValueKind::builtin(*oid)
                    .unwrap_or(crate::event::ValueKind::Text),
            })
            .collect();
        let key = m
            .key
            .iter()
            .filter_map(|k| columns.iter().position(|c| &c.name == k))
            .collect();
        Ok(Some(Arc::new(TableSchema {
            oid: 0,
            schema: schema.to_string(),
            name: table.to_string(),
            columns,
            key,
            keyless: false,
        })))
    }

    /// Turns off the lake's per-table dedupe of re-delivered events (consumers resume from
    /// their shard checkpoints instead, and shards interleave a table's positions).
    pub fn without_lake_dedupe(mut self) -> Self {
        self.lake_dedupe = false;
        self
    }

    /// Whether the lake already holds this (streamed) event in a committed file.
    pub fn already_committed(&self, ev: &ChangeEvent) -> bool {
        self.lake_dedupe
            && self.lake.is_some()
            && ev.position.seq >= 0
            && self
                .lake_hwm
                .get(&ev.table.qualified_name())
                .is_some_and(|hwm| ev.position <= *hwm)
    }

    /// A consumer that takes over a shard removes the files its previous owner wrote for a
    /// batch that did not commit (the records are read again from the shard checkpoint).
    pub async fn recover_shard_lake(&mut self, shard: &str) -> Result<(), ApplyError> {
        self.session().await?;
        let writer = format!("shard:{shard}");
        let (Some(client), Some(store)) = (self.client.as_ref(), self.lake.as_ref()) else {
            return Ok(());
        };
        let err = |e| ApplyError::Pg(self.url.query_error("reading the lake's pending files", e));
        let rows = client
            .query(
                "SELECT path FROM totes_cdc.lake_pending p WHERE writer = $1 \
                 AND NOT EXISTS (SELECT 1 FROM totes_cdc.lake_files f WHERE f.path = p.path)",
                &[&writer],
            )
            .await
            .map_err(err)?;
        for r in &rows {
            let path: String = r.get(0);
            store.delete(&path).await?;
            tracing::info!(%path, %shard, "removed a lake file of a batch that did not commit");
        }
        client
            .execute(
                "DELETE FROM totes_cdc.lake_pending WHERE writer = $1",
                &[&writer],
            )
            .await
            .map_err(|e| {
                ApplyError::Pg(self.url.query_error("clearing the lake's pending files", e))
            })?;
        Ok(())
    }

    /// Deletes the files a crash left behind that the rebuilt batch did not write again.
    async fn remove_orphans(&mut self) -> Result<(), ApplyError> {
        let (Some(client), Some(store)) = (self.client.as_ref(), self.lake.as_ref()) else {
            return Ok(());
        };
        let orphans = std::mem::take(&mut self.orphans);
        let committed = client
            .query(
                "SELECT path FROM totes_cdc.lake_files WHERE path = ANY($1::text[])",
                &[&orphans],
            )
            .await
            .map_err(|e| ApplyError::Pg(self.url.query_error("reading the lake manifest", e)))?;
        let committed: Vec<String> = committed.iter().map(|r| r.get(0)).collect();
        for path in orphans.iter().filter(|p| !committed.contains(p)) {
            store.delete(path).await?;
            tracing::info!(%path, "removed a lake file of a batch that did not commit");
        }
        client
            .execute(
                "DELETE FROM totes_cdc.lake_pending WHERE path = ANY($1::text[])",
                &[&orphans],
            )
            .await
            .map_err(|e| {
                ApplyError::Pg(self.url.query_error("clearing the lake's pending files", e))
            })?;
        Ok(())
    }

    async fn pending_client(&mut self) -> Result<&Client, ApplyError> {
        if self.pending.as_ref().is_some_and(|c| c.is_closed()) {
            self.pending = None;
        }
        if self.pending.is_none() {
            self.pending = Some(self.url.connect().await?);
        }
        self.pending
            .as_ref()
            .ok_or_else(|| ApplyError::NoStaging { table: "?".into() })
    }

    /// Applies one batch in one transaction. Applying the same batch again changes nothing.
    pub async fn apply(&mut self, batch: &Batch) -> Result<Applied, ApplyError> {
        let schema = self.schema.clone();
        let model = self.model;
        let checkpoint = self.checkpoint.clone();
        let database = self.source_database.clone();
        let url = self.url.clone();
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
            .map_or_else(|| self.checkpoint.clone(), |s| format!("shard:{}", s.shard));
        let changes = if self.lake.is_some() && !events.is_empty() {
            lake::changes_files(&events).map_err(ApplyError::LakeFile)?
        } else {
            Vec::new()
        };
        phases.mark("lake_encode");
        let groups = group_by_table(&events);
        let mirrors = self.mirrors.clone();
        let star_columns = self.star_columns.clone();
        let store = self.lake.clone();
        if store.is_some() {
            self.pending_client().await?;
        }
        let pending = self.pending.as_ref();
        let mut hwm_updates: Vec<(String, Position)> = Vec::new();
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| ApplyError::NoStaging { table: "?".into() })?;
        let err = |ctx: &str, e: tokio_postgres::Error| ApplyError::Pg(url.query_error(ctx, e));

        let tx = client
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
            let mirror = mirrors
                .get(&ddl::staging_name(&t.schema, &t.name))
                .ok_or_else(|| ApplyError::NoStaging {
                    table: name.clone(),
                })?;
            applied.per_table.insert(name.clone(), events.len());
            let dead = load_batch_table(&tx, mirror, events, &database, &url).await?;
            applied.dead_letters += dead;
            if dead > 0 {
                *applied
                    .dead_by_reason
                    .entry("refused_value".into())
                    .or_default() += dead;
            }
            merge_into_staging(&tx, mirror, events, &url).await?;
        }
        phases.mark("staging");
        if model == Model::Totesys && !events.is_empty() {
            // Consumers of different shards apply at once; a dimension joining rows that
            // arrive through different shards (staff and department) must see the other
            // batch's rows: the star refresh and the commit take turns.
            tx.batch_execute("SELECT pg_advisory_xact_lock(hashtext('totes_cdc.star'))")
                .await
                .map_err(|e| err("waiting for the star refresh lock", e))?;
            let mut sql = String::new();
            for (_, body) in ddl::STAR_TRANSFORMS {
                sql.push_str(&ddl::with_schema(body, &schema));
                sql.push('\n');
            }
            tx.batch_execute(&sql)
                .await
                .map_err(|e| err("refreshing the star schema", e))?;
        }
        phases.mark("star");
        if let (Some(store), Some(pending), false) = (&store, pending, events.is_empty()) {
            let mut files = changes;
            let first = events.iter().map(|e| e.position).min().unwrap_or_default();
            let last = events.iter().map(|e| e.position).max().unwrap_or_default();
            let date = lake::utc_date(
                events
                    .iter()
                    .min_by_key(|e| e.position)
                    .map_or(0, |e| e.commit_ts_us),
            );
            for (table, columns) in &star_columns {
                let cols: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
                let rows = copy_rows(
                    &tx,
                    &format!(
                        "COPY (SELECT {} FROM produced_{table}) TO STDOUT",
                        cols.join(", ")
                    ),
                    columns.len(),
                    &url,
                )
                .await?;
                if !rows.is_empty() {
                    files.push(
                        lake::processed_file(table, columns, &rows, first, last, &date)
                            .map_err(ApplyError::LakeFile)?,
                    );
                }
            }
            phases.mark("lake_encode");
            write_lake(store, pending, &tx, &files, events.len(), &writer, &url).await?;
            phases.mark("lake_write");
            applied.lake_files = files.len();
            applied.lake_bytes = files.iter().map(|f| f.data.len()).sum();
            for f in files
                .iter()
                .filter(|f| f.kind == "changes" && f.last.seq >= 0)
            {
                hwm_updates.push((f.table.clone(), f.last));
            }
        }
        // Dead letters this transaction wrote (the model's SQL writes some), by kind.
        let dead = bookkeeping::dead_letters_of_this_transaction(&tx)
            .await
            .map_err(|e| err("counting dead letters", e))?;
        for (kind, n) in dead {
            applied.dead_letters += n;
            *applied.dead_by_reason.entry(kind).or_default() += n;
        }
        if !batch.rejects.is_empty() {
            *applied
                .dead_by_reason
                .entry("unparseable_record".into())
                .or_default() += batch.rejects.len();
        }
        for r in &batch.rejects {
            bookkeeping::record_unparsed(&tx, &r.origin, &r.payload.to_string(), &r.reason)
                .await
                .map_err(|e| err("writing a dead letter", e))?;
            applied.dead_letters += 1;
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
            bookkeeping::record_checkpoint(&tx, &checkpoint, last, ts)
                .await
                .map_err(|e| err("recording the checkpoint", e))?;
        }
        phases.mark("checkpoint");
        tx.commit()
            .await
            .map_err(|e| err("committing the batch", e))?;
        phases.mark("commit");
        tracing::debug!(events = events.len(), phases = %phases, "batch phases");
        for (table, last) in hwm_updates {
            let hwm = self.lake_hwm.entry(table).or_default();
            *hwm = (*hwm).max(last);
        }
        if !self.orphans.is_empty() {
            self.remove_orphans().await?;
        }
        Ok(applied)
    }
}
