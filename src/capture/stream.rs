//! One replication session: decode pgoutput into change events, send them to the sink, and
//! confirm LSNs to the server only once the sink has acknowledged everything before them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pgwire_replication::{PgWireError, ReplicationClient, ReplicationEvent};
use tokio::sync::watch;

use super::catalog::{Catalog, TableName};
use super::pgoutput::{decode, Message, OldTuple};
use super::CaptureError;
use crate::channel::{ItemKind, SinkSender};
use crate::event::{ChangeEvent, Datum, Lsn, Op, Position, TableSchema};

/// Microseconds between the PostgreSQL epoch (2000-01-01) and the Unix epoch.
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// Counters shared with metrics and progress reporting.
#[derive(Debug, Default)]
pub struct CaptureStats {
    pub events: AtomicU64,
    pub transactions: AtomicU64,
    pub snapshot_rows: AtomicU64,
    /// Last WAL position the server reported (XLogData or keepalive).
    pub received_lsn: AtomicU64,
    /// Last LSN confirmed to the server.
    pub confirmed_lsn: AtomicU64,
    /// Commit time (µs since the Unix epoch) of the newest transaction received.
    pub last_commit_ts_us: AtomicU64,
    /// Commit time of the oldest transaction sent but not yet confirmed (0: none).
    pub oldest_unconfirmed_ts_us: AtomicU64,
    /// Set while a replication session streams.
    pub streaming: std::sync::atomic::AtomicBool,
}

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Shutdown was requested.
    Shutdown,
    /// The server ended the stream; reconnect.
    Closed,
}

#[derive(Debug)]
pub enum SessionError {
    Capture(CaptureError),
    Replication(PgWireError),
}

impl From<CaptureError> for SessionError {
    fn from(e: CaptureError) -> Self {
        SessionError::Capture(e)
    }
}

struct TxState {
    final_lsn: Lsn,
    xid: u32,
    commit_ts_us: i64,
    next_seq: i32,
    sent: bool,
}

/// Decoding state that lives across sessions.
pub struct Streamer {
    catalog: Catalog,
    allowed: Option<HashSet<TableName>>,
    relations: HashMap<u32, Option<Arc<TableSchema>>>,
    tx: Option<TxState>,
    /// (seqno, lsn): confirm `lsn` once everything up to `seqno` is acknowledged.
    pending: VecDeque<(u64, Lsn)>,
    confirmed: Lsn,
    until: Option<Lsn>,
    pub stats: Arc<CaptureStats>,
    /// (end LSN, commit time) of transactions not yet confirmed, oldest first.
    unconfirmed: VecDeque<(Lsn, i64)>,
    /// events_total by (relation oid, op): no name is formatted per event.
    counters: HashMap<(u32, Op), prometheus::IntCounter>,
    /// Tables copied while streaming (new in the publication, or asked for by `resync`).
    backfill: super::backfill::Backfills,
}

impl Streamer {
    pub fn new(
        catalog: Catalog,
        allowed: Option<HashSet<TableName>>,
        confirmed: Lsn,
        stats: Arc<CaptureStats>,
        until: Option<Lsn>,
        backfill: super::backfill::Backfills,
    ) -> Self {
        stats.confirmed_lsn.store(confirmed.0, Ordering::Relaxed);
        Self {
            catalog,
            allowed,
            relations: HashMap::new(),
            tx: None,
            pending: VecDeque::new(),
            confirmed,
            until,
            stats,
            unconfirmed: VecDeque::new(),
            counters: HashMap::new(),
            backfill,
        }
    }

    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Runs a session until shutdown, the end of the stream, or an error.
    pub async fn run_session(
        &mut self,
        client: &mut ReplicationClient,
        sink: &mut SinkSender,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd, SessionError> {
        // A transaction cut off by the previous session is re-sent whole by this one.
        self.tx = None;
        self.relations.clear();
        self.unconfirmed.clear();
        self.stats.streaming.store(true, Ordering::Relaxed);
        self.backfill.new_session();
        // New tables of the publication are looked for now and then (a table that joined but
        // has no changes yet sends no relation message).
        let mut look = tokio::time::interval(std::time::Duration::from_secs(5));
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow() || self.until.is_some_and(|u| self.confirmed >= u) {
                return Ok(SessionEnd::Shutdown);
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => {}
                changed = sink.ack_watch().changed() => {
                    if changed.is_err() {
                        return Err(CaptureError::Sink("acknowledgements stopped".into()).into());
                    }
                    self.confirm_acked(client, sink);
                }
                ev = client.recv() => match ev {
                    Ok(Some(ev)) => self.handle(ev, client, sink).await?,
                    Ok(None) => return Ok(SessionEnd::Closed),
                    Err(e) => return Err(SessionError::Replication(e)),
                },
                _ = look.tick() => self.backfill.check_publication(&mut self.catalog).await?,
            }
            // Between transactions: the next chunk of a table being copied, if one is due.
            if self.tx.is_none() {
                self.backfill.step(&mut self.catalog).await?;
            }
        }
    }

    /// Confirms what the acknowledgements cover.
    pub fn confirm_acked(&mut self, client: &ReplicationClient, sink: &SinkSender) {
        let acked = sink.acked();
        let mut lsn = None;
        while let Some(&(seqno, l)) = self.pending.front() {
            if seqno > acked {
                break;
            }
            lsn = Some(l);
            self.pending.pop_front();
        }
        if let Some(l) = lsn {
            self.confirm(client, l);
        }
    }

    fn confirm(&mut self, client: &ReplicationClient, lsn: Lsn) {
        if lsn > self.confirmed {
            self.confirmed = lsn;
            self.stats.confirmed_lsn.store(lsn.0, Ordering::Relaxed);
            client.update_applied_lsn(lsn);
            if let Err(e) = self.backfill.confirmed(lsn) {
                tracing::error!(
                    "recording a finished copy failed (it is copied again after a restart): {e}"
                );
            }
            while self.unconfirmed.front().is_some_and(|(end, _)| *end <= lsn) {
                self.unconfirmed.pop_front();
            }
            self.stats.oldest_unconfirmed_ts_us.store(
                self.unconfirmed
                    .front()
                    .map_or(0, |(_, ts)| (*ts).max(1) as u64),
                Ordering::Relaxed,
            );
        }
    }

    /// Confirms `lsn` once everything sent so far is acknowledged.
    fn confirm_after_sent(&mut self, client: &ReplicationClient, sink: &SinkSender, lsn: Lsn) {
        if sink.idle() && self.pending.is_empty() {
            self.confirm(client, lsn);
            return;
        }
        let last = sink.last_sent();
        match self.pending.back_mut() {
            Some((seqno, l)) if *seqno == last => *l = (*l).max(lsn),
            _ => self.pending.push_back((last, lsn)),
        }
        self.confirm_acked(client, sink);
    }

    async fn handle(
        &mut self,
        ev: ReplicationEvent,
        client: &ReplicationClient,
        sink: &mut SinkSender,
    ) -> Result<(), CaptureError> {
        match ev {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                self.tx = Some(TxState {
                    final_lsn,
                    xid,
                    commit_ts_us: commit_time_micros + PG_EPOCH_OFFSET_US,
                    next_seq: 0,
                    sent: false,
                });
            }
            ReplicationEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            } => {
                self.stats
                    .received_lsn
                    .fetch_max(end_lsn.0, Ordering::Relaxed);
                let commit_ts_us = commit_time_micros + PG_EPOCH_OFFSET_US;
                self.stats
                    .last_commit_ts_us
                    .store(commit_ts_us.max(0) as u64, Ordering::Relaxed);
                self.backfill.committed(end_lsn);
                if let Some(tx) = self.tx.take() {
                    if tx.sent {
                        self.stats.transactions.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::get().transactions_total.inc();
                        if self.unconfirmed.is_empty() {
                            self.stats
                                .oldest_unconfirmed_ts_us
                                .store(commit_ts_us.max(1) as u64, Ordering::Relaxed);
                        }
                        self.unconfirmed.push_back((end_lsn, commit_ts_us));
                        self.send(
                            sink,
                            ItemKind::Commit {
                                lsn,
                                end_lsn,
                                commit_ts_us,
                            },
                        )
                        .await?;
                    }
                }
                self.confirm_after_sent(client, sink, end_lsn);
            }
            ReplicationEvent::XLogData { data, wal_end, .. } => {
                self.stats
                    .received_lsn
                    .fetch_max(wal_end.0, Ordering::Relaxed);
                let msg = decode(data)?;
                self.handle_message(msg, sink).await?;
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                self.stats
                    .received_lsn
                    .fetch_max(wal_end.0, Ordering::Relaxed);
                if self.tx.is_none() {
                    self.confirm_after_sent(client, sink, wal_end);
                }
            }
            ReplicationEvent::Message {
                prefix, content, ..
            } => {
                if prefix == super::heartbeat::PREFIX {
                    crate::metrics::get().heartbeats_total.inc();
                } else if let Some((table, op, rows)) = self.backfill.message(&prefix, &content)? {
                    // The high watermark: the chunk's rows no change superseded, as reads (or
                    // a detached partition's keys as deletes) in its transaction.
                    for (key, row) in rows {
                        let after = (op == Op::Read).then_some(row);
                        self.emit(sink, table.clone(), op, None, Some(key), after)
                            .await?;
                    }
                }
            }
            ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(())
    }

    async fn send(&mut self, sink: &mut SinkSender, kind: ItemKind) -> Result<(), CaptureError> {
        sink.send(kind)
            .await
            .map(|_| ())
            .map_err(|e| CaptureError::Sink(e.to_string()))
    }

    fn table(&self, rel: u32) -> Result<Option<Arc<TableSchema>>, CaptureError> {
        self.relations
            .get(&rel)
            .cloned()
            .ok_or(CaptureError::UnknownRelation(rel))
    }

    async fn emit(
        &mut self,
        sink: &mut SinkSender,
        table: Arc<TableSchema>,
        op: Op,
        before: Option<Vec<Datum>>,
        key: Option<Vec<Datum>>,
        after: Option<Vec<Datum>>,
    ) -> Result<(), CaptureError> {
        // Every later step indexes rows by the relation's columns: a row of another width is
        // refused here, as the protocol error it is.
        for row in [&before, &after].into_iter().flatten() {
            if row.len() != table.columns.len() {
                return Err(CaptureError::Stream {
                    message: format!(
                        "a change of {} carries {} values for its {} columns",
                        table.qualified_name(),
                        row.len(),
                        table.columns.len()
                    ),
                    hint: "the stream and its relation description disagree (a protocol error); a restart resumes from the last confirmed position".into(),
                });
            }
        }
        let Some(tx) = self.tx.as_mut() else {
            return Err(CaptureError::Stream {
                message: "a change arrived outside a transaction".into(),
                hint: "the server sent an unexpected message order; restart resumes from the last confirmed position".into(),
            });
        };
        let seq = tx.next_seq;
        tx.next_seq = tx
            .next_seq
            .checked_add(1)
            .ok_or_else(|| CaptureError::Stream {
                message: "a transaction with more than 2^31 changes".into(),
                hint: "split the transaction at the source".into(),
            })?;
        tx.sent = true;
        let ev = ChangeEvent {
            op,
            position: Position::new(tx.final_lsn, seq),
            xid: Some(tx.xid),
            commit_ts_us: tx.commit_ts_us,
            table,
            before,
            key,
            after,
        };
        self.backfill.saw_change(&ev);
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        let counter = self.counters.entry((ev.table.oid, op)).or_insert_with(|| {
            crate::metrics::get()
                .events_total
                .with_label_values(&[&ev.table.qualified_name(), op.code()])
        });
        counter.inc();
        self.send(sink, ItemKind::Change(ev)).await
    }

    async fn handle_message(
        &mut self,
        msg: Message,
        sink: &mut SinkSender,
    ) -> Result<(), CaptureError> {
        match msg {
            Message::Relation(rel) => {
                let name = TableName::new(
                    if rel.namespace.is_empty() {
                        "pg_catalog"
                    } else {
                        &rel.namespace
                    },
                    &rel.name,
                );
                let captured = self.allowed.as_ref().is_none_or(|a| a.contains(&name));
                let schema = if captured {
                    Some(self.catalog.relation_schema(&rel).await?)
                } else {
                    None
                };
                self.relations.insert(rel.oid, schema);
            }
            Message::Insert { rel, new } => {
                if let Some(t) = self.table(rel)? {
                    let key = ChangeEvent::key_of(&t, &new);
                    self.emit(sink, t, Op::Insert, None, Some(key), Some(new))
                        .await?;
                }
            }
            Message::Update { rel, old, new } => {
                if let Some(t) = self.table(rel)? {
                    let key = ChangeEvent::key_of(&t, &new);
                    match old {
                        Some((kind, old)) => {
                            let old_key = ChangeEvent::key_of(&t, &old);
                            let before = (kind == OldTuple::Full).then_some(old);
                            if old_key != key && !t.keyless && !key_unchanged_toast(&key) {
                                // A key change is the old row leaving and a new one arriving.
                                self.emit(sink, t.clone(), Op::Delete, before, Some(old_key), None)
                                    .await?;
                                self.emit(sink, t, Op::Insert, None, Some(key), Some(new))
                                    .await?;
                            } else {
                                self.emit(sink, t, Op::Update, before, Some(key), Some(new))
                                    .await?;
                            }
                        }
                        None => {
                            self.emit(sink, t, Op::Update, None, Some(key), Some(new))
                                .await?
                        }
                    }
                }
            }
            Message::Delete { rel, old } => {
                if let Some(t) = self.table(rel)? {
                    let (kind, old) = old;
                    let key = ChangeEvent::key_of(&t, &old);
                    let before = (kind == OldTuple::Full).then_some(old);
                    self.emit(sink, t, Op::Delete, before, Some(key), None)
                        .await?;
                }
            }
            Message::Truncate { rels, .. } => {
                for rel in rels {
                    if let Some(t) = self.table(rel)? {
                        self.emit(sink, t, Op::Truncate, None, None, None).await?;
                    }
                }
            }
            Message::Begin { .. }
            | Message::Commit { .. }
            | Message::Origin { .. }
            | Message::Type { .. }
            | Message::LogicalMessage { .. } => {}
        }
        Ok(())
    }
}

fn key_unchanged_toast(key: &[Datum]) -> bool {
    key.iter().any(|d| matches!(d, Datum::UnchangedToast))
}
