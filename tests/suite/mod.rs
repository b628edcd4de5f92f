//! The integration tests by concern.

mod apply_dead_letters;
mod apply_faults;
mod apply_idempotence;
mod apply_pipeline;
mod apply_real_snapshot;
mod capture_faults;
mod capture_ops;
mod capture_snapshot;
mod capture_types;
mod deploy;
mod deploy_checks;
mod helm;
mod kinesis;
mod lake;
mod leases;
mod make_run;
mod metrics;
mod replay;
mod schema_changes;
mod setup_checks;
mod terraform;
mod tls;
mod untrusted_records;
