"""Reads every record of a Kinesis stream with a plain client (boto3), and prints one JSON
object per record: shard, sequence number, partition key, and the data parsed as JSON (or the
raw text when it is not JSON).

usage: read_kinesis.py ENDPOINT STREAM
"""
import json
import sys

import boto3

endpoint, stream = sys.argv[1], sys.argv[2]
k = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing")
for shard in k.list_shards(StreamName=stream)["Shards"]:
    it = k.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    while it:
        r = k.get_records(ShardIterator=it, Limit=10000)
        for rec in r["Records"]:
            raw = rec["Data"].decode("utf-8", "replace")
            try:
                data = json.loads(raw)
            except ValueError:
                data = raw
            print(json.dumps({"shard": shard["ShardId"], "seq": rec["SequenceNumber"],
                              "key": rec["PartitionKey"], "data": data}))
        if not r["Records"] and r.get("MillisBehindLatest", 0) == 0:
            break
        it = r.get("NextShardIterator")
