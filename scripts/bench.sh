#!/usr/bin/env bash
# `make bench`: every benchmark, results recorded in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench capture -- --write
