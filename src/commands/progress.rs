//! The live progress line of `run --progress`: events/s, replication lag in bytes and seconds,
//! batches, lake files and warehouse row counts, redrawn in place once a second; and the
//! summary printed at the end.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::apply::ApplyStats;
use crate::capture::stream::CaptureStats;
use crate::pg::PgUrl;

const COUNTED: &[(&str, &str)] = &[
    ("fact_sales_order", "sales"),
    ("fact_purchase_order", "purchases"),
    ("fact_payment", "payments"),
];

fn human_bytes(b: i64) -> String {
    let b = b.max(0) as f64;
    if b < 1024.0 {
        format!("{b:.0} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{:.1} MiB", b / 1048576.0)
    }
}

/// Draws the line until `stop`, then prints the summary.
pub async fn run(
    source: PgUrl,
    warehouse: PgUrl,
    schema: String,
    capture: Arc<CaptureStats>,
    apply: Arc<ApplyStats>,
    mut stop: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let mut src = None;
    let mut wh = None;
    let mut last_events = 0u64;
    let mut last_at = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut counts = String::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        if src
            .as_ref()
            .is_none_or(|c: &tokio_postgres::Client| c.is_closed())
        {
            src = source.connect().await.ok();
        }
        if wh
            .as_ref()
            .is_none_or(|c: &tokio_postgres::Client| c.is_closed())
        {
            wh = warehouse.connect().await.ok();
        }
        let confirmed = capture.confirmed_lsn.load(Ordering::Relaxed);
        let mut lag_bytes = None;
        if let Some(c) = &src {
            if let Ok(r) = c
                .query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[])
                .await
            {
                lag_bytes = Some((r.get::<_, i64>(0) - confirmed as i64).max(0));
            }
        }
        if let Some(c) = &wh {
            let mut parts = Vec::new();
            for (table, label) in COUNTED {
                let sql = format!("SELECT count(*) FROM {}.{table}", crate::pg::ident(&schema));
                if let Ok(r) = c.query_one(sql.as_str(), &[]).await {
                    parts.push(format!("{label} {}", r.get::<_, i64>(0)));
                }
            }
            if !parts.is_empty() {
                counts = parts.join(", ");
            }
        }
        let events =
            capture.events.load(Ordering::Relaxed) + capture.snapshot_rows.load(Ordering::Relaxed);
        let rate = (events - last_events) as f64 / last_at.elapsed().as_secs_f64().max(0.001);
        last_events = events;
        last_at = Instant::now();
        // Seconds behind: the age of the newest applied change while changes wait; nothing
        // waiting is no lag.
        let lag_secs = match lag_bytes {
            Some(b) if b > 16 * 1024 => {
                apply.last_latency_ms.load(Ordering::Relaxed) as f64 / 1000.0
            }
            _ => 0.0,
        };
        let line = format!(
            "{:>5.0} events/s | lag {} {lag_secs:.1}s | {} batches | lake {} files | warehouse: {counts}",
            rate,
            lag_bytes.map_or("?".into(), human_bytes),
            apply.batches.load(Ordering::Relaxed),
            apply.lake_files.load(Ordering::Relaxed),
        );
        let mut err = std::io::stderr();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
    }
    let secs = started.elapsed().as_secs_f64();
    let events =
        capture.events.load(Ordering::Relaxed) + capture.snapshot_rows.load(Ordering::Relaxed);
    eprintln!(
        "\r\x1b[2K\nsummary: {} events ({} from the snapshot) in {:.0}s, {} transactions, {} batches, {} dead letters, {} lake files ({}); warehouse: {counts}",
        events,
        capture.snapshot_rows.load(Ordering::Relaxed),
        secs,
        capture.transactions.load(Ordering::Relaxed),
        apply.batches.load(Ordering::Relaxed),
        apply.dead_letters.load(Ordering::Relaxed),
        apply.lake_files.load(Ordering::Relaxed),
        human_bytes(apply.lake_bytes.load(Ordering::Relaxed) as i64),
    );
}
