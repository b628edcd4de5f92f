data "aws_caller_identity" "current" {}

locals {
  lake_bucket = coalesce(var.lake_bucket, "${var.name}-lake-${data.aws_caller_identity.current.account_id}-${var.region}")
  lake_prefix = trim(var.lake_prefix, "/")
}

# The immutable Parquet lake: changes/ (every event) and processed/ (star rows per batch).
resource "aws_s3_bucket" "lake" {
  #checkov:skip=CKV_AWS_18:access logs need a second bucket per deployment; CloudTrail data events are the audit trail of choice
  #checkov:skip=CKV2_AWS_62:nothing consumes bucket events; readers list the committed files
  #checkov:skip=CKV_AWS_144:the lake is reproducible from the stream and the source (replay); replication is the operator's choice
  bucket        = local.lake_bucket
  force_destroy = var.lake_force_destroy
}

resource "aws_s3_bucket_ownership_controls" "lake" {
  bucket = aws_s3_bucket.lake.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "lake" {
  bucket                  = aws_s3_bucket.lake.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "lake" {
  bucket = aws_s3_bucket.lake.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = var.kms_key_arn != null
  }
}

# Versioning keeps an overwritten or deleted file recoverable: the lake is the history `replay`
# rebuilds the warehouse from.
resource "aws_s3_bucket_versioning" "lake" {
  bucket = aws_s3_bucket.lake.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "lake" {
  bucket = aws_s3_bucket.lake.id
  rule {
    id     = "tidy"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
    # Files of batches that never committed are deleted by the next start; their old versions
    # need not be kept.
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
  }
  # Staged files live for one batch (copied into place, then deleted): their old versions and
  # delete markers are of no use after a day.
  rule {
    id     = "staging"
    status = "Enabled"
    filter {
      prefix = local.lake_prefix == "" ? "_staging/" : "${local.lake_prefix}/_staging/"
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
    expiration {
      expired_object_delete_marker = true
    }
  }
}

# TLS only.
data "aws_iam_policy_document" "lake_bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.lake.arn, "${aws_s3_bucket.lake.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "lake" {
  bucket     = aws_s3_bucket.lake.id
  policy     = data.aws_iam_policy_document.lake_bucket.json
  depends_on = [aws_s3_bucket_public_access_block.lake]
}
