//! Transports carry change events from capture to apply: the in-process channel
//! (`crate::channel`), Kinesis Data Streams, or stdout. Every sink plugs into the channel's
//! acknowledgement path: it acknowledges "everything up to N is durable", and only then does
//! the capture confirm the matching LSN to Postgres.

pub mod kinesis;
pub mod stdout;
