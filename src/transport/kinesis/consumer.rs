//! The Kinesis consumer: discovers the shards (ListShards), takes its share of them through
//! leases, and reads each with a `ShardReader`. As a `BatchSource` it hands every GetRecords
//! answer to the apply driver as one micro-batch, lake and warehouse, with the shard's sequence
//! number checkpointed in the same transaction. A shard is read from its checkpoint (one
//! without starts at TRIM_HORIZON); a child shard is read only once its parents are finished.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::leases::Leases;
use super::records::{record_events, RecordError};
use super::shard_reader::{Page, ShardReader};
use super::{classify, KinesisError};
use crate::apply::batch::{Batch, ShardPosition};
use crate::apply::warehouse::{ApplyError, Warehouse};
use crate::apply::{ApplyStats, BatchSource};
use crate::metrics::server::Health;
use crate::pg::PgUrl;
use crate::retry::Backoff;

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub stream: String,
    pub region: String,
    /// Records per GetRecords call (and so per batch), at most 10,000.
    pub max_records: i32,
    /// Wait between polls when no shard had records.
    pub poll: Duration,
    /// The largest oversized record read back from the lake.
    pub oversized_max_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Kinesis(#[from] KinesisError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error(transparent)]
    Record(RecordError),
}

impl crate::fix::Fix for ConsumeError {
    fn fix(&self) -> Option<String> {
        match self {
            ConsumeError::Kinesis(e) => e.fix(),
            ConsumeError::Apply(e) => e.fix(),
            ConsumeError::Pg(e) => e.fix(),
            ConsumeError::Record(e) => e.fix(),
        }
    }
}

impl ConsumeError {
    /// Whether waiting may mend it (the stream, the endpoint or the warehouse is unavailable
    /// for a moment).
    pub fn is_transient(&self) -> bool {
        match self {
            ConsumeError::Kinesis(e) => e.is_transient(),
            ConsumeError::Apply(e) => e.is_transient(),
            ConsumeError::Pg(e) => e.is_transient(),
            ConsumeError::Record(RecordError::Apply(e)) => e.is_transient(),
            ConsumeError::Record(RecordError::Store(e)) => e.is_transient(),
            ConsumeError::Record(RecordError::NoLake { .. }) => false,
        }
    }
}

impl From<RecordError> for ConsumeError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Apply(e) => ConsumeError::Apply(e),
            other => ConsumeError::Record(other),
        }
    }
}

pub struct ShardInfo {
    pub id: String,
    pub parents: Vec<String>,
    /// Set once the shard is closed (split or merged).
    pub closed: bool,
}

pub async fn list_shards(
    client: &aws_sdk_kinesis::Client,
    cfg: &ConsumerConfig,
) -> Result<Vec<ShardInfo>, KinesisError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = client.list_shards();
        req = match &token {
            Some(t) => req.next_token(t),
            None => req.stream_name(&cfg.stream),
        };
        let page = req
            .send()
            .await
            .map_err(|e| classify(e, &cfg.stream, &cfg.region))?;
        for s in page.shards() {
            out.push(ShardInfo {
                id: s.shard_id().to_string(),
                parents: s
                    .parent_shard_id()
                    .into_iter()
                    .chain(s.adjacent_parent_shard_id())
                    .map(str::to_string)
                    .collect(),
                closed: s
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .is_some(),
            });
        }
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// Checkpoints of the stream's shards: shard → (sequence number, ended).
async fn checkpoints(
    wh: &tokio_postgres::Client,
    url: &PgUrl,
    stream: &str,
) -> Result<HashMap<String, (Option<String>, bool)>, crate::pg::PgError> {
    crate::apply::warehouse::bookkeeping::shard_checkpoints(wh, stream)
        .await
        .map_err(|e| url.query_error("reading the shard checkpoints", e))
}

/// Reads and applies until `shutdown`.
pub async fn run(
    client: aws_sdk_kinesis::Client,
    cfg: ConsumerConfig,
    mut wh: Warehouse,
    leases: Leases,
    shutdown: watch::Receiver<bool>,
    health: Arc<Health>,
) -> Result<(), ConsumeError> {
    let stats = ApplyStats::default();
    let mut source = Shards {
        control_url: wh.url().clone(),
        control: None,
        client,
        cfg,
        leases,
        readers: BTreeMap::new(),
        turn: VecDeque::new(),
        found: false,
        last_balance: None,
        backoff: Backoff::new(),
        shutdown,
        health: health.clone(),
        in_flight: None,
    };
    let driven = crate::apply::drive(&mut source, &mut wh, &stats, &health).await;
    // A graceful stop hands the shards over at once.
    if let Err(e) = source.leases.release_all().await {
        tracing::warn!("giving the shard leases back failed (they expire instead): {e}");
    }
    driven
}

/// The shards this replica holds, read in turn.
struct Shards {
    client: aws_sdk_kinesis::Client,
    cfg: ConsumerConfig,
    leases: Leases,
    control_url: PgUrl,
    /// For the shard checkpoints (outside the batch transactions).
    control: Option<tokio_postgres::Client>,
    readers: BTreeMap<String, ShardReader>,
    /// Shards still to read in this pass.
    turn: VecDeque<String>,
    /// Whether this pass found records.
    found: bool,
    last_balance: Option<Instant>,
    backoff: Backoff,
    shutdown: watch::Receiver<bool>,
    health: Arc<Health>,
    /// The page of the batch being applied, with its shard.
    in_flight: Option<(String, Page)>,
}

impl BatchSource for Shards {
    type Error = ConsumeError;

    async fn next_batch(&mut self, wh: &mut Warehouse) -> Result<Option<Batch>, ConsumeError> {
        loop {
            if *self.shutdown.borrow() {
                return Ok(None);
            }
            // Leases lost (not renewed in time, or taken by another replica): stop reading.
            let held = self.leases.held();
            self.readers.retain(|shard, _| {
                let keep = held.contains_key(shard);
                if !keep {
                    tracing::info!(%shard, "no longer reading the shard: its lease was lost");
                }
                keep
            });
            if self
                .last_balance
                .is_none_or(|t| t.elapsed() > Duration::from_secs(2))
            {
                self.last_balance = Some(Instant::now());
                match self.balance(wh).await {
                    Ok(()) => {}
                    // Kinesis or the warehouse unavailable for a moment: wait it out (health
                    // says why); the shards held keep their readers.
                    Err(e) if e.is_transient() => {
                        let delay = self.backoff.next_delay();
                        tracing::warn!(
                            "sharing the shards failed, retrying in {:.1}s: {e}",
                            delay.as_secs_f64()
                        );
                        tokio::time::sleep(delay).await;
                        self.last_balance = None;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(shard) = self.turn.pop_front() else {
                // A pass over every shard is over: wait for more unless it found some.
                if !std::mem::take(&mut self.found) {
                    tokio::select! {
                        _ = tokio::time::sleep(self.cfg.poll) => {}
                        _ = self.shutdown.changed() => {}
                    }
                }
                self.turn = self.readers.keys().cloned().collect();
                if self.turn.is_empty() {
                    // Nothing held: wait for the next balance.
                    tokio::select! {
                        _ = tokio::time::sleep(self.cfg.poll.max(Duration::from_millis(100))) => {}
                        _ = self.shutdown.changed() => {}
                    }
                }
                continue;
            };
            let Some(reader) = self.readers.get_mut(&shard) else {
                continue;
            };
            let page = match reader.read(&self.client, self.cfg.max_records).await {
                Ok(page) => {
                    self.backoff = Backoff::new();
                    page
                }
                Err(e) if e.is_transient() => {
                    let delay = self.backoff.next_delay();
                    tracing::warn!(%shard, "reading the shard failed, retrying in {:.1}s: {e}", delay.as_secs_f64());
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            crate::metrics::get()
                .kinesis_millis_behind_latest
                .with_label_values(&[&shard])
                .set(page.behind_ms);
            if page.records.is_empty() && !page.ended {
                reader.advance(&page);
                continue;
            }
            self.found |= !page.records.is_empty();
            let mut batch = Batch::default();
            let lake = wh.lake().cloned();
            for r in &page.records {
                let cap = self.cfg.oversized_max_bytes;
                for got in
                    record_events(wh, lake.as_ref(), &self.cfg.stream, &shard, r, cap).await?
                {
                    match got {
                        Ok(ev) => {
                            batch.newest_commit_ts_us = Some(
                                batch
                                    .newest_commit_ts_us
                                    .map_or(ev.commit_ts_us, |t| t.max(ev.commit_ts_us)),
                            );
                            batch.events.push(ev);
                        }
                        Err(reject) => batch.rejects.push(reject),
                    }
                }
            }
            // The lease may have passed since the pass began: then the shard is not ours.
            let Some(epoch) = self.leases.epoch(&shard) else {
                self.readers.remove(&shard);
                continue;
            };
            batch.shard = Some(ShardPosition {
                stream: self.cfg.stream.clone(),
                shard: shard.clone(),
                sequence_number: page.last_sequence_number(),
                ended: page.ended,
                owner: self.leases.owner().to_string(),
                epoch,
            });
            self.in_flight = Some((shard, page));
            return Ok(Some(batch));
        }
    }

    async fn fenced(&mut self, _batch: &Batch) -> Result<(), ConsumeError> {
        if let Some((shard, _)) = self.in_flight.take() {
            self.readers.remove(&shard);
            self.leases.forget(&shard);
            crate::metrics::get().lease_changes_total.inc();
        }
        Ok(())
    }

    async fn committed(&mut self, _batch: &Batch) -> Result<(), ConsumeError> {
        let Some((shard, page)) = self.in_flight.take() else {
            return Ok(());
        };
        if page.ended {
            tracing::info!(%shard, "shard read to its end");
            self.readers.remove(&shard);
        } else if let Some(reader) = self.readers.get_mut(&shard) {
            reader.advance(&page);
        }
        Ok(())
    }
}

impl Shards {
    /// Announces this replica, and takes or gives back leases so each replica holds its fair
    /// share of the shards that may be read now.
    async fn balance(&mut self, wh: &mut Warehouse) -> Result<(), ConsumeError> {
        let m = crate::metrics::get();
        if self.control.as_ref().is_none_or(|c| c.is_closed()) {
            self.control = Some(self.control_url.connect().await?);
        }
        let live = match self.leases.heartbeat().await {
            Ok(n) => {
                self.health
                    .set("warehouse", true, self.control_url.target());
                n
            }
            Err(e) => {
                self.health.set("warehouse", false, e.to_string());
                return Err(e.into());
            }
        };
        let shards = match list_shards(&self.client, &self.cfg).await {
            Ok(s) => {
                self.health
                    .set("kinesis", true, format!("stream {}", self.cfg.stream));
                s
            }
            Err(e) => {
                self.health.set("kinesis", false, e.to_string());
                return Err(e.into());
            }
        };
        let Some(control) = self.control.as_ref() else {
            return Ok(());
        };
        let cps = checkpoints(control, &self.control_url, &self.cfg.stream).await?;
        let eligible = eligible_shards(&shards, &cps);
        let fair = eligible.len().div_ceil(live as usize);
        // Give back what ended or is more than the fair share.
        let held: Vec<String> = self.leases.held().into_keys().collect();
        for id in &held {
            let still = eligible.iter().any(|s| &s.id == id);
            if !still || self.leases.held().len() > fair {
                self.leases.release(id).await?;
                self.readers.remove(id);
                m.lease_changes_total.inc();
                tracing::info!(shard = %id, "shard lease released");
            }
        }
        for s in &eligible {
            if self.leases.held().len() >= fair {
                break;
            }
            if self.leases.holds(&s.id) {
                continue;
            }
            if let Some(epoch) = self.leases.try_acquire(&s.id).await? {
                m.lease_changes_total.inc();
                tracing::info!(shard = %s.id, epoch, "shard lease taken");
                wh.recover_shard_lake(&s.id).await?;
                let after = cps.get(&s.id).and_then(|c| c.0.clone());
                self.readers.insert(
                    s.id.clone(),
                    ShardReader::new(&self.cfg.stream, &self.cfg.region, &s.id, after),
                );
            }
        }
        m.shards_owned.set(self.leases.held().len() as i64);
        self.health.set(
            "leases",
            !self.leases.held().is_empty() || eligible.is_empty() || fair == 0,
            format!(
                "{} of {} shards held ({} consumers)",
                self.leases.held().len(),
                eligible.len(),
                live
            ),
        );
        Ok(())
    }
}

/// The shards to read now: not finished, and with every parent finished (a parent no longer
/// listed has expired from the stream: nothing is left to read there).
fn eligible_shards<'a>(
    shards: &'a [ShardInfo],
    checkpoints: &HashMap<String, (Option<String>, bool)>,
) -> Vec<&'a ShardInfo> {
    let known: Vec<&str> = shards.iter().map(|s| s.id.as_str()).collect();
    let ended = |id: &str| checkpoints.get(id).is_some_and(|c| c.1);
    shards
        .iter()
        .filter(|s| !ended(&s.id))
        .filter(|s| {
            s.parents
                .iter()
                .all(|p| ended(p) || !known.contains(&p.as_str()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parents: &[&str], closed: bool) -> ShardInfo {
        ShardInfo {
            id: id.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            closed,
        }
    }

    #[test]
    fn children_wait_for_their_parents() {
        let shards = vec![
            shard("s0", &[], true),
            shard("s1", &[], false),
            shard("s2", &["s0"], false),
            shard("s3", &["s0"], false),
            shard("s4", &["s1", "s3"], false),
            shard("s5", &["gone"], false),
        ];
        let mut cps = HashMap::new();
        let ids = |v: Vec<&ShardInfo>| v.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(eligible_shards(&shards, &cps)), ["s0", "s1", "s5"]);
        cps.insert("s0".to_string(), (Some("9".to_string()), true));
        assert_eq!(
            ids(eligible_shards(&shards, &cps)),
            ["s1", "s2", "s3", "s5"]
        );
        cps.insert("s3".to_string(), (None, true));
        cps.insert("s1".to_string(), (None, true));
        assert_eq!(ids(eligible_shards(&shards, &cps)), ["s2", "s4", "s5"]);
    }
}
