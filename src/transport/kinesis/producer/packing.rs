//! Packing waiting events into the records of one PutRecords request, within every limit (500
//! records, 5 MiB per request, 1 MiB per record). With aggregation, events bound for one shard
//! share a record in the KPL aggregation format (up to `AGGREGATE_MAX_BYTES`); without, each
//! event is a record.
//!
//! Order per key: a key with a record in flight sends nothing later, and within a request all
//! of a key's events are in one record (in their order), so a failed record is retried before
//! any later version of its rows.

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;

use super::super::aggregate::{key_entry_size, record_entry_size, Aggregator, EMPTY_SIZE};
use super::super::{MAX_RECORD_BYTES, MAX_REQUEST_BYTES, MAX_REQUEST_RECORDS};
use super::shard_map::ShardMap;

/// An aggregated record's largest size: two PUT payload units (25 KiB each), as the KPL's
/// default; larger records would save no units and make a failed record costlier to resend.
pub const AGGREGATE_MAX_BYTES: usize = 51_200;

/// One event's record data, waiting to be sent.
pub struct Part {
    pub seqno: u64,
    pub key: String,
    /// Where Kinesis places the key (MD5 of it): picks the shard when aggregating.
    pub hash: u128,
    pub data: Bytes,
    /// The event's share of the channel's byte budget, given back only when the record is
    /// acknowledged: records waiting for a retry count against `channel-max-bytes` too.
    pub budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A Kinesis record: one event, or several bound for one shard, aggregated.
pub struct Rec {
    /// The first event's number: the record's identity while it is verified.
    pub seqno: u64,
    /// The partition key sent (the first event's).
    pub key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Bytes,
    /// The shard the map placed it in (aggregated records only).
    pub shard: Option<String>,
    pub parts: Vec<Part>,
}

impl Rec {
    pub fn single(p: Part) -> Rec {
        Rec {
            seqno: p.seqno,
            key: p.key.clone(),
            explicit_hash_key: None,
            data: p.data.clone(),
            shard: None,
            parts: vec![p],
        }
    }

    /// Bytes it counts against Kinesis' limits.
    pub fn size(&self) -> usize {
        self.data.len() + self.key.len()
    }
}

/// A record being filled.
struct Open {
    parts: Vec<Part>,
    agg: Aggregator,
    shard: Option<String>,
}

impl Open {
    /// Its size as sent: a lone event goes as it is, several aggregated.
    fn size(&self) -> usize {
        match self.parts.as_slice() {
            [p] => p.data.len() + p.key.len(),
            ps => self.agg.size() + ps.first().map_or(0, |p| p.key.len()),
        }
    }

    fn size_with(&self, p: &Part) -> usize {
        match self.parts.as_slice() {
            [] => p.data.len() + p.key.len(),
            // The lone event is not in the aggregator yet (it may go as it is).
            [f] => {
                let keys = if f.key == p.key {
                    key_entry_size(&f.key)
                } else {
                    key_entry_size(&f.key) + key_entry_size(&p.key)
                };
                let second = u64::from(f.key != p.key);
                EMPTY_SIZE
                    + keys
                    + record_entry_size(0, f.data.len())
                    + record_entry_size(second, p.data.len())
                    + f.key.len()
            }
            [f, ..] => self.agg.size_with(&p.key, p.data.len()) + f.key.len(),
        }
    }

    fn push(&mut self, p: Part) {
        if let [f] = self.parts.as_slice() {
            self.agg.push(&f.key, &f.data);
        }
        if !self.parts.is_empty() {
            self.agg.push(&p.key, &p.data);
        }
        self.parts.push(p);
    }

    fn finish(self) -> Rec {
        let mut parts = self.parts;
        if parts.len() == 1 {
            return Rec::single(parts.remove(0));
        }
        let first = &parts[0];
        Rec {
            seqno: first.seqno,
            key: first.key.clone(),
            explicit_hash_key: Some(first.hash.to_string()),
            data: Bytes::from(self.agg.finish()),
            shard: self.shard,
            parts,
        }
    }
}

/// The records of the next request, taken from `pending` in order (what cannot go yet stays, in
/// its order). `map`: aggregate by shard; `None`: one event per record.
pub fn take_request(
    pending: &mut VecDeque<Part>,
    inflight_keys: &HashSet<String>,
    map: Option<&ShardMap>,
) -> Vec<Rec> {
    let mut recs: Vec<Open> = Vec::new();
    // The record being filled for each shard.
    let mut filling: HashMap<String, usize> = HashMap::new();
    // Keys seen in this pass: the record holding them, or `None` once one had to stay behind
    // (then all its later events stay too).
    let mut seen: HashMap<String, Option<usize>> = HashMap::new();
    let mut kept: VecDeque<Part> = VecDeque::with_capacity(pending.len());
    let mut bytes = 0usize;
    while let Some(p) = pending.pop_front() {
        let shard = map.and_then(|m| m.shard_of(p.hash)).map(str::to_string);
        let open = shard.as_ref().and_then(|s| filling.get(s).copied());
        let fits = |i: usize, recs: &[Open], bytes: usize| {
            let grown = recs[i].size_with(&p);
            grown <= AGGREGATE_MAX_BYTES.min(MAX_RECORD_BYTES)
                && bytes - recs[i].size() + grown <= MAX_REQUEST_BYTES
        };
        let target = if inflight_keys.contains(&p.key) {
            None
        } else {
            match seen.get(&p.key) {
                Some(None) => None,
                // Only into the record that holds its earlier events, while it is filled.
                Some(Some(i)) => (open == Some(*i) && fits(*i, &recs, bytes)).then_some(*i),
                None => match open {
                    Some(i) if fits(i, &recs, bytes) => Some(i),
                    _ => {
                        let size = p.data.len() + p.key.len();
                        (recs.len() < MAX_REQUEST_RECORDS && bytes + size <= MAX_REQUEST_BYTES)
                            .then(|| {
                                recs.push(Open {
                                    parts: Vec::new(),
                                    agg: Aggregator::default(),
                                    shard: shard.clone(),
                                });
                                if let Some(s) = &shard {
                                    filling.insert(s.clone(), recs.len() - 1);
                                }
                                recs.len() - 1
                            })
                    }
                },
            }
        };
        match target {
            Some(i) => {
                bytes -= recs[i].size().min(bytes);
                seen.insert(p.key.clone(), Some(i));
                recs[i].push(p);
                bytes += recs[i].size();
            }
            None => {
                seen.insert(p.key.clone(), None);
                kept.push_back(p);
            }
        }
        let full = if map.is_some() {
            bytes >= MAX_REQUEST_BYTES - MAX_RECORD_BYTES
        } else {
            recs.len() >= MAX_REQUEST_RECORDS || bytes >= MAX_REQUEST_BYTES - MAX_RECORD_BYTES
        };
        if full {
            break;
        }
    }
    kept.extend(pending.drain(..));
    *pending = kept;
    recs.into_iter().map(Open::finish).collect()
}

#[cfg(test)]
mod tests {
    use super::super::super::aggregate::{deaggregate, hash_key};
    use super::*;

    fn part(seqno: u64, key: &str, len: usize) -> Part {
        Part {
            seqno,
            key: key.to_string(),
            hash: hash_key(key),
            data: Bytes::from(vec![b'x'; len]),
            budget: None,
        }
    }

    fn two_shards() -> ShardMap {
        let half = u128::MAX / 2;
        ShardMap::from_ranges(vec![
            (0, half, "a".into()),
            (half + 1, u128::MAX, "b".into()),
        ])
    }

    #[test]
    fn without_a_map_each_event_is_a_record_and_a_key_goes_once_per_request() {
        let mut pending: VecDeque<Part> =
            [part(1, "k1", 10), part(2, "k2", 10), part(3, "k1", 10)].into();
        let recs = take_request(&mut pending, &HashSet::new(), None);
        assert_eq!(recs.iter().map(|r| r.seqno).collect::<Vec<_>>(), vec![1, 2]);
        assert!(recs
            .iter()
            .all(|r| r.parts.len() == 1 && r.data.len() == 10));
        assert_eq!(pending.iter().map(|p| p.seqno).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn events_of_one_shard_share_a_record_in_order_and_keys_in_flight_wait() {
        let map = two_shards();
        let mut pending: VecDeque<Part> = (0..100)
            .map(|i| part(i, &format!("public.t/{{\"id\":{}}}", i % 10), 100))
            .collect();
        let busy: HashSet<String> = ["public.t/{\"id\":3}".to_string()].into();
        let recs = take_request(&mut pending, &busy, Some(&map));
        // Every key but the busy one went, all its versions in one record, in order.
        assert_eq!(pending.len(), 10);
        assert!(pending.iter().all(|p| p.key == "public.t/{\"id\":3}"));
        assert!(recs.len() <= 2, "one record per shard: {}", recs.len());
        let mut seqnos = Vec::new();
        for r in &recs {
            let users = deaggregate(&r.data).expect("aggregated").expect("decodes");
            assert_eq!(users.len(), r.parts.len());
            for (u, p) in users.iter().zip(&r.parts) {
                assert_eq!(u.partition_key, p.key);
                assert_eq!(map.shard_of(p.hash), r.shard.as_deref(), "one shard");
            }
            let own: Vec<u64> = r.parts.iter().map(|p| p.seqno).collect();
            assert!(own.windows(2).all(|w| w[0] < w[1]), "in order");
            seqnos.extend(own);
            assert!(r.size() <= AGGREGATE_MAX_BYTES);
            let ehk: u128 = r.explicit_hash_key.as_deref().unwrap().parse().unwrap();
            assert_eq!(map.shard_of(ehk), r.shard.as_deref());
        }
        assert_eq!(seqnos.len(), 90);
    }

    #[test]
    fn a_full_aggregate_closes_and_its_keys_wait_for_the_next_request() {
        let map = ShardMap::from_ranges(vec![(0, u128::MAX, "only".into())]);
        // 1 KB events of 100 keys, each key twice: ~50 fit one aggregate.
        let mut pending: VecDeque<Part> = (0..200)
            .map(|i| part(i, &format!("k{}", i % 100), 1000))
            .collect();
        let recs = take_request(&mut pending, &HashSet::new(), Some(&map));
        assert!(recs.len() >= 2);
        assert!(recs.iter().all(|r| r.size() <= AGGREGATE_MAX_BYTES));
        // A key never spans two records of one request.
        let mut at: HashMap<&str, usize> = HashMap::new();
        for (i, r) in recs.iter().enumerate() {
            for p in &r.parts {
                assert_eq!(*at.entry(p.key.as_str()).or_insert(i), i, "{}", p.key);
            }
        }
        let sent: usize = recs.iter().map(|r| r.parts.len()).sum();
        assert_eq!(sent + pending.len(), 200);
        // What stayed keeps its order.
        let left: Vec<u64> = pending.iter().map(|p| p.seqno).collect();
        assert!(left.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_large_event_goes_alone_and_as_it_is() {
        let map = two_shards();
        let mut pending: VecDeque<Part> = [part(1, "big", 900_000), part(2, "small", 10)].into();
        let recs = take_request(&mut pending, &HashSet::new(), Some(&map));
        let big = recs.iter().find(|r| r.key == "big").unwrap();
        assert_eq!(big.data.len(), 900_000);
        assert!(big.explicit_hash_key.is_none());
        assert!(pending.is_empty());
    }
}
