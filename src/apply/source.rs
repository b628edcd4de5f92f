//! The seam between where batches come from and the one apply driver (`apply::drive`): the
//! in-process channel (`ChannelSource`, here), a Kinesis shard (the consumer) or the history
//! (`replay`: the lake or the stream). A source forms batches and learns when one committed;
//! the driver applies them, retries, records metrics and health.

use tokio::sync::mpsc;

use super::batch::{self, Batch, Limits};
use super::warehouse::{ApplyError, Warehouse};
use super::ApplyConfig;
use crate::channel::{Acker, Item};

/// Where the driver takes its batches from.
pub trait BatchSource {
    /// What reading can fail with; an apply error the driver cannot wait out becomes one.
    type Error: From<ApplyError>;

    /// The next batch to apply; `None` once the source has ended (the channel closed, the
    /// history read to its end, a shutdown asked for).
    fn next_batch(
        &mut self,
        wh: &mut Warehouse,
    ) -> impl std::future::Future<Output = Result<Option<Batch>, Self::Error>> + Send;

    /// The batch committed in the warehouse (or had nothing to write): acknowledge it.
    fn committed(
        &mut self,
        batch: &Batch,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send;

    /// The batch was refused because its shard's lease passed to another consumer: nothing
    /// of it was written; stop reading that shard.
    fn fenced(
        &mut self,
        _batch: &Batch,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }
}

/// The embedded pipeline's channel: batches close on count, bytes or time, and a commit
/// acknowledges everything up to the batch's last item, so capture can confirm its LSN.
pub struct ChannelSource {
    rx: mpsc::Receiver<Item>,
    acker: Acker,
    cfg: ApplyConfig,
}

impl ChannelSource {
    pub fn new(rx: mpsc::Receiver<Item>, acker: Acker, cfg: ApplyConfig) -> Self {
        Self { rx, acker, cfg }
    }
}

impl BatchSource for ChannelSource {
    type Error = ApplyError;

    async fn next_batch(&mut self, wh: &mut Warehouse) -> Result<Option<Batch>, ApplyError> {
        let limits = Limits {
            max_events: self.cfg.batch_max_events,
            max_bytes: self.cfg.batch_max_bytes,
            max_wait: self.cfg.batch_max_wait,
        };
        Ok(batch::next_batch(&mut self.rx, limits, |ev| wh.already_committed(ev)).await)
    }

    async fn committed(&mut self, batch: &Batch) -> Result<(), ApplyError> {
        self.acker.ack(batch.last_seqno);
        Ok(())
    }
}
