"""Reads every record of a Kinesis stream with a plain client (boto3), de-aggregates KPL
aggregated records with AWS's own deaggregator (aws-kinesis-agg), and prints one JSON object per
user record: shard, sequence number, sub-sequence number (aggregated records only), partition
key, and the data parsed as JSON (or the raw text when it is not JSON).

usage: read_kinesis.py ENDPOINT STREAM
"""
import base64
import json
import sys

import boto3
from aws_kinesis_agg.deaggregator import iter_deaggregate_records

endpoint, stream = sys.argv[1], sys.argv[2]
k = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing")
for shard in k.list_shards(StreamName=stream)["Shards"]:
    it = k.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    while it:
        r = k.get_records(ShardIterator=it, Limit=10000)
        for rec in r["Records"]:
            for user in iter_deaggregate_records(rec, data_format="Boto3"):
                u = user["kinesis"]
                raw = u["data"]
                if u.get("aggregated"):  # user records come base64-encoded, as Lambda's do
                    raw = base64.b64decode(raw)
                text = raw.decode("utf-8", "replace")
                try:
                    data = json.loads(text)
                except ValueError:
                    data = text
                print(json.dumps({"shard": shard["ShardId"], "seq": rec["SequenceNumber"],
                                  "sub": u.get("subSequenceNumber"),
                                  "aggregated": u.get("aggregated", False),
                                  "key": u["partitionKey"], "data": data}))
        if not r["Records"] and r.get("MillisBehindLatest", 0) == 0:
            break
        it = r.get("NextShardIterator")
