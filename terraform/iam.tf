# One role per component, assumed by its Kubernetes service account through IRSA. Each grants
# the AWS calls that component makes (tests/terraform.rs checks them against the code):
#   capture: `run` (embedded mode) lake; `stream` (streaming mode) publish + oversized (it may
#            only put objects under the lake's oversized/ prefix)
#   consume (streaming mode): read_stream + lake
# The lake policy covers every lake call: `run` and `consume` write batches, remove the files of
# batches that never committed, read oversized records and list the lake for `replay`; `stream`
# writes oversized records there.

locals {
  create_roles = var.oidc_provider_arn != null
  # The provider's host path: arn:aws:iam::<account>:oidc-provider/<host path>.
  oidc_host    = local.create_roles ? element(split("oidc-provider/", var.oidc_provider_arn), 1) : ""
  lake_objects = local.lake_prefix == "" ? "${aws_s3_bucket.lake.arn}/*" : "${aws_s3_bucket.lake.arn}/${local.lake_prefix}/*"
  # Where `stream` stores records too large for Kinesis: all it writes in the lake.
  oversized_objects = local.lake_prefix == "" ? "${aws_s3_bucket.lake.arn}/oversized/*" : "${aws_s3_bucket.lake.arn}/${local.lake_prefix}/oversized/*"
  service_accounts = merge(
    { capture = var.capture_service_account },
    local.streaming ? { consume = var.consume_service_account } : {},
  )
}

data "aws_iam_policy_document" "assume" {
  for_each = local.create_roles ? local.service_accounts : {}

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_host}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${each.value}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_host}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "publish" {
  count = local.streaming ? 1 : 0
  statement {
    # ListShards: the shard map that packs events bound for one shard into one record.
    sid       = "PublishChanges"
    actions   = ["kinesis:PutRecords", "kinesis:ListShards", "kinesis:DescribeStreamSummary"]
    resources = [aws_kinesis_stream.changes[0].arn]
  }
}

data "aws_iam_policy_document" "read_stream" {
  count = local.streaming ? 1 : 0
  statement {
    sid       = "ReadChanges"
    actions   = ["kinesis:ListShards", "kinesis:GetShardIterator", "kinesis:GetRecords", "kinesis:DescribeStreamSummary"]
    resources = [aws_kinesis_stream.changes[0].arn]
  }
}

data "aws_iam_policy_document" "lake" {
  statement {
    sid       = "LakeFiles"
    actions   = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"]
    resources = [local.lake_objects]
  }
  # HeadBucket (checked at start) and ListObjectsV2 (replay) both need s3:ListBucket.
  statement {
    sid       = "LakeBucket"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.lake.arn]
  }
  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "EncryptWithKey"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = [statement.value]
    }
  }
}

# The streamer's share of the lake: records too large for Kinesis, written once.
data "aws_iam_policy_document" "oversized" {
  count = local.streaming ? 1 : 0
  statement {
    sid       = "OversizedRecords"
    actions   = ["s3:PutObject"]
    resources = [local.oversized_objects]
  }
  # HeadBucket (checked at start) needs s3:ListBucket.
  statement {
    sid       = "LakeBucket"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.lake.arn]
  }
  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "EncryptWithKey"
      actions   = ["kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role" "component" {
  for_each           = local.create_roles ? local.service_accounts : {}
  name               = "${var.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.assume[each.key].json
}

resource "aws_iam_role_policy" "capture_publish" {
  count  = local.create_roles && local.streaming ? 1 : 0
  name   = "publish"
  role   = aws_iam_role.component["capture"].id
  policy = data.aws_iam_policy_document.publish[0].json
}

resource "aws_iam_role_policy" "capture_lake" {
  count  = local.create_roles && !local.streaming ? 1 : 0
  name   = "lake"
  role   = aws_iam_role.component["capture"].id
  policy = data.aws_iam_policy_document.lake.json
}

resource "aws_iam_role_policy" "capture_oversized" {
  count  = local.create_roles && local.streaming ? 1 : 0
  name   = "oversized"
  role   = aws_iam_role.component["capture"].id
  policy = data.aws_iam_policy_document.oversized[0].json
}

resource "aws_iam_role_policy" "consume_read_stream" {
  count  = local.create_roles && local.streaming ? 1 : 0
  name   = "read-stream"
  role   = aws_iam_role.component["consume"].id
  policy = data.aws_iam_policy_document.read_stream[0].json
}

resource "aws_iam_role_policy" "consume_lake" {
  count  = local.create_roles && local.streaming ? 1 : 0
  name   = "lake"
  role   = aws_iam_role.component["consume"].id
  policy = data.aws_iam_policy_document.lake.json
}
