//! The channel from capture to a sink: numbered items (change events and transaction ends),
//! bounded in count and in bytes, with the acknowledgement path back. The capture numbers what
//! it sends, a sink acknowledges "everything up to N is durable", and only then does the capture
//! confirm the matching LSN to Postgres.

use std::sync::Arc;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::event::{ChangeEvent, Lsn};

/// What flows from capture to a sink.
#[derive(Debug, Clone)]
pub enum ItemKind {
    Change(ChangeEvent),
    /// The end of a source transaction whose changes were sent before it.
    Commit {
        lsn: Lsn,
        end_lsn: Lsn,
        commit_ts_us: i64,
    },
}

/// An item with its capture-assigned sequence number (1, 2, ...; monotone within a process).
#[derive(Debug)]
pub struct Item {
    pub seqno: u64,
    pub kind: ItemKind,
    /// When the capture handed it over: a batch's wait counts from its first item's arrival,
    /// not from when the apply side got round to taking it.
    pub sent_at: tokio::time::Instant,
    /// The event's `approx_bytes` (0 for a transaction end), measured once here.
    pub bytes: usize,
    /// The item's share of the channel's byte budget, given back when the item (or the batch
    /// it joined) is dropped.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// Units of the byte budget: permits count KiB (a semaphore counts in u32).
const BUDGET_UNIT: usize = 1024;

/// The sink has stopped taking items.
#[derive(Debug, thiserror::Error)]
#[error("the sink has stopped")]
pub struct SinkClosed;

/// The capture's end of a sink: numbers and sends items, and sees acknowledgements.
pub struct SinkSender {
    tx: mpsc::Sender<Item>,
    next: u64,
    acked: watch::Receiver<u64>,
    bytes: Arc<Semaphore>,
    budget_units: usize,
}

impl SinkSender {
    /// Sends an item, waiting while the sink is full — in items or in bytes not yet released
    /// downstream (this is the backpressure that bounds memory, whatever the row sizes); returns
    /// its sequence number.
    pub async fn send(&mut self, kind: ItemKind) -> Result<u64, SinkClosed> {
        let seqno = self.next;
        let (bytes, permit) = match &kind {
            ItemKind::Change(ev) => {
                let bytes = ev.approx_bytes();
                // An item larger than the whole budget still passes, alone.
                let units = bytes.div_ceil(BUDGET_UNIT).min(self.budget_units);
                let permit = self
                    .bytes
                    .clone()
                    .acquire_many_owned(units as u32)
                    .await
                    .map_err(|_| SinkClosed)?;
                (bytes, Some(permit))
            }
            ItemKind::Commit { .. } => (0, None),
        };
        self.tx
            .send(Item {
                seqno,
                kind,
                sent_at: tokio::time::Instant::now(),
                bytes,
                permit,
            })
            .await
            .map_err(|_| SinkClosed)?;
        self.next += 1;
        Ok(seqno)
    }

    /// The sequence number of the last item sent (0 before the first).
    pub fn last_sent(&self) -> u64 {
        self.next - 1
    }

    /// Everything up to this sequence number is durable downstream.
    pub fn acked(&self) -> u64 {
        *self.acked.borrow()
    }

    /// Whether every item sent so far is acknowledged.
    pub fn idle(&self) -> bool {
        self.acked() >= self.last_sent()
    }

    /// For waiting on acknowledgements (`changed()`).
    pub fn ack_watch(&mut self) -> &mut watch::Receiver<u64> {
        &mut self.acked
    }
}

/// The sink's handle for acknowledging durable items.
#[derive(Clone)]
pub struct Acker {
    tx: watch::Sender<u64>,
}

impl Acker {
    /// Everything up to and including `seqno` is durable (monotone: lower values are ignored).
    pub fn ack(&self, seqno: u64) {
        self.tx.send_if_modified(|v| {
            if seqno > *v {
                *v = seqno;
                true
            } else {
                false
            }
        });
    }
}

/// A channel from capture to a sink bounded to `capacity` items and `max_bytes` of change
/// events not yet dropped downstream, with the acknowledgement path back.
pub fn channel(capacity: usize, max_bytes: usize) -> (SinkSender, mpsc::Receiver<Item>, Acker) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let (ack_tx, ack_rx) = watch::channel(0);
    let budget_units =
        (max_bytes / BUDGET_UNIT).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let bytes = Arc::new(Semaphore::new(budget_units));
    // The budget in use, sampled each second for totes_cdc_channel_bytes (until the channel and
    // every item of it are gone).
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let weak = Arc::downgrade(&bytes);
        rt.spawn(async move {
            let gauge = &crate::metrics::get().channel_bytes;
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(s) = weak.upgrade() else { break };
                let used = budget_units.saturating_sub(s.available_permits()) * BUDGET_UNIT;
                gauge.set(used as i64);
            }
        });
    }
    (
        SinkSender {
            tx,
            next: 1,
            acked: ack_rx,
            bytes,
            budget_units,
        },
        rx,
        Acker { tx: ack_tx },
    )
}
