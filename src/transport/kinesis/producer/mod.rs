//! The Kinesis producer: change events as the JSON envelope, PutRecords batches within every
//! service limit (500 records, 5 MiB per request, 1 MiB per record), several requests in flight.
//!
//! Order per key: a request holds at most one record of a partition key, and a key with a
//! record in flight, waiting for a retry or being verified sends nothing later, so a failed
//! entry is retried before any later version of its row. Acknowledgement: everything up to item
//! N is durable once every record up to N is acknowledged by Kinesis and verified; only then
//! does capture confirm.
//!
//! Verification: a shard never gives two records one sequence number. An endpoint that does
//! (moto's `put_record` reads the shard's last number and stores under the next without a lock,
//! so two PutRecords served at once can both get number n and the later overwrites the
//! earlier, each answered as a success) has lost one of them. A record is therefore
//! acknowledged only once every request that was in flight when its answer came has answered
//! too (only those can collide with it), and records that shared a number are sent again.

mod packing;
pub mod shard_map;
mod verifying;

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::aggregate::hash_key;
use super::{classify, partition_key, KinesisError, MAX_RECORD_BYTES};
use crate::channel::{Acker, Item, ItemKind};
use crate::event::json::write_envelope;
use crate::event::ChangeEvent;
use crate::lake::{position_name, Store};
use packing::{take_request, Part, Rec};
use shard_map::ShardMap;
use verifying::Verifying;

#[derive(Clone)]
pub struct ProducerConfig {
    pub stream: String,
    pub region: String,
    /// PutRecords requests in flight at once.
    pub concurrency: usize,
    /// Source database name, for the envelope.
    pub database: String,
    /// Where a record over 1 MiB goes (the pointer record in the stream names it).
    pub oversize: Option<Store>,
    /// Records waiting to be sent at most (backpressure to capture beyond it).
    pub max_pending: usize,
    /// Pack events bound for one shard into one record (the KPL aggregation format).
    pub aggregation: bool,
}

/// Counters shared with metrics.
#[derive(Debug, Default)]
pub struct ProducerStats {
    /// Kinesis records acknowledged (several events each when aggregated).
    pub records: AtomicU64,
    /// Events acknowledged.
    pub events: AtomicU64,
    /// PUT payload units of the acknowledged records (25 KiB each, rounded up per record).
    pub payload_units: AtomicU64,
    pub bytes: AtomicU64,
    pub requests: AtomicU64,
    pub throttled: AtomicU64,
    pub failed_records: AtomicU64,
    pub inflight: AtomicU64,
    pub oversized: AtomicU64,
    /// Pairs of records the endpoint stored under one sequence number (both sent again).
    pub collisions: AtomicU64,
    /// Microseconds spent in PutRecords, summed (with `requests`, the mean).
    pub put_us: AtomicU64,
}

/// The unit Kinesis bills a PUT by: 25 KiB, a record's size rounded up.
const PAYLOAD_UNIT: u64 = 25 * 1024;

/// One entry's answer: where Kinesis stored it (shard, sequence number), or its error code.
type Answer = Result<(String, String), String>;

/// A finished request: its id, its records, their answers, and how long it took.
type Sent = (u64, Vec<Rec>, Result<Vec<Answer>, KinesisError>, Duration);

/// The record data of an event: its envelope, or a pointer to where an oversized one was stored.
async fn record_of(
    ev: &ChangeEvent,
    seqno: u64,
    cfg: &ProducerConfig,
    stats: &ProducerStats,
) -> Result<Part, KinesisError> {
    let mut data = Vec::with_capacity(512);
    write_envelope(&mut data, ev, &cfg.database);
    let table = ev.table.qualified_name();
    let mut key_json = Vec::with_capacity(32);
    crate::event::json::write_key(&mut key_json, ev);
    let key = partition_key(&table, &String::from_utf8_lossy(&key_json));
    if data.len() + key.len() > MAX_RECORD_BYTES {
        let Some(store) = &cfg.oversize else {
            return Err(KinesisError::Other(format!(
                "an event of {table} at {} is {} bytes, over the 1 MiB Kinesis record limit, and no `lake` is configured to hold it; set `lake` (a directory or s3://bucket/prefix)",
                ev.position, data.len()
            )));
        };
        let path = format!(
            "oversized/{}/{}.json",
            crate::lake::names::table_dir(&ev.table.schema, &ev.table.name),
            position_name(ev.position)
        );
        store.put(&path, Bytes::from(data.clone())).await?;
        stats.oversized.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%table, position = %ev.position, bytes = data.len(), %path, "record over 1 MiB: stored in the lake, a pointer goes to the stream");
        let mut v: serde_json::Value =
            serde_json::from_slice(&data).map_err(|e| KinesisError::Other(e.to_string()))?;
        if let Some(o) = v.as_object_mut() {
            o.insert("before".into(), serde_json::Value::Null);
            o.insert("after".into(), serde_json::Value::Null);
            o.remove("unchanged_toast");
            o.insert(
                "oversized".into(),
                serde_json::Value::String(format!(
                    "{}/{path}",
                    store.describe().trim_end_matches('/')
                )),
            );
        }
        data = serde_json::to_vec(&v).map_err(|e| KinesisError::Other(e.to_string()))?;
    }
    Ok(Part {
        seqno,
        hash: hash_key(&key),
        key,
        data: Bytes::from(data),
        budget: None,
    })
}

/// One PutRecords request: each entry's answer in the order sent. Injected failures (tests)
/// are answered as throttled without being sent.
async fn put_records(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    region: &str,
    taken: &[Rec],
    injected: &[bool],
) -> Result<Vec<Answer>, KinesisError> {
    let mut entries = Vec::with_capacity(taken.len());
    for (r, _) in taken.iter().zip(injected).filter(|(_, &inj)| !inj) {
        let entry = PutRecordsRequestEntry::builder()
            .data(Blob::new(r.data.to_vec()))
            .partition_key(r.key.clone())
            .set_explicit_hash_key(r.explicit_hash_key.clone())
            .build()
            .map_err(|e| KinesisError::Other(format!("building a PutRecords entry: {e}")))?;
        entries.push(entry);
    }
    let mut answers: std::vec::IntoIter<Answer> = if entries.is_empty() {
        Vec::new().into_iter()
    } else {
        let sent = entries.len();
        let out = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await
            .map_err(|e| classify(e, stream, region))?;
        let answers: Vec<Answer> = out
            .records()
            .iter()
            .map(
                |e| match (e.error_code(), e.shard_id(), e.sequence_number()) {
                    (None, Some(shard), Some(seq)) => Ok((shard.to_string(), seq.to_string())),
                    (Some(code), _, _) => Err(code.to_string()),
                    _ => Err("answered without a shard and sequence number".to_string()),
                },
            )
            .collect();
        if answers.len() != sent {
            // Unmatched answers cannot be told apart: every entry is sent again.
            tracing::warn!(sent, answered = answers.len(), "PutRecords answered a different number of entries than were sent; sending them again");
            vec![Err("answer count mismatch".to_string()); sent].into_iter()
        } else {
            answers.into_iter()
        }
    };
    Ok(injected
        .iter()
        .map(|&inj| {
            if inj {
                Err("ProvisionedThroughputExceededException".to_string())
            } else {
                answers
                    .next()
                    .unwrap_or_else(|| Err("no answer".to_string()))
            }
        })
        .collect())
}

/// Sends items to Kinesis until the channel closes and everything is acknowledged.
pub async fn run(
    mut rx: mpsc::Receiver<Item>,
    acker: Acker,
    client: aws_sdk_kinesis::Client,
    cfg: ProducerConfig,
    stats: Arc<ProducerStats>,
) -> Result<(), KinesisError> {
    let m = crate::metrics::get();
    let mut pending: VecDeque<Part> = VecDeque::new();
    let mut outstanding: BTreeSet<u64> = BTreeSet::new();
    let mut inflight_keys: HashSet<String> = HashSet::new();
    let mut inflight: JoinSet<Sent> = JoinSet::new();
    // Request ids: spawned in increasing order; `running` holds those not yet answered.
    let mut next_request: u64 = 0;
    let mut running: BTreeSet<u64> = BTreeSet::new();
    let mut verifying = Verifying::default();
    let mut last_seen: u64 = 0;
    let mut open = true;
    let mut backoff = crate::retry::Backoff::new();
    let mut pause_until: Option<tokio::time::Instant> = None;
    // The open shards, when aggregating; read again after Kinesis placed a record elsewhere.
    let mut map: Option<ShardMap> = None;
    let mut map_stale = false;

    loop {
        // Send what can be sent.
        let paused = pause_until.is_some_and(|t| tokio::time::Instant::now() < t);
        while !paused && inflight.len() < cfg.concurrency.max(1) && !pending.is_empty() {
            if cfg.aggregation && (map.is_none() || map_stale) {
                map = Some(ShardMap::read(&client, &cfg.stream, &cfg.region).await?);
                map_stale = false;
                tracing::debug!(
                    shards = map.as_ref().map_or(0, ShardMap::len),
                    "read the stream's shard map"
                );
            }
            let taken = take_request(&mut pending, &inflight_keys, map.as_ref());
            if taken.is_empty() {
                break;
            }
            for p in taken.iter().flat_map(|r| &r.parts) {
                inflight_keys.insert(p.key.clone());
            }
            stats
                .inflight
                .store(inflight.len() as u64 + 1, Ordering::Relaxed);
            let client = client.clone();
            let stream = cfg.stream.clone();
            let region = cfg.region.clone();
            // Injected failures (tests): entries failed as throttled, never sent.
            let injected: Vec<bool> = taken
                .iter()
                .map(|_| crate::fault::fail_kinesis_entry())
                .collect();
            let id = next_request;
            next_request += 1;
            running.insert(id);
            inflight.spawn(async move {
                let started = std::time::Instant::now();
                let result = put_records(&client, &stream, &region, &taken, &injected).await;
                (id, taken, result, started.elapsed())
            });
        }

        let can_take = open && pending.len() < cfg.max_pending.max(1);
        if !open && pending.is_empty() && inflight.is_empty() && verifying.is_empty() {
            acker.ack(last_seen);
            tracing::info!(
                records = stats.records.load(Ordering::Relaxed),
                events = stats.events.load(Ordering::Relaxed),
                payload_units = stats.payload_units.load(Ordering::Relaxed),
                bytes = stats.bytes.load(Ordering::Relaxed),
                requests = stats.requests.load(Ordering::Relaxed),
                failed_entries = stats.failed_records.load(Ordering::Relaxed),
                "kinesis producer done"
            );
            return Ok(());
        }
        tokio::select! {
            item = rx.recv(), if can_take => { match item {
                Some(mut item) => {
                    last_seen = item.seqno;
                    if let ItemKind::Change(ev) = &item.kind {
                        let mut part = record_of(ev, item.seqno, &cfg, &stats).await?;
                        part.budget = item.permit.take();
                        outstanding.insert(item.seqno);
                        pending.push_back(part);
                    }
                    // Take what is queued without waiting, up to a full request.
                    while pending.len() < cfg.max_pending.max(1) {
                        match rx.try_recv() {
                            Ok(mut item) => {
                                last_seen = item.seqno;
                                if let ItemKind::Change(ev) = &item.kind {
                                    let mut part = record_of(ev, item.seqno, &cfg, &stats).await?;
                                    part.budget = item.permit.take();
                                    outstanding.insert(item.seqno);
                                    pending.push_back(part);
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            }
            // Items without records (transaction ends) are durable once all before them are.
            acker.ack(outstanding.first().map_or(last_seen, |s| s - 1));
            },
            done = inflight.join_next(), if !inflight.is_empty() => {
                let Some(done) = done else { continue };
                let (id, sent, result, took) = done.map_err(|e| KinesisError::Other(format!("a PutRecords task failed: {e}")))?;
                running.remove(&id);
                stats.requests.fetch_add(1, Ordering::Relaxed);
                stats.put_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                stats.inflight.store(inflight.len() as u64, Ordering::Relaxed);
                m.kinesis_put_seconds.observe(took.as_secs_f64());
                m.kinesis_inflight_requests.set(inflight.len() as i64);
                let answers = match result {
                    Ok(answers) => answers,
                    Err(e) if e.is_transient() => {
                        stats.throttled.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("PutRecords failed, retrying {} records: {e}", sent.len());
                        vec![Err("request failed".to_string()); sent.len()]
                    }
                    Err(e) => return Err(e),
                };
                let total = sent.len();
                // Requests spawned so far may have been served while this one was.
                let gate = next_request.saturating_sub(1);
                // The events of the records to send again, and how many records they were.
                let mut failed: Vec<Part> = Vec::new();
                let mut failed_records = 0;
                let mut throttled = false;
                let mut stored = 0;
                for (r, answer) in sent.into_iter().zip(answers) {
                    match answer {
                        Ok(at) => {
                            stored += 1;
                            if r.shard.as_ref().is_some_and(|planned| *planned != at.0) {
                                // Resharded: the map is read again before the next request.
                                // This record's events stay where Kinesis put them.
                                tracing::info!(planned = ?r.shard, stored = %at.0, "Kinesis stored a record in another shard than the shard map said: reading the map again");
                                map_stale = true;
                            }
                            let again = verifying.hold(gate, r, at);
                            if !again.is_empty() {
                                stats.collisions.fetch_add(1, Ordering::Relaxed);
                                m.kinesis_sequence_collisions_total.inc();
                                tracing::warn!(
                                    "Kinesis acknowledged two records with one sequence number, so it kept only one of them (an emulator that serves PutRecords concurrently without a lock does this; the real service never does): both are sent again"
                                );
                                for t in again {
                                    for p in &t.parts {
                                        inflight_keys.remove(&p.key);
                                    }
                                    failed.extend(t.parts);
                                }
                            }
                        }
                        Err(code) => {
                            for p in &r.parts {
                                inflight_keys.remove(&p.key);
                            }
                            throttled |= code.contains("Throughput") || code.contains("failed");
                            stats.failed_records.fetch_add(1, Ordering::Relaxed);
                            m.kinesis_failed_records_total.inc();
                            failed_records += 1;
                            failed.extend(r.parts);
                        }
                    }
                }
                if stored > 0 {
                    backoff = crate::retry::Backoff::new();
                }
                if !failed.is_empty() {
                    if throttled {
                        stats.throttled.fetch_add(1, Ordering::Relaxed);
                        m.kinesis_throttled_total.inc();
                    }
                    // Some entries went through: the stream has room, retry soon. None did:
                    // back off exponentially (with jitter).
                    let delay = if stored > 0 || failed_records < total {
                        Duration::from_millis(20) + crate::retry::jitter(Duration::from_millis(80))
                    } else {
                        backoff.next_delay().min(Duration::from_secs(5))
                    };
                    tracing::debug!(failed = failed.len(), "PutRecords entries failed, retrying in {:?}", delay);
                    pause_until = Some(tokio::time::Instant::now() + delay);
                    // Back in front, in their order: their keys stay blocked until they go.
                    failed.sort_by_key(|r| r.seqno);
                    let mut merged: VecDeque<Part> = VecDeque::with_capacity(pending.len() + failed.len());
                    let mut rest = std::mem::take(&mut pending).into_iter().peekable();
                    for f in failed {
                        while rest.peek().is_some_and(|p| p.seqno < f.seqno) {
                            if let Some(p) = rest.next() {
                                merged.push_back(p);
                            }
                        }
                        merged.push_back(f);
                    }
                    merged.extend(rest);
                    pending = merged;
                }
                for r in verifying.release(running.first().copied()) {
                    for p in &r.parts {
                        inflight_keys.remove(&p.key);
                        outstanding.remove(&p.seqno);
                    }
                    let size = r.size() as u64;
                    stats.records.fetch_add(1, Ordering::Relaxed);
                    stats.events.fetch_add(r.parts.len() as u64, Ordering::Relaxed);
                    stats.payload_units.fetch_add(size.div_ceil(PAYLOAD_UNIT), Ordering::Relaxed);
                    stats.bytes.fetch_add(size, Ordering::Relaxed);
                    m.kinesis_records_total.inc();
                    m.kinesis_events_total.inc_by(r.parts.len() as u64);
                    m.kinesis_bytes_total.inc_by(size);
                }
                let watermark = outstanding.first().map_or(last_seen, |s| s - 1);
                acker.ack(watermark);
            },
            _ = tokio::time::sleep_until(pause_until.unwrap_or_else(tokio::time::Instant::now)), if paused => {
                pause_until = None;
            },
        }
    }
}
