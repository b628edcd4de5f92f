//! The slot watch: every few seconds, on its own connection, what the source says about the
//! slot — lag, retained WAL, safe WAL size, wal_status — into the metrics and `/readyz`, with a
//! warning in the log when retention passes `slot-max-retained-wal` or wal_status leaves
//! `reserved`. Also publishes the capture's received and confirmed positions and its lag.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::stream::CaptureStats;
use super::wal_clock::WalClock;
use crate::metrics::server::Health;
use crate::pg::PgUrl;

pub struct MonitorConfig {
    pub url: PgUrl,
    pub slot: String,
    pub interval: Duration,
    /// Retained WAL above which the slot is reported (bytes).
    pub max_retained: i64,
}

const STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

pub async fn run(
    cfg: MonitorConfig,
    stats: Arc<CaptureStats>,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) {
    let m = crate::metrics::get();
    let mut client: Option<tokio_postgres::Client> = None;
    let mut warned_retained = false;
    let mut warned_status = String::from("reserved");
    let mut clock = WalClock::default();
    // When the source last answered: while it cannot be reached, changes may be waiting that
    // cannot be measured, so the lag in seconds counts from there.
    let mut last_seen_us: Option<i64> = None;
    let mut tick = tokio::time::interval(cfg.interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        // Confirmed first: what was confirmed had been received, also if a commit lands
        // between the two reads.
        let confirmed_here = stats.confirmed_lsn.load(Ordering::Relaxed);
        let received = stats
            .received_lsn
            .load(Ordering::Relaxed)
            .max(confirmed_here);
        m.confirmed_lsn.set(confirmed_here as i64);
        m.received_lsn.set(received as i64);
        // Lag in seconds: the oldest change waiting in the pipeline, or, when none reached
        // it, how long ago the source's WAL passed the confirmed position.
        let now = crate::event::now_us();
        let oldest = stats.oldest_unconfirmed_ts_us.load(Ordering::Relaxed) as i64;
        let waiting = if oldest > 0 {
            (now - oldest).max(0) as f64 / 1e6
        } else {
            0.0
        };
        m.replication_lag_seconds
            .set(waiting.max(clock.lag_seconds(confirmed_here, now)));
        let streaming = stats.streaming.load(Ordering::Relaxed);
        health.set(
            "replication",
            streaming,
            if streaming {
                "streaming"
            } else {
                "not streaming (connecting or retrying)"
            },
        );

        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = cfg.url.connect().await.ok();
        }
        let unseen = |now: i64| last_seen_us.map_or(0.0, |t| (now - t).max(0) as f64 / 1e6);
        let Some(c) = &client else {
            health.set(
                "source",
                false,
                format!("cannot reach {}", cfg.url.target()),
            );
            m.replication_lag_seconds
                .set(m.replication_lag_seconds.get().max(unseen(now)));
            continue;
        };
        let row = c
            .query_opt(
                "SELECT (pg_current_wal_lsn() - '0/0')::bigint, (s.confirmed_flush_lsn - '0/0')::bigint, \
                   (s.restart_lsn - '0/0')::bigint, s.wal_status, s.safe_wal_size, s.active \
                 FROM pg_replication_slots s WHERE s.slot_name = $1",
                &[&cfg.slot],
            )
            .await;
        let row = match row {
            Ok(Some(r)) => r,
            Ok(None) => {
                health.set("source", true, "slot not created yet");
                continue;
            }
            Err(e) => {
                health.set("source", false, format!("reading the slot: {e}"));
                m.replication_lag_seconds
                    .set(m.replication_lag_seconds.get().max(unseen(now)));
                continue;
            }
        };
        health.set("source", true, cfg.url.target());
        last_seen_us = Some(now);
        let current: i64 = row.get(0);
        let confirmed: Option<i64> = row.get(1);
        let restart: Option<i64> = row.get(2);
        let status: Option<String> = row.get(3);
        let safe: Option<i64> = row.get(4);
        let active: bool = row.get(5);
        clock.record(now, current.max(0) as u64);
        let confirmed_any = confirmed.map_or(0, |c| c.max(0) as u64).max(confirmed_here);
        m.replication_lag_seconds
            .set(waiting.max(clock.lag_seconds(confirmed_any, now)));
        let lag = confirmed.map_or(0, |c| (current - c).max(0));
        let retained = restart.map_or(0, |r| (current - r).max(0));
        m.replication_lag_bytes.set(lag);
        m.slot_retained_wal_bytes.set(retained);
        m.slot_safe_wal_size_bytes.set(safe.unwrap_or(-1));
        m.slot_active.set(active as i64);
        let status = status.unwrap_or_else(|| "lost".into());
        for s in STATUSES {
            m.slot_wal_status
                .with_label_values(&[s])
                .set((s == status) as i64);
        }
        if retained > cfg.max_retained {
            let msg = format!(
                "slot {} retains {retained} bytes of WAL on the source (threshold {}): capture is behind or stopped; the source's disk fills until it catches up",
                cfg.slot, cfg.max_retained
            );
            if !warned_retained {
                tracing::warn!("{msg}");
                warned_retained = true;
            }
            health.warn("slot_retained_wal", Some(msg));
        } else {
            warned_retained = false;
            health.warn("slot_retained_wal", None);
        }
        if status != "reserved" {
            let msg = if status == "lost" {
                format!(
                    "slot {} is invalidated (wal_status lost): changes were lost; recover with `totes-cdc resync`",
                    cfg.slot
                )
            } else {
                format!(
                    "slot {} has wal_status {status}: the WAL it needs is beyond max_wal_size{}",
                    cfg.slot,
                    safe.map_or(String::new(), |s| format!(
                        "; {s} bytes left before it is lost"
                    ))
                )
            };
            if warned_status != status {
                tracing::warn!("{msg}");
                warned_status = status.clone();
            }
            health.warn("slot_wal_status", Some(msg));
        } else {
            warned_status = status;
            health.warn("slot_wal_status", None);
        }
    }
}
