//! The replication slot as `pg_replication_slots` shows it.

use tokio_postgres::Client;

use super::CaptureError;
use crate::event::Lsn;
use crate::pg::PgUrl;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub plugin: String,
    pub database: String,
    pub active: bool,
    pub restart_lsn: Option<Lsn>,
    pub confirmed_flush_lsn: Option<Lsn>,
    /// reserved, extended, unreserved or lost.
    pub wal_status: Option<String>,
    pub safe_wal_size: Option<i64>,
}

fn lsn(s: Option<String>) -> Option<Lsn> {
    s.and_then(|s| Lsn::parse(&s).ok())
}

/// The slot, if it exists.
pub async fn slot_info(
    client: &Client,
    url: &PgUrl,
    slot: &str,
) -> Result<Option<SlotInfo>, CaptureError> {
    let row = client
        .query_opt(
            "SELECT coalesce(plugin::text, ''), coalesce(database::text, ''), active, \
             restart_lsn::text, confirmed_flush_lsn::text, wal_status, safe_wal_size \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| url.query_error("reading pg_replication_slots", e))?;
    Ok(row.map(|r| SlotInfo {
        plugin: r.get(0),
        database: r.get(1),
        active: r.get(2),
        restart_lsn: lsn(r.get(3)),
        confirmed_flush_lsn: lsn(r.get(4)),
        wal_status: r.get(5),
        safe_wal_size: r.get(6),
    }))
}

/// Checks that an existing slot can serve this capture.
pub fn check_slot(slot: &str, info: &SlotInfo, database: &str) -> Result<(), CaptureError> {
    if info.plugin != "pgoutput" {
        return Err(CaptureError::WrongPlugin {
            slot: slot.into(),
            plugin: info.plugin.clone(),
        });
    }
    if info.database != database {
        return Err(CaptureError::WrongDatabase {
            slot: slot.into(),
            database: info.database.clone(),
            expected: database.into(),
        });
    }
    if info.wal_status.as_deref() == Some("lost") {
        return Err(CaptureError::SlotLost { slot: slot.into() });
    }
    Ok(())
}

/// Slot names PostgreSQL accepts.
pub fn validate_slot_name(slot: &str) -> Result<(), CaptureError> {
    let ok = !slot.is_empty()
        && slot.len() <= 63
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CaptureError::BadSlotName(slot.into()))
    }
}

/// What CREATE_REPLICATION_SLOT answered.
pub struct Created {
    pub consistent_point: Lsn,
    /// The exported snapshot's name, when one was asked for.
    pub snapshot: Option<String>,
}

/// Reads CREATE_REPLICATION_SLOT's answer (slot_name, consistent_point, snapshot_name,
/// output_plugin).
pub fn created(rows: &[pgwire_replication::QueryRow]) -> Result<Created, CaptureError> {
    let text = |i: usize| -> Option<String> {
        rows.first()
            .and_then(|r| r.get(i).cloned().flatten())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let consistent_point =
        text(1)
            .and_then(|s| Lsn::parse(&s).ok())
            .ok_or_else(|| CaptureError::Stream {
                message: "CREATE_REPLICATION_SLOT returned no consistent point".into(),
                hint: "check the server log".into(),
            })?;
    Ok(Created {
        consistent_point,
        snapshot: text(2),
    })
}
