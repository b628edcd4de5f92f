//! Micro-batches, formed like a group commit: a batch is taken when the applier is free, and
//! holds what is queued then — so it grows only while the applier is busy, and a lone change
//! on an idle pipeline is applied at once. It closes when nothing more is queued and it ends at
//! a source transaction's end (a transaction still arriving is waited for), at `max_events`
//! events or `max_bytes` of them, or `max_wait` after its first item arrived, whichever comes
//! first. `max_wait` is an upper bound, never a wait: it counts from the first item's arrival,
//! so time spent queued behind the previous batch's apply is not waited again.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::channel::{Item, ItemKind};
use crate::event::{ChangeEvent, Lsn};

/// Where a consumer's batch ends in its Kinesis shard, checkpointed with the batch.
#[derive(Debug, Clone, Default)]
pub struct ShardPosition {
    pub stream: String,
    pub shard: String,
    /// Sequence number of the last record in the batch (none when only the end is recorded).
    pub sequence_number: Option<String>,
    /// The shard is closed and read to its end.
    pub ended: bool,
    /// The lease the batch was read under (owner and epoch), checked by its commit.
    pub owner: String,
    pub epoch: i64,
}

/// Something that arrived but is not an event (a record that does not parse): a dead letter.
#[derive(Debug, Clone)]
pub struct Reject {
    /// Where it came from, unique (`kinesis:<stream>/<shard>/<sequence number>`).
    pub origin: String,
    pub reason: String,
    /// The payload as JSON.
    pub payload: serde_json::Value,
}

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
    /// For a consumer: the shard position this batch reaches.
    pub shard: Option<ShardPosition>,
    pub rejects: Vec<Reject>,
    /// Sum of the events' `approx_bytes` (as capture measured them).
    pub bytes: usize,
    /// The events' share of the channel's byte budget, held until the batch is dropped.
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The last item taken ends a source transaction (nothing of it is still to come).
    pub at_transaction_end: bool,
}

impl Batch {
    /// Nothing to write: no events, no dead letters, no shard position to record.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.rejects.is_empty() && self.shard.is_none()
    }

    fn push(&mut self, item: Item) {
        self.last_seqno = item.seqno;
        self.items += 1;
        self.bytes += item.bytes;
        if let Some(p) = item.permit {
            match &mut self.permit {
                Some(held) => held.merge(p),
                None => self.permit = Some(p),
            }
        }
        self.at_transaction_end = matches!(item.kind, ItemKind::Commit { .. });
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

/// How the next batch closes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_events: usize,
    pub max_bytes: usize,
    /// From the first event's arrival.
    pub max_wait: Duration,
}

/// Takes the next batch; `None` once the channel is closed and drained. Events `skip` says are
/// already applied are dropped before they count.
pub async fn next_batch(
    rx: &mut mpsc::Receiver<Item>,
    limits: Limits,
    skip: impl Fn(&ChangeEvent) -> bool,
) -> Option<Batch> {
    let mut batch = Batch::default();
    let add = |batch: &mut Batch, item: Item| {
        if let ItemKind::Change(ev) = &item.kind {
            if skip(ev) {
                batch.last_seqno = item.seqno;
                batch.items += 1;
                batch.at_transaction_end = false;
                return;
            }
        }
        batch.push(item);
    };
    let first = rx.recv().await?;
    let deadline = first.sent_at + limits.max_wait;
    add(&mut batch, first);
    while batch.events.len() < limits.max_events && batch.bytes < limits.max_bytes {
        // Take what is already queued without waiting.
        match rx.try_recv() {
            Ok(item) => {
                add(&mut batch, item);
                continue;
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            // Nothing queued at a transaction's end: the applier is free, so go now.
            Err(mpsc::error::TryRecvError::Empty) if batch.at_transaction_end => break,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        let next = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(item) => item,
            Err(_) => break,
        };
        match next {
            Some(item) => add(&mut batch, item),
            None => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(seqno: u64, sent_at: tokio::time::Instant) -> Item {
        Item {
            seqno,
            kind: ItemKind::Commit {
                lsn: Lsn(seqno),
                end_lsn: Lsn(seqno),
                commit_ts_us: 0,
            },
            sent_at,
            bytes: 0,
            permit: None,
        }
    }

    fn change(seqno: u64, sent_at: tokio::time::Instant) -> Item {
        let table = crate::fuzz::sample_table();
        Item {
            seqno,
            kind: ItemKind::Change(ChangeEvent {
                op: crate::event::Op::Insert,
                position: crate::event::Position::new(Lsn(seqno), 0),
                xid: Some(1),
                commit_ts_us: 0,
                table,
                before: None,
                key: None,
                after: None,
            }),
            sent_at,
            bytes: 0,
            permit: None,
        }
    }

    /// `max_wait` is an hour: a batch that waited for it would never come back within the
    /// minute the test gives it.
    #[tokio::test]
    async fn a_lone_transaction_goes_at_once_and_a_transaction_still_arriving_is_waited_for() {
        let (tx, mut rx) = mpsc::channel(8);
        let limits = Limits {
            max_events: 100,
            max_bytes: usize::MAX,
            max_wait: Duration::from_secs(3600),
        };
        let minute = Duration::from_secs(60);
        // A whole transaction, nothing else queued: taken without waiting.
        let now = tokio::time::Instant::now();
        tx.send(change(1, now)).await.unwrap();
        tx.send(commit(2, now)).await.unwrap();
        let batch = tokio::time::timeout(minute, next_batch(&mut rx, limits, |_| false))
            .await
            .expect("the batch waited for max_wait")
            .unwrap();
        assert_eq!((batch.events.len(), batch.last_seqno), (1, 2));
        // A transaction whose end is still coming: its end is waited for, then it goes.
        tx.send(change(3, now)).await.unwrap();
        let rest = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = rest.send(change(4, tokio::time::Instant::now())).await;
            let _ = rest.send(commit(5, tokio::time::Instant::now())).await;
        });
        let batch = tokio::time::timeout(minute, next_batch(&mut rx, limits, |_| false))
            .await
            .expect("the batch waited for max_wait")
            .unwrap();
        assert_eq!((batch.events.len(), batch.last_seqno), (2, 5));
    }

    #[tokio::test]
    async fn the_wait_counts_from_the_first_items_arrival() {
        let (tx, mut rx) = mpsc::channel(8);
        // The first item has been queued for 2 s (the previous batch was being applied): its
        // 1 s wait is over, so the batch closes with what is queued and does not wait for the
        // item sent half a second later.
        let now = tokio::time::Instant::now();
        tx.send(commit(1, now - Duration::from_secs(2)))
            .await
            .unwrap();
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = late.send(commit(2, tokio::time::Instant::now())).await;
        });
        let limits = Limits {
            max_events: 10,
            max_bytes: usize::MAX,
            max_wait: Duration::from_secs(1),
        };
        let batch = next_batch(&mut rx, limits, |_| false).await.unwrap();
        assert_eq!((batch.items, batch.last_seqno), (1, 1));
        // The next one takes the item sent meanwhile.
        let batch = next_batch(&mut rx, limits, |_| false).await.unwrap();
        assert_eq!(batch.last_seqno, 2);
    }
}
