//! Following the source's shape: before a batch loads, each staging mirror is brought level
//! with the shapes its events carry. A new column is added, a safe widening (int to bigint,
//! a longer varchar, more numeric digits, timestamp to timestamptz) is applied, a dropped
//! column stays (later versions hold NULL there), a new table gets its mirror. Any other type
//! change stops the pipeline with the table, column, both types and the fix: nothing after it
//! is acknowledged, and no value is dead-lettered for a shape the mirror lacks.
//!
//! The changes run in a transaction of their own under an advisory lock per mirror, after the
//! mirror is read again from the catalog: consumers of other shards may have changed it first.

use std::collections::BTreeMap;

use super::session::{read_mirrors, Mirror, Session};
use super::{ddl, ApplyError};
use crate::event::{ChangeEvent, TableSchema};
use crate::pg::{quote_ident, PgUrl};

/// A type as the warehouse stores it: (type oid, type modifier).
pub(super) type WhType = (u32, i32);

/// One change to a mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// The table has no mirror yet.
    Create,
    Add {
        column: String,
        to: WhType,
    },
    Widen {
        column: String,
        to: WhType,
    },
}

/// A type change the mirror cannot follow without losing or reinterpreting values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub column: String,
    pub from: WhType,
    pub to: WhType,
}

/// Whether every value of type `from` is a value of type `to`, unchanged in meaning.
pub(super) fn widens(from: WhType, to: WhType) -> bool {
    const INT2: u32 = 21;
    const INT4: u32 = 23;
    const INT8: u32 = 20;
    const FLOAT4: u32 = 700;
    const FLOAT8: u32 = 701;
    const TEXT: u32 = 25;
    const VARCHAR: u32 = 1043;
    const NUMERIC: u32 = 1700;
    const TIMESTAMP: u32 = 1114;
    const TIMESTAMPTZ: u32 = 1184;
    if from == to {
        return true;
    }
    // numeric(p, s): typmod = (p << 16 | s) + 4; -1 is unconstrained.
    let numeric = |m: i32| (m >= 4).then(|| (((m - 4) >> 16) & 0xffff, (m - 4) & 0xffff));
    // Integer digits a numeric type holds (None: any).
    let int_digits = |m: i32| numeric(m).map(|(p, s)| p - s);
    let (f, fm) = from;
    let (t, tm) = to;
    match (f, t) {
        (INT2, INT4 | INT8) | (INT4, INT8) | (FLOAT4, FLOAT8) => true,
        (INT2 | INT4 | INT8, NUMERIC) => {
            let need = match f {
                INT2 => 5,
                INT4 => 10,
                _ => 19,
            };
            int_digits(tm).is_none_or(|d| d >= need) && numeric(tm).is_none_or(|(_, s)| s >= 0)
        }
        (NUMERIC, NUMERIC) => match (numeric(fm), numeric(tm)) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some((fp, fs)), Some((tp, ts))) => ts >= fs && tp - ts >= fp - fs,
        },
        // varchar(n): typmod = n + 4; -1 is unlimited.
        (VARCHAR, VARCHAR) => tm == -1 || (fm != -1 && tm >= fm),
        (VARCHAR, TEXT) => true,
        (TEXT, VARCHAR) => tm == -1,
        // Fractional second digits: typmod = precision, -1 is the default (6).
        (TIMESTAMP, TIMESTAMP | TIMESTAMPTZ) | (TIMESTAMPTZ, TIMESTAMPTZ) => {
            tm == -1 || (fm != -1 && tm >= fm)
        }
        _ => false,
    }
}

/// What the mirror `m` (or no mirror) needs to hold events shaped like `t`.
pub(super) fn plan(m: Option<&Mirror>, t: &TableSchema) -> Result<Vec<Step>, Refusal> {
    let Some(m) = m else {
        return Ok(vec![Step::Create]);
    };
    let mut steps = Vec::new();
    for c in &t.columns {
        let to = c.stored_type();
        match m.columns.iter().position(|n| n == &c.name) {
            None => steps.push(Step::Add {
                column: c.name.clone(),
                to,
            }),
            Some(i) => {
                let have = (m.types[i].0, m.types[i].1);
                if widens(to, have) {
                    // The mirror already holds these values (it was widened before, or the
                    // event is older than the widening).
                } else if widens(have, to) {
                    steps.push(Step::Widen {
                        column: c.name.clone(),
                        to,
                    });
                } else {
                    return Err(Refusal {
                        column: c.name.clone(),
                        from: have,
                        to,
                    });
                }
            }
        }
    }
    Ok(steps)
}

/// The distinct shapes of a table's events, in batch order. (Arc equality looks at the pointer
/// first: events of one shape share it, so this is cheap per event.)
fn shapes(events: &[ChangeEvent]) -> Vec<&std::sync::Arc<TableSchema>> {
    let mut out: Vec<&std::sync::Arc<TableSchema>> = Vec::new();
    for ev in events {
        if !out.iter().any(|s| **s == ev.table) {
            out.push(&ev.table);
        }
    }
    out
}

/// Brings the session's mirrors level with every shape of the batch's events.
pub(super) async fn follow(
    session: &mut Session,
    groups: &BTreeMap<String, Vec<ChangeEvent>>,
    url: &PgUrl,
) -> Result<(), ApplyError> {
    for events in groups.values() {
        let t = &events[0].table;
        let name = ddl::staging_name(&t.schema, &t.name);
        for shape in shapes(events) {
            let needs = plan(session.mirrors.get(&name), shape)
                .map(|s| !s.is_empty())
                .unwrap_or(true);
            if needs {
                reshape(session, &name, shape, url).await?;
            }
        }
    }
    Ok(())
}

/// Changes one mirror (under its lock, against the catalog's current state) and the session's
/// batch table with it.
async fn reshape(
    session: &mut Session,
    name: &str,
    t: &TableSchema,
    url: &PgUrl,
) -> Result<(), ApplyError> {
    let err = |ctx: String, e| ApplyError::Pg(url.query_error(ctx, e));
    let table = t.qualified_name();
    let tx = session
        .client
        .transaction()
        .await
        .map_err(|e| err("starting a mirror change".into(), e))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('totes_cdc.mirror'), hashtext($1))",
        &[&name],
    )
    .await
    .map_err(|e| err(format!("locking the mirror of {table}"), e))?;
    let current = read_mirrors(&tx, Some(name))
        .await
        .map_err(|e| err(format!("reading the mirror of {table}"), e))?;
    let mirror = current.get(name);
    let steps = plan(mirror, t).map_err(|r| ApplyError::Reshape {
        table: table.clone(),
        from: mirror
            .and_then(|m| m.column_type(&r.column))
            .map_or_else(|| type_name(r.from), str::to_string),
        to: t
            .columns
            .iter()
            .find(|c| c.name == r.column && !c.type_name.is_empty())
            .map_or_else(|| type_name(r.to), |c| c.type_name.clone()),
        column: r.column,
        mirror: format!("staging.{}", crate::pg::ident(name)),
    })?;
    let staging = ddl::staging_table(&t.schema, &t.name);
    let mut sql = String::new();
    for step in &steps {
        match step {
            Step::Create => {
                if t.key.is_empty() || t.keyless {
                    return Err(ApplyError::NoKey { table });
                }
                for stmt in ddl::staging_ddl(t) {
                    sql.push_str(&stmt);
                    sql.push_str(";\n");
                }
            }
            Step::Add { column, .. } => {
                let c = t.columns.iter().find(|c| &c.name == column);
                let ty = c.map_or_else(|| "text".into(), ddl::warehouse_type);
                sql.push_str(&format!(
                    "ALTER TABLE {staging} ADD COLUMN IF NOT EXISTS {} {ty};\n",
                    quote_ident(column)
                ));
            }
            Step::Widen { column, .. } => {
                let c = t.columns.iter().find(|c| &c.name == column);
                let ty = c.map_or_else(|| "text".into(), ddl::warehouse_type);
                sql.push_str(&format!(
                    "ALTER TABLE {staging} ALTER COLUMN {} TYPE {ty};\n",
                    quote_ident(column)
                ));
            }
        }
    }
    if !sql.is_empty() {
        tracing::info!(table = %table, changes = ?steps, "the source's shape changed: the staging mirror follows");
        tx.batch_execute(&sql)
            .await
            .map_err(|e| err(format!("changing the mirror of {table}"), e))?;
    }
    let after = read_mirrors(&tx, Some(name))
        .await
        .map_err(|e| err(format!("reading the mirror of {table}"), e))?;
    tx.commit()
        .await
        .map_err(|e| err(format!("committing the mirror change of {table}"), e))?;
    let Some(m) = after.get(name) else {
        return Err(ApplyError::NoStaging { table });
    };
    // The session's batch table takes the mirror's new shape.
    session
        .client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {batch};\n{}",
            super::session::batch_table_ddl(m),
            batch = m.batch
        ))
        .await
        .map_err(|e| err(format!("recreating the batch table of {table}"), e))?;
    session.mirrors.insert(name.to_string(), m.clone());
    Ok(())
}

/// A type the message cannot name otherwise.
fn type_name(t: WhType) -> String {
    format!("type oid {} (modifier {})", t.0, t.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INT4: WhType = (23, -1);
    const INT8: WhType = (20, -1);
    fn varchar(n: i32) -> WhType {
        (1043, n + 4)
    }
    fn numeric(p: i32, s: i32) -> WhType {
        (1700, ((p << 16) | s) + 4)
    }

    #[test]
    fn safe_widenings() {
        assert!(widens(INT4, INT8));
        assert!(!widens(INT8, INT4));
        assert!(widens(varchar(10), varchar(20)));
        assert!(widens(varchar(10), (1043, -1)));
        assert!(widens(varchar(10), (25, -1)));
        assert!(!widens(varchar(20), varchar(10)));
        assert!(!widens((25, -1), varchar(10)));
        assert!(widens(numeric(10, 2), numeric(12, 2)));
        assert!(widens(numeric(10, 2), numeric(12, 4)));
        assert!(!widens(numeric(10, 2), numeric(10, 4)));
        assert!(!widens(numeric(10, 2), numeric(10, 1)));
        assert!(widens(numeric(10, 2), (1700, -1)));
        assert!(!widens((1700, -1), numeric(30, 2)));
        assert!(widens(INT4, numeric(12, 2)));
        assert!(!widens(INT4, numeric(8, 2)));
        assert!(widens((1114, -1), (1184, -1)));
        assert!(!widens((1184, -1), (1114, -1)));
        assert!(!widens((25, -1), INT4));
        assert!(!widens(INT4, (25, -1)));
    }
}
