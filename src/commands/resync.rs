//! `totes-cdc resync`: recovery from an invalidated slot (or any gap). Drops the slot and the
//! record of its snapshot; the next start of `run` or `stream` creates the slot again and copies
//! every table under its snapshot. Downstream absorbs the copy: rows come back with newer
//! positions, each table's copy starts with a truncate marker that retires rows deleted in the
//! meantime, and everything already applied stays idempotent.

use anyhow::Result;

use crate::capture::slot::{slot_info, validate_slot_name};
use crate::capture::state::StateFile;
use crate::config::ResyncArgs;

pub async fn run(args: ResyncArgs) -> Result<()> {
    let url = super::source_url(&args.source.url, "resync")?;
    let slot = &args.source.slot;
    validate_slot_name(slot)?;
    let client = url.connect().await?;
    match slot_info(&client, &url, slot).await? {
        Some(info) if info.active => {
            anyhow::bail!(
                "slot \"{slot}\" is in use by a running pipeline; stop it (SIGTERM) and run resync again"
            );
        }
        Some(info) => {
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[slot])
                .await
                .map_err(|e| url.query_error("dropping the slot", e))?;
            println!(
                "dropped slot {slot} (wal_status was {})",
                info.wal_status.unwrap_or_else(|| "unknown".into())
            );
        }
        None => println!("slot {slot} does not exist"),
    }
    StateFile::new(&args.state_dir, slot).remove()?;
    println!(
        "cleared the snapshot record in {}; the next start of `totes-cdc run` (or `stream`) creates the slot and copies every table again",
        args.state_dir.display()
    );
    Ok(())
}
