//! Micro-batches: events are grouped until `max_events` events or `max_wait` after the first
//! item, whichever comes first. A batch is never empty and never waits longer.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::event::{ChangeEvent, Lsn};
use crate::transport::{Item, ItemKind};

#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<ChangeEvent>,
    /// Sequence number of the last item in the batch: acknowledged once it commits.
    pub last_seqno: u64,
    /// End LSN of the last source transaction that ended in this batch.
    pub last_commit: Option<Lsn>,
    /// Commit time (µs since the Unix epoch) of the newest transaction in the batch.
    pub newest_commit_ts_us: Option<i64>,
    /// Items taken (events and transaction ends).
    pub items: usize,
}

impl Batch {
    fn push(&mut self, item: Item) {
        self.last_seqno = item.seqno;
        self.items += 1;
        match item.kind {
            ItemKind::Change(ev) => {
                self.newest_commit_ts_us = Some(
                    self.newest_commit_ts_us
                        .map_or(ev.commit_ts_us, |t| t.max(ev.commit_ts_us)),
                );
                self.events.push(ev);
            }
            ItemKind::Commit { end_lsn, .. } => self.last_commit = Some(end_lsn),
        }
    }
}

/// Takes the next batch; `None` once the channel is closed and drained.
pub async fn next_batch(
    rx: &mut mpsc::Receiver<Item>,
    max_events: usize,
    max_wait: Duration,
) -> Option<Batch> {
    let first = rx.recv().await?;
    let mut batch = Batch::default();
    batch.push(first);
    let deadline = tokio::time::Instant::now() + max_wait;
    while batch.events.len() < max_events {
        // Take what is already queued without waiting.
        match rx.try_recv() {
            Ok(item) => {
                batch.push(item);
                continue;
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(item)) => batch.push(item),
            Ok(None) | Err(_) => break,
        }
    }
    Some(batch)
}
