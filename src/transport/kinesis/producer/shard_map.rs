//! The stream's open shards by hash-key range (ListShards), so events bound for one shard can
//! travel in one aggregated record. Read at start and again whenever Kinesis stores a record in
//! another shard than the map predicted (the stream was resharded).

use super::super::{classify, KinesisError};

#[derive(Debug, Clone, Default)]
pub struct ShardMap {
    /// (starting hash key, ending hash key, shard id) of the open shards, by start.
    ranges: Vec<(u128, u128, String)>,
}

impl ShardMap {
    pub fn from_ranges(mut ranges: Vec<(u128, u128, String)>) -> Self {
        ranges.sort();
        ShardMap { ranges }
    }

    /// The open shards of `stream`.
    pub async fn read(
        client: &aws_sdk_kinesis::Client,
        stream: &str,
        region: &str,
    ) -> Result<Self, KinesisError> {
        let mut ranges = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = client.list_shards();
            // ListShards takes either the stream or the token of a previous page.
            let req = match &token {
                Some(t) => req.next_token(t),
                None => req.stream_name(stream),
            };
            let page = req.send().await.map_err(|e| classify(e, stream, region))?;
            for s in page.shards() {
                if s.sequence_number_range()
                    .is_some_and(|r| r.ending_sequence_number().is_some())
                {
                    continue;
                }
                let Some(h) = s.hash_key_range() else {
                    continue;
                };
                let parse = |v: &str| {
                    v.parse::<u128>().map_err(|_| {
                        KinesisError::Other(format!(
                            "ListShards gave shard {} the hash key {v:?}, which is no 128-bit number",
                            s.shard_id()
                        ))
                    })
                };
                ranges.push((
                    parse(h.starting_hash_key())?,
                    parse(h.ending_hash_key())?,
                    s.shard_id().to_string(),
                ));
            }
            token = page.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        if ranges.is_empty() {
            return Err(KinesisError::Other(format!(
                "ListShards gave stream \"{stream}\" no open shard"
            )));
        }
        Ok(Self::from_ranges(ranges))
    }

    /// The open shard whose range holds `hash`.
    pub fn shard_of(&self, hash: u128) -> Option<&str> {
        let i = self.ranges.partition_point(|(start, _, _)| *start <= hash);
        let (_, end, id) = self.ranges.get(i.checked_sub(1)?)?;
        (hash <= *end).then_some(id.as_str())
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_find_their_shard() {
        let half = u128::MAX / 2;
        let m = ShardMap::from_ranges(vec![
            (half + 1, u128::MAX, "b".into()),
            (0, half, "a".into()),
        ]);
        assert_eq!(m.shard_of(0), Some("a"));
        assert_eq!(m.shard_of(half), Some("a"));
        assert_eq!(m.shard_of(half + 1), Some("b"));
        assert_eq!(m.shard_of(u128::MAX), Some("b"));
        let gap = ShardMap::from_ranges(vec![(10, 20, "a".into())]);
        assert_eq!(gap.shard_of(5), None);
        assert_eq!(gap.shard_of(21), None);
    }
}
