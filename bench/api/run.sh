#!/usr/bin/env bash
# Benchmark of the management plane's read paths (not a test): `/metrics` and
# `GET /api/v1/workloads` with 200 workloads, the real server on 127.0.0.1 over the test
# double, whose backend calls are given the latency a real backend has (LIST_MS for the
# workload list, COUNTER_MS per workload's rule counters). Compares, within each repetition,
# collecting on every scrape (counters read one at a time, then eight at a time) with the
# server's defaults (figures shared for 2 s, the workload list for 1 s).
#
#   bench/api/run.sh                        # full run (~2 min)
#   REPS=1 DURATION=2 bench/api/run.sh      # quick look
# Runs through bench/record: results.json, everything printed, the machine and versions land
# in bench/api/results/<date-time>/; commit that directory with any figure quoted from it.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -n "${BENCH_RESULTS_DIR:-}" ] || exec bench/record api "$0" "$@"
# Optimised, without the proxy's fat LTO (a much slower build; these paths are not the proxy's).
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
cargo build --release -q -p meshpass-api --example scrape
exec target/release/examples/scrape
