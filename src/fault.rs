//! Fault injection for the crash tests, compiled only with the `failpoints` cargo feature (which
//! `make test` turns on; a release build has none of it): `TOTES_CDC_FAULT=<point>:<n>` aborts
//! the process the n-th time it reaches `<point>` (as a kill -9 would, with no cleanup), and
//! `TOTES_CDC_FAULT=kinesis-fail:<percent>` fails that share of PutRecords entries as throttled.

/// The places a crash can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// A batch is committed in the warehouse, not yet acknowledged to capture.
    AfterCommit,
    /// A batch's lake files are written, its warehouse transaction not committed.
    AfterLakeWrite,
}

impl Point {
    /// The name `TOTES_CDC_FAULT` uses.
    pub const fn name(self) -> &'static str {
        match self {
            Point::AfterCommit => "after-commit",
            Point::AfterLakeWrite => "after-lake-write",
        }
    }
}

/// The `TOTES_CDC_FAULT` point whose number is the share (in percent) of Kinesis entries failed.
pub const KINESIS_FAIL: &str = "kinesis-fail";

#[cfg(feature = "failpoints")]
mod injected {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    static DICE: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

    pub fn spec() -> &'static Option<(String, u64)> {
        SPEC.get_or_init(|| {
            let v = std::env::var("TOTES_CDC_FAULT").ok()?;
            let (point, n) = v.split_once(':')?;
            Some((point.to_string(), n.parse().ok()?))
        })
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
        _ => false,
    }
}

/// Whether to fail this Kinesis entry (never, without the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn fail_kinesis_entry() -> bool {
    false
}
