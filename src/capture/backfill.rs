//! Copying a table while the stream runs: a table added to the publication, or one asked for
//! with `totes-cdc resync --table` (a signal written into the WAL). The method is DBLog's
//! (Netflix, 2020; Debezium's incremental snapshots use it too): the table is read in chunks in
//! key order, each between two watermarks written to the WAL as logical messages,
//!
//! 1. `low` is committed, 2. the chunk is read (`key > last key, ORDER BY key LIMIT n`),
//! 3. `high` is committed;
//!
//! and while the stream passes from `low` to `high`, every change of the table removes its key
//! from the chunk held in memory. At `high` the rows left are emitted as reads, positioned in the
//! `high` transaction. A row the stream changed inside the window reaches downstream through
//! that change, which is at least as new as what the chunk read; a row not changed inside the
//! window is the same at `high` as when it was read. So each row arrives with a state the table
//! really had at its position, and no change is overtaken by an older copy: no gap, no
//! reordering, the stream never paused and no other table copied again.
//!
//! Progress is kept in the snapshot state file: a table stays queued until the `high` of its
//! last chunk is confirmed, so a crash copies it again (downstream leaves a read identical to
//! what it holds as no change).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{pin_mut, StreamExt};

use super::catalog::{Catalog, TableName};
use super::state::{SnapshotState, StateFile};
use super::CaptureError;
use crate::event::copy_text::parse_row;
use crate::event::{ChangeEvent, Datum, Lsn, Op, TableSchema};
use crate::pg::{quote_ident, quote_literal};

/// The logical message prefix of watermarks.
pub const WATERMARK_PREFIX: &str = "totes_cdc.watermark";
/// The logical message prefix of signals (`resync --table`).
pub const SIGNAL_PREFIX: &str = "totes_cdc.signal";
/// Rows per chunk: what one window holds in memory.
pub const CHUNK_ROWS: usize = 2048;

/// The chunk between its watermarks.
struct Window {
    id: String,
    low_seen: bool,
    /// key → row, for the rows no change has superseded yet.
    rows: HashMap<Vec<Datum>, Vec<Datum>>,
    /// The chunk's keys in key order (emitted in that order).
    order: Vec<Vec<Datum>>,
    last: bool,
}

struct Current {
    /// The state entry of this job.
    job: String,
    /// The captured table (a partitioned table's root for partition jobs).
    name: TableName,
    /// For a detached partition: the table whose keys leave the root's mirror.
    retire: Option<TableName>,
    table: Arc<TableSchema>,
    chunk: u32,
    /// The last key read (the next chunk starts after it).
    after: Option<Vec<Datum>>,
    window: Option<Window>,
}

/// Tables being copied while streaming.
pub struct Backfills {
    slot: String,
    state_file: StateFile,
    state: SnapshotState,
    publication: String,
    allowed: Option<HashSet<TableName>>,
    /// Tables copied (initial snapshot or backfill): a table of the publication not here is new.
    known: HashSet<String>,
    /// Whether new tables of the publication are copied (with an initial snapshot only).
    copy_new: bool,
    current: Option<Current>,
    /// Distinguishes this process's watermarks from an earlier one's still in the WAL.
    nonce: u64,
    /// The table whose last chunk ended in the transaction being decoded.
    ending: Option<String>,
    /// (end LSN of a last chunk's transaction, table): done once confirmed.
    finishing: VecDeque<(Lsn, String)>,
}

impl Backfills {
    pub fn new(
        slot: &str,
        state_file: StateFile,
        state: Option<SnapshotState>,
        publication: &str,
        allowed: Option<HashSet<TableName>>,
    ) -> Self {
        let copy_new = state.is_some();
        let state = state.unwrap_or_default();
        let known = state
            .done_tables
            .iter()
            .chain(&state.backfilled)
            .cloned()
            .collect();
        Self {
            slot: slot.to_string(),
            state_file,
            state,
            publication: publication.to_string(),
            allowed,
            known,
            copy_new,
            current: None,
            nonce: crate::event::now_us() as u64,
            ending: None,
            finishing: VecDeque::new(),
        }
    }

    fn captured(&self, t: &TableName) -> bool {
        self.allowed.as_ref().is_none_or(|a| a.contains(t))
    }

    fn queue(&mut self, t: &TableName, why: &str) -> Result<(), CaptureError> {
        let name = t.to_string();
        if self.state.backfill.contains(&name) {
            return Ok(());
        }
        tracing::info!(table = %name, "{why}: copying it while streaming (watermarked chunks)");
        self.state.backfill.push(name);
        self.state_file.store(&self.state)
    }

    /// A new session: a window in flight is read again (its watermarks may not come back).
    pub fn new_session(&mut self) {
        if let Some(c) = &mut self.current {
            c.window = None;
        }
        self.ending = None;
    }

    /// Tables of the publication not copied yet join the queue.
    pub async fn check_publication(&mut self, catalog: &mut Catalog) -> Result<(), CaptureError> {
        if !self.copy_new {
            return Ok(());
        }
        let url = catalog.url().clone();
        let client = catalog.client().await?;
        let rows = client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
                 WHERE pubname = $1 ORDER BY 1, 2",
                &[&self.publication],
            )
            .await
            .map_err(|e| url.query_error("listing the publication's tables", e))?;
        let mut published = HashSet::new();
        for r in rows {
            let t = TableName::new(r.get(0), r.get(1));
            published.insert(t.to_string());
            if self.captured(&t) && !self.known.contains(&t.to_string()) {
                self.known.insert(t.to_string());
                self.queue(&t, "a table joined the publication")?;
            }
        }
        // Partitions publish as their root: one attached since brings rows no change carried
        // (the root is copied again; rows it already holds are no change), one detached takes
        // its rows out of the root (its keys leave the mirror).
        let rows = client
            .query(
                "SELECT pn.nspname::text || '.' || p.relname::text, cn.nspname::text || '.' || c.relname::text \
                 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 JOIN pg_class p ON p.oid = i.inhparent AND p.relkind = 'p' \
                 JOIN pg_namespace cn ON cn.oid = c.relnamespace \
                 JOIN pg_namespace pn ON pn.oid = p.relnamespace",
                &[],
            )
            .await
            .map_err(|e| url.query_error("listing partitions", e))?;
        let mut now: Vec<String> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .filter(|(root, _)| published.contains(root))
            .map(|(root, part)| format!("{root}>{part}"))
            .collect();
        now.sort();
        let Some(before) = self.state.partitions.clone() else {
            self.state.partitions = Some(now);
            return self.state_file.store(&self.state);
        };
        if before == now {
            return Ok(());
        }
        for pair in now.iter().filter(|p| !before.contains(p)) {
            if let Some((root, part)) = pair.split_once('>') {
                tracing::info!(partition = %part, root = %root, "a partition was attached");
                self.queue(&TableName::parse(root), "a partition was attached")?;
            }
        }
        for pair in before.iter().filter(|p| !now.contains(p)) {
            if let Some((root, part)) = pair.split_once('>') {
                tracing::info!(partition = %part, root = %root, "a partition was detached: its rows leave the mirror");
                let job = format!("{RETIRE}{part}>{root}");
                if !self.state.backfill.contains(&job) {
                    self.state.backfill.push(job);
                }
            }
        }
        self.state.partitions = Some(now);
        self.state_file.store(&self.state)
    }

    /// A logical message of the stream: a signal, or a watermark of the current window. At the
    /// high watermark, the rows to emit.
    pub fn message(
        &mut self,
        prefix: &str,
        content: &[u8],
    ) -> Result<Option<ChunkRows>, CaptureError> {
        if prefix == SIGNAL_PREFIX {
            let v: serde_json::Value = match serde_json::from_slice(content) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!("a signal that is not JSON is ignored: {e}");
                    return Ok(None);
                }
            };
            // A signal names the slot of the pipeline it is for: others reading the same WAL
            // (another pipeline, an audit stream) leave it alone.
            if v["slot"].as_str() != Some(self.slot.as_str()) {
                return Ok(None);
            }
            let (Some(schema), Some(table)) = (
                v["resync"]["schema"].as_str(),
                v["resync"]["table"].as_str(),
            ) else {
                tracing::warn!(signal = %v, "an unknown signal is ignored");
                return Ok(None);
            };
            let t = TableName::new(schema, table);
            if !self.captured(&t) {
                tracing::warn!(table = %t, "resync of a table this pipeline does not capture is ignored");
                return Ok(None);
            }
            self.queue(&t, "resync requested")?;
            return Ok(None);
        }
        if prefix != WATERMARK_PREFIX {
            return Ok(None);
        }
        let Some(c) = &mut self.current else {
            return Ok(None);
        };
        let Some(w) = &mut c.window else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(content);
        if text.strip_prefix("low:") == Some(w.id.as_str()) {
            w.low_seen = true;
            return Ok(None);
        }
        if text.strip_prefix("high:") != Some(w.id.as_str()) || !w.low_seen {
            return Ok(None);
        }
        let Some(mut w) = c.window.take() else {
            return Ok(None);
        };
        let rows: Vec<(Vec<Datum>, Vec<Datum>)> = w
            .order
            .drain(..)
            .filter_map(|k| {
                let row = w.rows.remove(&k)?;
                Some((k, row))
            })
            .collect();
        c.chunk += 1;
        if w.last {
            self.ending = Some(c.job.clone());
        }
        let op = if c.retire.is_some() {
            Op::Delete
        } else {
            Op::Read
        };
        Ok(Some((c.table.clone(), op, rows)))
    }

    /// A change of the stream: inside a window, its key leaves the chunk (the change is newer).
    pub fn saw_change(&mut self, ev: &ChangeEvent) {
        let Some(c) = &mut self.current else { return };
        let Some(w) = &mut c.window else { return };
        if !w.low_seen || ev.table.schema != c.name.schema || ev.table.name != c.name.name {
            return;
        }
        match (&ev.op, &ev.key) {
            (Op::Truncate, _) => w.rows.clear(),
            (_, Some(k)) => {
                w.rows.remove(k);
            }
            _ => {}
        }
    }

    /// The transaction being decoded committed, ending at `end_lsn`.
    pub fn committed(&mut self, end_lsn: Lsn) {
        if let Some(t) = self.ending.take() {
            self.finishing.push_back((end_lsn, t));
            self.current = None;
        }
    }

    /// Downstream confirmed everything up to `lsn`: tables whose last chunk it covers are done.
    pub fn confirmed(&mut self, lsn: Lsn) -> Result<(), CaptureError> {
        let mut changed = false;
        while self.finishing.front().is_some_and(|(end, _)| *end <= lsn) {
            let Some((_, t)) = self.finishing.pop_front() else {
                break;
            };
            tracing::info!(job = %t, "done while streaming");
            self.state.backfill.retain(|b| b != &t);
            if !t.starts_with(RETIRE) && !self.state.backfilled.contains(&t) {
                self.state.backfilled.push(t);
            }
            changed = true;
        }
        if changed {
            self.state_file.store(&self.state)?;
        }
        Ok(())
    }

    /// Starts the next chunk when none is in flight: low watermark, read, high watermark.
    pub async fn step(&mut self, catalog: &mut Catalog) -> Result<(), CaptureError> {
        if self.current.as_ref().is_some_and(|c| c.window.is_some()) || self.ending.is_some() {
            return Ok(());
        }
        if self.current.is_none() {
            // The next queued table not already finishing.
            let finishing: Vec<&String> = self.finishing.iter().map(|(_, t)| t).collect();
            let Some(name) = self
                .state
                .backfill
                .iter()
                .find(|t| !finishing.contains(t))
                .cloned()
            else {
                return Ok(());
            };
            let (t, retire) = match name.strip_prefix(RETIRE).and_then(|r| r.split_once('>')) {
                Some((part, root)) => (TableName::parse(root), Some(TableName::parse(part))),
                None => (TableName::parse(&name), None),
            };
            if let Some(part) = &retire {
                if catalog.table_oid(part).await?.is_none() {
                    tracing::error!(partition = %part, root = %t, "a detached partition was dropped before its rows could leave the mirror of its former root: run `totes-cdc resync` (without --table) to copy every table again");
                    self.state.backfill.retain(|b| b != &name);
                    self.state_file.store(&self.state)?;
                    return Ok(());
                }
            }
            let table = match catalog.table_schema(&t, &self.publication).await {
                Ok(table) => table,
                Err(CaptureError::NoTable { .. }) => {
                    tracing::warn!(table = %name, "a table to copy no longer exists");
                    self.state.backfill.retain(|b| b != &name);
                    self.state_file.store(&self.state)?;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if table.keyless {
                return Err(CaptureError::Stream {
                    message: format!("{name} has no primary key or replica identity index to copy it in chunks by"),
                    hint: format!("give {name} a primary key (or REPLICA IDENTITY USING INDEX on a unique index of NOT NULL columns), or leave it out of the publication"),
                });
            }
            self.current = Some(Current {
                job: name,
                name: t,
                retire,
                table,
                chunk: 0,
                after: None,
                window: None,
            });
        }
        let Some(c) = &mut self.current else {
            return Ok(());
        };
        let id = format!("{}:{}:{}", self.nonce, c.name, c.chunk);
        let url = catalog.url().clone();
        let client = catalog.client().await?;
        let emit = |mark: &str| format!("{mark}:{id}");
        client
            .execute(
                "SELECT pg_logical_emit_message(true, $1, $2)",
                &[&WATERMARK_PREFIX, &emit("low")],
            )
            .await
            .map_err(|e| url.query_error("writing a low watermark", e))?;
        let (order, rows) = read_chunk(
            client,
            &url,
            &c.table,
            c.retire.as_ref(),
            c.after.as_deref(),
        )
        .await?;
        client
            .execute(
                "SELECT pg_logical_emit_message(true, $1, $2)",
                &[&WATERMARK_PREFIX, &emit("high")],
            )
            .await
            .map_err(|e| url.query_error("writing a high watermark", e))?;
        let last = order.len() < CHUNK_ROWS;
        if let Some(k) = order.last() {
            c.after = Some(k.clone());
        }
        tracing::debug!(table = %c.name, chunk = c.chunk, rows = order.len(), "chunk read between watermarks");
        c.window = Some(Window {
            id,
            low_seen: false,
            rows,
            order,
            last,
        });
        Ok(())
    }
}

type Chunk = (Vec<Vec<Datum>>, HashMap<Vec<Datum>, Vec<Datum>>);

/// A chunk's table, the op its rows are emitted as (reads, or deletes for a detached
/// partition's keys), and its rows, (key, row) in key order.
pub type ChunkRows = (Arc<TableSchema>, Op, Vec<(Vec<Datum>, Vec<Datum>)>);

const RETIRE: &str = "retire:";

/// The next chunk of `t` after key `after`, in key order; for a detached partition `retire`,
/// the keys it holds that `t` does not.
async fn read_chunk(
    client: &tokio_postgres::Client,
    url: &crate::pg::PgUrl,
    t: &TableSchema,
    retire: Option<&TableName>,
    after: Option<&[Datum]>,
) -> Result<Chunk, CaptureError> {
    let every: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let key: Vec<String> = t.key.iter().map(|&i| every[i].clone()).collect();
    let (cols, from) = match retire {
        None => (
            every.clone(),
            format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name)),
        ),
        Some(part) => {
            let on: Vec<String> = key.iter().map(|k| format!("r.{k} = d.{k}")).collect();
            (
                key.iter().map(|k| format!("d.{k}")).collect(),
                format!(
                    "{}.{} d WHERE NOT EXISTS (SELECT 1 FROM {}.{} r WHERE {})",
                    quote_ident(&part.schema),
                    quote_ident(&part.name),
                    quote_ident(&t.schema),
                    quote_ident(&t.name),
                    on.join(" AND ")
                ),
            )
        }
    };
    let filter = match after {
        None => String::new(),
        Some(k) => {
            let values: Vec<String> = t
                .key
                .iter()
                .zip(k)
                .map(|(&i, d)| match d {
                    Datum::Text(b) => format!(
                        "{}::{}",
                        quote_literal(&String::from_utf8_lossy(b)),
                        t.columns[i].type_name
                    ),
                    _ => "NULL".to_string(),
                })
                .collect();
            format!(
                " {} ({}) > ({})",
                if retire.is_some() { "AND" } else { "WHERE" },
                key.join(", "),
                values.join(", ")
            )
        }
    };
    let sql = format!(
        "COPY (SELECT {} FROM {from}{filter} ORDER BY {} LIMIT {CHUNK_ROWS}) TO STDOUT",
        cols.join(", "),
        key.join(", ")
    );
    let name = t.qualified_name();
    let stream = client
        .copy_out(sql.as_str())
        .await
        .map_err(|e| url.query_error(format!("copying a chunk of {name}"), e))?;
    pin_mut!(stream);
    let mut buf = bytes::BytesMut::new();
    while let Some(part) = stream.next().await {
        buf.extend_from_slice(&part.map_err(|e| url.query_error(format!("copying {name}"), e))?);
    }
    let all: Bytes = buf.freeze();
    let mut order = Vec::new();
    let mut rows = HashMap::new();
    let mut start = 0;
    for i in 0..all.len() {
        if all[i] == b'\n' {
            let row =
                parse_row(&all.slice(start..i), cols.len()).map_err(|m| CaptureError::Stream {
                    message: format!("a chunk of {name}: {m}"),
                    hint: "this is a bug; please report it with the table's definition".into(),
                })?;
            start = i + 1;
            let k = match retire {
                None => ChangeEvent::key_of(t, &row),
                Some(_) => row.clone(),
            };
            order.push(k.clone());
            rows.insert(k, row);
        }
    }
    Ok((order, rows))
}
