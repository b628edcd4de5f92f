//! Retrying transient faults: exponential backoff with jitter, shared by every role (capture's
//! reconnects, apply's batch retries, the Kinesis producer and consumer, replay).

use std::time::Duration;

/// A delay below `max`, from the clock's low bits: enough to keep replicas and retries from
/// running in step.
pub fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    Duration::from_nanos(nanos % (max.as_nanos() as u64).max(1))
}

/// Exponential backoff with jitter: 100 ms doubling up to 30 s.
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn new() -> Self {
        Self { attempt: 0 }
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = 100u64.saturating_mul(1 << self.attempt.min(9)).min(30_000);
        self.attempt += 1;
        Duration::from_millis(base / 2) + jitter(Duration::from_millis(base / 2 + 1))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}
