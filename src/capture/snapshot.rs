//! The initial snapshot: every replicated table copied under one consistent snapshot (the one
//! the slot exported, so the stream continues exactly where the copy ends), several pieces at a
//! time, each row sent as an `r` event carrying the consistent point. A large table is split
//! into ranges of its heap pages (a TID range scan each), copied in parallel under the same
//! snapshot, so one big table is not copied by one connection alone.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures_util::{pin_mut, StreamExt};
use tokio::sync::{mpsc, watch};

use super::redo::ChangedKeys;
use super::state::{SnapshotState, StateFile};
use super::CaptureError;
use crate::channel::{ItemKind, SinkSender};
use crate::event::copy_text::parse_row;
use crate::event::{ChangeEvent, Lsn, Op, Position, TableSchema};
use crate::pg::{quote_ident, quote_literal, PgUrl};

pub struct SnapshotJob {
    pub url: PgUrl,
    pub tables: Vec<Arc<TableSchema>>,
    /// The snapshot to copy under: the one the slot's creation exported, or for a redo after
    /// a crash the one a temporary slot exported (see `redo`).
    pub snapshot_name: Option<String>,
    /// For a redo: the rows changed since the consistent point, left to the stream.
    pub skip: Option<Arc<ChangedKeys>>,
    /// The slot's consistent point (not adjusted for the attempt).
    pub consistent_point: Lsn,
    /// 0 for the slot's exported snapshot, counting up with each redo.
    pub attempt: u32,
    pub parallelism: usize,
    /// A table of at least twice this many pages is copied in pieces.
    pub chunk_pages: u32,
    /// On shutdown, how long to wait for the sink to acknowledge tables already copied.
    pub drain_timeout: std::time::Duration,
}

/// How a snapshot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotEnd {
    /// Every table copied and acknowledged.
    Complete,
    /// Shutdown was requested: the copy stopped; tables not recorded done are copied again
    /// (as they were at the consistent point) on the next start.
    Interrupted { tables_left: usize },
}

enum SnapMsg {
    Row(ChangeEvent),
    PieceDone { table: String, rows: u64 },
}

/// Most pieces of one table.
const MAX_CHUNKS: i64 = 64;

/// A piece of a table's copy: all of it, or a range of its heap pages.
struct Piece {
    table: Arc<TableSchema>,
    /// First page, and the page after the last (`None`: to the end, so rows on pages added
    /// after the plan are not missed).
    pages: Option<(i64, Option<i64>)>,
    /// The row number its first row takes: the first page times the most tuples a page can
    /// hold, so the pieces of a table never share a position.
    first_row: u32,
}

/// Splits the tables into pieces: a plain table of `2 × chunk_pages` pages or more into ranges
/// of pages (a few per worker), anything else whole.
async fn plan(
    url: &PgUrl,
    tables: &[Arc<TableSchema>],
    workers: usize,
    chunk_pages: u32,
) -> Result<Vec<Piece>, CaptureError> {
    let whole = |t: &Arc<TableSchema>| Piece {
        table: t.clone(),
        pages: None,
        first_row: 0,
    };
    if workers < 2 {
        return Ok(tables.iter().map(whole).collect());
    }
    let client = url.connect().await?;
    let block: i64 = client
        .query_one("SELECT current_setting('block_size')::bigint", &[])
        .await
        .map_err(|e| url.query_error("reading the block size", e))?
        .get(0);
    // MaxHeapTuplesPerPage: (block size - page header) / (aligned tuple header + line pointer).
    let per_page = ((block - 24) / 28).max(1);
    let mut pieces = Vec::new();
    for t in tables {
        let row = client
            .query_opt(
                "SELECT c.relkind::text, pg_relation_size(c.oid) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                &[&t.schema, &t.name],
            )
            .await
            .map_err(|e| url.query_error(format!("sizing {}", t.qualified_name()), e))?;
        let Some(row) = row else {
            pieces.push(whole(t));
            continue;
        };
        let kind: String = row.get(0);
        let pages = row.get::<_, i64>(1) / block;
        let chunks = (pages / i64::from(chunk_pages.max(1)))
            .min(workers as i64 * 4)
            .min(MAX_CHUNKS);
        // Positions count rows in 31 bits: past that the table is copied whole (as before).
        if kind != "r" || chunks < 2 || pages.saturating_mul(per_page) >= i32::MAX as i64 {
            pieces.push(whole(t));
            continue;
        }
        let step = (pages + chunks - 1) / chunks;
        for i in 0..chunks {
            let first = i * step;
            let last = i + 1 == chunks;
            pieces.push(Piece {
                table: t.clone(),
                pages: Some((first, (!last).then_some(first + step))),
                first_row: u32::try_from(first * per_page).unwrap_or(u32::MAX),
            });
        }
        tracing::info!(table = %t.qualified_name(), pages, pieces = chunks, "large table: copied in pieces of {step} pages, in parallel");
    }
    Ok(pieces)
}

/// Copies the tables into `sink`, recording each table in `state` once all its rows are
/// acknowledged; returns when every row is acknowledged, or soon after `shutdown` turns true
/// (the copy of a large table can take hours; a pod's grace period is seconds).
pub async fn run_snapshot(
    job: SnapshotJob,
    sink: &mut SinkSender,
    state_file: &StateFile,
    state: &mut SnapshotState,
    stats: &super::stream::CaptureStats,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SnapshotEnd, CaptureError> {
    if *shutdown.borrow() {
        return Ok(SnapshotEnd::Interrupted {
            tables_left: job.tables.len(),
        });
    }
    let ts = crate::event::now_us();
    let pieces = plan(
        &job.url,
        &job.tables,
        job.parallelism.max(1),
        job.chunk_pages,
    )
    .await?;
    // Pieces left per table, and the rows copied so far.
    let mut left: std::collections::HashMap<String, (usize, u64)> = Default::default();
    for p in &pieces {
        left.entry(p.table.qualified_name()).or_default().0 += 1;
    }
    // The copy replaces what each table held: a truncate before its rows (and after every
    // change older than the slot) tells downstream that rows not read again are gone. On a
    // first snapshot it finds nothing; after `resync` it removes rows deleted meanwhile. Sent
    // first, so it precedes the rows of every piece.
    for table in &job.tables {
        let marker = ChangeEvent {
            op: Op::Truncate,
            position: Position::snapshot_truncate(job.consistent_point, job.attempt),
            xid: None,
            commit_ts_us: ts,
            key: None,
            table: table.clone(),
            before: None,
            after: None,
        };
        sink.send(ItemKind::Change(marker))
            .await
            .map_err(|e| CaptureError::Sink(e.to_string()))?;
    }
    let workers = job.parallelism.clamp(1, pieces.len().max(1));
    let piece_count = pieces.len();
    let queue = Arc::new(Mutex::new(pieces.into_iter().collect::<VecDeque<_>>()));
    let (tx, mut rx) = mpsc::channel::<SnapMsg>(1024);
    let mut handles = Vec::new();
    for _ in 0..workers {
        let queue = queue.clone();
        let tx = tx.clone();
        let url = job.url.clone();
        let snapshot = job.snapshot_name.clone();
        let skip = job.skip.clone();
        let (cp, attempt) = (job.consistent_point, job.attempt);
        handles.push(tokio::spawn(async move {
            copy_worker(url, snapshot, skip, cp, attempt, ts, queue, tx).await
        }));
    }
    drop(tx);
    tracing::info!(
        tables = job.tables.len(),
        pieces = piece_count,
        workers,
        consistent_point = %job.consistent_point,
        exported = job.snapshot_name.is_some(),
        "initial snapshot started"
    );

    // (table, seqno of its last row) not yet acknowledged.
    let mut finishing: Vec<(String, u64)> = Vec::new();
    let m = crate::metrics::get();
    let mut remaining = job.tables.len() as i64;
    m.snapshot_tables_remaining.set(remaining);
    let mut row_counters: std::collections::HashMap<String, prometheus::IntCounter> =
        std::collections::HashMap::new();
    let mut open = true;
    // Set on shutdown: when waiting for the acknowledgement of copied tables ends.
    let mut stopping: Option<tokio::time::Instant> = None;
    while open || !finishing.is_empty() {
        tokio::select! {
            biased;
            r = shutdown.changed(), if stopping.is_none() => {
                if r.is_err() || *shutdown.borrow() {
                    // Stop copying; what was sent is applied downstream and harmless, since
                    // a table not recorded done is copied again from the consistent point.
                    for h in &handles {
                        h.abort();
                    }
                    rx.close();
                    open = false;
                    stopping = Some(tokio::time::Instant::now() + job.drain_timeout);
                    tracing::info!(
                        tables_left = remaining,
                        "shutdown requested during the initial snapshot: copying stopped"
                    );
                }
            }
            _ = sleep_until_or_forever(stopping), if stopping.is_some() => {
                tracing::warn!(
                    "shutdown: the sink did not acknowledge the copied tables within {:?}; they are copied again on restart",
                    job.drain_timeout
                );
                break;
            }
            msg = rx.recv(), if open => match msg {
                Some(SnapMsg::Row(ev)) => {
                    crate::fault::point(crate::fault::Point::SnapshotRow);
                    if ev.op == Op::Read {
                        stats.snapshot_rows.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        row_counters
                            .entry(ev.table.qualified_name())
                            .or_insert_with_key(|t| m.snapshot_rows_total.with_label_values(&[t]))
                            .inc();
                    }
                    sink.send(ItemKind::Change(ev))
                        .await
                        .map_err(|e| CaptureError::Sink(e.to_string()))?;
                }
                Some(SnapMsg::PieceDone { table, rows }) => {
                    let Some(entry) = left.get_mut(&table) else { continue };
                    entry.0 -= 1;
                    entry.1 += rows;
                    if entry.0 == 0 {
                        tracing::info!(%table, rows = entry.1, "snapshot of table copied");
                        remaining -= 1;
                        m.snapshot_tables_remaining.set(remaining);
                        finishing.push((table, sink.last_sent()));
                    }
                }
                None => open = false,
            },
            changed = sink.ack_watch().changed(), if !finishing.is_empty() => {
                if changed.is_err() {
                    return Err(CaptureError::Sink("acknowledgements stopped".into()));
                }
            }
        }
        let acked = sink.acked();
        let before = finishing.len();
        finishing.retain(|(table, last)| {
            if *last <= acked {
                state.done_tables.push(table.clone());
                false
            } else {
                true
            }
        });
        if finishing.len() != before {
            state_file.store(state)?;
        }
    }
    if stopping.is_some() {
        for h in handles {
            // Aborted: a worker's error (a connection cut by the abort) means nothing now.
            let _ = h.await;
        }
        let tables_left = job.tables.len().saturating_sub(
            job.tables
                .iter()
                .filter(|t| state.done_tables.contains(&t.qualified_name()))
                .count(),
        );
        return Ok(SnapshotEnd::Interrupted { tables_left });
    }
    for h in handles {
        match h.await {
            Ok(r) => r?,
            Err(e) => return Err(CaptureError::Sink(format!("snapshot worker failed: {e}"))),
        }
    }
    state.complete = true;
    state_file.store(state)?;
    tracing::info!("initial snapshot complete");
    Ok(SnapshotEnd::Complete)
}

async fn sleep_until_or_forever(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn copy_worker(
    url: PgUrl,
    snapshot: Option<String>,
    skip: Option<Arc<ChangedKeys>>,
    cp: Lsn,
    attempt: u32,
    ts: i64,
    queue: Arc<Mutex<VecDeque<Piece>>>,
    tx: mpsc::Sender<SnapMsg>,
) -> Result<(), CaptureError> {
    let client = url.connect().await?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(|e| url.query_error("starting the snapshot transaction", e))?;
    if let Some(name) = &snapshot {
        client
            .batch_execute(&format!("SET TRANSACTION SNAPSHOT {}", quote_literal(name)))
            .await
            .map_err(|e| url.query_error("importing the slot's snapshot", e))?;
    }
    loop {
        let next = queue.lock().ok().and_then(|mut q| q.pop_front());
        let Some(Piece {
            table,
            pages,
            first_row,
        }) = next
        else {
            break;
        };
        let cols: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let order: Vec<String> = table.key.iter().map(|&i| cols[i].clone()).collect();
        let filter = match pages {
            // A TID range scan reads only these pages.
            Some((first, Some(end))) => {
                format!(" WHERE ctid >= '({first},0)'::tid AND ctid < '({end},0)'::tid")
            }
            Some((first, None)) => format!(" WHERE ctid >= '({first},0)'::tid"),
            None if order.is_empty() => String::new(),
            None => format!(" ORDER BY {}", order.join(", ")),
        };
        let sql = format!(
            "COPY (SELECT {} FROM {}.{}{filter}) TO STDOUT",
            cols.join(", "),
            quote_ident(&table.schema),
            quote_ident(&table.name),
        );
        let name = table.qualified_name();
        let stream = client
            .copy_out(sql.as_str())
            .await
            .map_err(|e| url.query_error(format!("copying {name}"), e))?;
        pin_mut!(stream);
        let mut rows: u32 = 0;
        let mut pending = bytes::BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| url.query_error(format!("copying {name}"), e))?;
            pending.extend_from_slice(&chunk);
            while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                let line = pending.split_to(nl + 1).freeze().slice(..nl);
                let after =
                    parse_row(&line, table.columns.len()).map_err(|m| CaptureError::Stream {
                        message: format!("snapshot of {name}: {m}"),
                        hint: "this is a bug; please report it with the table's definition".into(),
                    })?;
                let key = ChangeEvent::key_of(&table, &after);
                if skip.as_ref().is_some_and(|s| s.skips(&name, &key)) {
                    continue;
                }
                let ev = ChangeEvent {
                    op: Op::Read,
                    position: Position::snapshot(cp, attempt, first_row.saturating_add(rows)),
                    xid: None,
                    commit_ts_us: ts,
                    key: Some(key),
                    table: table.clone(),
                    before: None,
                    after: Some(after),
                };
                rows += 1;
                if tx.send(SnapMsg::Row(ev)).await.is_err() {
                    return Ok(());
                }
            }
        }
        let done = SnapMsg::PieceDone {
            table: name,
            rows: rows as u64,
        };
        if tx.send(done).await.is_err() {
            return Ok(());
        }
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| url.query_error("ending the snapshot transaction", e))?;
    Ok(())
}
