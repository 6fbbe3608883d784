#!/usr/bin/env bash
# Batch passthrough benchmark of the local mesh (not a test): bring up N meshed workloads
# (default 200, one pod each) with `meshpass up`, then time, end to end (the CLI process from
# start to exit, through the management API), one change over all of them:
#   saved: `meshpass passthrough set --all -n fleet --add-outbound-ports P` (annotations
#          written, pods Pending restart)
#   live:  the same with `--live` (every running pod's capture rules changed in place)
# alternating add and remove so that every timed run changes all N workloads. Each run's
# answer is checked: N workloads, none failed. Targets: saved under 2 s, live under 5 s.
#   sudo bench/fleet/run.sh             # N=200, REPS=5
#   sudo N=50 REPS=3 bench/fleet/run.sh
# Runs through bench/record: the raw results (results.json, table.md, everything printed, the
# machine and versions) land in bench/fleet/results/<date-time>/; commit that directory with
# any figure quoted from it. Uses its own state directory, namespace prefix and address blocks
# and removes everything at the end.
set -euo pipefail
. "$(dirname "$0")/../localmesh.sh"
localmesh_bench_start fleet "$0" "$@"
N=${N:-200}
REPS=${REPS:-5}
PREFIX=mpf-
{
cat <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: fleet, labels: {istio-injection: enabled}}
YAML
for i in $(seq -f '%03g' 0 $((N - 1))); do
cat <<YAML
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app-$i, namespace: fleet}
spec:
  replicas: 1
  selector: {matchLabels: {app: app-$i}}
  template:
    metadata:
      labels: {app: app-$i, tier: fleet}
      annotations: {traffic.sidecar.istio.io/excludeOutboundPorts: "3306"}
    spec:
      containers:
      - name: app
        command: [meshpass, sample, helloworld, --port, "5000", --version, v1]
        ports: [{containerPort: 5000}]
YAML
done
} > "$STATE/fleet.yaml"
now() { date +%s.%N; }
"$MP" up --no-sample --netns-prefix $PREFIX --pod-cidr 198.18.104.0/22 --service-cidr 198.19.104.0/24 \
  --drain-seconds 1 --api-listen 127.0.0.1:0 --state-dir "$STATE" > "$STATE/up.log" 2>&1 &
UP=$!
while [ ! -S "$STATE/control.sock" ]; do sleep 0.1; done
while [ ! -s "$STATE/api-address" ]; do sleep 0.1; done
ready() { "$MP" get workloads -n fleet --state-dir "$STATE" | awk 'NR > 1 { split($5, a, "/"); if (a[1] == a[2] && a[2] > 0) n++ } END { print n + 0 }'; }
t0=$(now)
"$MP" apply -f "$STATE/fleet.yaml" --state-dir "$STATE" >/dev/null
until [ "$(ready)" = "$N" ]; do sleep 1; done
t1=$(now)
echo "$N workloads ready in $(echo "$t1 - $t0" | bc) s"

# One timed batch: sets T to the seconds; the run fails unless all N workloads were changed.
batch() {
  local label=$1; shift
  local a b
  a=$(now)
  "$MP" passthrough set --all -n fleet "$@" -o json --state-dir "$STATE" > "$STATE/answer.json"
  b=$(now)
  python3 - "$STATE/answer.json" "$N" "$label" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n = int(sys.argv[2])
changed = sum(1 for i in r["items"] if i["outcome"] == "changed")
if len(r["items"]) != n or r["failed"] != 0 or changed != n:
    sys.exit(f"{sys.argv[3]}: {len(r['items'])} items, {r['failed']} failed, {changed} changed (expected {n} changed)")
PY
  T=$(printf '%.3f' "$(echo "$b - $a" | bc)")
}

saved=() live=()
for r in $(seq 1 "$REPS"); do
  # Interleaved, so that both see the same machine load.
  batch saved-add --add-outbound-ports 5432; saved+=("$T")
  batch live-add --add-outbound-ports 6379 --live; live+=("$T")
  batch saved-remove --remove-outbound-ports 5432; saved+=("$T")
  batch live-remove --remove-outbound-ports 6379 --live; live+=("$T")
  echo "rep $r: saved ${saved[*]: -2} s, live ${live[*]: -2} s"
done
# A live change really reached the pods: count the pods whose capture rules exclude the port
# added last (checked after the results are written, below).
batch live-verify --add-outbound-ports 6380 --live
"$MP" get pods -n fleet --state-dir "$STATE" | awk 'NR > 1 { print $7 }' > "$STATE/netns"
reached=0
while read -r netns; do
  # grep reads all of nft's output: `grep -q` would exit at the first match, and nft's
  # SIGPIPE would then fail the pipeline under pipefail.
  if ip netns exec "$netns" nft list ruleset | grep 6380 > /dev/null; then reached=$((reached + 1)); fi
done < "$STATE/netns"
echo "live change in the rules of $reached of $(wc -l < "$STATE/netns") pods"
sup_rss=$(awk '/VmRSS/ {print $2}' /proc/$UP/status)

stats() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { printf "%.3f %.3f %.3f", v[1], (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2), v[NR] }'; }
read -r smin smed smax <<< "$(stats "${saved[@]}")"
read -r lmin lmed lmax <<< "$(stats "${live[@]}")"
{
echo "# Batch passthrough benchmark"
echo
echo "Run $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, kernel $(uname -r). Command: \`sudo N=$N REPS=$REPS bench/fleet/run.sh\`."
echo "$N meshed workloads (one pod each) ready in $(printf '%.1f' "$(echo "$t1 - $t0" | bc)") s; supervisor RSS $(echo "$sup_rss / 1024" | bc) MB after the runs."
echo
echo "| one change over all $N workloads, end to end | runs | min (s) | median (s) | max (s) | target |"
echo "|---|---:|---:|---:|---:|---|"
echo "| saved (\`passthrough set --all --add-/--remove-outbound-ports\`) | ${#saved[@]} | $smin | $smed | $smax | < 2 s |"
echo "| live (the same with \`--live\`) | ${#live[@]} | $lmin | $lmed | $lmax | < 5 s |"
echo
echo "After a last live change, $reached of $(wc -l < "$STATE/netns") pods had it in their capture rules."
} > "$OUT"
cat "$OUT"
join() { local IFS=,; echo "$*"; }
cat > "$BENCH_RESULTS_DIR/results.json" <<JSON
{"workloads": $N, "reps": $REPS, "bring_up_s": $(printf '%.3f' "$(echo "$t1 - $t0" | bc)"),
 "saved_s": [$(join "${saved[@]}")], "live_s": [$(join "${live[@]}")],
 "saved_median_s": $smed, "live_median_s": $lmed, "supervisor_rss_kb": $sup_rss,
 "live_verified_pods": $reached, "pods": $(wc -l < "$STATE/netns")}
JSON
[ "$reached" = "$(wc -l < "$STATE/netns")" ] || { echo "the live change is missing from $(( $(wc -l < "$STATE/netns") - reached )) pods' rules" >&2; exit 1; }
