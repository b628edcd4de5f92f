locals {
  streaming = var.mode == "streaming"
}

# The stream between `stream` (PutRecords, partition key = table + primary key) and `consume`.
resource "aws_kinesis_stream" "changes" {
  count            = local.streaming ? 1 : 0
  name             = var.name
  shard_count      = var.kinesis_shards > 0 ? var.kinesis_shards : null
  retention_period = var.kinesis_retention_hours
  encryption_type  = "KMS"
  kms_key_id       = coalesce(var.kms_key_arn, "alias/aws/kinesis")

  stream_mode_details {
    stream_mode = var.kinesis_shards > 0 ? "PROVISIONED" : "ON_DEMAND"
  }

  # Iterator age and throttling are what the consumer-behind alerts watch from the inside too.
  shard_level_metrics = ["IncomingRecords", "OutgoingRecords", "IteratorAgeMilliseconds", "WriteProvisionedThroughputExceeded", "ReadProvisionedThroughputExceeded"]
}
