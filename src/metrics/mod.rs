//! Prometheus metrics of every role, prefix `totes_cdc_`, base units, `_total` for counters.
//! README lists each one. `server` serves them on `metrics-addr` with `/healthz` and `/readyz`.

pub mod server;

use std::sync::OnceLock;

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    /// Every series name the registry can export (histograms as `_bucket`, `_sum`, `_count`).
    pub names: Vec<String>,
    // capture and slot
    pub replication_lag_bytes: IntGauge,
    pub replication_lag_seconds: Gauge,
    pub slot_retained_wal_bytes: IntGauge,
    pub slot_safe_wal_size_bytes: IntGauge,
    pub slot_wal_status: IntGaugeVec,
    pub slot_active: IntGauge,
    pub events_total: IntCounterVec,
    pub transactions_total: IntCounter,
    pub snapshot_rows_total: IntCounterVec,
    pub snapshot_tables_remaining: IntGauge,
    pub heartbeats_total: IntCounter,
    pub reconnects_total: IntCounter,
    pub received_lsn: IntGauge,
    pub confirmed_lsn: IntGauge,
    // Kinesis producer
    pub kinesis_records_total: IntCounter,
    pub kinesis_events_total: IntCounter,
    pub kinesis_bytes_total: IntCounter,
    pub kinesis_put_seconds: Histogram,
    pub kinesis_throttled_total: IntCounter,
    pub kinesis_failed_records_total: IntCounter,
    pub kinesis_inflight_requests: IntGauge,
    pub kinesis_sequence_collisions_total: IntCounter,
    // Kinesis consumer
    pub kinesis_millis_behind_latest: IntGaugeVec,
    pub shards_owned: IntGauge,
    pub lease_changes_total: IntCounter,
    // apply
    pub batch_events: Histogram,
    pub batch_apply_seconds: Histogram,
    pub warehouse_rows_total: IntCounterVec,
    pub lake_files_total: IntCounter,
    pub lake_bytes_total: IntCounter,
    pub dead_letters_total: IntCounterVec,
    pub end_to_end_latency_seconds: Histogram,
    pub applied_position_lsn: IntGauge,
    pub apply_retries_total: IntCounter,
    pub channel_bytes: IntGauge,
    // process
    pub build_info: GaugeVec,
    pub resident_memory_bytes: IntGauge,
    pub open_connections: IntGauge,
}

/// Registers collectors and remembers the series names they export (for `exported_names`).
struct Builder {
    registry: Registry,
    names: Vec<String>,
}

impl Builder {
    fn register<C: prometheus::core::Collector + Clone + 'static>(
        &mut self,
        c: C,
        histogram: bool,
    ) -> C {
        for d in c.desc() {
            if histogram {
                for suffix in ["_bucket", "_sum", "_count"] {
                    self.names.push(format!("{}{suffix}", d.fq_name));
                }
            } else {
                self.names.push(d.fq_name.clone());
            }
        }
        self.registry
            .register(Box::new(c.clone()))
            .expect("registered once");
        c
    }
}

fn counter(b: &mut Builder, name: &str, help: &str) -> IntCounter {
    let c =
        IntCounter::with_opts(Opts::new(name, help).namespace("totes_cdc")).expect("valid metric");
    b.register(c, false)
}

fn counter_vec(b: &mut Builder, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace("totes_cdc"), labels)
        .expect("valid metric");
    b.register(c, false)
}

fn gauge(b: &mut Builder, name: &str, help: &str) -> IntGauge {
    let g =
        IntGauge::with_opts(Opts::new(name, help).namespace("totes_cdc")).expect("valid metric");
    b.register(g, false)
}

fn gauge_vec(b: &mut Builder, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help).namespace("totes_cdc"), labels)
        .expect("valid metric");
    b.register(g, false)
}

fn histogram(b: &mut Builder, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(
        HistogramOpts::new(name, help)
            .namespace("totes_cdc")
            .buckets(buckets),
    )
    .expect("valid metric");
    b.register(h, true)
}

const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The process's metrics (created on first use).
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut b = Builder {
            registry: Registry::new(),
            names: Vec::new(),
        };
        let build_info = GaugeVec::new(
            Opts::new("build_info", "Build of the running binary (value 1).").namespace("totes_cdc"),
            &["version", "git_sha"],
        )
        .expect("valid metric");
        let build_info = b.register(build_info, false);
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("TOTES_CDC_GIT_SHA")])
            .set(1.0);
        let lag_seconds = Gauge::with_opts(
            Opts::new(
                "replication_lag_seconds",
                "Age of the oldest change not yet confirmed to the source (0 when nothing waits).",
            )
            .namespace("totes_cdc"),
        )
        .expect("valid metric");
        let lag_seconds = b.register(lag_seconds, false);
        Metrics {
            replication_lag_bytes: gauge(&mut b, "replication_lag_bytes", "Source current WAL LSN minus the slot's confirmed flush LSN."),
            replication_lag_seconds: lag_seconds,
            slot_retained_wal_bytes: gauge(&mut b, "slot_retained_wal_bytes", "WAL the slot keeps on the source: current LSN minus restart LSN."),
            slot_safe_wal_size_bytes: gauge(&mut b, "slot_safe_wal_size_bytes", "WAL that can still be written before the slot is in danger of losing it (-1: unlimited)."),
            slot_wal_status: gauge_vec(&mut b, "slot_wal_status", "The slot's wal_status (1 on the current one): reserved, extended, unreserved, lost.", &["status"]),
            slot_active: gauge(&mut b, "slot_active", "1 while a replication session holds the slot."),
            events_total: counter_vec(&mut b, "events_total", "Change events captured, by table and op.", &["table", "op"]),
            transactions_total: counter(&mut b, "transactions_total", "Source transactions captured (with at least one change)."),
            snapshot_rows_total: counter_vec(&mut b, "snapshot_rows_total", "Rows read by the initial snapshot, by table.", &["table"]),
            snapshot_tables_remaining: gauge(&mut b, "snapshot_tables_remaining", "Tables of the initial snapshot not yet copied."),
            heartbeats_total: counter(&mut b, "heartbeats_total", "Heartbeat messages seen coming back through the slot."),
            reconnects_total: counter(&mut b, "reconnects_total", "Replication sessions re-established after a failure."),
            received_lsn: gauge(&mut b, "received_lsn", "Last WAL position received from the source."),
            confirmed_lsn: gauge(&mut b, "confirmed_lsn", "Last WAL position confirmed to the source."),
            kinesis_records_total: counter(&mut b, "kinesis_records_total", "Records acknowledged by Kinesis."),
            kinesis_events_total: counter(&mut b, "kinesis_events_total", "Change events acknowledged by Kinesis (several per record when aggregated)."),
            kinesis_bytes_total: counter(&mut b, "kinesis_bytes_total", "Bytes (data and partition keys) acknowledged by Kinesis."),
            kinesis_put_seconds: histogram(&mut b, "kinesis_put_seconds", "Duration of PutRecords requests.", SECONDS.to_vec()),
            kinesis_throttled_total: counter(&mut b, "kinesis_throttled_total", "PutRecords answers with throttled or failed requests."),
            kinesis_failed_records_total: counter(&mut b, "kinesis_failed_records_total", "PutRecords entries that failed and were retried."),
            kinesis_inflight_requests: gauge(&mut b, "kinesis_inflight_requests", "PutRecords requests in flight."),
            kinesis_sequence_collisions_total: counter(&mut b, "kinesis_sequence_collisions_total", "Records the Kinesis endpoint acknowledged under a sequence number it had just given another record (it kept one of the two; both were sent again)."),
            kinesis_millis_behind_latest: gauge_vec(&mut b, "kinesis_millis_behind_latest", "How far a consumer is behind the tip of a shard (GetRecords MillisBehindLatest).", &["shard"]),
            shards_owned: gauge(&mut b, "shards_owned", "Shards this consumer holds the lease of."),
            lease_changes_total: counter(&mut b, "lease_changes_total", "Shard leases taken or released."),
            batch_events: histogram(&mut b, "batch_events", "Events per applied micro-batch.", vec![1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0]),
            batch_apply_seconds: histogram(&mut b, "batch_apply_seconds", "Duration of a micro-batch (lake and warehouse transaction).", SECONDS.to_vec()),
            warehouse_rows_total: counter_vec(&mut b, "warehouse_rows_total", "Events applied to the warehouse, by source table.", &["table"]),
            lake_files_total: counter(&mut b, "lake_files_total", "Parquet files committed to the lake."),
            lake_bytes_total: counter(&mut b, "lake_bytes_total", "Bytes of Parquet committed to the lake."),
            dead_letters_total: counter_vec(&mut b, "dead_letters_total", "Events that could not be applied, by reason.", &["reason"]),
            end_to_end_latency_seconds: histogram(&mut b, "end_to_end_latency_seconds", "Source commit to warehouse commit, per batch (newest event).", SECONDS.to_vec()),
            applied_position_lsn: gauge(&mut b, "applied_position_lsn", "Highest position (commit LSN) applied to the warehouse."),
            apply_retries_total: counter(&mut b, "apply_retries_total", "Batches retried after a transient warehouse or lake failure."),
            channel_bytes: gauge(&mut b, "channel_bytes", "Bytes of change events captured and not yet applied or published (at most channel-max-bytes; capture waits there)."),
            build_info,
            resident_memory_bytes: gauge(&mut b, "resident_memory_bytes", "Resident set size of the process."),
            open_connections: gauge(&mut b, "open_connections", "Network sockets the process holds open (PostgreSQL, AWS, metrics scrapes)."),
            registry: b.registry,
            names: b.names,
        }
    })
}

/// Resident memory of this process, from /proc.
pub fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: i64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Every series name this binary can export, whether or not it has a sample yet: what the
/// dashboards and alert rules may use.
pub fn exported_names() -> Vec<String> {
    get().names.clone()
}

/// Sockets the process holds open (database, AWS and scrape connections), from /proc.
pub fn open_connections() -> i64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count() as i64
        })
        .unwrap_or(0)
}
