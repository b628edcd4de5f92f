//! Capture: from a logical replication slot (pgoutput) to ordered change events, starting with
//! a consistent initial snapshot, confirming to the server only what the sink made durable.

pub mod backfill;
pub mod catalog;
mod error;
pub mod heartbeat;
pub mod monitor;
pub mod pgoutput;
pub mod preflight;
pub mod redo;
pub mod slot;
pub mod snapshot;
pub mod state;
pub mod stream;
pub mod wal_clock;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{PgWireError, ReplicationClient};
use tokio::sync::watch;

pub use error::CaptureError;

use crate::channel::SinkSender;
use crate::event::Lsn;
use crate::pg::{sqlstate_of, PgUrl};
use catalog::{Catalog, TableName};
use snapshot::{run_snapshot, SnapshotEnd, SnapshotJob};
use state::{SnapshotState, StateFile};
use stream::{CaptureStats, SessionEnd, SessionError, Streamer};

/// When to take the initial snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// When the slot is created, and to finish one a crash interrupted.
    Initial,
    /// Never: stream changes only.
    Never,
}

/// Raw replication messages the replication library may buffer ahead of decoding.
pub const RAW_BUFFER_MESSAGES: usize = 16;

#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub source: PgUrl,
    pub slot: String,
    pub publication: String,
    /// Narrow capture to these tables of the publication.
    pub tables: Option<Vec<TableName>>,
    pub state_dir: PathBuf,
    pub snapshot: SnapshotMode,
    pub snapshot_parallelism: usize,
    /// A table of at least twice this many pages is copied in pieces.
    pub snapshot_chunk_pages: u32,
    /// Interval of the transactional heartbeat; `None` turns it off.
    pub heartbeat: Option<Duration>,
    /// How often confirmed positions are reported to the server.
    pub status_interval: Duration,
    /// Bound of the channel from the replication connection.
    pub buffer_events: usize,
    /// How long shutdown waits for the sink to acknowledge what is in flight.
    pub drain_timeout: Duration,
    /// Stop once everything up to this LSN is confirmed.
    pub until: Option<Lsn>,
    /// Retained WAL above which the slot is reported in the log and `/readyz` (bytes).
    pub slot_max_retained_wal: i64,
}

/// Checks the source as capture would and describes the tables it will capture (for creating
/// their mirrors downstream).
pub async fn describe_tables(
    url: &PgUrl,
    publication: &str,
    wanted: Option<&[TableName]>,
) -> Result<Vec<Arc<crate::event::TableSchema>>, CaptureError> {
    let control = url.connect().await?;
    preflight::check_wal_level(&control, url).await?;
    preflight::check_replication_role(&control, url).await?;
    let tables = preflight::captured_tables(&control, url, publication, wanted).await?;
    preflight::check_tables(&control, url, &tables).await?;
    let mut catalog = Catalog::new(url.clone(), control);
    let mut out = Vec::with_capacity(tables.len());
    for t in &tables {
        out.push(catalog.table_schema(t, publication).await?);
    }
    Ok(out)
}

/// Runs capture until `shutdown` turns true (then drains, confirms and returns `Ok`) or a
/// permanent error. Transient failures (server restart, dropped connection) are retried with
/// backoff from the last confirmed position.
pub async fn run(
    cfg: CaptureConfig,
    mut sink: SinkSender,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<CaptureStats>,
    health: Arc<crate::metrics::server::Health>,
) -> Result<(), CaptureError> {
    slot::validate_slot_name(&cfg.slot)?;
    let url = &cfg.source;
    let control = url.connect().await?;
    preflight::check_wal_level(&control, url).await?;
    preflight::check_replication_role(&control, url).await?;
    let tables =
        preflight::captured_tables(&control, url, &cfg.publication, cfg.tables.as_deref()).await?;
    preflight::check_tables(&control, url, &tables).await?;
    let allowed: Option<HashSet<TableName>> =
        cfg.tables.as_ref().map(|t| t.iter().cloned().collect());

    let mut catalog = Catalog::new(url.clone(), control);
    let state_file = StateFile::new(&cfg.state_dir, &cfg.slot);
    url.check_auth(true).await?;
    let repl = url
        .replication_config(&cfg.slot, &cfg.publication)?
        .with_status_interval(cfg.status_interval)
        .with_wakeup_interval(cfg.status_interval)
        .with_buffer_size(cfg.buffer_events);

    let existing = slot::slot_info(catalog.client().await?, url, &cfg.slot).await?;
    let (mut client, confirmed) = match existing {
        None => {
            // New slot: its exported snapshot is what the copy reads, so the stream that starts
            // at its consistent point continues exactly where the copy ends.
            let mut client = ReplicationClient::connect_gated(repl.clone())
                .await
                .map_err(|e| replication_error(e, &cfg))?;
            let export = if cfg.snapshot == SnapshotMode::Initial {
                "(SNAPSHOT 'export')"
            } else {
                "(SNAPSHOT 'nothing')"
            };
            let rows = client
                .simple_query(&format!(
                    "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {export}",
                    cfg.slot
                ))
                .await
                .map_err(|e| replication_error(e, &cfg))?;
            let created = slot::created(&rows)?;
            let cp = created.consistent_point;
            tracing::info!(slot = %cfg.slot, consistent_point = %cp, "replication slot created");
            if cfg.snapshot == SnapshotMode::Initial {
                let mut state = SnapshotState {
                    slot: cfg.slot.clone(),
                    consistent_point: cp.to_string(),
                    ..Default::default()
                };
                state_file.store(&state)?;
                let mut schemas = Vec::new();
                for t in &tables {
                    schemas.push(catalog.table_schema(t, &cfg.publication).await?);
                }
                let job = SnapshotJob {
                    url: url.clone(),
                    tables: schemas,
                    snapshot_name: created.snapshot.clone(),
                    skip: None,
                    consistent_point: cp,
                    attempt: 0,
                    parallelism: cfg.snapshot_parallelism,
                    chunk_pages: cfg.snapshot_chunk_pages,
                    drain_timeout: cfg.drain_timeout,
                };
                let end = run_snapshot(
                    job,
                    &mut sink,
                    &state_file,
                    &mut state,
                    &stats,
                    &mut shutdown,
                )
                .await?;
                if let SnapshotEnd::Interrupted { tables_left } = end {
                    client.abort();
                    snapshot_interrupted(tables_left);
                    return Ok(());
                }
            }
            client
                .start()
                .await
                .map_err(|e| replication_error(e, &cfg))?;
            (client, cp)
        }
        Some(info) => {
            slot::check_slot(&cfg.slot, &info, &url.database())?;
            let confirmed = info.confirmed_flush_lsn.unwrap_or_default();
            if cfg.snapshot == SnapshotMode::Initial {
                let state = state_file.load()?;
                let (mut state, todo) = unfinished_tables(state, &cfg.slot, confirmed, &tables);
                if !todo.is_empty() {
                    let mut schemas = Vec::new();
                    for t in &todo {
                        schemas.push(catalog.table_schema(t, &cfg.publication).await?);
                    }
                    state.attempt += 1;
                    if state.attempt >= crate::event::SNAPSHOT_ATTEMPTS {
                        return Err(CaptureError::Stream {
                            message: format!(
                                "the initial snapshot of slot \"{}\" failed {} times",
                                cfg.slot, state.attempt
                            ),
                            hint: "fix what the log says stopped it, then run `totes-cdc resync` to start over with a new slot".into(),
                        });
                    }
                    state_file.store(&state)?;
                    let cp = Lsn::parse(&state.consistent_point).unwrap_or(confirmed);
                    // The rows as they were at the consistent point (see `redo`).
                    let exported = redo::export_snapshot(url, &cfg.slot, &cfg.publication).await?;
                    let changed = redo::changed_keys(
                        url,
                        &mut catalog,
                        &cfg.slot,
                        &cfg.publication,
                        exported.consistent_point,
                        &schemas,
                    )
                    .await?;
                    tracing::warn!(
                        tables = todo.len(),
                        attempt = state.attempt,
                        consistent_point = %cp,
                        redo_snapshot_at = %exported.consistent_point,
                        changed_rows_left_to_the_stream = changed.len(),
                        "the initial snapshot did not finish: copying the unfinished tables again as they were at the consistent point"
                    );
                    let job = SnapshotJob {
                        url: url.clone(),
                        tables: schemas,
                        snapshot_name: Some(exported.name.clone()),
                        skip: Some(Arc::new(changed)),
                        consistent_point: cp,
                        attempt: state.attempt,
                        parallelism: cfg.snapshot_parallelism,
                        chunk_pages: cfg.snapshot_chunk_pages,
                        drain_timeout: cfg.drain_timeout,
                    };
                    let end = run_snapshot(
                        job,
                        &mut sink,
                        &state_file,
                        &mut state,
                        &stats,
                        &mut shutdown,
                    )
                    .await?;
                    // Ends the temporary slot's session (and so the slot).
                    drop(exported);
                    if let SnapshotEnd::Interrupted { tables_left } = end {
                        snapshot_interrupted(tables_left);
                        return Ok(());
                    }
                } else if !state.complete {
                    state.complete = true;
                    state_file.store(&state)?;
                }
            }
            let client = ReplicationClient::connect(repl.clone().with_ack_lsn(confirmed))
                .await
                .map_err(|e| replication_error(e, &cfg))?;
            (client, confirmed)
        }
    };

    let monitor = tokio::spawn(monitor::run(
        monitor::MonitorConfig {
            url: url.clone(),
            slot: cfg.slot.clone(),
            interval: cfg.status_interval.max(Duration::from_millis(500)) * 2,
            max_retained: cfg.slot_max_retained_wal,
        },
        stats.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let heartbeat_ok = Arc::new(AtomicBool::new(true));
    let heartbeat = cfg.heartbeat.map(|interval| {
        tokio::spawn(heartbeat::run(
            url.clone(),
            interval,
            shutdown.clone(),
            heartbeat_ok.clone(),
        ))
    });

    let snapshot_state = match cfg.snapshot {
        SnapshotMode::Initial => state_file.load()?,
        _ => None,
    };
    let backfill = backfill::Backfills::new(
        &cfg.slot,
        state_file.clone(),
        snapshot_state,
        &cfg.publication,
        allowed.clone(),
    );
    let mut streamer = Streamer::new(
        catalog,
        allowed,
        confirmed,
        stats.clone(),
        cfg.until,
        backfill,
    );
    let mut backoff = crate::retry::Backoff::new();
    let result = loop {
        let started = tokio::time::Instant::now();
        let end = match client.wait_started().await {
            Ok(()) => {
                tracing::info!(slot = %cfg.slot, from = %streamer.confirmed(), "streaming changes");
                streamer
                    .run_session(&mut client, &mut sink, &mut shutdown)
                    .await
            }
            Err(e) => Err(SessionError::Replication(e)),
        };
        let err = match end {
            Ok(SessionEnd::Shutdown) => {
                break drain(&cfg, &mut streamer, &mut client, &mut sink).await;
            }
            Ok(SessionEnd::Closed) => CaptureError::Stream {
                message: "the server ended the replication stream".into(),
                hint: "reconnecting".into(),
            },
            Err(SessionError::Capture(e)) => {
                if !e.is_transient() {
                    break Err(e);
                }
                e
            }
            Err(SessionError::Replication(e)) => {
                let transient = replication_is_transient(&e);
                let e = replication_error(e, &cfg);
                if !transient {
                    break Err(explain_with_slot(&cfg, e).await);
                }
                e
            }
        };
        if started.elapsed() > Duration::from_secs(30) {
            backoff = crate::retry::Backoff::new();
        }
        let delay = backoff.next_delay();
        tracing::warn!(
            "replication interrupted, retrying in {:.1}s from {}: {err}",
            delay.as_secs_f64(),
            streamer.confirmed()
        );
        crate::metrics::get().reconnects_total.inc();
        stats
            .streaming
            .store(false, std::sync::atomic::Ordering::Relaxed);
        client.abort();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => {
                break drain_without_session(&cfg, &mut sink).await;
            }
        }
        let from = streamer.confirmed();
        client =
            match ReplicationClient::connect(repl.clone().with_start_lsn(from).with_ack_lsn(from))
                .await
            {
                Ok(c) => c,
                Err(e) => break Err(explain_with_slot(&cfg, replication_error(e, &cfg)).await),
            };
    };
    if let Some(h) = heartbeat {
        h.abort();
    }
    monitor.abort();
    result
}

/// Shutdown during the initial snapshot: the slot stays where it was created, and the next start
/// copies the tables not yet done again, as they were at the consistent point.
fn snapshot_interrupted(tables_left: usize) {
    tracing::info!(
        tables_left,
        "shutdown: the initial snapshot stopped; the next start copies the unfinished tables again"
    );
}

/// Which tables still need copying: all of them unless a state for this slot incarnation
/// records some as done.
fn unfinished_tables(
    state: Option<SnapshotState>,
    slot: &str,
    confirmed: Lsn,
    tables: &[TableName],
) -> (SnapshotState, Vec<TableName>) {
    match state {
        Some(s) if s.slot == slot && s.complete => (s, Vec::new()),
        Some(s) if s.slot == slot && Lsn::parse(&s.consistent_point).ok() == Some(confirmed) => {
            let todo = tables
                .iter()
                .filter(|t| !s.done_tables.contains(&t.to_string()))
                .cloned()
                .collect();
            (s, todo)
        }
        _ => (
            SnapshotState {
                slot: slot.into(),
                consistent_point: confirmed.to_string(),
                ..Default::default()
            },
            tables.to_vec(),
        ),
    }
}

/// After shutdown was requested: wait for the sink to acknowledge what is in flight, confirm
/// it, and make sure the server received the confirmation before ending the session.
async fn drain(
    cfg: &CaptureConfig,
    streamer: &mut Streamer,
    client: &mut ReplicationClient,
    sink: &mut SinkSender,
) -> Result<(), CaptureError> {
    let deadline = tokio::time::Instant::now() + cfg.drain_timeout;
    while !sink.idle() {
        tokio::select! {
            r = sink.ack_watch().changed() => if r.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(
                    "shutdown: the sink did not acknowledge everything within {:?}; the rest is re-sent on restart",
                    cfg.drain_timeout
                );
                break;
            }
        }
        streamer.confirm_acked(client, sink);
    }
    streamer.confirm_acked(client, sink);
    let target = streamer.confirmed();
    let metrics = client.metrics();
    let deadline = tokio::time::Instant::now() + cfg.status_interval * 3 + Duration::from_secs(1);
    while metrics.last_applied_lsn() < target && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(confirmed = %target, "shutdown: position confirmed");
    client.stop();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.shutdown()).await;
    Ok(())
}

/// Shutdown while disconnected: nothing can be confirmed now; in-flight events are re-sent on
/// the next start.
async fn drain_without_session(
    cfg: &CaptureConfig,
    sink: &mut SinkSender,
) -> Result<(), CaptureError> {
    let _ = tokio::time::timeout(cfg.drain_timeout, async {
        while !sink.idle() {
            if sink.ack_watch().changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    Ok(())
}

fn replication_is_transient(e: &PgWireError) -> bool {
    match e {
        PgWireError::Io(_) | PgWireError::Task(_) | PgWireError::Protocol(_) => true,
        // As a refused session: a database closed to connections for a while is waited out.
        PgWireError::Server(msg) => sqlstate_of(msg).is_some_and(|c| {
            crate::error_policy::for_connect_refusal(c, msg) == crate::error_policy::Action::Retry
        }),
        _ => false,
    }
}

/// A replication session refused for good: when the reason is that the server invalidated the
/// slot (it ends the session holding it), say so with the recovery instead of the bare refusal.
async fn explain_with_slot(cfg: &CaptureConfig, e: CaptureError) -> CaptureError {
    let Ok(client) = cfg.source.connect().await else {
        return e;
    };
    match slot::slot_info(&client, &cfg.source, &cfg.slot).await {
        Ok(Some(info)) if info.wal_status.as_deref() == Some("lost") => CaptureError::SlotLost {
            slot: cfg.slot.clone(),
        },
        _ => e,
    }
}

/// A replication error with the cause and fix spelled out.
fn replication_error(e: PgWireError, cfg: &CaptureConfig) -> CaptureError {
    let url = &cfg.source;
    let (message, hint) = match &e {
        PgWireError::Auth(m) => (
            format!("authentication failed for user \"{}\": {m}", url.user()),
            format!("check the user and password in {}", url.what()),
        ),
        PgWireError::Tls(m) => (
            format!("TLS to {} failed: {m}", url.target()),
            format!(
                "check sslmode, sslrootcert, sslcert and sslkey in {} against the server's TLS settings (the CA in sslrootcert must have signed the server's certificate, and under verify-full the certificate must name the host)",
                url.what()
            ),
        ),
        PgWireError::Io(io) => (
            format!("cannot reach {}: {io}", url.target()),
            "check that the server is running; totes-cdc retries".into(),
        ),
        PgWireError::Server(m) => {
            let hint = match sqlstate_of(m) {
                Some("42704") => format!(
                    "the slot \"{}\" or publication \"{}\" is gone; run `totes-cdc setup`, and `totes-cdc resync` to recreate the slot",
                    cfg.slot, cfg.publication
                ),
                Some("55006") => format!(
                    "another process holds the slot \"{}\" (one streamer per slot); it is retried until that process ends",
                    cfg.slot
                ),
                Some("55000") => format!(
                    "the slot \"{}\" cannot be used (invalidated?); recover with `totes-cdc resync`",
                    cfg.slot
                ),
                Some("42501") => format!(
                    "grant replication to the role: ALTER ROLE {} REPLICATION;",
                    url.user()
                ),
                Some("53300") => "the server has no free replication connections; raise max_wal_senders (restart needed)".into(),
                _ => "see the server log for details".into(),
            };
            (m.clone(), hint)
        }
        other => (other.to_string(), "see the log for details".into()),
    };
    if let PgWireError::Server(m) = &e {
        if sqlstate_of(m) == Some("55000") && m.contains("invalidated") {
            return CaptureError::SlotLost {
                slot: cfg.slot.clone(),
            };
        }
    }
    CaptureError::Stream { message, hint }
}
