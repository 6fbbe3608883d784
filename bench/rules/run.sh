#!/usr/bin/env bash
# Benchmark of the capture engine (not a test): render + apply time, and the new-connection
# rate through the rules, with 1, 100 and 10,000 excluded CIDRs and ports, for the iptables and
# nftables backends. Traffic stays inside two namespaces this script creates (198.18.40.0/24);
# everything is removed on exit.
#
#   sudo bench/rules/run.sh                     # full run (~6 min)
#   sudo REPS=1 DURATION=3 bench/rules/run.sh   # quick look
# Runs through bench/record: the raw results (results.jsonl with every repetition's values,
# table.md, everything printed, the machine and versions) land in
# bench/rules/results/<date-time>/; commit that directory with any figure quoted from it.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, rules)" >&2; exit 1; }
[ -n "${BENCH_RESULTS_DIR:-}" ] || exec bench/record rules "$0" "$@"
REPS=${REPS:-3}
DURATION=${DURATION:-6}
SIZES=${SIZES:-"1 100 10000"}
OUT=$BENCH_RESULTS_DIR
scripts/setup --bench
cargo build --release -q -p meshpass
MP=$PWD/target/release/meshpass
# The binary as built (line tables kept for profiling) and as scripts/up installs it (stripped).
install -s -m 0755 "$MP" "$OUT/meshpass.stripped"
echo "{\"release_binary_bytes\": $(stat -c %s "$MP"), \"installed_stripped_bytes\": $(stat -c %s "$OUT/meshpass.stripped")}" > "$OUT/binary.json"
rm "$OUT/meshpass.stripped"
cat "$OUT/binary.json"
WORK=$(mktemp -d)
POD=mp-bench-pod-$$
PEER=mp-bench-peer-$$
cleanup() {
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  ip netns del "$POD" 2>/dev/null || true
  ip netns del "$PEER" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$POD"; ip netns add "$PEER"
ip link add mpb0 netns "$POD" type veth peer name mpb1 netns "$PEER"
ip -n "$POD" link set lo up; ip -n "$PEER" link set lo up
ip -n "$POD" addr add 198.18.40.2/24 dev mpb0; ip -n "$PEER" addr add 198.18.40.1/24 dev mpb1
ip -n "$POD" link set mpb0 up; ip -n "$PEER" link set mpb1 up
ip -n "$POD" route add default via 198.18.40.1

cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 198.18.40.1:8080 reuseport backlog=4096; location / { return 200 "ok\n"; } }
}
NGINX
ip netns exec "$PEER" taskset -c 1 nginx -c "$WORK/nginx.conf"

# N excluded /30s from 198.19.0.0/16 (never a destination) and N excluded ports from 20000 up;
# the peer (198.18.40.1:8080) is in neither, so every new connection walks both lists, and
# is not in the include list either, so it passes through to nginx.
annotations() {
  local n=$1 f=$WORK/ann-$1.yaml
  python3 - "$n" > "$f" <<'PY'
import sys
n = int(sys.argv[1])
cidrs = ",".join(f"198.19.{(i*4)//256}.{(i*4)%256}/30" for i in range(n))
ports = ",".join(str(20000 + i) for i in range(n))
print(f'traffic.sidecar.istio.io/includeOutboundIPRanges: "10.0.0.0/8"')
print(f'traffic.sidecar.istio.io/excludeOutboundIPRanges: "{cidrs}"')
print(f'traffic.sidecar.istio.io/excludeOutboundPorts: "{ports}"')
PY
  echo "$f"
}

now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
wrk_rate() {
  ip netns exec "$POD" taskset -c 0 wrk -t1 -c8 -d"${DURATION}s" -H 'Connection: close' http://198.18.40.1:8080/ \
    | awk '/Requests\/sec/ {print int($2)}'
}

{
echo "# Capture engine benchmark"
echo
echo "Run: $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, kernel $(uname -r), $(nft --version), $(iptables --version)."
echo "Command: \`sudo REPS=$REPS DURATION=$DURATION SIZES=\"$SIZES\" bench/rules/run.sh\`. Medians of $REPS."
echo
echo "N = number of excluded CIDRs **and** of excluded ports (so 2N list items). Render: \`meshpass rules --format <backend>\` (process start included)."
echo "Apply: \`meshpass rules --apply\` into an empty namespace (process start included). Rate: \`wrk -t1 -c8 -H 'Connection: close'\` from the pod to nginx on the peer, one connection per request, every connection walking both lists and passing through."
echo "Each repetition measures the rate with the rules and then, right after, without any rule: the ratio column is the median of those paired per-repetition ratios (min–max in brackets), which the machine's drift between repetitions affects far less than the absolute rates."
echo
echo "| N | backend | rules/elements | render ms | apply ms | re-apply (unchanged) ms | connections/s | no rules, connections/s | ratio to no rules (paired) |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
} > "$WORK/table.md"

# One JSON object per line: every repetition's values, the raw data behind table.md.
raw=$OUT/results.jsonl
: > "$raw"
join() { local IFS=,; echo "$*"; }
for n in $SIZES; do
  f=$(annotations "$n")
  for backend in iptables nftables; do
    fmt=$([ $backend = nftables ] && echo nft || echo iptables)
    r_ms=(); a_ms=(); u_ms=(); rates=(); bases=(); ratios=()
    for r in $(seq "$REPS"); do
      t0=$(now); "$MP" rules --annotations "$f" --format "$fmt" > "$WORK/rules.txt"; t1=$(now)
      r_ms+=("$(( (t1 - t0) / 1000000 ))")
      "$MP" rules --cleanup --netns "$POD" --backend $backend 2>/dev/null
      t0=$(now); "$MP" rules --annotations "$f" --apply --netns "$POD" --backend $backend 2>/dev/null; t1=$(now)
      a_ms+=("$(( (t1 - t0) / 1000000 ))")
      t0=$(now); "$MP" rules --annotations "$f" --apply --netns "$POD" --backend $backend 2>/dev/null; t1=$(now)
      u_ms+=("$(( (t1 - t0) / 1000000 ))")
      rate=$(wrk_rate)
      if [ $backend = nftables ]; then
        size=$(ip netns exec "$POD" nft list table inet meshpass | grep -c 'counter' || true)
        size="$size rules, $((2 * n)) set elements"
      else
        size="$(ip netns exec "$POD" iptables-save | grep -c '^-A') rules"
      fi
      "$MP" rules --cleanup --netns "$POD" --backend $backend 2>/dev/null
      base=$(wrk_rate)
      rates+=("$rate"); bases+=("$base")
      ratios+=("$(awk -v a="$rate" -v b="$base" 'BEGIN {printf "%.3f", a/b}')")
    done
    echo "{\"n\": $n, \"backend\": \"$backend\", \"size\": \"$size\", \"render_ms\": [$(join "${r_ms[@]}")], \"apply_ms\": [$(join "${a_ms[@]}")], \"reapply_ms\": [$(join "${u_ms[@]}")], \"connections_per_s\": [$(join "${rates[@]}")], \"no_rules_connections_per_s\": [$(join "${bases[@]}")], \"ratio\": [$(join "${ratios[@]}")]}" >> "$raw"
    med() { printf '%s\n' "$@" | median; }
    range=$(printf '%s\n' "${ratios[@]}" | sort -n | awk 'NR==1 {lo=$1} {hi=$1} END {printf "%.2f–%.2f", lo, hi}')
    line="| $n | $backend | $size | $(med "${r_ms[@]}") | $(med "${a_ms[@]}") | $(med "${u_ms[@]}") | $(med "${rates[@]}") | $(med "${bases[@]}") | $(printf '%.2f' "$(med "${ratios[@]}")") ($range) |"
    echo "$line" >> "$WORK/table.md"
    echo "$line" >&2
  done
done
cp "$WORK/table.md" "$OUT/table.md"
cat "$OUT/table.md"
