//! A Kinesis record as the apply side sees it: the change event its envelope carries, or the
//! dead letter it becomes when it does not parse or fit the warehouse. Records are untrusted
//! input: an oversized record's pointer is followed only into the lake's `oversized/` prefix,
//! and its object is read up to a cap; a pointer that cannot be followed makes the record a
//! dead letter with the reason, and the shard goes on.

use serde_json::json;

use crate::apply::batch::Reject;
use crate::apply::warehouse::{ApplyError, Warehouse};
use crate::event::{decode, ChangeEvent};

/// Why a record could be neither decoded nor refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The lake could not be read for a moment (retried).
    #[error(transparent)]
    Store(#[from] crate::lake::StoreError),
    #[error("a record points to its full envelope at {location}, and no lake is configured to read it from")]
    NoLake { location: String },
}

impl crate::fix::Fix for RecordError {
    fn fix(&self) -> Option<String> {
        match self {
            RecordError::Apply(e) => e.fix(),
            RecordError::Store(e) => e.fix(),
            RecordError::NoLake { .. } => {
                Some("set `lake` to the lake the streamer writes (its `lake` option)".into())
            }
        }
    }
}

/// The change event of one record (an oversized record's full envelope is read from where its
/// pointer says), or the dead letter it becomes when it does not parse or fit the warehouse.
pub async fn record_event(
    wh: &mut Warehouse,
    lake: Option<&crate::lake::Store>,
    stream: &str,
    shard: &str,
    r: &aws_sdk_kinesis::types::Record,
    oversized_max_bytes: u64,
) -> Result<Result<ChangeEvent, Reject>, RecordError> {
    let seq = r.sequence_number().to_string();
    let data = r.data().as_ref();
    let reject = |reason: String| Reject {
        origin: format!("kinesis:{stream}/{shard}/{seq}"),
        reason,
        payload: json!({
            "shard": shard,
            "sequence_number": seq,
            "partition_key": r.partition_key(),
            "data": String::from_utf8_lossy(data),
        }),
    };
    let env = match decode::parse(data) {
        Ok(env) => env,
        Err(e) => {
            tracing::warn!(%shard, sequence_number = %seq, "a record that is not an envelope goes to the dead letters: {e}");
            return Ok(Err(reject(format!(
                "the record is not a totes-cdc envelope: {e}"
            ))));
        }
    };
    let env = match &env.oversized {
        Some(location) => {
            let lake = lake.ok_or_else(|| RecordError::NoLake {
                location: location.clone(),
            })?;
            let Some(path) = lake.oversized_path(location) else {
                return Ok(Err(reject(format!(
                    "the oversized record's pointer {location} is not inside the lake's oversized/ prefix ({}/oversized/), or does not exist",
                    lake.describe().trim_end_matches('/')
                ))));
            };
            let full = match lake.get_capped(&path, oversized_max_bytes).await {
                Ok(full) => full,
                Err(e) if e.is_transient() => return Err(e.into()),
                Err(e) => {
                    return Ok(Err(reject(format!(
                        "the oversized record at {location} cannot be used: {e}"
                    ))))
                }
            };
            match decode::parse(&full) {
                Ok(full) => full,
                Err(e) => {
                    return Ok(Err(reject(format!(
                        "the oversized record at {location} does not parse: {e}"
                    ))))
                }
            }
        }
        None => env,
    };
    let table = match wh.envelope_schema(&env).await? {
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            return Ok(Err(reject(format!(
                "the envelope's columns of {}.{} do not describe a table: {e}",
                env.schema, env.table
            ))))
        }
        None => {
            return Ok(Err(reject(format!(
                "the warehouse has no staging table for {}.{}, and the record does not describe the table's columns (a record of an earlier totes-cdc): run `totes-cdc setup` with the source and warehouse URLs",
                env.schema, env.table
            ))))
        }
    };
    Ok(decode::to_event(&env, table).map_err(|e| {
        reject(format!(
            "the envelope does not fit {}.{}: {e}",
            env.schema, env.table
        ))
    }))
}
