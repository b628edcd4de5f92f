//! Snapshot progress, kept on local disk beside the process: which tables of the initial snapshot
//! are durable downstream. A crash during the snapshot then redoes only the unfinished tables.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::CaptureError;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotState {
    pub slot: String,
    /// The slot's consistent point (LSN text) this snapshot belongs to.
    pub consistent_point: String,
    /// Tables (`schema.table`) whose rows are all acknowledged downstream.
    pub done_tables: Vec<String>,
    /// Every table is done.
    pub complete: bool,
    /// 0 for the snapshot the slot exported; each redo after a crash counts up (see
    /// `Position::snapshot`), at most `SNAPSHOT_ATTEMPTS` times.
    #[serde(default)]
    pub attempt: u32,
    /// Tables (`schema.table`) to copy while streaming, in order (see `backfill`).
    #[serde(default)]
    pub backfill: Vec<String>,
    /// Tables copied while streaming after the initial snapshot.
    #[serde(default)]
    pub backfilled: Vec<String>,
    /// Partitions of the captured partitioned tables (`root>partition`), last seen: one attached
    /// or detached since is followed (`None` until first looked at).
    #[serde(default)]
    pub partitions: Option<Vec<String>>,
}

/// Where the state of one slot lives.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path, slot: &str) -> Self {
        Self {
            path: dir.join(format!("{slot}.snapshot.json")),
        }
    }

    fn err(&self, message: impl std::fmt::Display) -> CaptureError {
        CaptureError::State {
            path: self.path.display().to_string(),
            message: message.to_string(),
        }
    }

    pub fn load(&self) -> Result<Option<SnapshotState>, CaptureError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                self.err(format!(
                    "{e}; the file is damaged: remove it to take a fresh snapshot"
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Writes atomically (temporary file, fsync, rename).
    pub fn store(&self, state: &SnapshotState) -> Result<(), CaptureError> {
        use std::io::Write;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| self.err(format!("{e}; set `state-dir` to a writable directory")))?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(state).map_err(|e| self.err(e))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| self.err(e))?;
        f.write_all(&body).map_err(|e| self.err(e))?;
        f.sync_all().map_err(|e| self.err(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn remove(&self) -> Result<(), CaptureError> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.err(e)),
            _ => Ok(()),
        }
    }
}
