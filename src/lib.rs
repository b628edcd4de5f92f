//! totes-cdc: change-data capture from PostgreSQL into a Parquet lake and a star-schema
//! warehouse. See README.md for the roles and ../DESIGN for how they fit together.

pub mod apply;
pub mod aws;
pub mod capture;
pub mod channel;
pub mod commands;
pub mod config;
pub mod error_policy;
pub mod event;
pub mod fault;
pub mod fix;
#[cfg(test)]
mod fuzz;
pub mod hash;
pub mod lake;
pub mod metrics;
pub mod pg;
pub mod retry;
pub mod transport;
