//! Fault injection for the crash tests, compiled only with the `failpoints` cargo feature (which
//! `make test` turns on; a release build has none of it): `TOTES_CDC_FAULT=<point>:<n>` aborts
//! the process the n-th time it reaches `<point>` (as a kill -9 would, with no cleanup),
//! `<point>:<n>:stop` freezes it there instead (SIGSTOP, as a paused pod; SIGCONT resumes), and
//! `TOTES_CDC_FAULT=kinesis-fail:<percent>` fails that share of PutRecords entries as throttled, and
//! `kinesis-throttle-secs:<n>` fails every entry for n seconds from the first PutRecords.

/// The places a crash can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// A batch is committed in the warehouse, not yet acknowledged to capture.
    AfterCommit,
    /// A batch's lake files are written, its warehouse transaction not committed.
    AfterLakeWrite,
    /// A batch is committed in the warehouse, its lake files not yet published.
    BeforeLakePublish,
    /// A row of the initial snapshot is about to be sent downstream.
    SnapshotRow,
}

impl Point {
    /// The name `TOTES_CDC_FAULT` uses.
    pub const fn name(self) -> &'static str {
        match self {
            Point::AfterCommit => "after-commit",
            Point::AfterLakeWrite => "after-lake-write",
            Point::BeforeLakePublish => "before-lake-publish",
            Point::SnapshotRow => "snapshot-row",
        }
    }
}

/// The `TOTES_CDC_FAULT` point whose number is the share (in percent) of Kinesis entries failed.
pub const KINESIS_FAIL: &str = "kinesis-fail";

/// The `TOTES_CDC_FAULT` point whose number is how many seconds, from the first PutRecords, every
/// Kinesis entry fails as throttled (sustained throttling).
pub const KINESIS_THROTTLE_SECS: &str = "kinesis-throttle-secs";

/// The `TOTES_CDC_FAULT` point whose number is the index of a Kinesis shard whose first read a
/// consumer holds back for [`SHARD_HOLD`] (a shard that falls behind the others).
pub const HOLD_SHARD: &str = "hold-shard";
pub const SHARD_HOLD: std::time::Duration = std::time::Duration::from_secs(8);

/// How long to hold back the first read of `shard` (never, without the `failpoints` feature).
#[cfg(feature = "failpoints")]
pub fn shard_hold(shard: &str) -> Option<std::time::Duration> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static HELD: AtomicBool = AtomicBool::new(false);
    match injected::spec() {
        Some((p, idx)) if p == HOLD_SHARD && shard.ends_with(&format!("{idx:012}")) => {
            (!HELD.swap(true, Ordering::Relaxed)).then_some(SHARD_HOLD)
        }
        _ => None,
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn shard_hold(_: &str) -> Option<std::time::Duration> {
    None
}

#[cfg(feature = "failpoints")]
mod injected {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static STOP: OnceLock<bool> = OnceLock::new();
    pub static FIRST_PUT: OnceLock<std::time::Instant> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    static DICE: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

    pub fn spec() -> &'static Option<(String, u64)> {
        SPEC.get_or_init(|| {
            let v = std::env::var("TOTES_CDC_FAULT").ok()?;
            let (point, n) = v.split_once(':')?;
            let n = n.strip_suffix(":stop").unwrap_or(n);
            Some((point.to_string(), n.parse().ok()?))
        })
    }

    /// Whether the point freezes the process rather than abort it.
    pub fn stops() -> bool {
        *STOP.get_or_init(|| std::env::var("TOTES_CDC_FAULT").is_ok_and(|v| v.ends_with(":stop")))
    }

    pub fn hit(name: &str) -> bool {
        matches!(spec(), Some((p, n)) if p == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *n)
    }

    /// A xorshift draw in 0..100.
    pub fn percentile() -> u64 {
        let mut x = DICE.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        DICE.store(x, Ordering::Relaxed);
        x % 100
    }
}

/// Marks a crash point.
#[cfg(feature = "failpoints")]
pub fn point(p: Point) {
    if injected::hit(p.name()) {
        if injected::stops() {
            eprintln!("fault injection: stopping at {}", p.name());
            // Frozen where it stands, sockets open, until SIGCONT.
            let _ = std::process::Command::new("kill")
                .args(["-STOP", &std::process::id().to_string()])
                .status();
            eprintln!("fault injection: resumed at {}", p.name());
            return;
        }
        eprintln!("fault injection: crashing at {}", p.name());
        std::process::abort();
    }
}

/// Marks a crash point (compiled out without the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn point(_: Point) {}

/// Whether to fail this Kinesis entry (as throttled, without sending it).
#[cfg(feature = "failpoints")]
pub fn fail_kinesis_entry() -> bool {
    match injected::spec() {
        Some((p, pct)) if p == KINESIS_FAIL => injected::percentile() < *pct,
        Some((p, secs)) if p == KINESIS_THROTTLE_SECS => {
            let first = injected::FIRST_PUT.get_or_init(std::time::Instant::now);
            first.elapsed() < std::time::Duration::from_secs(*secs)
        }
        _ => false,
    }
}

/// Whether to fail this Kinesis entry (never, without the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn fail_kinesis_entry() -> bool {
    false
}
