//! Verifying what Kinesis acknowledged: an emulator (or a broken proxy) may answer two records
//! with one (shard, sequence number) and keep only one of them. An acknowledged record counts
//! only once every PutRecords request in flight when its answer came has answered (only those
//! can collide with it); every record answered with a number another record got is sent again.

use std::collections::{HashMap, VecDeque};

use super::Rec;

/// Records Kinesis acknowledged, held until no request that could collide with them is left.
#[derive(Default)]
pub(super) struct Verifying {
    /// (gate, seqno) in answer order: the record is verified once every request with an id up
    /// to `gate` (those spawned before its answer came) has answered. Gates never decrease.
    queue: VecDeque<(u64, u64)>,
    /// seqno → the record and where it was stored.
    held: HashMap<u64, (Rec, (String, String))>,
    /// (shard, sequence number) → seqno of the held record stored there, or `None` once two
    /// records were answered with it (a third answered with it is sent again too).
    stored_at: HashMap<(String, String), Option<u64>>,
    /// (gate, place) of collisions, forgotten like held records.
    collided: VecDeque<(u64, (String, String))>,
}

impl Verifying {
    /// Holds an acknowledged record; returns the records to send again when another record
    /// was answered with the same (shard, sequence number): the endpoint kept only one of them.
    pub fn hold(&mut self, gate: u64, rec: Rec, at: (String, String)) -> Vec<Rec> {
        match self.stored_at.get(&at).copied() {
            None => {
                self.stored_at.insert(at.clone(), Some(rec.seqno));
                self.queue.push_back((gate, rec.seqno));
                self.held.insert(rec.seqno, (rec, at));
                Vec::new()
            }
            Some(None) => vec![rec],
            Some(Some(other)) => {
                self.stored_at.insert(at.clone(), None);
                self.collided.push_back((gate, at));
                let mut again = vec![rec];
                if let Some((twin, _)) = self.held.remove(&other) {
                    again.push(twin);
                }
                again
            }
        }
    }

    /// Releases the records whose colliders have all answered (`oldest_running`: the lowest id
    /// of a request still in flight).
    pub fn release(&mut self, oldest_running: Option<u64>) -> Vec<Rec> {
        let done = |gate: u64| oldest_running.is_none_or(|r| r > gate);
        let mut out = Vec::new();
        while let Some(&(gate, seqno)) = self.queue.front() {
            if !done(gate) {
                break;
            }
            self.queue.pop_front();
            // Absent: it collided and went back to be sent again.
            if let Some((rec, at)) = self.held.remove(&seqno) {
                self.stored_at.remove(&at);
                out.push(rec);
            }
        }
        while let Some((gate, _)) = self.collided.front() {
            if !done(*gate) {
                break;
            }
            if let Some((_, at)) = self.collided.pop_front() {
                if self.stored_at.get(&at) == Some(&None) {
                    self.stored_at.remove(&at);
                }
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn rec(seqno: u64) -> Rec {
        Rec::single(super::super::Part {
            seqno,
            key: format!("k{seqno}"),
            hash: 0,
            data: Bytes::from_static(b"{}"),
            budget: None,
        })
    }

    fn at(seq: &str) -> (String, String) {
        ("shardId-000000000000".to_string(), seq.to_string())
    }

    fn seqnos(recs: &[Rec]) -> Vec<u64> {
        let mut v: Vec<u64> = recs.iter().map(|r| r.seqno).collect();
        v.sort();
        v
    }

    #[test]
    fn a_record_waits_for_every_request_that_could_collide_with_it() {
        let mut v = Verifying::default();
        // Request 0 answers while request 1 is still in flight (gate 1).
        assert!(v.hold(1, rec(1), at("10")).is_empty());
        assert!(v.release(Some(1)).is_empty(), "request 1 may still collide");
        // Request 1 answers with another number: both are verified.
        assert!(v.hold(1, rec(2), at("11")).is_empty());
        assert_eq!(seqnos(&v.release(None)), vec![1, 2]);
        assert!(v.is_empty() && v.stored_at.is_empty());
    }

    #[test]
    fn records_under_one_sequence_number_all_go_back() {
        let mut v = Verifying::default();
        assert!(v.hold(2, rec(1), at("10")).is_empty());
        assert_eq!(seqnos(&v.hold(2, rec(2), at("10"))), vec![1, 2]);
        // A third answered with the same number may be the one that was overwritten.
        assert_eq!(seqnos(&v.hold(2, rec(3), at("10"))), vec![3]);
        assert!(
            v.release(None).is_empty(),
            "nothing of them is acknowledged"
        );
        assert!(v.stored_at.is_empty() && v.collided.is_empty());
        // The same number given again later (after the resend) is no collision.
        assert!(v.hold(3, rec(4), at("10")).is_empty());
        assert_eq!(seqnos(&v.release(None)), vec![4]);
    }
}
