//! Loading a batch into the warehouse: its events grouped by table, unchanged TOAST values
//! resolved within the batch, and each table's events COPYed into a temporary batch table;
//! reading rows back with COPY for the lake's processed files.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::Transaction;

use super::dead_letters::dead_letter;
use super::session::Mirror;
use super::ApplyError;
use crate::event::copy_text;
use crate::event::{ChangeEvent, Datum, Op};
use crate::pg::{quote_ident, PgUrl};

/// The rows of a COPY ... TO STDOUT in text form.
pub(super) async fn copy_rows(
    tx: &Transaction<'_>,
    sql: &str,
    columns: usize,
    url: &PgUrl,
) -> Result<Vec<Vec<Option<Bytes>>>, ApplyError> {
    use futures_util::StreamExt;
    let err =
        |e: tokio_postgres::Error| ApplyError::Pg(url.query_error("reading produced rows", e));
    let stream = tx.copy_out(sql).await.map_err(err)?;
    futures_util::pin_mut!(stream);
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.map_err(err)?);
    }
    let all = buf.freeze();
    let mut rows = Vec::new();
    let mut start = 0;
    for i in 0..all.len() {
        if all[i] == b'\n' {
            let line = all.slice(start..i);
            start = i + 1;
            let row =
                crate::event::copy_text::parse_row(&line, columns).map_err(ApplyError::LakeFile)?;
            rows.push(
                row.into_iter()
                    .map(|d| match d {
                        Datum::Text(b) => Some(b),
                        _ => None,
                    })
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// Events grouped by source table, in batch order within each table.
pub(super) fn group_by_table(events: &[ChangeEvent]) -> BTreeMap<String, Vec<ChangeEvent>> {
    let mut groups: BTreeMap<String, Vec<ChangeEvent>> = BTreeMap::new();
    for ev in events {
        groups
            .entry(ev.table.qualified_name())
            .or_default()
            .push(ev.clone());
    }
    for events in groups.values_mut() {
        resolve_unchanged_toast(events);
        drop_repeated_reads(events);
    }
    groups
}

/// A read that repeats the row its key's previous event in the batch left (a table copied
/// again while streaming, whose chunk lands in the batch of the change it repeats) is no
/// change; a read that repeats what staging holds is left out in SQL (`merge`).
pub(super) fn drop_repeated_reads(events: &mut Vec<ChangeEvent>) {
    if !events.iter().any(|e| e.op == Op::Read) {
        return;
    }
    let mut last: HashMap<Vec<Datum>, Option<Vec<Datum>>> = HashMap::new();
    events.retain(|ev| {
        let Some(key) = &ev.key else {
            if ev.op == Op::Truncate {
                last.clear();
            }
            return true;
        };
        let repeated = ev.op == Op::Read
            && last
                .get(key)
                .is_some_and(|prev| prev.is_some() && *prev == ev.after);
        if !repeated {
            last.insert(key.clone(), ev.after.clone());
        }
        !repeated
    });
}

/// An unchanged TOASTed value takes the value of the same row's previous event in the batch;
/// what stays unresolved is filled from staging in SQL.
pub(super) fn resolve_unchanged_toast(events: &mut [ChangeEvent]) {
    if !events.iter().any(|e| {
        e.after
            .as_ref()
            .is_some_and(|a| a.iter().any(|d| matches!(d, Datum::UnchangedToast)))
    }) {
        return;
    }
    let mut last: HashMap<Vec<Datum>, Vec<Datum>> = HashMap::new();
    for ev in events.iter_mut() {
        let Some(key) = ev.key.clone() else { continue };
        if let Some(after) = ev.after.as_mut() {
            if let Some(prev) = last.get(&key) {
                for (i, d) in after.iter_mut().enumerate() {
                    if matches!(d, Datum::UnchangedToast) {
                        if let Some(p) = prev.get(i).filter(|p| !matches!(p, Datum::UnchangedToast))
                        {
                            *d = p.clone();
                        }
                    }
                }
            }
            last.insert(key, after.clone());
        } else if ev.op == Op::Delete {
            last.remove(&key);
        }
    }
}

/// COPYs the events into the batch table. A value the warehouse refuses sends its event to
/// the dead letters (found by loading events one by one under savepoints) and the rest loads.
pub(super) async fn load_batch_table(
    tx: &Transaction<'_>,
    m: &Mirror,
    events: &[ChangeEvent],
    database: &str,
    url: &PgUrl,
) -> Result<usize, ApplyError> {
    let t = &events[0].table;
    tx.batch_execute("SAVEPOINT load")
        .await
        .map_err(|e| ApplyError::Pg(url.query_error("savepoint", e)))?;
    // One COPY per run of events of the same shape (a column added mid-batch changes it).
    let mut loaded = Ok(());
    for run in events.chunk_by(|a, b| a.table == b.table) {
        let stmt = copy_statement(m, &run[0]);
        let mut buf = Vec::with_capacity(run.len() * 128);
        for ev in run {
            encode_row(&mut buf, ev);
        }
        loaded = copy_in(tx, &stmt, buf).await;
        if loaded.is_err() {
            break;
        }
    }
    match loaded {
        Ok(()) => {
            tx.batch_execute("RELEASE SAVEPOINT load")
                .await
                .map_err(|e| ApplyError::Pg(url.query_error("release savepoint", e)))?;
            return Ok(0);
        }
        Err(e) if !is_data_error(&e) => {
            return Err(ApplyError::Pg(url.query_error(
                format!("loading the batch of {}", t.qualified_name()),
                e,
            )))
        }
        Err(_) => {}
    }
    // Find the events the warehouse refuses, one by one.
    tx.batch_execute("ROLLBACK TO SAVEPOINT load")
        .await
        .map_err(|e| ApplyError::Pg(url.query_error("rollback to savepoint", e)))?;
    let mut dead = 0;
    for ev in events {
        let mut row = Vec::new();
        encode_row(&mut row, ev);
        let stmt = copy_statement(m, ev);
        tx.batch_execute("SAVEPOINT one")
            .await
            .map_err(|e| ApplyError::Pg(url.query_error("savepoint", e)))?;
        if let Err(e) = copy_in(tx, &stmt, row).await {
            if !is_data_error(&e) {
                return Err(ApplyError::Pg(url.query_error("loading an event", e)));
            }
            tx.batch_execute("ROLLBACK TO SAVEPOINT one")
                .await
                .map_err(|e| ApplyError::Pg(url.query_error("rollback to savepoint", e)))?;
            let reason = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string());
            dead_letter(tx, ev, database, &reason, url).await?;
            dead += 1;
        }
    }
    tx.batch_execute("RELEASE SAVEPOINT load")
        .await
        .map_err(|e| ApplyError::Pg(url.query_error("release savepoint", e)))?;
    Ok(dead)
}

/// The COPY into the batch table for events shaped like `ev`'s.
fn copy_statement(m: &Mirror, ev: &ChangeEvent) -> String {
    let mut cols: Vec<String> = ev
        .table
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    cols.extend(["_lsn", "_seq", "_op", "_unchanged"].map(String::from));
    format!("COPY {} ({}) FROM STDIN", m.batch, cols.join(", "))
}

pub(super) fn is_data_error(e: &tokio_postgres::Error) -> bool {
    crate::error_policy::for_pg(e) == crate::error_policy::Action::DeadLetter
}

pub(super) async fn copy_in(
    tx: &Transaction<'_>,
    stmt: &str,
    data: Vec<u8>,
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in::<_, Bytes>(stmt).await?;
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from(data)).await?;
    sink.finish().await?;
    Ok(())
}

/// One batch-table row: the source columns, then position, op and unchanged-TOAST columns.
pub(super) fn encode_row(buf: &mut Vec<u8>, ev: &ChangeEvent) {
    let t = &ev.table;
    let n = t.columns.len();
    let mut unchanged: Vec<&str> = Vec::new();
    for i in 0..n {
        if i > 0 {
            buf.push(b'\t');
        }
        let d = match (&ev.after, &ev.key) {
            (Some(after), _) => after.get(i).unwrap_or(&Datum::Null),
            (None, Some(key)) => t
                .key
                .iter()
                .position(|&k| k == i)
                .and_then(|p| key.get(p))
                .unwrap_or(&Datum::Null),
            (None, None) => &Datum::Null,
        };
        if matches!(d, Datum::UnchangedToast) {
            unchanged.push(&t.columns[i].name);
        }
        copy_text::field(buf, d);
    }
    buf.extend_from_slice(
        format!(
            "\t{}\t{}\t{}\t",
            ev.position.lsn,
            ev.position.seq,
            ev.op.code()
        )
        .as_bytes(),
    );
    if unchanged.is_empty() {
        buf.extend_from_slice(b"\\N");
    } else {
        copy_text::name_array(buf, &unchanged);
    }
    buf.push(b'\n');
}
