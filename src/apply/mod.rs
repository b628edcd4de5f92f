//! Apply: change events in micro-batches into the warehouse, exactly once in effect. Each
//! batch is one warehouse transaction; only after it commits is the batch acknowledged, and
//! only then does capture confirm the LSN to the source.

pub mod batch;
pub mod source;
pub mod warehouse;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::channel::{Acker, Item};
use crate::metrics::server::Health;
use crate::retry::Backoff;
pub use source::{BatchSource, ChannelSource};
use warehouse::{ApplyError, Warehouse};

#[derive(Debug, Clone)]
pub struct ApplyConfig {
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    pub batch_max_wait: Duration,
}

/// Counters shared with progress reporting and metrics.
#[derive(Debug, Default)]
pub struct ApplyStats {
    pub batches: AtomicU64,
    pub events: AtomicU64,
    pub dead_letters: AtomicU64,
    pub retries: AtomicU64,
    pub lake_files: AtomicU64,
    pub lake_bytes: AtomicU64,
    /// Source commit → warehouse commit of the newest event, in milliseconds.
    pub last_latency_ms: AtomicU64,
    /// Wall time of the last batch, in microseconds.
    pub last_batch_us: AtomicU64,
}

impl ApplyStats {
    fn add(&self, applied: &warehouse::Applied, took: Duration, batch: &batch::Batch) {
        let add = |c: &AtomicU64, n: usize| c.fetch_add(n as u64, Ordering::Relaxed);
        add(&self.batches, 1);
        add(&self.events, applied.events);
        add(&self.dead_letters, applied.dead_letters);
        add(&self.lake_files, applied.lake_files);
        add(&self.lake_bytes, applied.lake_bytes);
        self.last_batch_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
        if let Some(ts) = batch.newest_commit_ts_us {
            let lat = (crate::event::now_us() - ts).max(0) as u64 / 1000;
            self.last_latency_ms.store(lat, Ordering::Relaxed);
        }
    }
}

/// The one apply driver: takes batches from `source` until it ends, applies each in one
/// warehouse transaction, retries what the warehouse or lake cannot do for a moment (nothing
/// is acknowledged meanwhile), records metrics and health, and tells the source once a batch
/// committed. Stops on an error that waiting does not mend.
pub async fn drive<S: BatchSource>(
    source: &mut S,
    wh: &mut Warehouse,
    stats: &ApplyStats,
    health: &Health,
) -> Result<(), S::Error> {
    let m = crate::metrics::get();
    let mut backoff = Backoff::new();
    loop {
        match wh.prepare().await {
            Ok(()) => {
                health.set("warehouse", true, wh.url().target());
                break;
            }
            Err(e) if e.is_transient() => {
                health.set("warehouse", false, e.to_string());
                let delay = backoff.next_delay();
                tracing::warn!(
                    "warehouse unavailable, retrying in {:.1}s: {e}",
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    while let Some(batch) = source.next_batch(wh).await? {
        if batch.is_empty() {
            // Only transaction ends: nothing to write, everything before is durable.
            source.committed(&batch).await?;
            continue;
        }
        let mut backoff = Backoff::new();
        loop {
            let started = Instant::now();
            match wh.apply(&batch).await {
                Ok(applied) => {
                    stats.add(&applied, started.elapsed(), &batch);
                    record(&applied, started.elapsed().as_secs_f64(), &batch);
                    health.set("warehouse", true, wh.url().target());
                    tracing::debug!(
                        events = applied.events,
                        ms = started.elapsed().as_millis() as u64,
                        "batch applied"
                    );
                    crate::fault::point(crate::fault::Point::AfterCommit);
                    source.committed(&batch).await?;
                    break;
                }
                Err(ApplyError::Fenced { shard }) => {
                    tracing::warn!(%shard, "the shard's lease passed to another consumer: its batch is left to them");
                    source.fenced(&batch).await?;
                    break;
                }
                Err(e) if e.is_transient() => {
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    m.apply_retries_total.inc();
                    health.set("warehouse", false, e.to_string());
                    let delay = backoff.next_delay();
                    let what = if matches!(e, ApplyError::Lake(_)) {
                        "lake"
                    } else {
                        "warehouse"
                    };
                    tracing::warn!(
                        "{what} unavailable, retrying the batch in {:.1}s (nothing is acknowledged meanwhile): {e}",
                        delay.as_secs_f64()
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// The embedded pipeline's applier: batches from the capture channel until it closes.
pub async fn run(
    rx: mpsc::Receiver<Item>,
    acker: Acker,
    mut wh: Warehouse,
    cfg: ApplyConfig,
    stats: Arc<ApplyStats>,
    health: Arc<Health>,
) -> Result<(), ApplyError> {
    drive(
        &mut ChannelSource::new(rx, acker, cfg),
        &mut wh,
        &stats,
        &health,
    )
    .await
}

/// The metrics of an applied batch.
fn record(applied: &warehouse::Applied, seconds: f64, batch: &batch::Batch) {
    let m = crate::metrics::get();
    m.batch_events.observe(applied.events as f64);
    m.batch_apply_seconds.observe(seconds);
    for (table, n) in &applied.per_table {
        m.warehouse_rows_total
            .with_label_values(&[table])
            .inc_by(*n as u64);
    }
    m.lake_files_total.inc_by(applied.lake_files as u64);
    m.lake_bytes_total.inc_by(applied.lake_bytes as u64);
    for (reason, n) in &applied.dead_by_reason {
        m.dead_letters_total
            .with_label_values(&[reason.as_str()])
            .inc_by(*n as u64);
    }
    if let Some(ts) = batch.newest_commit_ts_us {
        m.end_to_end_latency_seconds
            .observe((crate::event::now_us() - ts).max(0) as f64 / 1e6);
    }
    if let Some(p) = batch.events.iter().map(|e| e.position).max() {
        if p.lsn.0 as i64 > m.applied_position_lsn.get() {
            m.applied_position_lsn.set(p.lsn.0 as i64);
        }
    }
}
