//! The Kinesis consumer: discovers the shards (ListShards), takes its share of them through
//! leases, reads each with GetShardIterator/GetRecords, and applies every GetRecords answer as
//! one micro-batch — lake and warehouse, with the shard's sequence number checkpointed in the
//! same transaction. A restart resumes AFTER_SEQUENCE_NUMBER the checkpoint (a shard without one
//! starts at TRIM_HORIZON); a child shard is read only once its parents are finished.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::types::ShardIteratorType;
use serde_json::json;
use tokio::sync::watch;

use super::leases::Leases;
use super::{classify, KinesisError};
use crate::apply::batch::{Batch, Reject, ShardPosition};
use crate::apply::warehouse::{ApplyError, Warehouse};
use crate::event::{decode, ChangeEvent};
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
}

/// Counters shared with metrics.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub records: AtomicU64,
    pub batches: AtomicU64,
    pub dead_letters: AtomicU64,
    pub lease_changes: AtomicU64,
    pub shards_owned: AtomicI64,
    /// MillisBehindLatest per shard.
    pub behind_ms: Mutex<BTreeMap<String, i64>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Kinesis(#[from] KinesisError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
}

pub struct ShardInfo {
    pub id: String,
    pub parents: Vec<String>,
    /// Set once the shard is closed (split or merged).
    pub closed: bool,
}

#[derive(Default)]
struct ShardState {
    iterator: Option<String>,
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
    mut leases: Leases,
    stats: Arc<ConsumerStats>,
    mut shutdown: watch::Receiver<bool>,
    health: Arc<crate::metrics::server::Health>,
) -> Result<(), ConsumeError> {
    let m = crate::metrics::get();
    let control_url = wh.url().clone();
    let mut control = control_url.connect().await?;
    wh.prepare().await?;
    let mut states: BTreeMap<String, ShardState> = BTreeMap::new();
    let mut last_balance: Option<Instant> = None;
    let mut backoff = Backoff::new();
    let mut closed: HashSet<String> = HashSet::new();
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        if !leases.alive() && !states.is_empty() {
            states.clear();
        }
        if last_balance.is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
            last_balance = Some(Instant::now());
            if control.is_closed() {
                control = control_url.connect().await?;
            }
            let live = match leases.heartbeat().await {
                Ok(n) => {
                    health.set("warehouse", true, control_url.target());
                    n
                }
                Err(e) => {
                    health.set("warehouse", false, e.to_string());
                    return Err(e.into());
                }
            };
            let shards = match list_shards(&client, &cfg).await {
                Ok(s) => {
                    health.set("kinesis", true, format!("stream {}", cfg.stream));
                    s
                }
                Err(e) => {
                    health.set("kinesis", false, e.to_string());
                    return Err(e.into());
                }
            };
            let cps = checkpoints(&control, &control_url, &cfg.stream).await?;
            let eligible = eligible_shards(&shards, &cps);
            let fair = eligible.len().div_ceil(live as usize);
            // Give back what ended or is more than the fair share.
            let held: Vec<String> = leases.held().iter().cloned().collect();
            for id in &held {
                let still = eligible.iter().any(|s| &s.id == id);
                if !still || leases.held().len() > fair {
                    leases.release(id).await?;
                    states.remove(id);
                    stats.lease_changes.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(shard = %id, "shard lease released");
                }
            }
            for s in &eligible {
                if leases.held().len() >= fair {
                    break;
                }
                if leases.held().contains(&s.id) {
                    continue;
                }
                if leases.try_acquire(&s.id).await? {
                    stats.lease_changes.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(shard = %s.id, "shard lease taken");
                    wh.recover_shard_lake(&s.id).await?;
                    states.insert(s.id.clone(), ShardState::default());
                }
            }
            stats
                .shards_owned
                .store(leases.held().len() as i64, Ordering::Relaxed);
            m.shards_owned.set(leases.held().len() as i64);
            m.lease_changes_total.inc_by(
                stats
                    .lease_changes
                    .load(Ordering::Relaxed)
                    .saturating_sub(m.lease_changes_total.get()),
            );
            health.set(
                "leases",
                !leases.held().is_empty() || eligible.is_empty() || fair == 0,
                format!(
                    "{} of {} shards held ({} consumers)",
                    leases.held().len(),
                    eligible.len(),
                    live
                ),
            );
            // Closed shards are known here; remember them for end detection.
            closed.extend(shards.iter().filter(|s| s.closed).map(|s| s.id.clone()));
        }

        let mut any = false;
        let owned: Vec<String> = states.keys().cloned().collect();
        for shard in owned {
            if *shutdown.borrow() {
                return Ok(());
            }
            match read_once(
                &client,
                &cfg,
                &mut wh,
                &control,
                &shard,
                &closed,
                &mut states,
                &stats,
            )
            .await
            {
                Ok(got) => {
                    any |= got;
                    backoff = Backoff::new();
                }
                Err(e) if transient(&e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%shard, "reading the shard failed, retrying in {:.1}s: {e}", delay.as_secs_f64());
                    if let Some(s) = states.get_mut(&shard) {
                        s.iterator = None;
                    }
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
        if !any {
            tokio::select! {
                _ = tokio::time::sleep(cfg.poll) => {}
                _ = shutdown.changed() => {}
            }
        }
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

fn transient(e: &ConsumeError) -> bool {
    match e {
        ConsumeError::Kinesis(k) => k.is_transient(),
        ConsumeError::Apply(a) => a.is_transient(),
        ConsumeError::Pg(p) => p.is_transient(),
    }
}

/// One GetRecords on one shard, applied as one batch; `true` when it had records.
#[allow(clippy::too_many_arguments)]
async fn read_once(
    client: &aws_sdk_kinesis::Client,
    cfg: &ConsumerConfig,
    wh: &mut Warehouse,
    control: &tokio_postgres::Client,
    shard: &str,
    closed: &HashSet<String>,
    states: &mut BTreeMap<String, ShardState>,
    stats: &ConsumerStats,
) -> Result<bool, ConsumeError> {
    let Some(state) = states.get_mut(shard) else {
        return Ok(false);
    };
    if state.iterator.is_none() {
        let cp = checkpoints(control, wh.url(), &cfg.stream).await?;
        let mut req = client
            .get_shard_iterator()
            .stream_name(&cfg.stream)
            .shard_id(shard);
        req = match cp.get(shard).and_then(|c| c.0.clone()) {
            Some(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
            None => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let out = req
            .send()
            .await
            .map_err(|e| classify(e, &cfg.stream, &cfg.region))?;
        state.iterator = out.shard_iterator().map(str::to_string);
    }
    let Some(iterator) = state.iterator.clone() else {
        return Ok(false);
    };
    let out = match client
        .get_records()
        .shard_iterator(&iterator)
        .limit(cfg.max_records.clamp(1, 10_000))
        .send()
        .await
    {
        Ok(out) => out,
        Err(SdkError::ServiceError(se)) if se.err().code() == Some("ExpiredIteratorException") => {
            state.iterator = None;
            return Ok(false);
        }
        Err(e) => return Err(classify(e, &cfg.stream, &cfg.region).into()),
    };
    let behind = out.millis_behind_latest().unwrap_or(0);
    if let Ok(mut b) = stats.behind_ms.lock() {
        b.insert(shard.to_string(), behind);
    }
    crate::metrics::get()
        .kinesis_millis_behind_latest
        .with_label_values(&[shard])
        .set(behind);
    let records = out.records();
    // The contract of GetRecords: no next iterator once a closed shard is read to its end.
    let ended = out.next_shard_iterator().is_none();
    let _ = closed;
    let next = out.next_shard_iterator().map(str::to_string);
    if records.is_empty() && !ended {
        state.iterator = next;
        return Ok(false);
    }
    let mut batch = Batch::default();
    for r in records {
        match record_event(wh, &cfg.stream, shard, r).await? {
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
    batch.shard = Some(ShardPosition {
        stream: cfg.stream.clone(),
        shard: shard.to_string(),
        sequence_number: records.last().map(|r| r.sequence_number().to_string()),
        ended,
    });
    let started = Instant::now();
    let applied = wh.apply(&batch).await?;
    crate::apply::record(&applied, started.elapsed().as_secs_f64(), &batch);
    stats
        .records
        .fetch_add(records.len() as u64, Ordering::Relaxed);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats
        .dead_letters
        .fetch_add(applied.dead_letters as u64, Ordering::Relaxed);
    if ended {
        tracing::info!(%shard, "shard read to its end");
        states.remove(shard);
    } else if let Some(s) = states.get_mut(shard) {
        s.iterator = next;
    }
    Ok(!records.is_empty())
}

/// The change event of one record (an oversized record's full envelope is read from where its
/// pointer says), or the dead letter it becomes when it does not parse or fit the warehouse.
pub async fn record_event(
    wh: &mut Warehouse,
    stream: &str,
    shard: &str,
    r: &aws_sdk_kinesis::types::Record,
) -> Result<Result<ChangeEvent, Reject>, ConsumeError> {
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
            let full = crate::lake::store::fetch(location)
                .await
                .map_err(|e| ConsumeError::Kinesis(e.into()))?;
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
