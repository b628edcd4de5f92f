//! Redoing an initial snapshot that a crash interrupted, consistently with the slot's
//! consistent point. The slot's exported snapshot died with the process that created it, and
//! the slot still streams from its consistent point `cp`, so the rows copied now must be the
//! rows as they were at `cp`:
//!
//! 1. a temporary replication slot exports a snapshot that holds exactly the transactions
//!    committed before its own consistent point `cp2` (the same guarantee the first copy had);
//! 2. the slot's changes committed before `cp2` are peeked (read without being consumed), and
//!    the keys of the unfinished tables they touch are collected;
//! 3. the tables are copied under the temporary slot's snapshot, leaving out those keys. A row
//!    no change touched between `cp` and `cp2` is the same at both, so every row sent is the
//!    row at `cp`; a row that a change touched reaches downstream through that change, which
//!    the stream delivers because it resumes at `cp`.
//!
//! So a redo adds nothing that was not at `cp` and skips nothing the stream does not carry.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::{pin_mut, TryStreamExt};
use pgwire_replication::ReplicationClient;

use super::catalog::Catalog;
use super::pgoutput::{decode, Message};
use super::CaptureError;
use crate::event::{ChangeEvent, Datum, Lsn, TableSchema};
use crate::pg::PgUrl;

/// Keys of the unfinished tables changed between the consistent point and the redo's snapshot.
#[derive(Debug, Default)]
pub struct ChangedKeys {
    keys: HashMap<String, HashSet<Vec<Datum>>>,
    /// Tables truncated in between: every row they hold now came after, through the stream.
    truncated: HashSet<String>,
}

impl ChangedKeys {
    /// Whether the row of `table` with `key` must be left to the stream.
    pub fn skips(&self, table: &str, key: &[Datum]) -> bool {
        self.truncated.contains(table) || self.keys.get(table).is_some_and(|k| k.contains(key))
    }

    fn add(&mut self, table: &TableSchema, row: &[Datum]) {
        self.keys
            .entry(table.qualified_name())
            .or_default()
            .insert(ChangeEvent::key_of(table, row));
    }

    pub fn len(&self) -> usize {
        self.keys.values().map(HashSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.truncated.is_empty()
    }
}

/// A snapshot exported by a temporary slot, valid while `session` lives.
pub struct RedoSnapshot {
    pub session: ReplicationClient,
    pub name: String,
    pub consistent_point: Lsn,
}

/// Creates a temporary slot beside `slot` and returns the snapshot it exported.
pub async fn export_snapshot(
    url: &PgUrl,
    slot: &str,
    publication: &str,
) -> Result<RedoSnapshot, CaptureError> {
    // Slot names are [a-z0-9_]{1,63}; the process id keeps two redoing processes apart.
    let prefix: String = slot.chars().take(40).collect();
    let temp = format!("{prefix}_redo_{}", std::process::id());
    let stream_err = |what: &str, e: pgwire_replication::PgWireError| {
        CaptureError::Stream {
        message: format!("{what} for the redo of the initial snapshot: {e}"),
        hint: "the redo needs one free replication slot and WAL sender for a moment (max_replication_slots, max_wal_senders); the next start tries again".into(),
    }
    };
    let mut session = ReplicationClient::connect_gated(url.replication_config(&temp, publication)?)
        .await
        .map_err(|e| stream_err("opening a replication session", e))?;
    let rows = session
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {temp} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')"
        ))
        .await
        .map_err(|e| stream_err("creating a temporary slot", e))?;
    let created = super::slot::created(&rows)?;
    let name = created.snapshot.ok_or_else(|| CaptureError::Stream {
        message: "the temporary slot exported no snapshot".into(),
        hint: "check the server log".into(),
    })?;
    let consistent_point = created.consistent_point;
    Ok(RedoSnapshot {
        session,
        name,
        consistent_point,
    })
}

/// The keys of `tables` that changes committed before `upto` touch, read from `slot` without
/// consuming it (the slot must not be streaming).
pub async fn changed_keys(
    url: &PgUrl,
    catalog: &mut Catalog,
    slot: &str,
    publication: &str,
    upto: Lsn,
    tables: &[Arc<TableSchema>],
) -> Result<ChangedKeys, CaptureError> {
    let wanted: HashSet<String> = tables.iter().map(|t| t.qualified_name()).collect();
    let client = url.connect().await?;
    let params: [String; 3] = [
        slot.to_string(),
        upto.to_string(),
        crate::pg::quote_ident(publication),
    ];
    let rows = client
        .query_raw(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1::text::name, $2::text::pg_lsn, \
             NULL, 'proto_version', '1', 'publication_names', $3::text)",
            params.iter(),
        )
        .await
        .map_err(|e| url.query_error("reading the slot's changes for the snapshot redo", e))?;
    pin_mut!(rows);
    let mut relations: HashMap<u32, Option<Arc<TableSchema>>> = HashMap::new();
    let mut out = ChangedKeys::default();
    let decoded = |e: super::pgoutput::DecodeError| CaptureError::Stream {
        message: format!("decoding the slot's changes for the snapshot redo: {e}"),
        hint: "this is a bug; please report it with the server version".into(),
    };
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(|e| url.query_error("reading the slot's changes for the snapshot redo", e))?
    {
        let data: Vec<u8> = row.get(0);
        let msg = decode(bytes::Bytes::from(data)).map_err(decoded)?;
        let table = |rel: u32| relations.get(&rel).cloned().flatten();
        match msg {
            Message::Relation(rel) => {
                let schema = catalog.relation_schema(&rel).await?;
                let keep = wanted.contains(&schema.qualified_name());
                relations.insert(rel.oid, keep.then_some(schema));
            }
            Message::Insert { rel, new } => {
                if let Some(t) = table(rel) {
                    out.add(&t, &new);
                }
            }
            Message::Update { rel, old, new } => {
                if let Some(t) = table(rel) {
                    if let Some((_, old)) = old {
                        out.add(&t, &old);
                    }
                    out.add(&t, &new);
                }
            }
            Message::Delete { rel, old } => {
                if let Some(t) = table(rel) {
                    out.add(&t, &old.1);
                }
            }
            Message::Truncate { rels, .. } => {
                for rel in rels {
                    if let Some(t) = table(rel) {
                        out.truncated.insert(t.qualified_name());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}
