//! Reading one shard: GetShardIterator from where the reader stands (after a sequence number,
//! or the oldest record), then GetRecords page by page. The reader moves on only when told the
//! page was applied, so a failed page is read again; an expired iterator is renewed from the
//! same place. Used by the consumer (from its checkpoint) and by `replay --from kinesis` (from
//! the oldest record).

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::types::{Record, ShardIteratorType};

use super::{classify, KinesisError};

/// One GetRecords answer.
pub struct Page {
    pub records: Vec<Record>,
    /// The shard is closed and read to its end (GetRecords gave no next iterator).
    pub ended: bool,
    /// How far the page is behind the shard's newest record.
    pub behind_ms: i64,
    next: Option<String>,
}

impl Page {
    /// Sequence number of the page's last record.
    pub fn last_sequence_number(&self) -> Option<String> {
        self.records.last().map(|r| r.sequence_number().to_string())
    }
}

pub struct ShardReader {
    pub stream: String,
    pub region: String,
    pub shard: String,
    /// Where reading resumes when the iterator must be obtained again.
    after: Option<String>,
    iterator: Option<String>,
}

impl ShardReader {
    /// A reader of `shard` after sequence number `after` (from the oldest record without one).
    pub fn new(stream: &str, region: &str, shard: &str, after: Option<String>) -> Self {
        Self {
            stream: stream.to_string(),
            region: region.to_string(),
            shard: shard.to_string(),
            after,
            iterator: None,
        }
    }

    /// The next page (at most `limit` records), from where the reader stands.
    pub async fn read(
        &mut self,
        client: &aws_sdk_kinesis::Client,
        limit: i32,
    ) -> Result<Page, KinesisError> {
        if let Some(hold) = crate::fault::shard_hold(&self.shard) {
            tokio::time::sleep(hold).await;
        }
        // An expired iterator is renewed once; a second expiry in a row is an error to retry.
        for _ in 0..2 {
            let iterator = match self.iterator.clone() {
                Some(it) => it,
                None => self.iterator(client).await?,
            };
            match client
                .get_records()
                .shard_iterator(&iterator)
                .limit(limit.clamp(1, 10_000))
                .send()
                .await
            {
                Ok(out) => {
                    let next = out.next_shard_iterator().map(str::to_string);
                    return Ok(Page {
                        behind_ms: out.millis_behind_latest().unwrap_or(0),
                        // The contract of GetRecords: no next iterator once a closed shard is
                        // read to its end.
                        ended: next.is_none(),
                        next,
                        records: out.records,
                    });
                }
                Err(SdkError::ServiceError(se))
                    if se.err().code() == Some("ExpiredIteratorException") =>
                {
                    self.iterator = None;
                }
                Err(e) => {
                    self.iterator = None;
                    return Err(classify(e, &self.stream, &self.region));
                }
            }
        }
        Err(KinesisError::Transient(format!(
            "the shard iterator of {} expired twice in a row",
            self.shard
        )))
    }

    /// The page was applied: read on after it.
    pub fn advance(&mut self, page: &Page) {
        if let Some(seq) = page.last_sequence_number() {
            self.after = Some(seq);
        }
        self.iterator = page.next.clone();
    }

    async fn iterator(&self, client: &aws_sdk_kinesis::Client) -> Result<String, KinesisError> {
        let req = client
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(&self.shard);
        let req = match &self.after {
            Some(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
            None => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let out = req
            .send()
            .await
            .map_err(|e| classify(e, &self.stream, &self.region))?;
        out.shard_iterator().map(str::to_string).ok_or_else(|| {
            KinesisError::Other(format!(
                "GetShardIterator gave no iterator for shard {}",
                self.shard
            ))
        })
    }
}
