//! Staging under the position guard: each key takes the batch's newest event, but only over an
//! older position; deletes and truncates leave tombstones.

use std::collections::HashSet;

use tokio_postgres::Transaction;

use super::session::Mirror;
use super::ApplyError;
use crate::event::{ChangeEvent, Datum, Lsn, Op, Position};
use crate::pg::{quote_ident, quote_literal, PgUrl};

/// Staging takes the latest event of each key, but only over an older position: a delete leaves
/// a tombstone (the key, its position, `_deleted`, other columns NULL — the same whatever order
/// the events came in) that an older event cannot resurrect.
pub(super) async fn merge_into_staging(
    tx: &Transaction<'_>,
    m: &Mirror,
    events: &[ChangeEvent],
    url: &PgUrl,
) -> Result<(), ApplyError> {
    let err = |ctx: &str, e: tokio_postgres::Error| ApplyError::Pg(url.query_error(ctx, e));
    let key: Vec<String> = m.key.iter().map(|k| quote_ident(k)).collect();
    let keys = key.join(", ");
    // Unchanged TOAST values not resolved within the batch keep the stored value.
    let mut toast_cols: Vec<&str> = Vec::new();
    for ev in events {
        if let Some(after) = &ev.after {
            for (i, d) in after.iter().enumerate() {
                let Some(c) = ev.table.columns.get(i) else {
                    continue;
                };
                if matches!(d, Datum::UnchangedToast) && !toast_cols.contains(&c.name.as_str()) {
                    toast_cols.push(&c.name);
                }
            }
        }
    }
    let join: Vec<String> = key.iter().map(|k| format!("b.{k} = s.{k}")).collect();
    let mut sql = String::new();
    for c in &toast_cols {
        let q = quote_ident(c);
        sql.push_str(&format!(
            "UPDATE {} b SET {q} = s.{q} FROM {} s WHERE {} AND {} = ANY(b._unchanged);\n",
            m.batch,
            m.staging,
            join.join(" AND "),
            quote_literal(c)
        ));
    }
    let cols: Vec<String> = m.columns.iter().map(|c| quote_ident(c)).collect();
    // A read identical to what staging holds (a table copied again: after a crash, for
    // `resync --table`, or rows a chunk read that an earlier change already brought) is no
    // change: it leaves staging and the star's history as they are.
    // Not across a truncate in the batch: it retires what staging holds, the reads after it
    // bring the rows back.
    if events.iter().any(|e| e.op == Op::Read) && !events.iter().any(|e| e.op == Op::Truncate) {
        let same: Vec<String> = cols
            .iter()
            .filter(|c| !key.contains(c))
            .map(|c| format!("s.{c}::text"))
            .collect();
        let theirs: Vec<String> = cols
            .iter()
            .filter(|c| !key.contains(c))
            .map(|c| format!("b.{c}::text"))
            .collect();
        let join: Vec<String> = key.iter().map(|k| format!("b.{k} = s.{k}")).collect();
        sql.push_str(&format!(
            "DELETE FROM {batch} b USING {staging} s WHERE b._op = 'r' AND {join} AND NOT s._deleted \
             AND ROW({same}) IS NOT DISTINCT FROM ROW({theirs});\n",
            batch = m.batch,
            staging = m.staging,
            join = join.join(" AND "),
            same = same.join(", "),
            theirs = theirs.join(", "),
        ));
    }
    let sets: Vec<String> = cols
        .iter()
        .filter(|c| !key.contains(c))
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .chain([
            "_lsn = EXCLUDED._lsn".to_string(),
            "_seq = EXCLUDED._seq".to_string(),
            "_deleted = EXCLUDED._deleted".to_string(),
            "_applied_at = EXCLUDED._applied_at".to_string(),
        ])
        .collect();
    sql.push_str(&format!(
        "INSERT INTO {staging} AS s ({cols}, _lsn, _seq, _deleted, _applied_at)\n\
         SELECT DISTINCT ON ({keys}) {cols}, _lsn, _seq, _op = 'd', now() FROM {batch}\n\
         WHERE _op <> 't' ORDER BY {keys}, _lsn DESC, _seq DESC\n\
         ON CONFLICT ({keys}) DO UPDATE SET {sets}\n\
         WHERE (s._lsn, s._seq) < (EXCLUDED._lsn, EXCLUDED._seq);\n",
        staging = m.staging,
        cols = cols.join(", "),
        batch = m.batch,
        sets = sets.join(", "),
    ));
    // A truncate leaves a tombstone on every row older than it.
    let nulls: String = cols
        .iter()
        .filter(|c| !key.contains(c))
        .map(|c| format!("{c} = NULL, "))
        .collect();
    let mirror = quote_literal(&m.staging);
    for ev in events.iter().filter(|e| e.op == Op::Truncate) {
        sql.push_str(&format!(
            "UPDATE {} SET {nulls}_deleted = true, _lsn = '{}', _seq = {}, _applied_at = now() \
             WHERE (_lsn, _seq) < ('{}'::pg_lsn, {});\n",
            m.staging, ev.position.lsn, ev.position.seq, ev.position.lsn, ev.position.seq
        ));
        sql.push_str(&format!(
            "INSERT INTO totes_cdc.truncations AS w (mirror, lsn, seq) VALUES ({mirror}, '{}', {}) \
             ON CONFLICT (mirror) DO UPDATE SET lsn = EXCLUDED.lsn, seq = EXCLUDED.seq \
             WHERE (w.lsn, w.seq) < (EXCLUDED.lsn, EXCLUDED.seq);\n",
            ev.position.lsn, ev.position.seq
        ));
    }
    // A change older than the newest truncate that arrives after it (Kinesis orders per key,
    // and a truncate travels on one shard): the truncate retires it as it would have.
    let on: Vec<String> = key.iter().map(|k| format!("b.{k} = s.{k}")).collect();
    sql.push_str(&format!(
        "UPDATE {staging} s SET {nulls}_deleted = true, _lsn = w.lsn, _seq = w.seq, _applied_at = now() \
         FROM totes_cdc.truncations w \
         WHERE w.mirror = {mirror} AND (s._lsn, s._seq) < (w.lsn, w.seq) \
           AND EXISTS (SELECT 1 FROM {batch} b WHERE {on} AND b._op <> 't');\n",
        staging = m.staging,
        batch = m.batch,
        on = on.join(" AND "),
    ));
    tx.batch_execute(&sql)
        .await
        .map_err(|e| err(&format!("merging into {}", m.staging), e))
}

/// The positions of the loaded batch that staging already holds, or holds something newer of
/// the same key: events delivered again (a Kinesis record sent twice, or again after the
/// streamer restarted, possibly through another shard after a reshard). Staging ignores them;
/// the lake must leave them out too.
pub(super) async fn already_applied(
    tx: &Transaction<'_>,
    m: &Mirror,
    url: &PgUrl,
) -> Result<HashSet<Position>, ApplyError> {
    let on: Vec<String> = m
        .key
        .iter()
        .map(|k| format!("b.{k} = s.{k}", k = quote_ident(k)))
        .collect();
    let sql = format!(
        "SELECT b._lsn::text, b._seq FROM {batch} b JOIN {staging} s ON {on} \
         WHERE b._op <> 't' AND (b._lsn, b._seq) <= (s._lsn, s._seq)",
        batch = m.batch,
        staging = m.staging,
        on = on.join(" AND "),
    );
    let rows = tx.query(&sql, &[]).await.map_err(|e| {
        ApplyError::Pg(url.query_error(
            format!("looking for redelivered events of {}", m.staging),
            e,
        ))
    })?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(Position::new(
                Lsn::parse(r.get::<_, &str>(0)).ok()?,
                r.get(1),
            ))
        })
        .collect())
}
