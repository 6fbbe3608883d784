# Start-up shared by the local-mesh benchmarks (bench/fleet/run.sh, bench/mesh/run.sh); sourced,
# not run. After `localmesh_bench_start NAME "$0" "$@"` the script runs as root from the
# repository's root, through bench/record (BENCH_RESULTS_DIR set), with:
#   OUT    the results table (table.md in the run's results directory)
#   MP     the release `meshpass` binary, freshly built
#   STATE  a new state directory for `meshpass up`
# At exit, `meshpass down` stops the mesh, the `meshpass up` whose pid the script put in UP is
# killed if it is still there, and STATE is removed.
localmesh_bench_start() {
  local name="$1" script="$2"
  shift 2
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  [ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
  [ -n "${BENCH_RESULTS_DIR:-}" ] || exec bench/record "$name" "$script" "$@"
  OUT=$BENCH_RESULTS_DIR/table.md
  scripts/setup --bench
  cargo build --release -q -p meshpass
  MP=$PWD/target/release/meshpass
  STATE=$(mktemp -d)
  trap localmesh_bench_cleanup EXIT
}

# `meshpass down` stops `up`, so the kill usually finds nothing: that must not fail the run.
localmesh_bench_cleanup() {
  "$MP" down --state-dir "$STATE" >/dev/null 2>&1 || true
  [ -z "${UP:-}" ] || kill "$UP" 2>/dev/null || true
  rm -rf "$STATE"
}
