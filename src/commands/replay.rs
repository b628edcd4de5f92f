//! `totes-cdc replay`: rebuilds or repairs the warehouse from the lake. Postgres cannot rewind a
//! slot before its confirmed LSN, so the lake's changes files are the durable history: every
//! event at or after `--from-lsn` (up to `--to-lsn`) is applied again through the same batches
//! as the live pipeline. Applying is idempotent (position-guarded staging, facts unique on their
//! position), so a replay over a warehouse that already holds some of it changes only what is
//! missing or behind, and may run beside a live pipeline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use futures_util::StreamExt;

use crate::apply::batch::Batch;
use crate::apply::lake::read::{self, ChangesFile};
use crate::apply::lake::Store;
use crate::apply::warehouse::Warehouse;
use crate::config::ReplayArgs;
use crate::event::{ChangeEvent, Lsn, Position, TableSchema};

/// The checkpoint name a replay records (the live pipeline's own is left alone).
pub const CHECKPOINT: &str = "replay";

/// Files read ahead of the batch being applied.
const READ_AHEAD: usize = 4;

pub async fn run(args: ReplayArgs) -> Result<()> {
    let url = super::run::warehouse_url(&args.warehouse)?;
    let lake = &args.warehouse.lake;
    if lake == "none" {
        anyhow::bail!("replay reads the lake: set `lake` to the directory or s3://bucket/prefix the pipeline writes");
    }
    if !lake.starts_with("s3://") && !std::path::Path::new(lake).is_dir() {
        anyhow::bail!("the lake directory {lake} does not exist: set `lake` to the directory the pipeline writes (its `lake` option)");
    }
    let store = Store::open(lake).await?;
    let from = Position::new(args.from_lsn.unwrap_or(Lsn(0)), i32::MIN);
    let to = args.to_lsn.map(|l| Position::new(l, i32::MAX));
    if to.is_some_and(|t| t < from) {
        anyhow::bail!(
            "to-lsn {} is before from-lsn {}",
            to.map(|t| t.lsn).unwrap_or_default(),
            from.lsn
        );
    }

    super::require_staging(&url).await?;
    let mut wh = Warehouse::new(
        url.clone(),
        &args.warehouse.warehouse_schema,
        args.warehouse.model,
        CHECKPOINT,
        "",
    );
    wh.prepare().await?;
    let mut files: Vec<ChangesFile> = store
        .list("changes/")
        .await?
        .iter()
        .filter_map(|p| read::parse_changes_path(p))
        .filter(|f| f.last >= from && to.is_none_or(|t| f.first <= t))
        .collect();
    if files.is_empty() {
        anyhow::bail!(
            "the lake at {} holds no changes files at or after {}{}: check `lake` (the pipeline's lake option) and from-lsn",
            store.describe(),
            from.lsn,
            to.map_or(String::new(), |t| format!(" up to {}", t.lsn)),
        );
    }
    // Oldest first, so the warehouse moves forward as the source did (the result does not depend
    // on it: batches apply in any order to the same warehouse).
    files.sort_by(|a, b| (a.first, &a.table).cmp(&(b.first, &b.table)));

    // Every table of the lake needs its staging mirror.
    let mut tables: HashMap<String, Arc<TableSchema>> = HashMap::new();
    for f in &files {
        if tables.contains_key(&f.table) {
            continue;
        }
        let (schema, name) = f.table.split_once('.').unwrap_or(("public", &f.table));
        match wh.table_schema(schema, name).await? {
            Some(t) => {
                tables.insert(f.table.clone(), t);
            }
            None => anyhow::bail!(
                "the lake holds changes of {} but the warehouse at {} has no staging mirror for it: run `totes-cdc setup --source-url <source> --warehouse-url <warehouse>` first",
                f.table,
                url.target()
            ),
        }
    }
    tracing::info!(
        lake = %store.describe(),
        warehouse = %url.masked(),
        files = files.len(),
        from = %from.lsn,
        to = %to.map_or("the end".to_string(), |t| t.lsn.to_string()),
        "replaying the lake"
    );

    let started = Instant::now();
    let max_events = args.warehouse.batch_max_events.max(1);
    let mut reads = futures_util::stream::iter(files.iter().map(|f| {
        let store = store.clone();
        async move {
            let data = store.get(&f.path).await;
            (f, data)
        }
    }))
    .buffered(READ_AHEAD);
    let mut pending: Vec<ChangeEvent> = Vec::new();
    let (mut events, mut batches, mut dead) = (0usize, 0usize, 0usize);
    let mut newest = from;
    while let Some((f, data)) = reads.next().await {
        let data = data.with_context(|| format!("reading {}", f.path))?;
        let table = &tables[&f.table];
        let evs = read::events_of(data, table, from, to)
            .map_err(|e| anyhow::anyhow!("lake file {} cannot be read back: {e}", f.path))?;
        pending.extend(evs);
        if pending.len() >= max_events {
            let batch = std::mem::take(&mut pending);
            let (n, d, top) = apply(&mut wh, batch).await?;
            (events, batches, dead) = (events + n, batches + 1, dead + d);
            newest = newest.max(top);
        }
    }
    if !pending.is_empty() {
        let (n, d, top) = apply(&mut wh, pending).await?;
        (events, batches, dead) = (events + n, batches + 1, dead + d);
        newest = newest.max(top);
    }
    println!(
        "replayed {events} events from {} lake files in {batches} batches into {} ({:.1}s), up to {}; dead letters: {dead}",
        files.len(),
        url.target(),
        started.elapsed().as_secs_f64(),
        newest,
    );
    Ok(())
}

/// Applies one batch (retrying a warehouse that is unavailable); returns events, dead letters
/// and the highest position.
async fn apply(wh: &mut Warehouse, events: Vec<ChangeEvent>) -> Result<(usize, usize, Position)> {
    let top = events.iter().map(|e| e.position).max().unwrap_or_default();
    let newest_commit_ts_us = events.iter().map(|e| e.commit_ts_us).max();
    let batch = Batch {
        events,
        newest_commit_ts_us,
        ..Default::default()
    };
    let mut backoff = crate::capture::Backoff::new();
    loop {
        match wh.apply(&batch).await {
            Ok(applied) => {
                tracing::info!(events = applied.events, upto = %top, "replayed a batch");
                return Ok((applied.events, applied.dead_letters, top));
            }
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    "warehouse unavailable, retrying the batch in {:.1}s: {e}",
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
