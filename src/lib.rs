//! totes-cdc: change-data capture from PostgreSQL into a Parquet lake and a star-schema
//! warehouse. See README.md for the roles and ../DESIGN for how they fit together.

pub mod apply;
pub mod aws;
pub mod capture;
pub mod commands;
pub mod config;
pub mod event;
pub mod fault;
pub mod lake;
pub mod metrics;
pub mod pg;
pub mod retry;
pub mod transport;
