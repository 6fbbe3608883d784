#!/usr/bin/env bash
# Scale benchmark of the local mesh (not a test): bring up N meshed pods (default 50) behind one
# service, time until all are ready, then time one rolling restart of all of them; report the
# supervisor's and sidecars' memory. Uses its own state directory and namespace prefix and
# removes everything at the end.
#   sudo bench/mesh/run.sh            # N=50
#   sudo N=20 bench/mesh/run.sh
# Runs through bench/record: the raw results (results.json, table.md, everything printed, the
# machine and versions) land in bench/mesh/results/<date-time>/; commit that directory with
# any figure quoted from it.
set -euo pipefail
. "$(dirname "$0")/../localmesh.sh"
localmesh_bench_start mesh "$0" "$@"
N=${N:-50}
PREFIX=mpb-
cat > "$STATE/scale.yaml" <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: scale, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: scale}
spec:
  selector: {app: hello}
  ports: [{port: 5000, targetPort: 5000}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello, namespace: scale}
spec:
  replicas: $N
  selector: {matchLabels: {app: hello}}
  template:
    metadata:
      labels: {app: hello}
      annotations: {traffic.sidecar.istio.io/excludeOutboundPorts: "3306"}
    spec:
      containers:
      - name: hello
        command: [meshpass, sample, helloworld, --port, "5000", --version, v1]
        ports: [{containerPort: 5000}]
YAML
now() { date +%s.%N; }
"$MP" up --no-sample --netns-prefix $PREFIX --pod-cidr 198.18.96.0/22 --service-cidr 198.19.96.0/24 \
  --drain-seconds 1 --state-dir "$STATE" > "$STATE/up.log" 2>&1 &
UP=$!
while [ ! -S "$STATE/control.sock" ]; do sleep 0.1; done
ready() { "$MP" get workloads -n scale --state-dir "$STATE" | awk '$2 == "hello" { split($5, a, "/"); print a[1] }'; }
t0=$(now)
"$MP" apply -f "$STATE/scale.yaml" --state-dir "$STATE" >/dev/null
until [ "$(ready)" = "$N" ]; do sleep 0.2; done
t1=$(now)
"$MP" rollout restart deployment/hello -n scale --state-dir "$STATE" >/dev/null
t2=$(now)
rss_kb() { awk '/VmRSS/ {s+=$2} END {print s+0}' $(for p in "$@"; do echo /proc/$p/status; done) 2>/dev/null; }
sup_rss=$(rss_kb "$UP")
sidecars=$(pgrep -f "$MP proxy" || true)
side_rss=$(rss_kb $sidecars)
nside=$(echo "$sidecars" | wc -w)
{
echo "# Local mesh scale benchmark"
echo
echo "Run $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, kernel $(uname -r). Command: \`sudo N=$N bench/mesh/run.sh\`."
echo
echo "| pods | bring-up to all ready (s) | rolling restart of all (s) | supervisor RSS | sidecar RSS (avg) |"
echo "|---:|---:|---:|---:|---:|"
printf "| %d | %.1f | %.1f | %.1f MB | %.1f MB |\n" "$N" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" \
  "$(echo "$sup_rss / 1024" | bc -l)" "$(echo "$side_rss / 1024 / ($nside + ($nside == 0))" | bc -l)"
} > "$OUT"
cat "$OUT"
cat > "$BENCH_RESULTS_DIR/results.json" <<JSON
{"pods": $N, "bring_up_s": $(printf '%.3f' "$(echo "$t1 - $t0" | bc)"), "rolling_restart_s": $(printf '%.3f' "$(echo "$t2 - $t1" | bc)"),
 "supervisor_rss_kb": $sup_rss, "sidecar_rss_kb_total": $side_rss, "sidecars": $nside}
JSON
