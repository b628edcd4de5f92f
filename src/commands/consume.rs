//! `totes-cdc consume`: one replica of the Kinesis consumers. The warehouse must have been set
//! up (`totes-cdc setup --source-url ... --warehouse-url ...`), which creates the staging
//! mirrors the records are applied to.

use anyhow::Result;
use tokio::sync::watch;

use crate::config::ConsumeArgs;
use crate::lake::Store;
use crate::transport::kinesis::consumer::{self, ConsumerConfig};
use crate::transport::kinesis::leases::Leases;
use crate::transport::kinesis::{self as kinesis};

/// The checkpoint name of consumers (the highest applied position over all shards).
pub const CHECKPOINT: &str = "consume";

pub async fn run(args: ConsumeArgs, shutdown: watch::Receiver<bool>) -> Result<()> {
    let url = super::run::warehouse_url(&args.warehouse)?;
    let id = args.consumer_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "consumer".into());
        format!("{host}-{}", std::process::id())
    });
    let (client, region) = kinesis::client().await;
    let stream = args.kinesis.kinesis_stream.clone();
    kinesis::check_stream(&client, &stream, &region).await?;
    let mut wh = super::warehouse_without_source(&url, &args.warehouse, CHECKPOINT)
        .await?
        .with_idle_in_transaction_timeout(args.lease_timeout);
    if let Some(lake) = args.warehouse.lake.at() {
        wh = wh.with_lake(Store::open(lake).await?);
    }
    tracing::info!(consumer = %id, %stream, warehouse = %url.masked(), "consuming");
    let cfg = ConsumerConfig {
        stream: stream.clone(),
        region,
        max_records: args.warehouse.batch_max_events.min(10_000) as i32,
        poll: args.poll_interval,
        oversized_max_bytes: args.kinesis.oversized_max_bytes.max(0) as u64,
    };
    if args.lease_timeout < std::time::Duration::from_secs(1) {
        anyhow::bail!(
            "lease-timeout {:?} is too short: give at least 1s (the default is 15s)",
            args.lease_timeout
        );
    }
    let leases = Leases::new(url, &stream, &id, args.lease_timeout);
    let health = crate::metrics::server::Health::new();
    super::serve_metrics(&args.metrics.metrics_addr, health.clone()).await?;
    consumer::run(client, cfg, wh, leases, shutdown, health).await?;
    Ok(())
}
