//! `totes-cdc stream`: capture into a sink (stdout and null here; Kinesis in production).

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::capture::stream::CaptureStats;
use crate::capture::{self, CaptureConfig};
use crate::config::{CaptureArgs, SinkKind, SourceArgs, StreamArgs};
use crate::{channel, transport};

/// The capture settings shared by every role that captures.
pub fn capture_config(source: &SourceArgs, capture: &CaptureArgs) -> Result<CaptureConfig> {
    Ok(CaptureConfig {
        source: super::source_url(&source.url, "capture")?,
        slot: source.slot.clone(),
        publication: source.publication.clone(),
        tables: source.tables(),
        state_dir: capture.state_dir.clone(),
        snapshot: capture.snapshot,
        snapshot_parallelism: capture.snapshot_parallelism,
        snapshot_chunk_pages: capture.snapshot_chunk_pages,
        heartbeat: (!capture.heartbeat_interval.is_zero()).then_some(capture.heartbeat_interval),
        status_interval: capture.status_interval,
        // The replication library buffers raw messages by count: kept small, since one message
        // may hold a large row (the byte bound is the channel's, `channel-max-bytes`).
        buffer_events: capture
            .channel_capacity
            .min(crate::capture::RAW_BUFFER_MESSAGES),
        drain_timeout: capture.drain_timeout,
        until: capture.until_lsn,
        slot_max_retained_wal: capture.slot_max_retained_wal,
    })
}

pub async fn run(args: StreamArgs, shutdown: watch::Receiver<bool>) -> Result<()> {
    let cfg = capture_config(&args.source, &args.capture)?;
    tracing::info!(source = %cfg.source.masked(), slot = %cfg.slot, publication = %cfg.publication, "starting capture");
    let health = crate::metrics::server::Health::new();
    super::serve_metrics(&args.metrics.metrics_addr, health.clone()).await?;
    let (tx, rx, acker) = channel::channel(
        args.capture.channel_capacity,
        args.capture.channel_max_bytes.max(1) as usize,
    );
    let database = cfg.source.database();
    let sink = match args.sink {
        SinkKind::Stdout => tokio::spawn(async move {
            transport::stdout::run_writer(rx, acker, database, tokio::io::stdout())
                .await
                .context("writing to standard output")
        }),
        SinkKind::Null => tokio::spawn(async move {
            transport::stdout::run_null(rx, acker).await;
            Ok(())
        }),
        SinkKind::Kinesis => {
            let (client, region) = transport::kinesis::client().await;
            let stream = args.kinesis.kinesis_stream.clone();
            transport::kinesis::check_stream(&client, &stream, &region).await?;
            let oversize = match args.lake.at() {
                Some(lake) => Some(crate::lake::Store::open(lake).await?),
                None => None,
            };
            let cfg = transport::kinesis::producer::ProducerConfig {
                stream,
                region,
                concurrency: args.kinesis_concurrency,
                database,
                oversize,
                max_pending: 20_000,
                aggregation: args.kinesis_aggregation == crate::config::Toggle::On,
            };
            let stats = Arc::new(transport::kinesis::producer::ProducerStats::default());
            health.set("kinesis", true, format!("stream {}", cfg.stream));
            tokio::spawn(async move {
                transport::kinesis::producer::run(rx, acker, client, cfg, stats)
                    .await
                    .context("publishing to Kinesis")
            })
        }
    };
    let stats = Arc::new(CaptureStats::default());
    let captured = capture::run(cfg, tx, shutdown, stats, health).await;
    let sunk = sink.await.context("the sink task failed")?;
    // The sink's error is the cause when both stopped.
    sunk?;
    captured?;
    Ok(())
}
