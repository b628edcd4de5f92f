//! The periodic transactional heartbeat: a `pg_logical_emit_message` in the captured database,
//! so that a source whose only writes go to unreplicated tables or other databases still moves
//! the slot forward (the message's transaction is confirmed like any other).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::pg::PgUrl;

/// The logical message prefix of heartbeats.
pub const PREFIX: &str = "totes_cdc.heartbeat";

/// Emits a heartbeat every `interval` until shutdown; failures are logged and retried on the
/// next tick (a permission problem is reported with its fix once).
pub async fn run(
    url: PgUrl,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    ok: Arc<AtomicBool>,
) {
    let mut client = None;
    let mut warned = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        if client
            .as_ref()
            .is_none_or(|c: &tokio_postgres::Client| c.is_closed())
        {
            client = url.connect().await.ok();
        }
        let Some(c) = &client else {
            ok.store(false, Ordering::Relaxed);
            continue;
        };
        let r = c
            .execute(
                "SELECT pg_logical_emit_message(true, $1, now()::text)",
                &[&PREFIX],
            )
            .await;
        match r {
            Ok(_) => {
                ok.store(true, Ordering::Relaxed);
                warned = false;
            }
            Err(e) => {
                ok.store(false, Ordering::Relaxed);
                if !warned {
                    let fix = if e.code().map(|c| c.code()) == Some("42501") {
                        format!(
                            "; grant it with: GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) TO {}",
                            url.user()
                        )
                    } else {
                        String::new()
                    };
                    tracing::warn!("heartbeat failed (the slot may stop advancing on an idle database): {e}{fix}");
                    warned = true;
                }
                if crate::pg::is_transient(&e) {
                    client = None;
                }
            }
        }
    }
}
