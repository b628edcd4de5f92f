//! `totes-cdc status [--json]`: the slot, the source's WAL position, what the warehouse applied,
//! the lag in bytes and seconds, and the dead letters.

use anyhow::Result;
use serde_json::json;

use crate::capture::slot;
use crate::config::StatusArgs;

pub async fn run(args: StatusArgs) -> Result<()> {
    let source = super::source_url(&args.source.url, "status")?;
    let src = source.connect().await?;
    let slot_name = &args.source.slot;
    let current: String = src
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(|e| source.query_error("reading the current WAL position", e))?
        .get(0);
    let info = slot::slot_info(&src, &source, slot_name).await?;
    let row = src
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint, \
               pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint, \
               extract(epoch FROM r.flush_lag)::float8 \
             FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = $1",
            &[slot_name],
        )
        .await
        .map_err(|e| source.query_error("reading the slot's lag", e))?;
    let lag_bytes: Option<i64> = row.as_ref().and_then(|r| r.get(0));
    let retained: Option<i64> = row.as_ref().and_then(|r| r.get(1));
    let flush_lag: Option<f64> = row.as_ref().and_then(|r| r.get(2));

    let mut applied_lsn: Option<String> = None;
    let mut applied_age: Option<f64> = None;
    let mut dead_letters: Option<i64> = None;
    let wh_url = super::warehouse_url_option(&args.warehouse)?;
    let has_warehouse = wh_url.is_some();
    if let Some(wh_url) = wh_url {
        let wh = wh_url.connect().await?;
        use crate::apply::warehouse::bookkeeping;
        if let Ok(Some((lsn, age))) = bookkeeping::checkpoint_age(&wh, super::run::CHECKPOINT).await
        {
            applied_lsn = lsn;
            applied_age = age;
        }
        dead_letters = bookkeeping::dead_letter_count(&wh).await.ok();
    }
    // Seconds behind: the source's own measure (flush_lag of the slot's sender) while it
    // streams; when nothing streams but WAL waits, the time since the warehouse last applied.
    let active = info.as_ref().is_some_and(|i| i.active);
    let lag_seconds: Option<f64> = match lag_bytes {
        None => None,
        Some(0) => Some(0.0),
        Some(_) if active => Some(flush_lag.unwrap_or(0.0)),
        Some(_) => applied_age,
    };

    let confirmed = info
        .as_ref()
        .and_then(|i| i.confirmed_flush_lsn)
        .map(|l| l.to_string());
    if args.json {
        let out = json!({
            "source_current_lsn": current,
            "slot": slot_name,
            "slot_exists": info.is_some(),
            "slot_active": active,
            "slot_confirmed_flush_lsn": confirmed,
            "slot_restart_lsn": info.as_ref().and_then(|i| i.restart_lsn).map(|l| l.to_string()),
            "slot_wal_status": info.as_ref().and_then(|i| i.wal_status.clone()),
            "slot_retained_wal_bytes": retained,
            "slot_safe_wal_size_bytes": info.as_ref().and_then(|i| i.safe_wal_size),
            "warehouse_applied_lsn": applied_lsn,
            "lag_bytes": lag_bytes,
            "lag_seconds": lag_seconds,
            "dead_letters": dead_letters,
        });
        println!("{out}");
        return Ok(());
    }
    println!("source      {}  current WAL {current}", source.masked());
    match &info {
        None => {
            println!("slot        {slot_name}: does not exist (created when capture first starts)")
        }
        Some(i) => {
            println!(
                "slot        {slot_name}: {}, confirmed {}, restart {}, wal_status {}",
                if i.active { "active" } else { "inactive" },
                confirmed.clone().unwrap_or_default(),
                i.restart_lsn.map(|l| l.to_string()).unwrap_or_default(),
                i.wal_status.clone().unwrap_or_default()
            );
            println!(
                "            retained WAL {}, safe WAL size {}",
                bytes(retained),
                i.safe_wal_size
                    .map_or("unlimited".into(), |b| bytes(Some(b)))
            );
        }
    }
    if has_warehouse {
        println!(
            "warehouse   applied up to {}, dead letters {}",
            applied_lsn.unwrap_or_else(|| "nothing yet".into()),
            dead_letters.unwrap_or(0)
        );
    }
    println!(
        "lag         {} / {}",
        bytes(lag_bytes),
        lag_seconds.map_or("unknown".into(), |s| format!("{s:.1} s"))
    );
    Ok(())
}

fn bytes(b: Option<i64>) -> String {
    match b {
        None => "unknown".into(),
        Some(b) if b.abs() < 1024 => format!("{b} B"),
        Some(b) if b.abs() < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        Some(b) if b.abs() < 1024 * 1024 * 1024 => format!("{:.1} MiB", b as f64 / 1048576.0),
        Some(b) => format!("{:.2} GiB", b as f64 / 1073741824.0),
    }
}
