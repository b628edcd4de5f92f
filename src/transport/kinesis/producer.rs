//! The Kinesis producer: change events as the JSON envelope, PutRecords batches within every
//! service limit (500 records, 5 MiB per request, 1 MiB per record), several requests in flight.
//!
//! Order per key: a request holds at most one record of a partition key, and a key with a
//! record in flight or waiting for a retry sends nothing later, so a failed entry is retried
//! before any later version of its row. Acknowledgement: everything up to item N is durable
//! once every record up to N is acknowledged by Kinesis; only then does capture confirm.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{
    classify, partition_key, KinesisError, MAX_RECORD_BYTES, MAX_REQUEST_BYTES, MAX_REQUEST_RECORDS,
};
use crate::apply::lake::{position_name, Store};
use crate::event::json::write_envelope;
use crate::event::ChangeEvent;
use crate::transport::{Acker, Item, ItemKind};

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
}

/// Counters shared with metrics.
#[derive(Debug, Default)]
pub struct ProducerStats {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub requests: AtomicU64,
    pub throttled: AtomicU64,
    pub failed_records: AtomicU64,
    pub inflight: AtomicU64,
    pub oversized: AtomicU64,
    /// Microseconds spent in PutRecords, summed (with `requests`, the mean).
    pub put_us: AtomicU64,
}

struct Rec {
    seqno: u64,
    key: String,
    data: Bytes,
}

type Sent = (
    Vec<Rec>,
    Result<Vec<Option<String>>, KinesisError>,
    Duration,
);

/// Partial-failure injection for the tests: `TOTES_CDC_FAULT=kinesis-fail:<percent>` fails that
/// share of entries as throttled, before they are sent.
fn injected_failure_percent() -> u64 {
    std::env::var("TOTES_CDC_FAULT")
        .ok()
        .and_then(|v| v.strip_prefix("kinesis-fail:").and_then(|p| p.parse().ok()))
        .unwrap_or(0)
}

/// The record of an event: its envelope, or a pointer to where an oversized one was stored.
async fn record_of(
    ev: &ChangeEvent,
    seqno: u64,
    cfg: &ProducerConfig,
    stats: &ProducerStats,
) -> Result<Rec, KinesisError> {
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
        let path = format!("oversized/{table}/{}.json", position_name(ev.position));
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
    Ok(Rec {
        seqno,
        key,
        data: Bytes::from(data),
    })
}

/// Sends items to Kinesis until the channel closes and everything is acknowledged.
pub async fn run(
    mut rx: mpsc::Receiver<Item>,
    acker: Acker,
    client: aws_sdk_kinesis::Client,
    cfg: ProducerConfig,
    stats: Arc<ProducerStats>,
) -> Result<(), KinesisError> {
    let fail_pct = injected_failure_percent();
    let m = crate::metrics::get();
    let mut pending: VecDeque<Rec> = VecDeque::new();
    let mut outstanding: BTreeSet<u64> = BTreeSet::new();
    let mut inflight_keys: HashSet<String> = HashSet::new();
    let mut inflight: JoinSet<Sent> = JoinSet::new();
    let mut last_seen: u64 = 0;
    let mut open = true;
    let mut backoff = crate::capture::Backoff::new();
    let mut pause_until: Option<tokio::time::Instant> = None;
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;

    loop {
        // Send what can be sent.
        let paused = pause_until.is_some_and(|t| tokio::time::Instant::now() < t);
        while !paused && inflight.len() < cfg.concurrency.max(1) && !pending.is_empty() {
            let mut taken: Vec<Rec> = Vec::new();
            let mut kept: VecDeque<Rec> = VecDeque::with_capacity(pending.len());
            let mut scanned: HashSet<String> = HashSet::new();
            let mut bytes = 0;
            while let Some(r) = pending.pop_front() {
                let size = r.data.len() + r.key.len();
                let free = !inflight_keys.contains(&r.key) && !scanned.contains(&r.key);
                scanned.insert(r.key.clone());
                if free && taken.len() < MAX_REQUEST_RECORDS && bytes + size <= MAX_REQUEST_BYTES {
                    bytes += size;
                    taken.push(r);
                } else {
                    kept.push_back(r);
                }
                if taken.len() >= MAX_REQUEST_RECORDS
                    || bytes >= MAX_REQUEST_BYTES - MAX_RECORD_BYTES
                {
                    break;
                }
            }
            kept.extend(pending.drain(..));
            pending = kept;
            if taken.is_empty() {
                break;
            }
            for r in &taken {
                inflight_keys.insert(r.key.clone());
            }
            stats
                .inflight
                .store(inflight.len() as u64 + 1, Ordering::Relaxed);
            let client = client.clone();
            let stream = cfg.stream.clone();
            let region = cfg.region.clone();
            // Injected failures: entries failed as throttled, never sent.
            let mut injected: Vec<bool> = Vec::with_capacity(taken.len());
            for _ in &taken {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                injected.push(fail_pct > 0 && rng % 100 < fail_pct);
            }
            inflight.spawn(async move {
                let started = std::time::Instant::now();
                let entries: Vec<PutRecordsRequestEntry> = taken
                    .iter()
                    .zip(&injected)
                    .filter(|(_, &inj)| !inj)
                    .filter_map(|(r, _)| {
                        PutRecordsRequestEntry::builder()
                            .data(Blob::new(r.data.to_vec()))
                            .partition_key(r.key.clone())
                            .build()
                            .ok()
                    })
                    .collect();
                let result = if entries.is_empty() {
                    Ok(Vec::new())
                } else {
                    client
                        .put_records()
                        .stream_name(&stream)
                        .set_records(Some(entries))
                        .send()
                        .await
                        .map(|out| {
                            out.records()
                                .iter()
                                .map(|e| e.error_code().map(str::to_string))
                                .collect::<Vec<_>>()
                        })
                        .map_err(|e| classify(e, &stream, &region))
                };
                // Put the injected failures back in their places.
                let result = result.map(|codes| {
                    let mut codes = codes.into_iter();
                    injected
                        .iter()
                        .map(|&inj| {
                            if inj {
                                Some("ProvisionedThroughputExceededException".to_string())
                            } else {
                                codes.next().flatten()
                            }
                        })
                        .collect()
                });
                (taken, result, started.elapsed())
            });
        }

        let can_take = open && pending.len() < cfg.max_pending.max(1);
        if !open && pending.is_empty() && inflight.is_empty() {
            acker.ack(last_seen);
            tracing::info!(
                records = stats.records.load(Ordering::Relaxed),
                bytes = stats.bytes.load(Ordering::Relaxed),
                requests = stats.requests.load(Ordering::Relaxed),
                failed_entries = stats.failed_records.load(Ordering::Relaxed),
                "kinesis producer done"
            );
            return Ok(());
        }
        tokio::select! {
            item = rx.recv(), if can_take => { match item {
                Some(item) => {
                    last_seen = item.seqno;
                    if let ItemKind::Change(ev) = &item.kind {
                        let rec = record_of(ev, item.seqno, &cfg, &stats).await?;
                        outstanding.insert(item.seqno);
                        pending.push_back(rec);
                    }
                    // Take what is queued without waiting, up to a full request.
                    while pending.len() < cfg.max_pending.max(1) {
                        match rx.try_recv() {
                            Ok(item) => {
                                last_seen = item.seqno;
                                if let ItemKind::Change(ev) = &item.kind {
                                    let rec = record_of(ev, item.seqno, &cfg, &stats).await?;
                                    outstanding.insert(item.seqno);
                                    pending.push_back(rec);
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
                let (sent, result, took) = done.map_err(|e| KinesisError::Other(format!("a PutRecords task failed: {e}")))?;
                stats.requests.fetch_add(1, Ordering::Relaxed);
                stats.put_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                stats.inflight.store(inflight.len() as u64, Ordering::Relaxed);
                m.kinesis_put_seconds.observe(took.as_secs_f64());
                m.kinesis_inflight_requests.set(inflight.len() as i64);
                for r in &sent {
                    inflight_keys.remove(&r.key);
                }
                let codes = match result {
                    Ok(codes) => codes,
                    Err(e) if e.is_transient() => {
                        stats.throttled.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("PutRecords failed, retrying {} records: {e}", sent.len());
                        vec![Some("request failed".to_string()); sent.len()]
                    }
                    Err(e) => return Err(e),
                };
                let total = sent.len();
                let mut failed: Vec<Rec> = Vec::new();
                let mut throttled = false;
                for (r, code) in sent.into_iter().zip(codes) {
                    match code {
                        None => {
                            outstanding.remove(&r.seqno);
                            stats.records.fetch_add(1, Ordering::Relaxed);
                            stats.bytes.fetch_add((r.data.len() + r.key.len()) as u64, Ordering::Relaxed);
                            m.kinesis_records_total.inc();
                            m.kinesis_bytes_total.inc_by((r.data.len() + r.key.len()) as u64);
                        }
                        Some(code) => {
                            throttled |= code.contains("Throughput") || code.contains("failed");
                            stats.failed_records.fetch_add(1, Ordering::Relaxed);
                            m.kinesis_failed_records_total.inc();
                            failed.push(r);
                        }
                    }
                }
                if failed.len() < total {
                    backoff = crate::capture::Backoff::new();
                }
                if !failed.is_empty() {
                    if throttled {
                        stats.throttled.fetch_add(1, Ordering::Relaxed);
                        m.kinesis_throttled_total.inc();
                    }
                    // Some entries went through: the stream has room, retry soon. None did:
                    // back off exponentially (with jitter).
                    let delay = if failed.len() < total {
                        Duration::from_millis(20 + rng % 80)
                    } else {
                        backoff.next_delay().min(Duration::from_secs(5))
                    };
                    tracing::debug!(failed = failed.len(), "PutRecords entries failed, retrying in {:?}", delay);
                    pause_until = Some(tokio::time::Instant::now() + delay);
                    // Back in front, in their order: their keys stay blocked until they go.
                    failed.sort_by_key(|r| r.seqno);
                    let mut merged: VecDeque<Rec> = VecDeque::with_capacity(pending.len() + failed.len());
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
                let watermark = outstanding.first().map_or(last_seen, |s| s - 1);
                acker.ack(watermark);
            },
            _ = tokio::time::sleep_until(pause_until.unwrap_or_else(tokio::time::Instant::now)), if paused => {
                pause_until = None;
            },
        }
    }
}
