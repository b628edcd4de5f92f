//! Kinesis Data Streams: the producer of `stream --sink kinesis` and the consumers of
//! `consume`, through aws-sdk-kinesis with the standard AWS configuration.

pub mod aggregate;
pub mod consumer;
pub mod leases;
pub mod producer;
pub mod records;
pub mod shard_reader;

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use thiserror::Error;

/// Largest record (data + partition key) Kinesis accepts.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Largest PutRecords request (data + partition keys).
pub const MAX_REQUEST_BYTES: usize = 5 * 1024 * 1024;
/// Most records in one PutRecords request.
pub const MAX_REQUEST_RECORDS: usize = 500;
/// Longest partition key, in characters.
pub const MAX_PARTITION_KEY: usize = 256;

#[derive(Debug, Error)]
pub enum KinesisError {
    #[error("Kinesis stream \"{stream}\" does not exist in region {region}")]
    NoStream { stream: String, region: String },
    #[error("access to Kinesis stream \"{stream}\" was denied ({code})")]
    Denied { stream: String, code: String },
    #[error("cannot reach the Kinesis endpoint for stream \"{stream}\" ({message})")]
    Unreachable { stream: String, message: String },
    #[error("Kinesis request failed: {0}")]
    Transient(String),
    #[error("Kinesis: {0}")]
    Other(String),
    #[error(transparent)]
    Store(#[from] crate::lake::StoreError),
}

impl crate::fix::Fix for KinesisError {
    fn fix(&self) -> Option<String> {
        Some(match self {
            KinesisError::NoStream { .. } => "create it (terraform/ creates one), or fix `kinesis-stream` and the AWS region (AWS_REGION)".into(),
            KinesisError::Denied { .. } => "grant the role kinesis:DescribeStreamSummary, kinesis:ListShards, kinesis:PutRecords (stream) or kinesis:ListShards, kinesis:GetShardIterator, kinesis:GetRecords (consume), or fix the AWS credentials".into(),
            KinesisError::Unreachable { .. } => "check AWS_ENDPOINT_URL, AWS_REGION and the network".into(),
            KinesisError::Store(e) => return e.fix(),
            KinesisError::Transient(_) | KinesisError::Other(_) => return None,
        })
    }
}

impl KinesisError {
    pub fn is_transient(&self) -> bool {
        matches!(self, KinesisError::Transient(_))
    }
}

/// The Kinesis client on the shared AWS configuration.
pub async fn client() -> (aws_sdk_kinesis::Client, String) {
    let sdk = crate::aws::config().await;
    let region = sdk
        .region()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "(none)".into());
    (aws_sdk_kinesis::Client::new(&sdk), region)
}

/// Classifies an SDK error: missing stream and denied access are permanent, the rest is retried.
pub fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(
    e: SdkError<E>,
    stream: &str,
    region: &str,
) -> KinesisError {
    match &e {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or_default().to_string();
            let status = se.raw().status().as_u16();
            match code.as_str() {
                "ResourceNotFoundException" => KinesisError::NoStream {
                    stream: stream.into(),
                    region: region.into(),
                },
                "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException" => KinesisError::Denied {
                    stream: stream.into(),
                    code,
                },
                _ if status == 403 => KinesisError::Denied {
                    stream: stream.into(),
                    code: status.to_string(),
                },
                "ValidationException" | "InvalidArgumentException" => KinesisError::Other(format!(
                    "{code}: {}",
                    se.err().message().unwrap_or_default()
                )),
                _ => KinesisError::Transient(format!(
                    "{code} {}",
                    se.err().message().unwrap_or_default()
                )),
            }
        }
        SdkError::DispatchFailure(d) => KinesisError::Transient(format!("{d:?}")),
        other => KinesisError::Transient(other.to_string()),
    }
}

/// Checks the stream exists and can be reached; unreachable here is a stop, not a retry.
pub async fn check_stream(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    region: &str,
) -> Result<(), KinesisError> {
    match client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(SdkError::DispatchFailure(d)) => Err(KinesisError::Unreachable {
            stream: stream.into(),
            message: format!("{d:?}"),
        }),
        Err(SdkError::TimeoutError(_)) => Err(KinesisError::Unreachable {
            stream: stream.into(),
            message: "timed out".into(),
        }),
        Err(e) => Err(classify(e, stream, region)),
    }
}

pub use crate::hash::fnv1a64;

/// `schema.table/<key as JSON>`, so every version of a row lands on one shard, in order;
/// hashed when longer than Kinesis allows.
pub fn partition_key(table: &str, key_json: &str) -> String {
    let full = format!("{table}/{key_json}");
    if full.chars().count() <= MAX_PARTITION_KEY {
        return full;
    }
    let prefix: String = table.chars().take(200).collect();
    format!("{prefix}#{:016x}", fnv1a64(full.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_keys() {
        assert_eq!(
            partition_key("public.staff", "{\"staff_id\":7}"),
            "public.staff/{\"staff_id\":7}"
        );
        let long = "x".repeat(400);
        let k = partition_key("public.t", &long);
        assert!(k.len() <= MAX_PARTITION_KEY);
        assert_eq!(k, partition_key("public.t", &long));
        assert_ne!(k, partition_key("public.t", &format!("{long}y")));
    }
}
