//! Fault injection for the crash tests: `TOTES_CDC_FAULT=<point>:<n>` aborts the process the
//! n-th time it reaches `<point>` (as a kill -9 would, with no cleanup). Unset, it costs one
//! relaxed load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn spec() -> &'static Option<(String, u64)> {
    SPEC.get_or_init(|| {
        let v = std::env::var("TOTES_CDC_FAULT").ok()?;
        let (point, n) = v.split_once(':')?;
        Some((point.to_string(), n.parse().ok()?))
    })
}

/// Marks a crash point: `after-commit` (a batch is committed in the warehouse, not yet
/// acknowledged to capture), `after-lake-write` (its files are written, the warehouse
/// transaction not committed).
pub fn point(name: &str) {
    if let Some((p, n)) = spec() {
        if p == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            eprintln!("fault injection: crashing at {name} #{n}");
            std::process::abort();
        }
    }
}
