//! A Kinesis record as the apply side sees it: the change event its envelope carries (an
//! oversized record's full envelope is read from where its pointer says), or the dead letter
//! it becomes when it does not parse or fit the warehouse.

use serde_json::json;

use crate::apply::batch::Reject;
use crate::apply::warehouse::{ApplyError, Warehouse};
use crate::event::{decode, ChangeEvent};

/// Why a record could be neither decoded nor refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Store(#[from] crate::lake::StoreError),
}

/// The change event of one record (an oversized record's full envelope is read from where its
/// pointer says), or the dead letter it becomes when it does not parse or fit the warehouse.
pub async fn record_event(
    wh: &mut Warehouse,
    stream: &str,
    shard: &str,
    r: &aws_sdk_kinesis::types::Record,
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
            let full = crate::lake::store::fetch(location).await?;
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
    let Some(table) = wh.table_schema(&env.schema, &env.table).await? else {
        return Ok(Err(reject(format!(
            "the warehouse has no staging table for {}.{}: run `totes-cdc setup` with the source and warehouse URLs",
            env.schema, env.table
        ))));
    };
    Ok(decode::to_event(&env, table).map_err(|e| {
        reject(format!(
            "the envelope does not fit {}.{}: {e}",
            env.schema, env.table
        ))
    }))
}
