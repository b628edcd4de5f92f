//! `totes-cdc run`: the embedded deployment — capture and apply in one process, the slot as
//! the durable buffer between them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::apply::warehouse::Warehouse;
use crate::apply::{self, ApplyConfig, ApplyStats};
use crate::capture::catalog::TableName;
use crate::capture::stream::CaptureStats;
use crate::capture::{self};
use crate::channel;
use crate::config::{RunArgs, WarehouseArgs};
use crate::pg::PgUrl;

/// The checkpoint name of the embedded pipeline's writer.
pub const CHECKPOINT: &str = "apply";

pub fn warehouse_url(args: &WarehouseArgs) -> Result<PgUrl> {
    super::warehouse_url_option(&args.url)?
        .ok_or_else(|| super::missing_url("warehouse-url", "this command"))
}

/// Creates or completes the warehouse for the tables capture will deliver.
pub async fn prepare_warehouse(
    source: &PgUrl,
    publication: &str,
    tables: Option<&[TableName]>,
    args: &WarehouseArgs,
) -> Result<Warehouse> {
    let tables = capture::describe_tables(source, publication, tables).await?;
    let mut wh = Warehouse::new(
        warehouse_url(args)?,
        &args.warehouse_schema,
        args.model,
        CHECKPOINT,
        &source.database(),
    );
    wh.setup(&tables).await?;
    if let Some(lake) = args.lake.at() {
        wh = wh.with_lake(crate::lake::Store::open(lake).await?);
    }
    Ok(wh)
}

pub async fn run(args: RunArgs, shutdown: watch::Receiver<bool>) -> Result<()> {
    let cfg = super::stream::capture_config(&args.source, &args.capture)?;
    let wh = prepare_warehouse(
        &cfg.source,
        &cfg.publication,
        cfg.tables.as_deref(),
        &args.warehouse,
    )
    .await?;
    tracing::info!(
        source = %cfg.source.masked(),
        warehouse = %wh.url().masked(),
        lake = %wh.lake().map_or("none".to_string(), |s| s.describe()),
        slot = %cfg.slot,
        "starting the embedded pipeline"
    );
    let health = crate::metrics::server::Health::new();
    super::serve_metrics(&args.metrics.metrics_addr, health.clone()).await?;
    let channel_bytes = args.capture.channel_max_bytes.max(1) as usize;
    let (tx, rx, acker) = channel::channel(args.capture.channel_capacity, channel_bytes);
    let apply_stats = Arc::new(ApplyStats::default());
    let apply_cfg = ApplyConfig {
        batch_max_events: args.warehouse.batch_max_events.max(1),
        // A forming batch holds its events' share of the channel's budget: at most half of it,
        // so capture can go on filling the other half meanwhile.
        batch_max_bytes: (args.warehouse.batch_max_bytes.max(1) as usize).min(channel_bytes / 2),
        batch_max_wait: Duration::from_millis(args.warehouse.batch_max_ms),
    };
    let applier = tokio::spawn(apply::run(
        rx,
        acker,
        wh,
        apply_cfg,
        apply_stats.clone(),
        health.clone(),
    ));
    let stats = Arc::new(CaptureStats::default());
    let (progress_stop, progress_rx) = watch::channel(false);
    let progress = args.progress.then(|| {
        tokio::spawn(super::progress::run(
            cfg.source.clone(),
            warehouse_url(&args.warehouse).unwrap_or_else(|_| cfg.source.clone()),
            args.warehouse.warehouse_schema.clone(),
            stats.clone(),
            apply_stats.clone(),
            progress_rx,
        ))
    });
    let captured = capture::run(cfg, tx, shutdown, stats, health).await;
    let applied = applier.await.context("the apply task failed")?;
    let _ = progress_stop.send(true);
    if let Some(p) = progress {
        let _ = p.await;
    }
    // The apply error is the cause when both stopped.
    applied?;
    captured?;
    Ok(())
}
