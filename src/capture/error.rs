//! Capture errors: each names its cause and the fix.

use thiserror::Error;

use super::pgoutput::DecodeError;
use crate::pg::PgError;

#[derive(Debug, Error)]
pub enum CaptureError {
    #[error(transparent)]
    Pg(#[from] PgError),

    #[error("wal_level on {target} is '{actual}', but logical decoding needs 'logical'")]
    WalLevel { target: String, actual: String },

    #[error("role {role} may not use replication on {target}")]
    NoReplicationRole { role: String, target: String },

    #[error("role {role} cannot read {tables}")]
    NoSelect { role: String, tables: String },

    #[error("table {table} has no primary key and REPLICA IDENTITY {identity}, so its updates and deletes cannot be identified")]
    NoIdentity { table: String, identity: String },

    #[error("publication \"{publication}\" does not exist in {target}")]
    NoPublication { publication: String, target: String },

    #[error("publication \"{publication}\" does not publish {missing}")]
    PublicationMissingTables {
        publication: String,
        missing: String,
    },

    #[error("publication \"{publication}\" publishes no tables")]
    EmptyPublication { publication: String },

    #[error("table {table} does not exist in {target}")]
    NoTable { table: String, target: String },

    #[error("replication slot \"{slot}\" uses the output plugin {plugin}, not pgoutput")]
    WrongPlugin { slot: String, plugin: String },

    #[error("replication slot \"{slot}\" is for database {database}, not {expected}")]
    WrongDatabase {
        slot: String,
        database: String,
        expected: String,
    },

    #[error("replication slot \"{slot}\" has been invalidated (wal_status = lost): the server removed WAL it still needed, so changes were lost for this slot")]
    SlotLost { slot: String },

    #[error("slot name \"{0}\" is not valid")]
    BadSlotName(String),

    #[error("the replication stream failed: {message}")]
    Stream { message: String, hint: String },

    #[error("could not decode the replication stream: {0}")]
    Decode(#[from] DecodeError),

    #[error("the stream refers to relation {0} before describing it (a protocol error; restart resumes from the last confirmed position)")]
    UnknownRelation(u32),

    #[error("snapshot state in {path}: {message}")]
    State { path: String, message: String },

    #[error("the sink stopped before acknowledging every event: {0}")]
    Sink(String),
}

impl crate::fix::Fix for CaptureError {
    fn fix(&self) -> Option<String> {
        use CaptureError::*;
        Some(match self {
            Pg(e) => return e.fix(),
            WalLevel { .. } => "set wal_level = logical in postgresql.conf (on RDS/Aurora: rds.logical_replication = 1 in the parameter group) and restart the server: this setting only changes on restart".into(),
            NoReplicationRole { role, .. } => format!("ALTER ROLE {role} REPLICATION; (on RDS: GRANT rds_replication TO {role};)"),
            NoSelect { role, tables } => format!("GRANT SELECT ON {tables} TO {role};"),
            NoIdentity { table, .. } => format!("add a primary key (ALTER TABLE {table} ADD PRIMARY KEY (...);) or send whole old rows (ALTER TABLE {table} REPLICA IDENTITY FULL;)"),
            NoPublication { publication, .. } => format!("run `totes-cdc setup`, or: CREATE PUBLICATION {publication} FOR TABLE <tables>;"),
            PublicationMissingTables { publication, missing } => format!("run `totes-cdc setup`, or: ALTER PUBLICATION {publication} ADD TABLE {missing};"),
            EmptyPublication { publication } => format!("ALTER PUBLICATION {publication} ADD TABLE <tables>;"),
            NoTable { .. } => "fix the `tables` option, or create the table".into(),
            WrongPlugin { slot, .. } => format!("drop it (SELECT pg_drop_replication_slot('{slot}');) or set another `slot`"),
            WrongDatabase { .. } => "set another `slot`".into(),
            SlotLost { .. } => "run `totes-cdc resync`: it drops and recreates the slot and takes a new snapshot (downstream positions make the re-copy idempotent). To keep it from recurring, raise max_slot_wal_keep_size or keep the pipeline running".into(),
            BadSlotName(_) => "use lower-case letters, digits and underscores, at most 63 characters".into(),
            Stream { hint, .. } => hint.clone(),
            Decode(_) | UnknownRelation(_) | State { .. } | Sink(_) => return None,
        })
    }
}

impl CaptureError {
    /// Whether the capture should retry (with backoff) instead of stopping.
    pub fn is_transient(&self) -> bool {
        match self {
            CaptureError::Pg(e) => e.is_transient(),
            _ => false,
        }
    }
}
