variable "region" {
  description = "AWS region of the stream, the lake bucket and the roles."
  type        = string
  default     = "eu-west-2"
}

variable "name" {
  description = "Prefix of every resource name (stream, bucket, roles, parameter group)."
  type        = string
  default     = "totes-cdc"
}

variable "mode" {
  description = "The chart's mode: streaming (a Kinesis stream between `stream` and `consume`) or embedded (one `run` pod, no stream)."
  type        = string
  default     = "streaming"
  validation {
    condition     = contains(["streaming", "embedded"], var.mode)
    error_message = "mode must be streaming or embedded."
  }
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = { app = "totes-cdc" }
}

# --- Kinesis -------------------------------------------------------------------------------

variable "kinesis_shards" {
  description = "Shards of the stream (the unit of consumer parallelism); 0 for on-demand capacity."
  type        = number
  default     = 4
  validation {
    condition     = var.kinesis_shards >= 0
    error_message = "kinesis_shards must be 0 (on-demand) or a positive shard count."
  }
}

variable "kinesis_retention_hours" {
  description = "How long records stay in the stream: how far back `consume` can re-read (24 to 8760)."
  type        = number
  default     = 168
  validation {
    condition     = var.kinesis_retention_hours >= 24 && var.kinesis_retention_hours <= 8760
    error_message = "kinesis_retention_hours must be between 24 and 8760."
  }
}

variable "kms_key_arn" {
  description = "Customer-managed KMS key for the stream and the lake; null uses the AWS-managed keys."
  type        = string
  default     = null
}

# --- The lake ------------------------------------------------------------------------------

variable "lake_bucket" {
  description = "Name of the S3 bucket of the Parquet lake; null derives it from name, account and region."
  type        = string
  default     = null
}

variable "lake_prefix" {
  description = "Key prefix of the lake in the bucket (the chart's `lake` is s3://<bucket>/<prefix>)."
  type        = string
  default     = "lake"
}

variable "lake_force_destroy" {
  description = "Let `terraform destroy` delete a bucket that still holds lake files."
  type        = bool
  default     = false
}

# --- Kubernetes service accounts (IRSA) -----------------------------------------------------

variable "oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider (aws_iam_openid_connect_provider); null creates no roles."
  type        = string
  default     = null
}

variable "namespace" {
  description = "Kubernetes namespace of the Helm release."
  type        = string
  default     = "cdc"
}

variable "capture_service_account" {
  description = "Service account of the capture pod (the chart's default: <release>-capture)."
  type        = string
  default     = "totes-cdc-capture"
}

variable "consume_service_account" {
  description = "Service account of the consumer pods (the chart's default: <release>-consume)."
  type        = string
  default     = "totes-cdc-consume"
}

# --- The source on RDS -----------------------------------------------------------------------

variable "create_rds_parameter_group" {
  description = "Create a PostgreSQL 15 parameter group with logical replication for the source instance."
  type        = bool
  default     = true
}

variable "rds_family" {
  description = "Parameter group family of the source (postgres13 and later have max_slot_wal_keep_size)."
  type        = string
  default     = "postgres15"
}

variable "max_replication_slots" {
  description = "Replication slots on the source (one per totes-cdc pipeline, plus what else replicates)."
  type        = number
  default     = 10
}

variable "max_wal_senders" {
  description = "WAL sender processes on the source."
  type        = number
  default     = 10
}

variable "max_slot_wal_keep_size_mb" {
  description = "WAL a slot may retain before Postgres invalidates it (protects the source's disk; see README: Slot safety). -1 is unlimited."
  type        = number
  default     = 51200
}
