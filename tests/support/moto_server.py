"""moto's server, with its Kinesis data calls made atomic.

moto 5 (`moto.kinesis.models.Shard.put_record`, "not safe for concurrency") numbers a record by
reading the shard's last sequence number and storing under the next one, while its server
answers requests on several threads. Two PutRecords served at once can give two records one
number; the later overwrites the earlier and both are answered as stored. Run against it, a
correct producer loses acknowledged records (tried: 8 threads putting 16,000 records into one
shard left 15,765). Kinesis itself never does that, so the tests run moto with every Kinesis
data call under one lock. (`Moto::start_unlocked` keeps the emulator as it is, for the test of
the producer's own check for such collisions.)

It also finds a shard's first and last sequence numbers without copying the shard's keys into a
list on every record put (the same answers; moto's way makes a put cost as much as the shard
holds, so a stream of a few hundred thousand records slows every test that fills one).

usage: moto_server.py -H HOST -p PORT
"""
import functools
import threading

from moto.kinesis.models import KinesisBackend, Shard
from moto.server import main

_lock = threading.RLock()


def _atomic(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with _lock:
            return method(*args, **kwargs)

    return wrapper


for _name in ("put_record", "put_records", "get_records", "split_shard", "merge_shards",
              "update_shard_count"):
    setattr(KinesisBackend, _name, _atomic(getattr(KinesisBackend, _name)))

Shard.get_max_sequence_number = lambda self: next(reversed(self.records), 0)
Shard.get_min_sequence_number = lambda self: next(iter(self.records), 0)

if __name__ == "__main__":
    main()
