//! A Kinesis record as the apply side sees it: the change event its envelope carries, or the
//! dead letter it becomes when it does not parse or fit the warehouse. Records are untrusted
//! input: an oversized record's pointer is followed only into the lake's `oversized/` prefix,
//! and its object is read up to a cap; a pointer that cannot be followed makes the record a
//! dead letter with the reason, and the shard goes on.

use serde_json::json;

use super::aggregate;
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

/// The change events of one record (one, or the user records of a KPL-aggregated record, in
/// their order), each an event or the dead letter it becomes.
pub async fn record_events(
    wh: &mut Warehouse,
    lake: Option<&crate::lake::Store>,
    stream: &str,
    shard: &str,
    r: &aws_sdk_kinesis::types::Record,
    oversized_max_bytes: u64,
) -> Result<Vec<Result<ChangeEvent, Reject>>, RecordError> {
    let seq = r.sequence_number();
    let data = r.data().as_ref();
    let users = match aggregate::deaggregate(data) {
        None => {
            let at = At {
                stream,
                shard,
                seq,
                sub: None,
                partition_key: r.partition_key().unwrap_or_default(),
            };
            return Ok(vec![
                user_event(wh, lake, &at, data, oversized_max_bytes).await?,
            ]);
        }
        Some(Err(e)) => {
            tracing::warn!(%shard, sequence_number = %seq, "a record that does not de-aggregate goes to the dead letters: {e}");
            return Ok(vec![Err(Reject {
                origin: format!("kinesis:{stream}/{shard}/{seq}"),
                reason: e.to_string(),
                payload: json!({
                    "shard": shard,
                    "sequence_number": seq,
                    "partition_key": r.partition_key(),
                    "data_base64": base64_of(data),
                }),
            })]);
        }
        Some(Ok(users)) => users,
    };
    let mut out = Vec::with_capacity(users.len());
    for (i, u) in users.iter().enumerate() {
        let at = At {
            stream,
            shard,
            seq,
            sub: Some(i),
            partition_key: u.partition_key,
        };
        out.push(user_event(wh, lake, &at, u.data, oversized_max_bytes).await?);
    }
    Ok(out)
}

fn base64_of(data: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, data)
}

/// A dead letter's copy of the record's bytes: as text when they are text PostgreSQL's jsonb
/// can hold (UTF-8 without NUL), else base64, so every record can be kept whatever it holds.
fn data_field(data: &[u8]) -> (&'static str, serde_json::Value) {
    match std::str::from_utf8(data) {
        Ok(text) if !text.contains('\0') => ("data", text.into()),
        _ => ("data_base64", base64_of(data).into()),
    }
}

/// Where a user record is in the stream: its record, and its place in an aggregated one.
struct At<'a> {
    stream: &'a str,
    shard: &'a str,
    seq: &'a str,
    sub: Option<usize>,
    partition_key: &'a str,
}

/// The change event of one user record (an oversized record's full envelope is read from where
/// its pointer says), or the dead letter it becomes when it does not parse or fit the warehouse.
async fn user_event(
    wh: &mut Warehouse,
    lake: Option<&crate::lake::Store>,
    at: &At<'_>,
    data: &[u8],
    oversized_max_bytes: u64,
) -> Result<Result<ChangeEvent, Reject>, RecordError> {
    let At {
        stream,
        shard,
        seq,
        sub,
        partition_key,
    } = *at;
    let reject = |reason: String| Reject {
        origin: match sub {
            Some(i) => format!("kinesis:{stream}/{shard}/{seq}/{i}"),
            None => format!("kinesis:{stream}/{shard}/{seq}"),
        },
        reason,
        payload: {
            let mut p = json!({
                "shard": shard,
                "sequence_number": seq,
                "sub_sequence_number": sub,
                "partition_key": partition_key,
            });
            let (field, value) = data_field(data);
            p[field] = value;
            p
        },
    };
    let env = match decode::parse(data) {
        Ok(env) => env,
        Err(e) => {
            tracing::warn!(%shard, sequence_number = %seq, sub_sequence_number = ?sub, "a record that is not an envelope goes to the dead letters: {e}");
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
