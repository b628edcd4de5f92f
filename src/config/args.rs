//! The options of each subcommand, grouped by the part they configure (source, capture,
//! warehouse, Kinesis, metrics) so every role takes the same spelling of an option.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::values::{parse_bytes, parse_duration, parse_lsn};
use crate::capture::catalog::TableName;
use crate::capture::SnapshotMode;

/// Where `replay` reads the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplayFrom {
    /// The lake's changes files (`lake`): the complete history.
    Lake,
    /// The Kinesis stream (`kinesis-stream`), within its retention.
    Kinesis,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub warehouse: WarehouseArgs,

    #[command(flatten)]
    pub kinesis: KinesisArgs,

    /// Where the history is read.
    #[arg(long, env = "TOTES_CDC_FROM", default_value = "lake")]
    pub from: ReplayFrom,

    /// Replay the changes committed at or after this LSN (default: the whole lake).
    #[arg(long, env = "TOTES_CDC_FROM_LSN", value_parser = parse_lsn)]
    pub from_lsn: Option<crate::event::Lsn>,

    /// ...and at or before this one (default: everything the lake holds).
    #[arg(long, env = "TOTES_CDC_TO_LSN", value_parser = parse_lsn)]
    pub to_lsn: Option<crate::event::Lsn>,
}

#[derive(Debug, Clone, Args)]
pub struct ResyncArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Directory for local state (snapshot progress), as given to `run` or `stream`.
    #[arg(long, env = "TOTES_CDC_STATE_DIR", default_value = "./data/state")]
    pub state_dir: PathBuf,

    /// Copy only this table again (`schema.table` or `table`), while the pipeline streams:
    /// nothing stops and no other table is copied. May be given more than once. Without it,
    /// the slot is dropped and every table copied again on the next start.
    #[arg(long = "table", id = "table", value_name = "TABLE")]
    pub table: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub warehouse: WarehouseArgs,

    #[command(flatten)]
    pub kinesis: KinesisArgs,

    #[command(flatten)]
    pub metrics: MetricsArgs,

    /// This consumer's name among the replicas (default: host name and process id).
    #[arg(long, env = "TOTES_CDC_CONSUMER_ID")]
    pub consumer_id: Option<String>,

    /// Wait between polls when no shard had records.
    #[arg(long, env = "TOTES_CDC_POLL_INTERVAL", default_value = "200ms", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// How long a shard lease lasts unrenewed: a replica that stops renewing (killed, frozen,
    /// partitioned) loses its shards to the others after this. Also bounds how long a batch
    /// transaction may sit idle (waiting on the lake) before the warehouse ends it.
    #[arg(long, env = "TOTES_CDC_LEASE_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub lease_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub source: SourceUrlArgs,

    /// Create the totesys schema and seed it when the database does not have it yet.
    #[arg(long)]
    pub init: bool,

    /// Orders (with their transaction and payment) seeded by --init.
    #[arg(long, default_value_t = 2000)]
    pub initial_orders: u32,

    /// Source transactions per second (0: only --init).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,

    /// Seed of the generator (the same seed writes the same workload).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub warehouse: WarehouseUrlArgs,

    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub warehouse: WarehouseArgs,

    /// Differences listed per table.
    #[arg(long, default_value_t = 10)]
    pub show: usize,
}

/// Where and what to capture.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    #[command(flatten)]
    pub url: SourceUrlArgs,

    /// Logical replication slot name.
    #[arg(long, env = "TOTES_CDC_SLOT", default_value = "totes_cdc")]
    pub slot: String,

    /// Publication name.
    #[arg(long, env = "TOTES_CDC_PUBLICATION", default_value = "totes_cdc")]
    pub publication: String,

    /// Tables to capture (`schema.table` or `table`, comma-separated); default: every table of
    /// the publication.
    #[arg(
        long,
        env = "TOTES_CDC_TABLES",
        value_delimiter = ',',
        value_name = "TABLES"
    )]
    pub tables: Vec<String>,
}

impl SourceArgs {
    pub fn tables(&self) -> Option<Vec<TableName>> {
        let t: Vec<TableName> = self
            .tables
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(TableName::parse)
            .collect();
        (!t.is_empty()).then_some(t)
    }
}

/// How capture runs.
#[derive(Debug, Clone, Args)]
pub struct CaptureArgs {
    /// Directory for local state (snapshot progress).
    #[arg(long, env = "TOTES_CDC_STATE_DIR", default_value = "./data/state")]
    pub state_dir: PathBuf,

    /// When to copy the tables' existing rows.
    #[arg(long, env = "TOTES_CDC_SNAPSHOT", default_value = "initial")]
    pub snapshot: SnapshotMode,

    /// Connections copying at once during the snapshot (tables, or pieces of a large table).
    #[arg(long, env = "TOTES_CDC_SNAPSHOT_PARALLELISM", default_value_t = 2)]
    pub snapshot_parallelism: usize,

    /// A table of at least twice this many heap pages (8 KiB each) is copied in pieces of pages,
    /// in parallel under the same snapshot.
    #[arg(long, env = "TOTES_CDC_SNAPSHOT_CHUNK_PAGES", default_value_t = 4096)]
    pub snapshot_chunk_pages: u32,

    /// Interval of the transactional heartbeat that keeps the slot moving on an idle database
    /// (`0` turns it off).
    #[arg(long, env = "TOTES_CDC_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// How often the confirmed position is reported to the source.
    #[arg(long, env = "TOTES_CDC_STATUS_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub status_interval: Duration,

    /// How long shutdown waits for in-flight events to be acknowledged.
    #[arg(long, env = "TOTES_CDC_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Retained WAL on the source above which the slot is reported (log and /readyz), e.g.
    /// `1GiB`.
    #[arg(long, env = "TOTES_CDC_SLOT_MAX_RETAINED_WAL", default_value = "1GiB", value_parser = parse_bytes)]
    pub slot_max_retained_wal: i64,

    /// Stop once everything up to this LSN is confirmed (bounded runs, benchmarks).
    #[arg(long, env = "TOTES_CDC_UNTIL_LSN", value_name = "LSN", value_parser = parse_lsn)]
    pub until_lsn: Option<crate::event::Lsn>,

    /// Bound, in events, of each channel between stages.
    #[arg(long, env = "TOTES_CDC_CHANNEL_CAPACITY", default_value_t = 4096)]
    pub channel_capacity: usize,

    /// Bound, in bytes, of the change events between capture and their sink's release (the
    /// channel and the batches being formed and applied), e.g. `64MiB`.
    #[arg(long, env = "TOTES_CDC_CHANNEL_MAX_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub channel_max_bytes: i64,
}

/// Where and how changes are applied.
#[derive(Debug, Clone, Args)]
pub struct WarehouseArgs {
    #[command(flatten)]
    pub url: WarehouseUrlArgs,

    /// Schema of the star tables in the warehouse.
    #[arg(long, env = "TOTES_CDC_WAREHOUSE_SCHEMA", default_value = "public")]
    pub warehouse_schema: String,

    /// The star schema derived from staging (`none`: staging mirrors only).
    #[arg(long, env = "TOTES_CDC_MODEL", default_value = "totesys")]
    pub model: crate::apply::warehouse::Model,

    /// Where every batch is also written as Parquet: a directory, s3://bucket/prefix, or
    /// `none`.
    #[arg(long, env = "TOTES_CDC_LAKE", default_value = "./data/lake")]
    pub lake: crate::lake::Location,

    /// Batches form as a group commit (taken when the applier is free, holding what is queued);
    /// a batch closes at this many events...
    #[arg(long, env = "TOTES_CDC_BATCH_MAX_EVENTS", default_value_t = 10_000)]
    pub batch_max_events: usize,

    /// ...or this long after its first event (an upper bound, not a wait)...
    #[arg(long, env = "TOTES_CDC_BATCH_MAX_MS", default_value_t = 1000)]
    pub batch_max_ms: u64,

    /// ...or once its events hold this many bytes (at most half of channel-max-bytes), e.g.
    /// `16MiB`.
    #[arg(long, env = "TOTES_CDC_BATCH_MAX_BYTES", default_value = "16MiB", value_parser = parse_bytes)]
    pub batch_max_bytes: i64,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub capture: CaptureArgs,

    #[command(flatten)]
    pub warehouse: WarehouseArgs,

    #[command(flatten)]
    pub metrics: MetricsArgs,

    /// A live progress line on the terminal, and a summary at the end.
    #[arg(long)]
    pub progress: bool,
}

#[derive(Debug, Clone, Args)]
pub struct SetupArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub warehouse: WarehouseArgs,

    /// Tables left out when `tables` is not given and setup picks every table of schema public.
    #[arg(
        long,
        env = "TOTES_CDC_EXCLUDE_TABLES",
        value_delimiter = ',',
        default_value = "_prisma_migrations"
    )]
    pub exclude_tables: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    /// One JSON envelope per line on standard output.
    Stdout,
    /// Acknowledge and discard (benchmarks).
    Null,
    /// AWS Kinesis Data Streams (`kinesis-stream`).
    Kinesis,
}

/// The Kinesis stream between `stream` and `consume`.
#[derive(Debug, Clone, Args)]
pub struct KinesisArgs {
    /// Name of the Kinesis data stream.
    #[arg(long, env = "TOTES_CDC_KINESIS_STREAM", default_value = "totes-cdc")]
    pub kinesis_stream: String,

    /// (consume, replay) The largest oversized record read back from the lake; a record's
    /// pointer to a larger object is a dead letter.
    #[arg(long, env = "TOTES_CDC_OVERSIZED_MAX_BYTES", default_value = "256MiB", value_parser = parse_bytes)]
    pub oversized_max_bytes: i64,
}

#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub capture: CaptureArgs,

    /// Where change events go.
    #[arg(long, env = "TOTES_CDC_SINK", default_value = "stdout")]
    pub sink: SinkKind,

    #[command(flatten)]
    pub metrics: MetricsArgs,

    #[command(flatten)]
    pub kinesis: KinesisArgs,

    /// PutRecords requests in flight at once (kinesis sink).
    #[arg(long, env = "TOTES_CDC_KINESIS_CONCURRENCY", default_value_t = 4)]
    pub kinesis_concurrency: usize,

    /// Events bound for one shard travel together in one record, in the KPL aggregation format
    /// (what the Kinesis Client Library, Firehose and the aws-kinesis-agg deaggregators read;
    /// `consume` and `replay` read both): `on`, or `off` for one event per record.
    #[arg(long, env = "TOTES_CDC_KINESIS_AGGREGATION", default_value = "on")]
    pub kinesis_aggregation: Toggle,

    /// Where a record over Kinesis' 1 MiB limit is stored (a pointer record names it): a
    /// directory or s3://bucket/prefix.
    #[arg(long, env = "TOTES_CDC_LAKE", default_value = "./data/lake")]
    pub lake: crate::lake::Location,
}

/// A feature switched on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Toggle {
    On,
    Off,
}

/// Where the metrics and health endpoints are served.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "TOTES_CDC_METRICS_ADDR", default_value = "127.0.0.1:9898")]
    pub metrics_addr: String,
}

/// The source's URL, inline or from files (mounted secrets).
#[derive(Debug, Clone, Args)]
pub struct SourceUrlArgs {
    /// PostgreSQL URL of the source database (postgres://user:password@host:port/db).
    #[arg(
        long,
        env = "TOTES_CDC_SOURCE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub source_url: Option<String>,

    /// A file holding the source URL (a mounted secret), instead of source-url.
    #[arg(
        long,
        env = "TOTES_CDC_SOURCE_URL_FILE",
        value_name = "FILE",
        conflicts_with = "source_url"
    )]
    pub source_url_file: Option<PathBuf>,

    /// A file holding only the password of the source URL (a mounted secret).
    #[arg(long, env = "TOTES_CDC_SOURCE_PASSWORD_FILE", value_name = "FILE")]
    pub source_password_file: Option<PathBuf>,
}

/// The warehouse's URL, inline or from files (mounted secrets).
#[derive(Debug, Clone, Args)]
pub struct WarehouseUrlArgs {
    /// PostgreSQL URL of the warehouse database.
    #[arg(
        long,
        env = "TOTES_CDC_WAREHOUSE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub warehouse_url: Option<String>,

    /// A file holding the warehouse URL (a mounted secret), instead of warehouse-url.
    #[arg(
        long,
        env = "TOTES_CDC_WAREHOUSE_URL_FILE",
        value_name = "FILE",
        conflicts_with = "warehouse_url"
    )]
    pub warehouse_url_file: Option<PathBuf>,

    /// A file holding only the password of the warehouse URL (a mounted secret).
    #[arg(long, env = "TOTES_CDC_WAREHOUSE_PASSWORD_FILE", value_name = "FILE")]
    pub warehouse_password_file: Option<PathBuf>,
}
