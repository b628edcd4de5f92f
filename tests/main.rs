//! Every integration test in one binary, so the support code compiles and links once. Each
//! module under `suite/` covers one concern, against real PostgreSQL servers and moto that the
//! tests start themselves (`cargo test --test main kinesis::` runs one concern).

mod suite;
mod support;

// The crash tests inject faults that only a build with the feature has.
#[cfg(not(feature = "failpoints"))]
compile_error!(
    "the tests need the `failpoints` feature: run `make test` (cargo test --features failpoints)"
);
