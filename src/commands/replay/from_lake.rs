//! `replay --from lake`: the lake's changes files in the range, oldest first, read a few ahead
//! of the batch being applied, as a `BatchSource` for the apply driver.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::{Pending, Range};
use crate::apply::batch::Batch;
use crate::apply::warehouse::Warehouse;
use crate::apply::BatchSource;
use crate::config::ReplayArgs;
use crate::event::TableSchema;
use crate::lake::read::{self, ChangesFile};
use crate::lake::{Store, StoreError};
use crate::pg::PgUrl;

/// Files read ahead of the batch being applied.
const READ_AHEAD: usize = 4;

pub(super) struct LakeHistory {
    describe: String,
    files: usize,
    reads: BoxStream<'static, (ChangesFile, Result<Bytes, StoreError>)>,
    tables: HashMap<String, Arc<TableSchema>>,
    range: Range,
    pub pending: Pending,
}

/// The lake's files in `range`, checked against the warehouse's staging mirrors.
pub(super) async fn open(
    args: &ReplayArgs,
    url: &PgUrl,
    range: Range,
    pending: Pending,
) -> Result<(LakeHistory, Warehouse)> {
    let Some(lake) = args.warehouse.lake.at() else {
        anyhow::bail!("replay --from lake reads the lake: set `lake` to the directory or s3://bucket/prefix the pipeline writes");
    };
    if !lake.starts_with("s3://") && !std::path::Path::new(lake).is_dir() {
        anyhow::bail!("the lake directory {lake} does not exist: set `lake` to the directory the pipeline writes (its `lake` option)");
    }
    let store = Store::open(lake).await?;
    let mut wh = super::warehouse(args, url).await?;
    let mut files: Vec<ChangesFile> = store
        .list("changes/")
        .await?
        .iter()
        .filter_map(|p| read::parse_changes_path(p))
        .filter(|f| f.last >= range.from && range.to.is_none_or(|t| f.first <= t))
        .collect();
    if files.is_empty() {
        anyhow::bail!(
            "the lake at {} holds no changes files {}: check `lake` (the pipeline's lake option) and from-lsn",
            store.describe(),
            range.describe(),
        );
    }
    // Oldest first, so the warehouse moves forward as the source did (the result does not depend
    // on it: batches apply in any order to the same warehouse).
    files.sort_by(|a, b| (a.first, &a.table).cmp(&(b.first, &b.table)));

    // Every table of the lake needs its staging mirror.
    let mut tables: HashMap<String, Arc<TableSchema>> = HashMap::new();
    for f in &files {
        if tables.contains_key(&f.table) {
            continue;
        }
        match wh.table_schema(&f.schema_name, &f.table_name).await? {
            Some(t) => {
                tables.insert(f.table.clone(), t);
            }
            None => anyhow::bail!(
                "the lake holds changes of {} but the warehouse at {} has no staging mirror for it: run `totes-cdc setup --source-url <source> --warehouse-url <warehouse>` first",
                f.table,
                url.target()
            ),
        }
    }
    tracing::info!(lake = %store.describe(), files = files.len(), range = %range.describe(), "replaying the lake");
    let count = files.len();
    let describe = store.describe();
    let reads = futures_util::stream::iter(files.into_iter().map(move |f| {
        let store = store.clone();
        async move {
            let data = store.get(&f.path).await;
            (f, data)
        }
    }))
    .buffered(READ_AHEAD)
    .boxed();
    let history = LakeHistory {
        describe,
        files: count,
        reads,
        tables,
        range,
        pending,
    };
    Ok((history, wh))
}

impl LakeHistory {
    pub fn describe(&self) -> String {
        format!("{} lake files of {}", self.files, self.describe)
    }
}

impl BatchSource for LakeHistory {
    type Error = anyhow::Error;

    async fn next_batch(&mut self, _wh: &mut Warehouse) -> Result<Option<Batch>> {
        while !self.pending.full() {
            let Some((f, data)) = self.reads.next().await else {
                break;
            };
            let data = data.map_err(|e| anyhow::anyhow!("reading {}: {e}", f.path))?;
            let table = self.tables.get(&f.table).ok_or_else(|| {
                anyhow::anyhow!("no staging mirror for {} (checked before reading)", f.table)
            })?;
            let events = read::events_of(data, table, self.range.from, self.range.to)
                .map_err(|e| anyhow::anyhow!("lake file {} cannot be read back: {e}", f.path))?;
            self.pending.push(events, Vec::new());
        }
        Ok(self.pending.take())
    }

    async fn committed(&mut self, _batch: &Batch) -> Result<()> {
        Ok(())
    }
}
