//! The KPL aggregation format: many user records in one Kinesis record, as the Kinesis Producer
//! Library writes them and the Kinesis Client Library, Firehose and the `aws-kinesis-agg`
//! deaggregators read them: the magic bytes, an `AggregatedRecord` protobuf message, and the
//! MD5 digest of the message.
//!
//! ```text
//! message AggregatedRecord {
//!   repeated string partition_key_table     = 1;
//!   repeated string explicit_hash_key_table = 2;
//!   repeated Record records                 = 3;
//! }
//! message Record {
//!   required uint64 partition_key_index     = 1;
//!   optional uint64 explicit_hash_key_index = 2;
//!   required bytes  data                    = 3;
//!   repeated Tag    tags                    = 4;
//! }
//! ```
//!
//! The protobuf is written and read here directly (three fields each way): a code generator
//! and its runtime would be a large dependency for it.

use std::collections::HashMap;

/// What every aggregated record starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST: usize = 16;

/// One user record inside an aggregated record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord<'a> {
    pub partition_key: &'a str,
    pub data: &'a [u8],
}

/// Why bytes that carry the aggregation's magic and a matching digest are no aggregated record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an aggregated (KPL) record whose message does not decode: {0}")]
pub struct AggregateError(pub String);

/// The 128-bit hash Kinesis places a partition key by (MD5, big-endian).
pub fn hash_key(partition_key: &str) -> u128 {
    u128::from_be_bytes(md5::compute(partition_key.as_bytes()).0)
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u8, b: &[u8]) {
    out.push(field << 3 | 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Bytes a partition key takes in the key table.
pub fn key_entry_size(partition_key: &str) -> usize {
    1 + varint_len(partition_key.len() as u64) + partition_key.len()
}

/// Bytes a user record of `data_len` bytes, naming key `index`, takes.
pub fn record_entry_size(index: u64, data_len: usize) -> usize {
    let inner = 1 + varint_len(index) + 1 + varint_len(data_len as u64) + data_len;
    1 + varint_len(inner as u64) + inner
}

/// The size of an aggregated record without records.
pub const EMPTY_SIZE: usize = MAGIC.len() + DIGEST;

/// Builds an aggregated record of user records, in their order.
#[derive(Debug, Default)]
pub struct Aggregator {
    keys: HashMap<String, u64>,
    key_table: Vec<u8>,
    records: Vec<u8>,
    count: usize,
}

impl Aggregator {
    /// The size of the aggregated record so far (magic and digest included).
    pub fn size(&self) -> usize {
        MAGIC.len() + self.key_table.len() + self.records.len() + DIGEST
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The size the record would have with one more user record.
    pub fn size_with(&self, partition_key: &str, data_len: usize) -> usize {
        match self.keys.get(partition_key) {
            Some(&i) => self.size() + record_entry_size(i, data_len),
            None => {
                self.size()
                    + key_entry_size(partition_key)
                    + record_entry_size(self.keys.len() as u64, data_len)
            }
        }
    }

    pub fn push(&mut self, partition_key: &str, data: &[u8]) {
        let index = match self.keys.get(partition_key) {
            Some(&i) => i,
            None => {
                let i = self.keys.len() as u64;
                self.keys.insert(partition_key.to_string(), i);
                put_bytes(&mut self.key_table, 1, partition_key.as_bytes());
                i
            }
        };
        let inner = 1 + varint_len(index) + 1 + varint_len(data.len() as u64) + data.len();
        self.records.push(3 << 3 | 2);
        put_varint(&mut self.records, inner as u64);
        self.records.push(1 << 3);
        put_varint(&mut self.records, index);
        put_bytes(&mut self.records, 3, data);
        self.count += 1;
    }

    /// The aggregated record's bytes.
    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.key_table);
        out.extend_from_slice(&self.records);
        let digest = md5::compute(&out[MAGIC.len()..]);
        out.extend_from_slice(&digest.0);
        out
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, AggregateError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .b
                .get(self.at)
                .ok_or_else(|| AggregateError("a number runs past the end".into()))?;
            self.at += 1;
            v |= u64::from(byte & 0x7F) << shift;
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err(AggregateError("a number longer than 64 bits".into()))
    }

    fn bytes(&mut self) -> Result<&'a [u8], AggregateError> {
        let len = usize::try_from(self.varint()?)
            .map_err(|_| AggregateError("a length beyond memory".into()))?;
        let end = self
            .at
            .checked_add(len)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| AggregateError("a field runs past the end".into()))?;
        let out = &self.b[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// The next (field, wire type), or None at the end.
    fn tag(&mut self) -> Result<Option<(u64, u8)>, AggregateError> {
        if self.at >= self.b.len() {
            return Ok(None);
        }
        let t = self.varint()?;
        Ok(Some((t >> 3, (t & 7) as u8)))
    }

    fn skip(&mut self, wire: u8) -> Result<(), AggregateError> {
        let n = match wire {
            0 => {
                self.varint()?;
                return Ok(());
            }
            1 => 8,
            2 => {
                self.bytes()?;
                return Ok(());
            }
            5 => 4,
            w => return Err(AggregateError(format!("unknown wire type {w}"))),
        };
        if self.at + n > self.b.len() {
            return Err(AggregateError("a field runs past the end".into()));
        }
        self.at += n;
        Ok(())
    }
}

/// The user records of a record: `None` when it is no aggregated record (no magic, or a digest
/// that does not match: a plain record that happens to start with the magic, as the KCL reads
/// it), an error when the magic and digest match but the message does not decode.
pub fn deaggregate(data: &[u8]) -> Option<Result<Vec<UserRecord<'_>>, AggregateError>> {
    if data.len() <= MAGIC.len() + DIGEST || data[..MAGIC.len()] != MAGIC {
        return None;
    }
    let message = &data[MAGIC.len()..data.len() - DIGEST];
    if md5::compute(message).0[..] != data[data.len() - DIGEST..] {
        return None;
    }
    Some(decode(message))
}

fn decode(message: &[u8]) -> Result<Vec<UserRecord<'_>>, AggregateError> {
    let mut keys: Vec<&str> = Vec::new();
    let mut raw: Vec<(u64, &[u8])> = Vec::new();
    let mut r = Reader { b: message, at: 0 };
    while let Some((field, wire)) = r.tag()? {
        match (field, wire) {
            (1, 2) => {
                let k = r.bytes()?;
                keys.push(
                    std::str::from_utf8(k)
                        .map_err(|_| AggregateError("a partition key is not UTF-8".into()))?,
                );
            }
            (3, 2) => {
                let mut inner = Reader {
                    b: r.bytes()?,
                    at: 0,
                };
                let (mut index, mut body) = (None, None);
                while let Some((f, w)) = inner.tag()? {
                    match (f, w) {
                        (1, 0) => index = Some(inner.varint()?),
                        (3, 2) => body = Some(inner.bytes()?),
                        (_, w) => inner.skip(w)?,
                    }
                }
                let index = index
                    .ok_or_else(|| AggregateError("a record without a partition key".into()))?;
                let body = body.ok_or_else(|| AggregateError("a record without data".into()))?;
                raw.push((index, body));
            }
            (_, w) => r.skip(w)?,
        }
    }
    if raw.is_empty() {
        return Err(AggregateError("no records".into()));
    }
    raw.into_iter()
        .map(|(i, data)| {
            let partition_key = usize::try_from(i)
                .ok()
                .and_then(|i| keys.get(i))
                .copied()
                .ok_or_else(|| {
                    AggregateError(format!(
                        "a record names partition key {i} of {}",
                        keys.len()
                    ))
                })?;
            Ok(UserRecord {
                partition_key,
                data,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_shared_keys_and_sizes_that_match() {
        let mut a = Aggregator::default();
        let items: Vec<(String, Vec<u8>)> = (0..300)
            .map(|i| (format!("public.t/{{\"id\":{}}}", i % 7), vec![b'x'; i * 3]))
            .collect();
        for (k, d) in &items {
            let predicted = a.size_with(k, d.len());
            a.push(k, d);
            assert_eq!(a.size(), predicted, "size_with predicts the size");
        }
        assert_eq!(a.len(), 300);
        let size = a.size();
        let bytes = a.finish();
        assert_eq!(bytes.len(), size);
        let back = deaggregate(&bytes).expect("aggregated").expect("decodes");
        assert_eq!(back.len(), items.len());
        for (u, (k, d)) in back.iter().zip(&items) {
            assert_eq!(u.partition_key, k);
            assert_eq!(u.data, &d[..]);
        }
    }

    #[test]
    fn plain_records_and_bad_digests_are_not_aggregated() {
        assert!(deaggregate(b"{\"version\":1}").is_none());
        let mut a = Aggregator::default();
        a.push("k", b"v");
        let mut bytes = a.finish();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(
            deaggregate(&bytes).is_none(),
            "digest mismatch: a plain record"
        );
        // Magic and digest right, message broken: an error, not a plain record.
        let mut msg = vec![3 << 3 | 2, 50, 1];
        let mut rec = MAGIC.to_vec();
        rec.append(&mut msg);
        rec.extend_from_slice(&md5::compute(&rec[4..]).0);
        assert!(matches!(deaggregate(&rec), Some(Err(_))));
    }

    #[test]
    fn hash_keys_are_the_md5_of_the_partition_key() {
        // md5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(hash_key(""), 0xd41d8cd98f00b204e9800998ecf8427e);
    }

    #[test]
    fn mutated_aggregates_never_panic() {
        let mut a = Aggregator::default();
        for i in 0..20 {
            a.push(&format!("k{}", i % 3), format!("data {i}").as_bytes());
        }
        let samples = vec![a.finish()];
        let mut rng = crate::fuzz::Rng::new(0xa66);
        for _ in 0..crate::fuzz::cases() {
            let bytes = crate::fuzz::mutate(&samples, &mut rng);
            let _ = deaggregate(&bytes);
            let mut fixed = bytes.clone();
            if fixed.len() > MAGIC.len() + DIGEST && fixed[..4] == MAGIC {
                // Re-sealed, so the decoder rather than the digest meets the damage.
                let end = fixed.len() - DIGEST;
                let d = md5::compute(&fixed[4..end]).0;
                fixed[end..].copy_from_slice(&d);
            }
            let _ = deaggregate(&fixed);
        }
    }
}
