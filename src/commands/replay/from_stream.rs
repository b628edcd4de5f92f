//! `replay --from kinesis`: every shard of the stream from its oldest record (TRIM_HORIZON) to
//! its end, or to the present for an open shard, through the consumer's `ShardReader`, as a
//! `BatchSource` for the apply driver.

use std::collections::VecDeque;

use anyhow::Result;

use super::{Pending, Range};
use crate::apply::batch::Batch;
use crate::apply::warehouse::Warehouse;
use crate::apply::BatchSource;
use crate::config::ReplayArgs;
use crate::pg::PgUrl;
use crate::retry::Backoff;
use crate::transport::kinesis::records::record_events;
use crate::transport::kinesis::shard_reader::ShardReader;
use crate::transport::kinesis::{self, consumer};

/// Records per GetRecords call.
const PAGE: i32 = 10_000;

pub(super) struct StreamHistory {
    client: aws_sdk_kinesis::Client,
    stream: String,
    shards: usize,
    /// The shards still to read, the one being read first.
    readers: VecDeque<ShardReader>,
    records: usize,
    range: Range,
    oversized_max_bytes: u64,
    /// Where oversized records' full envelopes are read from (the `lake` option).
    lake: Option<crate::lake::Store>,
    pub pending: Pending,
}

pub(super) async fn open(
    args: &ReplayArgs,
    url: &PgUrl,
    range: Range,
    pending: Pending,
) -> Result<(StreamHistory, Warehouse)> {
    let stream = args.kinesis.kinesis_stream.clone();
    let (client, region) = kinesis::client().await;
    kinesis::check_stream(&client, &stream, &region).await?;
    let wh = super::warehouse(args, url).await?;
    let cfg = consumer::ConsumerConfig {
        stream: stream.clone(),
        region: region.clone(),
        max_records: PAGE,
        poll: std::time::Duration::ZERO,
        oversized_max_bytes: args.kinesis.oversized_max_bytes.max(0) as u64,
    };
    let shards = consumer::list_shards(&client, &cfg).await?;
    tracing::info!(%stream, shards = shards.len(), range = %range.describe(), "replaying the stream");
    let readers = shards
        .iter()
        .map(|s| ShardReader::new(&stream, &region, &s.id, None))
        .collect();
    let history = StreamHistory {
        client,
        stream,
        shards: shards.len(),
        readers,
        records: 0,
        range,
        oversized_max_bytes: cfg.oversized_max_bytes,
        lake: match args.warehouse.lake.at() {
            Some(lake) => Some(crate::lake::Store::open(lake).await?),
            None => None,
        },
        pending,
    };
    Ok((history, wh))
}

impl StreamHistory {
    /// What was read, once the driver is done; an empty stream is an error.
    pub fn finish(&self) -> Result<String> {
        if self.records == 0 {
            anyhow::bail!(
                "the Kinesis stream {} holds no records: its retention may have passed; replay from the lake instead (--from lake)",
                self.stream
            );
        }
        Ok(format!(
            "{} records of {} shards of Kinesis stream {}",
            self.records, self.shards, self.stream
        ))
    }
}

impl BatchSource for StreamHistory {
    type Error = anyhow::Error;

    async fn next_batch(&mut self, wh: &mut Warehouse) -> Result<Option<Batch>> {
        let mut backoff = Backoff::new();
        while !self.pending.full() {
            let Some(reader) = self.readers.front_mut() else {
                break;
            };
            let page = match reader.read(&self.client, PAGE).await {
                Ok(page) => page,
                Err(e) if e.is_transient() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(shard = %reader.shard, "reading the stream, retrying in {:.1}s: {e}", delay.as_secs_f64());
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut events = Vec::new();
            let mut rejects = Vec::new();
            for r in &page.records {
                let cap = self.oversized_max_bytes;
                let got =
                    record_events(wh, self.lake.as_ref(), &self.stream, &reader.shard, r, cap)
                        .await?;
                for got in got {
                    match got {
                        Ok(ev) if self.range.contains(ev.position) => events.push(ev),
                        Ok(_) => {}
                        Err(reject) => rejects.push(reject),
                    }
                }
            }
            self.records += page.records.len();
            self.pending.push(events, rejects);
            // A closed shard ends without a next iterator; an open one when it is caught up.
            let caught_up = page.records.is_empty() && page.behind_ms == 0;
            if page.ended || caught_up {
                self.readers.pop_front();
            } else {
                reader.advance(&page);
            }
        }
        Ok(self.pending.take())
    }

    async fn committed(&mut self, _batch: &Batch) -> Result<()> {
        Ok(())
    }
}
