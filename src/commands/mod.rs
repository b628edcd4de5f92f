//! The roles of the one binary, one module each.

pub mod setup;
pub mod stream;
