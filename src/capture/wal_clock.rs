//! When the source's WAL reached each LSN, from the slot watch's polls of
//! `pg_current_wal_lsn()`. Turns "confirmed up to LSN X" into "confirmed up to time T", so
//! replication lag in seconds grows even when nothing reaches the capture (a disconnected
//! stream, a long transaction still being decoded), not only while events wait in memory.

use std::collections::VecDeque;

/// Polls kept: at the watch's interval of a few seconds, hours of history; older ones only
/// make a lag that is already huge a little less precise.
const MAX_POINTS: usize = 8192;

#[derive(Default)]
pub struct WalClock {
    /// (time µs, current WAL LSN), LSNs non-decreasing.
    points: VecDeque<(i64, u64)>,
}

impl WalClock {
    pub fn record(&mut self, time_us: i64, lsn: u64) {
        if self.points.back().is_some_and(|&(_, l)| l > lsn) {
            // The server went backwards (a different cluster behind the same URL): start over.
            self.points.clear();
        }
        self.points.push_back((time_us, lsn));
        if self.points.len() > MAX_POINTS {
            self.points.pop_front();
        }
    }

    /// Seconds between `now_us` and the moment the WAL was at `confirmed` (interpolated between
    /// polls); 0 when `confirmed` is at or past the newest poll.
    pub fn lag_seconds(&mut self, confirmed: u64, now_us: i64) -> f64 {
        // Points wholly behind `confirmed` are history; keep the last one to interpolate from.
        while self.points.len() >= 2 && self.points[1].1 <= confirmed {
            self.points.pop_front();
        }
        let Some(&(_, newest)) = self.points.back() else {
            return 0.0;
        };
        if confirmed >= newest {
            return 0.0;
        }
        let (t0, l0) = self.points[0];
        let reached_at = if l0 > confirmed {
            // Behind everything we have seen: at least as old as the oldest poll.
            t0
        } else {
            let (t1, l1) = self.points[1];
            let frac = (confirmed - l0) as f64 / (l1 - l0).max(1) as f64;
            t0 + ((t1 - t0) as f64 * frac) as i64
        };
        (now_us - reached_at).max(0) as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn caught_up_is_zero() {
        let mut c = WalClock::default();
        c.record(0, 100);
        c.record(2 * S, 200);
        assert_eq!(c.lag_seconds(200, 3 * S), 0.0);
        assert_eq!(c.lag_seconds(250, 3 * S), 0.0);
    }

    #[test]
    fn behind_is_the_age_of_the_confirmed_position() {
        let mut c = WalClock::default();
        c.record(0, 100);
        c.record(10 * S, 200);
        c.record(20 * S, 300);
        // 150 was written half-way between the first two polls.
        assert_eq!(c.lag_seconds(150, 20 * S), 15.0);
        // Keeps growing while nothing is confirmed.
        assert_eq!(c.lag_seconds(150, 30 * S), 25.0);
        // Older than every poll: at least the oldest poll's age.
        let mut c = WalClock::default();
        c.record(5 * S, 100);
        c.record(6 * S, 200);
        assert_eq!(c.lag_seconds(50, 10 * S), 5.0);
    }

    #[test]
    fn history_is_pruned_and_bounded() {
        let mut c = WalClock::default();
        for i in 0..(MAX_POINTS as i64 + 100) {
            c.record(i * S, i as u64 * 10);
        }
        assert_eq!(c.points.len(), MAX_POINTS);
        c.lag_seconds(MAX_POINTS as u64 * 10, 0);
        assert!(c.points.len() <= 101);
        // A server that went backwards starts a new history.
        c.record(0, 5);
        assert_eq!(c.points.len(), 1);
    }
}
