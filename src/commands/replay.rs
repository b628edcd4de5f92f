//! `totes-cdc replay`: rebuilds or repairs the warehouse from a durable copy of the history.
//! Postgres cannot rewind a slot before its confirmed LSN, so replay reads the lake's changes
//! files (`--from lake`, complete history) or the Kinesis stream (`--from kinesis`, within its
//! retention). Every event at or after `--from-lsn` (up to `--to-lsn`) is applied again through
//! the same batches as the live pipeline. Applying is idempotent (position-guarded staging,
//! facts unique on their position), so a replay over a warehouse that already holds some of it
//! changes only what is missing or behind, and may run beside a live pipeline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use aws_sdk_kinesis::types::ShardIteratorType;
use futures_util::StreamExt;

use crate::apply::batch::{Batch, Reject};
use crate::apply::warehouse::Warehouse;
use crate::config::{ReplayArgs, ReplayFrom};
use crate::event::{ChangeEvent, Lsn, Position, TableSchema};
use crate::lake::read::{self, ChangesFile};
use crate::lake::Store;
use crate::pg::PgUrl;
use crate::transport::kinesis::{self, consumer};

/// The checkpoint name a replay records (the live pipeline's own is left alone).
pub const CHECKPOINT: &str = "replay";

/// Files read ahead of the batch being applied.
const READ_AHEAD: usize = 4;

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
    let mut applier = Applier {
        wh: None,
        pending: Vec::new(),
        pending_bytes: 0,
        rejects: Vec::new(),
        max_events: args.warehouse.batch_max_events.max(1),
        max_bytes: args.warehouse.batch_max_bytes.max(1) as usize,
        events: 0,
        batches: 0,
        dead: 0,
        newest: from,
    };
    let what = match args.from {
        ReplayFrom::Lake => from_lake(&args, &url, range, &mut applier).await?,
        ReplayFrom::Kinesis => from_kinesis(&args, &url, range, &mut applier).await?,
    };
    applier.flush().await?;
    println!(
        "replayed {} events from {what} in {} batches into {} ({:.1}s), up to {}; dead letters: {}",
        applier.events,
        applier.batches,
        url.target(),
        started.elapsed().as_secs_f64(),
        applier.newest,
        applier.dead,
    );
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Range {
    from: Position,
    to: Option<Position>,
}

impl Range {
    fn contains(&self, p: Position) -> bool {
        p >= self.from && self.to.is_none_or(|t| p <= t)
    }

    fn describe(&self) -> String {
        format!(
            "at or after {}{}",
            self.from.lsn,
            self.to
                .map_or(String::new(), |t| format!(" up to {}", t.lsn))
        )
    }
}

/// The warehouse, once checked, for replay.
async fn warehouse(args: &ReplayArgs, url: &PgUrl) -> Result<Warehouse> {
    super::require_staging(url).await?;
    let mut wh = Warehouse::new(
        url.clone(),
        &args.warehouse.warehouse_schema,
        args.warehouse.model,
        CHECKPOINT,
        "",
    );
    wh.prepare().await?;
    Ok(wh)
}

/// Collects events into batches of `max_events` and applies them.
struct Applier {
    wh: Option<Warehouse>,
    pending: Vec<ChangeEvent>,
    /// The pending events' `approx_bytes`, summed as they come.
    pending_bytes: usize,
    rejects: Vec<Reject>,
    max_events: usize,
    max_bytes: usize,
    events: usize,
    batches: usize,
    dead: usize,
    newest: Position,
}

impl Applier {
    fn wh(&mut self) -> Result<&mut Warehouse> {
        self.wh
            .as_mut()
            .context("the warehouse is not connected (a bug: replay sets it first)")
    }

    async fn push(&mut self, events: Vec<ChangeEvent>, rejects: Vec<Reject>) -> Result<()> {
        self.pending_bytes += events.iter().map(ChangeEvent::approx_bytes).sum::<usize>();
        self.pending.extend(events);
        self.rejects.extend(rejects);
        if self.pending.len() >= self.max_events || self.pending_bytes >= self.max_bytes {
            self.flush().await?;
        }
        Ok(())
    }

    /// Applies what is pending as one batch, retrying a warehouse that is unavailable.
    async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() && self.rejects.is_empty() {
            return Ok(());
        }
        let events = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let rejects = std::mem::take(&mut self.rejects);
        let top = events.iter().map(|e| e.position).max().unwrap_or_default();
        let batch = Batch {
            newest_commit_ts_us: events.iter().map(|e| e.commit_ts_us).max(),
            events,
            rejects,
            ..Default::default()
        };
        let mut backoff = crate::retry::Backoff::new();
        let applied = loop {
            match self.wh()?.apply(&batch).await {
                Ok(applied) => break applied,
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
        };
        tracing::info!(events = applied.events, upto = %top, "replayed a batch");
        self.events += applied.events;
        self.dead += applied.dead_letters;
        self.batches += 1;
        self.newest = self.newest.max(top);
        Ok(())
    }
}

/// The lake's changes files in the range, oldest first; returns what was read.
async fn from_lake(
    args: &ReplayArgs,
    url: &PgUrl,
    range: Range,
    applier: &mut Applier,
) -> Result<String> {
    let lake = &args.warehouse.lake;
    if lake == "none" {
        anyhow::bail!("replay --from lake reads the lake: set `lake` to the directory or s3://bucket/prefix the pipeline writes");
    }
    if !lake.starts_with("s3://") && !std::path::Path::new(lake).is_dir() {
        anyhow::bail!("the lake directory {lake} does not exist: set `lake` to the directory the pipeline writes (its `lake` option)");
    }
    let store = Store::open(lake).await?;
    let mut wh = warehouse(args, url).await?;
    let mut files: Vec<ChangesFile> = store
        .list("changes/")
        .await?
        .iter()
        .filter_map(|p| read::parse_changes_path(p))
        .filter(|f| f.last >= range.from && range.to.is_none_or(|t| f.first <= t))
        .collect();
    if files.is_empty() {
        anyhow::bail!(
            "the lake at {} holds no changes files {}: check `lake` (the pipeline's lake option) and from-lsn",
            store.describe(),
            range.describe(),
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
    applier.wh = Some(wh);
    tracing::info!(lake = %store.describe(), files = files.len(), range = %range.describe(), "replaying the lake");
    let mut reads = futures_util::stream::iter(files.iter().map(|f| {
        let store = store.clone();
        async move { (f, store.get(&f.path).await) }
    }))
    .buffered(READ_AHEAD);
    while let Some((f, data)) = reads.next().await {
        let data = data.with_context(|| format!("reading {}", f.path))?;
        let events = read::events_of(data, &tables[&f.table], range.from, range.to)
            .map_err(|e| anyhow::anyhow!("lake file {} cannot be read back: {e}", f.path))?;
        applier.push(events, Vec::new()).await?;
    }
    Ok(format!("{} lake files", files.len()))
}

/// Every shard of the stream from its oldest record (TRIM_HORIZON) to its end, or to the
/// present for an open shard; returns what was read.
async fn from_kinesis(
    args: &ReplayArgs,
    url: &PgUrl,
    range: Range,
    applier: &mut Applier,
) -> Result<String> {
    let stream = args.kinesis.kinesis_stream.clone();
    let (client, region) = kinesis::client().await;
    kinesis::check_stream(&client, &stream, &region).await?;
    applier.wh = Some(warehouse(args, url).await?);
    let cfg = consumer::ConsumerConfig {
        stream: stream.clone(),
        region: region.clone(),
        max_records: 10_000,
        poll: std::time::Duration::ZERO,
    };
    let shards = consumer::list_shards(&client, &cfg).await?;
    tracing::info!(%stream, shards = shards.len(), range = %range.describe(), "replaying the stream");
    let mut records = 0usize;
    for shard in &shards {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(&stream)
            .shard_id(&shard.id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .map_err(|e| kinesis::classify(e, &stream, &region))?
            .shard_iterator()
            .map(str::to_string);
        let mut backoff = crate::retry::Backoff::new();
        while let Some(it) = iterator.take() {
            let out = match client
                .get_records()
                .shard_iterator(&it)
                .limit(cfg.max_records)
                .send()
                .await
                .map_err(|e| kinesis::classify(e, &stream, &region))
            {
                Ok(out) => out,
                Err(e) if e.is_transient() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(shard = %shard.id, "reading the stream, retrying in {:.1}s: {e}", delay.as_secs_f64());
                    tokio::time::sleep(delay).await;
                    iterator = Some(it);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut events = Vec::new();
            let mut rejects = Vec::new();
            for r in out.records() {
                match consumer::record_event(applier.wh()?, &stream, &shard.id, r).await? {
                    Ok(ev) if range.contains(ev.position) => events.push(ev),
                    Ok(_) => {}
                    Err(reject) => rejects.push(reject),
                }
            }
            records += out.records().len();
            applier.push(events, rejects).await?;
            // A closed shard ends without a next iterator; an open one when it is caught up.
            let caught_up =
                out.records().is_empty() && out.millis_behind_latest().unwrap_or(0) == 0;
            if !caught_up {
                iterator = out.next_shard_iterator().map(str::to_string);
            }
        }
    }
    if records == 0 {
        anyhow::bail!(
            "the Kinesis stream {stream} holds no records: its retention may have passed; replay from the lake instead (--from lake)"
        );
    }
    Ok(format!(
        "{records} records of {} shards of Kinesis stream {stream}",
        shards.len()
    ))
}
