//! Apply: change events in micro-batches into the warehouse, exactly once in effect. Each
//! batch is one warehouse transaction; only after it commits is the batch acknowledged, and
//! only then does capture confirm the LSN to the source.

pub mod batch;
pub mod warehouse;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::retry::Backoff;
use crate::transport::{Acker, Item};
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

/// Applies batches from `rx` until it closes; retries transient warehouse failures (nothing is
/// acknowledged meanwhile) and stops on a permanent one.
pub async fn run(
    mut rx: mpsc::Receiver<Item>,
    acker: Acker,
    mut wh: Warehouse,
    cfg: ApplyConfig,
    stats: Arc<ApplyStats>,
    health: Arc<crate::metrics::server::Health>,
) -> Result<(), ApplyError> {
    let m = crate::metrics::get();
    // A batch whose lake files a crash left uncommitted is formed again, event for event.
    let mut replay = loop {
        match wh.prepare().await {
            Ok(r) => {
                health.set("warehouse", true, wh.url().target());
                break r;
            }
            Err(e) if e.is_transient() => {
                health.set("warehouse", false, e.to_string());
                tracing::warn!("warehouse unavailable, retrying: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    loop {
        let limits = match replay.take() {
            Some(n) => batch::Limits {
                max_events: n,
                max_bytes: None,
                max_wait: None,
            },
            None => batch::Limits {
                max_events: cfg.batch_max_events,
                max_bytes: Some(cfg.batch_max_bytes),
                max_wait: Some(cfg.batch_max_wait),
            },
        };
        let Some(batch) = batch::next_batch(&mut rx, limits, |ev| wh.already_committed(ev)).await
        else {
            break;
        };
        if batch.events.is_empty() {
            // Only transaction ends: nothing to write, everything before is durable.
            acker.ack(batch.last_seqno);
            continue;
        }
        let mut backoff = Backoff::new();
        loop {
            let started = Instant::now();
            match wh.apply(&batch).await {
                Ok(applied) => {
                    stats.batches.fetch_add(1, Ordering::Relaxed);
                    stats
                        .events
                        .fetch_add(applied.events as u64, Ordering::Relaxed);
                    stats
                        .dead_letters
                        .fetch_add(applied.dead_letters as u64, Ordering::Relaxed);
                    stats
                        .lake_files
                        .fetch_add(applied.lake_files as u64, Ordering::Relaxed);
                    stats
                        .lake_bytes
                        .fetch_add(applied.lake_bytes as u64, Ordering::Relaxed);
                    stats
                        .last_batch_us
                        .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    if let Some(ts) = batch.newest_commit_ts_us {
                        let lat = (crate::event::now_us() - ts).max(0) as u64 / 1000;
                        stats.last_latency_ms.store(lat, Ordering::Relaxed);
                    }
                    record(&applied, started.elapsed().as_secs_f64(), &batch);
                    health.set("warehouse", true, wh.url().target());
                    tracing::debug!(
                        events = applied.events,
                        ms = started.elapsed().as_millis() as u64,
                        "batch applied"
                    );
                    crate::fault::point(crate::fault::Point::AfterCommit);
                    acker.ack(batch.last_seqno);
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
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// The metrics of an applied batch.
pub fn record(applied: &warehouse::Applied, seconds: f64, batch: &batch::Batch) {
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
            .with_label_values(&[reason])
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
