output "kinesis_stream" {
  description = "The chart's config.kinesis-stream (streaming mode)."
  value       = local.streaming ? aws_kinesis_stream.changes[0].name : null
}

output "kinesis_stream_arn" {
  value = local.streaming ? aws_kinesis_stream.changes[0].arn : null
}

output "lake" {
  description = "The chart's config.lake."
  value       = local.lake_prefix == "" ? "s3://${aws_s3_bucket.lake.bucket}" : "s3://${aws_s3_bucket.lake.bucket}/${local.lake_prefix}"
}

output "capture_role_arn" {
  description = "For capture.serviceAccount.annotations.eks.amazonaws.com/role-arn."
  value       = local.create_roles ? aws_iam_role.component["capture"].arn : null
}

output "consume_role_arn" {
  description = "For consume.serviceAccount.annotations.eks.amazonaws.com/role-arn."
  value       = local.create_roles && local.streaming ? aws_iam_role.component["consume"].arn : null
}

output "source_parameter_group" {
  description = "Attach to the source RDS instance (and reboot it)."
  value       = var.create_rds_parameter_group ? aws_db_parameter_group.source[0].name : null
}

output "helm_values" {
  description = "Values for helm/totes-cdc: helm install totes-cdc helm/totes-cdc -f <(terraform output -raw helm_values)."
  value = yamlencode({
    mode = var.mode
    aws  = { region = var.region }
    config = merge(
      { lake = local.lake_prefix == "" ? "s3://${aws_s3_bucket.lake.bucket}" : "s3://${aws_s3_bucket.lake.bucket}/${local.lake_prefix}" },
      local.streaming ? { "kinesis-stream" = aws_kinesis_stream.changes[0].name } : {},
    )
    capture = {
      serviceAccount = {
        name        = var.capture_service_account
        annotations = local.create_roles ? { "eks.amazonaws.com/role-arn" = aws_iam_role.component["capture"].arn } : {}
      }
    }
    consume = {
      serviceAccount = {
        name        = var.consume_service_account
        annotations = local.create_roles && local.streaming ? { "eks.amazonaws.com/role-arn" = aws_iam_role.component["consume"].arn } : {}
      }
    }
  })
}
