//! `totes-cdc replay`: rebuilds or repairs the warehouse from a durable copy of the history.
//! Postgres cannot rewind a slot before its confirmed LSN, so replay reads the lake's changes
//! files (`--from lake`, complete history) or the Kinesis stream (`--from kinesis`, within its
//! retention). Every event at or after `--from-lsn` (up to `--to-lsn`) is applied again through
//! the same batches as the live pipeline. Applying is idempotent (position-guarded staging,
//! facts unique on their position), so a replay over a warehouse that already holds some of it
//! changes only what is missing or behind, and may run beside a live pipeline.

mod from_lake;
mod from_stream;

use std::time::Instant;

use anyhow::Result;

use crate::apply::batch::{Batch, Reject};
use crate::apply::warehouse::Warehouse;
use crate::apply::ApplyStats;
use crate::config::{ReplayArgs, ReplayFrom};
use crate::event::{ChangeEvent, Lsn, Position};
use crate::metrics::server::Health;
use crate::pg::PgUrl;

/// The checkpoint name a replay records (the live pipeline's own is left alone).
pub const CHECKPOINT: &str = "replay";

pub async fn run(args: ReplayArgs) -> Result<()> {
    let url = super::run::warehouse_url(&args.warehouse)?;
    let from = Position::new(args.from_lsn.unwrap_or(Lsn(0)), i32::MIN);
    let to = args.to_lsn.map(|l| Position::new(l, i32::MAX));
    if to.is_some_and(|t| t < from) {
        anyhow::bail!(
            "to-lsn {} is before from-lsn {}",
            to.map(|t| t.lsn).unwrap_or_default(),
            from.lsn
        );
    }
    let range = Range { from, to };
    let started = Instant::now();
    let pending = Pending::new(&args, from);
    let stats = ApplyStats::default();
    // Replay serves no /readyz: the health it keeps is for the driver's sake.
    let health = Health::new();
    let (what, newest) = match args.from {
        ReplayFrom::Lake => {
            let (mut source, mut wh) = from_lake::open(&args, &url, range, pending).await?;
            crate::apply::drive(&mut source, &mut wh, &stats, &health).await?;
            (source.describe(), source.pending.newest)
        }
        ReplayFrom::Kinesis => {
            let (mut source, mut wh) = from_stream::open(&args, &url, range, pending).await?;
            crate::apply::drive(&mut source, &mut wh, &stats, &health).await?;
            (source.finish()?, source.pending.newest)
        }
    };
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "replayed {} events from {what} in {} batches into {} ({:.1}s), up to {}; dead letters: {}",
        load(&stats.events),
        load(&stats.batches),
        url.target(),
        started.elapsed().as_secs_f64(),
        newest,
        load(&stats.dead_letters),
    );
    Ok(())
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Range {
    pub from: Position,
    pub to: Option<Position>,
}

impl Range {
    pub fn contains(&self, p: Position) -> bool {
        p >= self.from && self.to.is_none_or(|t| p <= t)
    }

    pub fn describe(&self) -> String {
        format!(
            "at or after {}{}",
            self.from.lsn,
            self.to
                .map_or(String::new(), |t| format!(" up to {}", t.lsn))
        )
    }
}

/// The warehouse, once checked, for replay.
pub(super) async fn warehouse(args: &ReplayArgs, url: &PgUrl) -> Result<Warehouse> {
    super::warehouse_without_source(url, &args.warehouse, CHECKPOINT).await
}

/// Events read from the history, collected into batches of the configured size.
pub(super) struct Pending {
    events: Vec<ChangeEvent>,
    /// The pending events' `approx_bytes`, summed as they come.
    bytes: usize,
    rejects: Vec<Reject>,
    max_events: usize,
    max_bytes: usize,
    /// The newest position handed out in a batch.
    pub newest: Position,
}

impl Pending {
    fn new(args: &ReplayArgs, from: Position) -> Self {
        Self {
            events: Vec::new(),
            bytes: 0,
            rejects: Vec::new(),
            max_events: args.warehouse.batch_max_events.max(1),
            max_bytes: args.warehouse.batch_max_bytes.max(1) as usize,
            newest: from,
        }
    }

    pub fn push(&mut self, events: Vec<ChangeEvent>, rejects: Vec<Reject>) {
        self.bytes += events.iter().map(ChangeEvent::approx_bytes).sum::<usize>();
        self.events.extend(events);
        self.rejects.extend(rejects);
    }

    pub fn full(&self) -> bool {
        self.events.len() >= self.max_events || self.bytes >= self.max_bytes
    }

    /// What is pending as one batch; `None` when nothing is.
    pub fn take(&mut self) -> Option<Batch> {
        if self.events.is_empty() && self.rejects.is_empty() {
            return None;
        }
        let events = std::mem::take(&mut self.events);
        self.bytes = 0;
        if let Some(top) = events.iter().map(|e| e.position).max() {
            self.newest = self.newest.max(top);
            tracing::info!(events = events.len(), upto = %top, "replaying a batch");
        }
        Some(Batch {
            newest_commit_ts_us: events.iter().map(|e| e.commit_ts_us).max(),
            events,
            rejects: std::mem::take(&mut self.rejects),
            ..Default::default()
        })
    }
}
