//! One configuration for every role: each option is a flag (`--source-url`), an environment
//! variable (`TOTES_CDC_SOURCE_URL`) or a key of the TOML file given by `--config`
//! (`source-url = "..."`). Flags win over the environment, the environment over the file.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::capture::catalog::TableName;
use crate::capture::SnapshotMode;

#[derive(Debug, Parser)]
#[command(
    name = "totes-cdc",
    version,
    about = "Change-data capture from PostgreSQL into a Parquet lake and a star-schema warehouse"
)]
pub struct Cli {
    /// A TOML file with options (keys are the long flag names: `source-url = "..."`).
    #[arg(long, global = true, env = "TOTES_CDC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log filter (error, warn, info, debug, or a tracing filter such as `totes_cdc=debug`).
    #[arg(long, global = true, env = "TOTES_CDC_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(
        long,
        global = true,
        env = "TOTES_CDC_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check and prepare the source: wal_level, privileges, replica identity, the publication.
    Setup(SetupArgs),
    /// Capture changes and publish them to a sink.
    Stream(StreamArgs),
    /// The embedded pipeline: capture and apply in one process.
    Run(RunArgs),
    /// Slot, positions, lag and dead letters.
    Status(StatusArgs),
    /// Compare the warehouse with the source; exit 1 on any difference.
    Verify(VerifyArgs),
    /// Write a totesys-like workload into the source (and, with --init, create and seed it).
    Generate(GenerateArgs),
    /// Read the Kinesis stream and apply it (one of several replicas sharing the shards).
    Consume(ConsumeArgs),
    /// Recover from an invalidated slot: drop it so the next start copies everything again.
    Resync(ResyncArgs),
    /// Apply the lake's history again from a stored LSN: rebuild or repair the warehouse.
    Replay(ReplayArgs),
}

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
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// PostgreSQL URL of the source database to write to.
    #[arg(long, env = "TOTES_CDC_SOURCE_URL", value_name = "URL")]
    pub source_url: Option<String>,

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

    /// PostgreSQL URL of the warehouse database (optional here).
    #[arg(long, env = "TOTES_CDC_WAREHOUSE_URL", value_name = "URL")]
    pub warehouse_url: Option<String>,

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
    /// PostgreSQL URL of the source database (postgres://user:password@host:port/db).
    #[arg(long, env = "TOTES_CDC_SOURCE_URL", value_name = "URL")]
    pub source_url: Option<String>,

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

    /// Tables copied at once during the snapshot.
    #[arg(long, env = "TOTES_CDC_SNAPSHOT_PARALLELISM", default_value_t = 2)]
    pub snapshot_parallelism: usize,

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
    /// PostgreSQL URL of the warehouse database.
    #[arg(long, env = "TOTES_CDC_WAREHOUSE_URL", value_name = "URL")]
    pub warehouse_url: Option<String>,

    /// Schema of the star tables in the warehouse.
    #[arg(long, env = "TOTES_CDC_WAREHOUSE_SCHEMA", default_value = "public")]
    pub warehouse_schema: String,

    /// The star schema derived from staging (`none`: staging mirrors only).
    #[arg(long, env = "TOTES_CDC_MODEL", default_value = "totesys")]
    pub model: crate::apply::warehouse::Model,

    /// Where every batch is also written as Parquet: a directory, s3://bucket/prefix, or
    /// `none`.
    #[arg(long, env = "TOTES_CDC_LAKE", default_value = "./data/lake")]
    pub lake: String,

    /// A batch closes at this many events...
    #[arg(long, env = "TOTES_CDC_BATCH_MAX_EVENTS", default_value_t = 10_000)]
    pub batch_max_events: usize,

    /// ...or this long after its first event, whichever comes first.
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

    /// Where a record over Kinesis' 1 MiB limit is stored (a pointer record names it): a
    /// directory or s3://bucket/prefix.
    #[arg(long, env = "TOTES_CDC_LAKE", default_value = "./data/lake")]
    pub lake: String,
}

/// Parses a size: `1GiB`, `512MiB`, `64KiB`, `1GB`, or plain bytes.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 1GiB, 512MiB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "kib" | "k" => 1024.0,
        "mb" => 1e6,
        "mib" | "m" => 1024.0 * 1024.0,
        "gb" => 1e9,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        "tib" | "t" => 1024f64.powi(4),
        other => return Err(format!("unknown size unit '{other}' (use KiB, MiB, GiB)")),
    };
    Ok((n * mult) as i64)
}

/// Where the metrics and health endpoints are served.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "TOTES_CDC_METRICS_ADDR", default_value = "127.0.0.1:9898")]
    pub metrics_addr: String,
}

/// Parses an LSN (`16/B374D848`).
pub fn parse_lsn(s: &str) -> Result<crate::event::Lsn, String> {
    crate::event::Lsn::parse(s.trim())
        .map_err(|e| format!("{e} (expected an LSN such as 16/B374D848)"))
}

/// Parses `500ms`, `10s`, `2m`, `1h`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (examples: 500ms, 10s, 2m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit '{other}' (use ms, s, m or h)"
            ))
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Where `--config` points, looked up before the full parse so the file can supply defaults.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os("TOTES_CDC_CONFIG").map(PathBuf::from)
}

fn scalar(v: &toml::Value) -> Result<String, ()> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        _ => return Err(()),
    })
}

/// Reads the config file into `key → value text` (arrays joined with commas).
fn read_file(path: &PathBuf) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("config file {} is not valid TOML: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for (k, v) in table {
        let s = match &v {
            toml::Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<Result<Vec<_>, ()>>()
                .map(|v| v.join(",")),
            other => scalar(other),
        }
        .map_err(|()| {
            format!(
                "config file {}: key '{k}' must be a string, number, boolean or list",
                path.display()
            )
        })?;
        out.insert(k, s);
    }
    Ok(out)
}

/// Parses the command line with the environment and the config file behind it.
/// Every environment variable an option of some role reads (`TOTES_CDC_*`), for checking
/// deployment manifests against the binary.
pub fn env_names() -> std::collections::BTreeSet<String> {
    fn walk(cmd: &clap::Command, out: &mut std::collections::BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                out.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(&Cli::command(), &mut out);
    out
}

pub fn parse_from(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let mut cmd = Cli::command();
    if let Some(path) = config_path(&args) {
        let file = read_file(&path)
            .map_err(|m| Cli::command().error(clap::error::ErrorKind::InvalidValue, m))?;
        let mut known = std::collections::BTreeSet::new();
        for arg in cmd.get_arguments() {
            if let Some(l) = arg.get_long() {
                known.insert(l.to_string());
            }
        }
        let subs: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        for sub in subs {
            let file = file.clone();
            let mut seen = Vec::new();
            cmd = cmd.mut_subcommand(&sub, |mut s| {
                let ids: Vec<(String, String)> = s
                    .get_arguments()
                    .filter_map(|a| Some((a.get_id().to_string(), a.get_long()?.to_string())))
                    .collect();
                for (id, long) in ids {
                    if let Some(v) = file.get(&long) {
                        let v = v.clone();
                        s = s.mut_arg(id, |a| a.default_value(v));
                        seen.push(long);
                    }
                }
                s
            });
            known.extend(seen);
        }
        if let Some(unknown) = file.keys().find(|k| !known.contains(*k) && *k != "config") {
            return Err(Cli::command().error(
                clap::error::ErrorKind::UnknownArgument,
                format!(
                    "config file {}: unknown key '{unknown}' (keys are the long option names, such as source-url)",
                    path.display()
                ),
            ));
        }
    }
    let matches: ArgMatches = cmd.try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("ten").is_err());
    }

    #[test]
    fn flags_beat_file() {
        let dir = std::env::temp_dir().join(format!("totes-cdc-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "source-url = \"postgres://file@h/db\"\nslot = \"from_file\"\ntables = [\"a\", \"public.b\"]\n",
        )
        .unwrap();
        let args = |extra: &[&str]| {
            let mut v: Vec<OsString> = vec!["totes-cdc".into(), "stream".into()];
            v.push("--config".into());
            v.push(file.clone().into());
            v.extend(extra.iter().map(OsString::from));
            v
        };
        let Command::Stream(s) = parse_from(args(&[])).unwrap().command else {
            panic!()
        };
        assert_eq!(s.source.slot, "from_file");
        assert_eq!(s.source.tables().unwrap().len(), 2);
        let Command::Stream(s) = parse_from(args(&["--slot", "from_flag"])).unwrap().command else {
            panic!()
        };
        assert_eq!(s.source.slot, "from_flag");
        std::fs::write(&file, "slott = \"x\"\n").unwrap();
        let e = parse_from(args(&[])).unwrap_err().to_string();
        assert!(e.contains("unknown key 'slott'"), "{e}");
    }
}
