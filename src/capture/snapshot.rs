//! The initial snapshot: every replicated table copied under one consistent snapshot (the one
//! the slot exported, so the stream continues exactly where the copy ends), several tables at
//! a time, each row sent as an `r` event carrying the consistent point.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures_util::{pin_mut, StreamExt};
use tokio::sync::mpsc;

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
}

enum SnapMsg {
    Row(ChangeEvent),
    TableDone { table: String, rows: u64 },
}

/// Copies the tables into `sink`, recording each table in `state` once all its rows are
/// acknowledged; returns when every row is acknowledged.
pub async fn run_snapshot(
    job: SnapshotJob,
    sink: &mut SinkSender,
    state_file: &StateFile,
    state: &mut SnapshotState,
    stats: &super::stream::CaptureStats,
) -> Result<(), CaptureError> {
    let ts = crate::event::now_us();
    let queue = Arc::new(Mutex::new(
        job.tables.iter().cloned().collect::<VecDeque<_>>(),
    ));
    let workers = job.parallelism.clamp(1, job.tables.len().max(1));
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
    while open || !finishing.is_empty() {
        tokio::select! {
            msg = rx.recv(), if open => match msg {
                Some(SnapMsg::Row(ev)) => {
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
                Some(SnapMsg::TableDone { table, rows }) => {
                    tracing::info!(%table, rows, "snapshot of table copied");
                    remaining -= 1;
                    m.snapshot_tables_remaining.set(remaining);
                    finishing.push((table, sink.last_sent()));
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
    for h in handles {
        match h.await {
            Ok(r) => r?,
            Err(e) => return Err(CaptureError::Sink(format!("snapshot worker failed: {e}"))),
        }
    }
    state.complete = true;
    state_file.store(state)?;
    tracing::info!("initial snapshot complete");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn copy_worker(
    url: PgUrl,
    snapshot: Option<String>,
    skip: Option<Arc<ChangedKeys>>,
    cp: Lsn,
    attempt: u32,
    ts: i64,
    queue: Arc<Mutex<VecDeque<Arc<TableSchema>>>>,
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
        let Some(table) = next else { break };
        let cols: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let order: Vec<String> = table.key.iter().map(|&i| cols[i].clone()).collect();
        let sql = format!(
            "COPY (SELECT {} FROM {}.{}{}) TO STDOUT",
            cols.join(", "),
            quote_ident(&table.schema),
            quote_ident(&table.name),
            if order.is_empty() {
                String::new()
            } else {
                format!(" ORDER BY {}", order.join(", "))
            }
        );
        let name = table.qualified_name();
        // The copy replaces what the table held: a truncate before its rows (and after every
        // change older than the slot) tells downstream that rows not read again are gone. On
        // a first snapshot it finds nothing; after `resync` it removes rows deleted meanwhile.
        let marker = ChangeEvent {
            op: Op::Truncate,
            position: Position::snapshot_truncate(cp, attempt),
            xid: None,
            commit_ts_us: ts,
            key: None,
            table: table.clone(),
            before: None,
            after: None,
        };
        if tx.send(SnapMsg::Row(marker)).await.is_err() {
            return Ok(());
        }
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
                    position: Position::snapshot(cp, attempt, rows),
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
        let done = SnapMsg::TableDone {
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
