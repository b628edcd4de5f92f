# The source's parameters for logical replication on RDS (attach the group to the instance and
# reboot it: rds.logical_replication and the slot/sender counts take effect at restart).
resource "aws_db_parameter_group" "source" {
  count       = var.create_rds_parameter_group ? 1 : 0
  name        = "${var.name}-source"
  family      = var.rds_family
  description = "totes-cdc source: wal_level = logical through rds.logical_replication"

  parameter {
    name         = "rds.logical_replication"
    value        = "1"
    apply_method = "pending-reboot"
  }
  # Only encrypted connections (the default from PostgreSQL 15 on RDS, kept explicit): connect
  # with sslmode=verify-full and sslrootcert = the region's CA bundle (README, Connecting
  # securely).
  parameter {
    name         = "rds.force_ssl"
    value        = "1"
    apply_method = "immediate"
  }
  parameter {
    name         = "max_replication_slots"
    value        = tostring(var.max_replication_slots)
    apply_method = "pending-reboot"
  }
  parameter {
    name         = "max_wal_senders"
    value        = tostring(var.max_wal_senders)
    apply_method = "pending-reboot"
  }
  # A slot that falls this far behind is invalidated instead of filling the disk (totes-cdc
  # reports it and `totes-cdc resync` recovers).
  parameter {
    name         = "max_slot_wal_keep_size"
    value        = tostring(var.max_slot_wal_keep_size_mb)
    apply_method = "immediate"
  }
  # A stalled receiver is noticed within a minute (totes-cdc reports its position every second).
  parameter {
    name         = "wal_sender_timeout"
    value        = "60000"
    apply_method = "immediate"
  }
}
