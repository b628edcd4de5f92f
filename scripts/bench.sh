#!/usr/bin/env bash
# `make bench`: every benchmark, against the physical limit where there is one, results
# recorded in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench capture -- --write
cargo bench --bench apply -- --write
cargo bench --bench kinesis -- --write
cargo bench --bench snapshot -- --write
