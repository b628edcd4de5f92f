//! The roles of the one binary, one module each.

pub mod consume;
pub mod generate;
pub mod progress;
pub mod run;
pub mod setup;
pub mod status;
pub mod stream;
pub mod verify;
