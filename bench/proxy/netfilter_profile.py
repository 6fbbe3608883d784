#!/usr/bin/env python3
"""Where the passthrough path's extra cost goes: a whole-machine kernel profile of (a) and (b).

(a) and (b) of bench.py hit the same app on the same excluded port; the only difference is that
(b) has the capture rules installed in the pod's namespace, which registers the netfilter
conntrack and nat hooks there. This script runs wrk at 16 connections against each, alternating,
while `perf record -a -e cpu-clock` samples the whole machine (software clock: this VM has no
hardware counters), and reports per path the busy samples per 1000 requests and the share of them
in netfilter functions (conntrack, nat, the hook walk), with the top ones.

It also profiles (b2), (b) with meshpass's untracked-passthrough rules (raw NOTRACK, in their
iptables rendering). With `--meshpass BIN`, two more paths load the pod's rules as meshpass's
nftables backend renders them (`meshpass rules --format nft`, one `inet meshpass` table, as in
the local mesh): (b-nft) Istio's semantics, (b2-nft) with `--untrack-excluded-inbound`, and
(b3-ebpf) has meshpass's eBPF capture installed instead of any rule (`meshpass iptables --ebpf`);
its programs' samples (JIT-compiled `bpf_prog_*`, the `sk_lookup` and cgroup hook runners) are
counted in a column of their own.

    sudo python3 bench/proxy/netfilter_profile.py [--rounds 2] [--duration 6] [--meshpass target/release/meshpass]

Needs root, perf, wrk, nginx, haproxy (bench.py's servers are reused as they are), iptables.
Only addresses inside the namespaces it creates are used; everything is removed at exit.
Runs through bench/record: the per-round figures (profile.json), everything printed, the
machine and versions land in bench/proxy/results/<date-time>/.
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

# Kernel functions of netfilter proper (not TCP/IP): conntrack, nat, the hook walk, the tables.
NETFILTER = re.compile(
    r"^(__)?(nf_|nft_|ipt_|ip6t_|xt_|iptable_|ipv4_conntrack|ipv6_conntrack|ipv4_confirm|hash_conntrack"
    r"|tcp_in_window|resolve_normal_ct|init_conntrack|get_l4proto|nf_ct_)")
# eBPF capture: the JIT-compiled programs and the kernel code that runs them.
BPF = re.compile(r"^(bpf_prog_|bpf_sk_lookup|bpf_sk_assign|__cgroup_bpf_run|bpf_dispatcher|sk_lookup_)")
# Samples of an idle CPU (halted vCPU), which are not work.
IDLE = {"pv_native_safe_halt", "default_idle", "native_safe_halt", "cpuidle_enter_state", "acpi_safe_halt",
        "intel_idle", "poll_idle", "default_idle_call"}


def profile(data):
    rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "sym", "--stdio", "-F", "sample,sym"],
                         capture_output=True, text=True, check=True).stdout
    busy = nf = bpf = 0
    top = collections.Counter()
    for line in rep.splitlines():
        m = re.match(r"\s+(\d+)\s+\[(.)\]\s+(\S+)", line)
        if not m:
            continue
        n, kind, sym = int(m.group(1)), m.group(2), m.group(3)
        if sym in IDLE:
            continue
        busy += n
        if kind == "k" and NETFILTER.match(sym):
            nf += n
            top[sym] += n
        elif kind == "k" and BPF.match(sym):
            bpf += n
            top[sym] += n
    return busy, nf, bpf, top


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=int, default=6)
    ap.add_argument("--meshpass", help="meshpass binary: also profile its nftables rendering (b-nft, b2-nft) "
                    "and its eBPF capture (b3-ebpf)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (network namespaces, iptables, perf -a)")
    if not os.environ.get("BENCH_RESULTS_DIR"):
        record = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "record")
        os.execv(sys.executable, [sys.executable, record, "proxy", sys.executable, os.path.abspath(__file__)]
                 + sys.argv[1:])
    paths = [("a-direct", False), ("b-passthrough", True), ("b2-untracked", "untracked")]
    nft_rules = {}
    if a.meshpass:
        ports = ",".join(str(p) for p in bench.EXCLUDED_INBOUND if p not in (15090, 15021, 15020))
        for name, extra in (("b-nft", []), ("b2-nft", ["--untrack-excluded-inbound"])):
            nft_rules[name] = subprocess.run(
                [a.meshpass, "rules", "-a", f"traffic.sidecar.istio.io/excludeInboundPorts={ports}", "--format", "nft"]
                + extra, capture_output=True, text=True, check=True).stdout
            paths.append((name, name))
        paths.append(("b3-ebpf", "ebpf"))
    b = bench.Bench(types.SimpleNamespace(proxy_bin=None, perf=0, workers=0, meshpass=a.meshpass))
    runs = []
    try:
        b.setup()
        b.start_servers()
        for rnd in range(a.rounds):
            for name, rules in paths:
                nft = ["ip", "netns", "exec", b.pod, "nft", "-f", "-"]
                subprocess.run(nft, input="table inet meshpass\ndelete table inet meshpass\n", text=True, check=True)
                if rules in nft_rules:
                    b.rules_off()
                    subprocess.run(nft, input=nft_rules[rules], text=True, check=True)
                else:
                    b.rules_for(rules)
                b.wrk(18080, 16, 1, False, None)  # warm-up
                data = f"{bench.RUN}/netfilter.{name}.{rnd}.data"
                rec = subprocess.Popen(["perf", "record", "-a", "-F", "2999", "-e", "cpu-clock", "-o", data],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)
                r = b.wrk(18080, 16, a.duration, False, None)
                rec.send_signal(2)
                rec.wait()
                runs.append((name, rnd, r, data))
                print(f"{name} round {rnd}: {r['rps']:.0f} req/s", flush=True)
    finally:
        b.cleanup()
    print("\n| path | round | req/s @16 | busy samples / 1000 req | netfilter samples / 1000 req | netfilter share of busy | eBPF share of busy | top netfilter / eBPF functions (samples) |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for name, rnd, r, data in runs:
        busy, nf, bpf, top = profile(data)
        n = r["requests"]
        tops = ", ".join(f"{k} {v}" for k, v in top.most_common(5)) or "—"
        print(f"| {name} | {rnd} | {r['rps']:,.0f} | {1000 * busy / n:.1f} | {1000 * nf / n:.2f} | {100 * nf / busy:.1f}% "
              f"| {100 * bpf / busy:.2f}% | {tops} |")
        rows.append({"path": name, "round": rnd, "wrk": r, "busy_samples": busy, "netfilter_samples": nf,
                     "ebpf_samples": bpf, "top_functions": top.most_common(10)})
    with open(os.path.join(os.environ["BENCH_RESULTS_DIR"], "profile.json"), "w") as f:
        json.dump({"rounds": a.rounds, "duration_s": a.duration, "runs": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
