//! `totes-cdc resync`: recovery from an invalidated slot (or any gap). Drops the slot and the
//! record of its snapshot; the next start of `run` or `stream` creates the slot again and copies
//! every table under its snapshot. Downstream absorbs the copy: rows come back with newer
//! positions, each table's copy starts with a truncate marker that retires rows deleted in the
//! meantime, and everything already applied stays idempotent.
//!
//! `resync --table T` instead writes a signal into the source's WAL: the pipeline reading the
//! slot (now, or when it next starts) copies T again in watermarked chunks while it streams
//! (see `capture::backfill`).

use anyhow::Result;

use crate::capture::slot::{slot_info, validate_slot_name};
use crate::capture::state::StateFile;
use crate::config::ResyncArgs;

pub async fn run(args: ResyncArgs) -> Result<()> {
    let url = super::source_url(&args.source.url, "resync")?;
    let slot = &args.source.slot;
    validate_slot_name(slot)?;
    let client = url.connect().await?;
    if !args.table.is_empty() {
        return resync_tables(&client, &url, &args).await;
    }
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

/// Asks the pipeline to copy these tables again while it streams: one signal per table in the
/// WAL, which the slot keeps until the pipeline reads it.
async fn resync_tables(
    client: &tokio_postgres::Client,
    url: &crate::pg::PgUrl,
    args: &ResyncArgs,
) -> Result<()> {
    let publication = &args.source.publication;
    let published =
        crate::capture::preflight::captured_tables(client, url, publication, None).await?;
    for name in &args.table {
        let t = crate::capture::catalog::TableName::parse(name);
        if !published.contains(&t) {
            anyhow::bail!(
                "{} is not in publication \"{publication}\": add it (ALTER PUBLICATION {} ADD TABLE {}), then the pipeline copies it by itself",
                t.quoted(),
                crate::pg::ident(publication),
                t.quoted()
            );
        }
        let signal = serde_json::json!({
            "slot": args.source.slot,
            "resync": {"schema": t.schema, "table": t.name},
        });
        client
            .execute(
                "SELECT pg_logical_emit_message(true, $1, $2)",
                &[
                    &crate::capture::backfill::SIGNAL_PREFIX,
                    &signal.to_string(),
                ],
            )
            .await
            .map_err(|e| url.query_error("writing the resync signal", e))?;
        println!(
            "asked the pipeline of slot {} to copy {} again while it streams",
            args.source.slot,
            t.quoted()
        );
    }
    Ok(())
}
