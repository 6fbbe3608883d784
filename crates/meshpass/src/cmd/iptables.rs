//! `meshpass iptables`: Istio's istio-iptables, flag for flag.
//!
//! Flags win over environment variables, as with istio-iptables (whose env values are
//! applied before argv is parsed). Values are validated (istio-iptables copies them into rules
//! unchecked); the rules are Istio's, and applying is atomic and idempotent.

use super::invalid;
use anyhow::Context;
use meshpass_capture::ir::Family;
use meshpass_capture::linux::{self, Netns, NetnsRunner, RuleBackend};
use meshpass_capture::render::iptables::render_restore;
use meshpass_capture::{compile, IstioArgs};
use std::net::IpAddr;
use std::process::ExitCode;

/// istio-iptables' flags. Every value can also come from the environment variable named in
/// its help.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Outbound capture port (no env var, as in Istio).
    #[arg(short = 'p', long = "envoy-port")]
    envoy_port: Option<String>,
    /// Inbound capture port [env: INBOUND_CAPTURE_PORT].
    #[arg(short = 'z', long = "inbound-capture-port")]
    inbound_capture_port: Option<String>,
    /// Tunnel port, never captured inbound [env: INBOUND_TUNNEL_PORT].
    #[arg(short = 'e', long = "inbound-tunnel-port")]
    inbound_tunnel_port: Option<String>,
    /// Proxy UIDs, comma-separated [env: PROXY_UID].
    #[arg(short = 'u', long = "proxy-uid")]
    proxy_uid: Option<String>,
    /// Proxy GIDs (default: the UIDs) [env: PROXY_GID].
    #[arg(short = 'g', long = "proxy-gid")]
    proxy_gid: Option<String>,
    /// REDIRECT or TPROXY [env: ISTIO_INBOUND_INTERCEPTION_MODE].
    #[arg(short = 'm', long = "istio-inbound-interception-mode")]
    mode: Option<String>,
    /// TPROXY mark [env: ISTIO_INBOUND_TPROXY_MARK].
    #[arg(short = 't', long = "istio-inbound-tproxy-mark")]
    tproxy_mark: Option<String>,
    /// TPROXY route table [env: ISTIO_INBOUND_TPROXY_ROUTE_TABLE].
    #[arg(short = 'r', long = "istio-inbound-tproxy-route-table")]
    route_table: Option<String>,
    /// Inbound ports to capture, `*` for all [env: ISTIO_INBOUND_PORTS].
    #[arg(short = 'b', long = "istio-inbound-ports", allow_hyphen_values = true)]
    inbound_ports: Option<String>,
    /// Inbound ports that bypass the sidecar (with `-b '*'`) [env: ISTIO_LOCAL_EXCLUDE_PORTS].
    #[arg(short = 'd', long = "istio-local-exclude-ports")]
    local_exclude_ports: Option<String>,
    /// Outbound ports always captured [env: ISTIO_OUTBOUND_PORTS].
    #[arg(short = 'q', long = "istio-outbound-ports")]
    outbound_ports: Option<String>,
    /// Outbound ports that bypass the sidecar [env: ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE].
    #[arg(short = 'o', long = "istio-local-outbound-ports-exclude")]
    outbound_ports_exclude: Option<String>,
    /// Outbound CIDRs to capture, `*` for all [env: ISTIO_SERVICE_CIDR].
    #[arg(short = 'i', long = "istio-service-cidr")]
    service_cidr: Option<String>,
    /// Outbound CIDRs that bypass the sidecar [env: ISTIO_SERVICE_EXCLUDE_CIDR].
    #[arg(short = 'x', long = "istio-service-exclude-cidr")]
    service_exclude_cidr: Option<String>,
    /// Virtual interfaces rerouted to the outbound listener [env: KUBE_VIRT_INTERFACES].
    #[arg(short = 'k', long = "kube-virt-interfaces")]
    kube_virt_interfaces: Option<String>,
    /// Interfaces never captured [env: ISTIO_EXCLUDE_INTERFACES].
    #[arg(short = 'c', long = "istio-exclude-interfaces")]
    exclude_interfaces: Option<String>,
    /// Print the rules instead of applying them [env: DRY_RUN].
    #[arg(short = 'n', long = "dry-run")]
    dry_run: bool,
    /// Capture DNS to the agent on 15053 [env: REDIRECT_DNS or ISTIO_META_DNS_CAPTURE].
    #[arg(long = "redirect-dns")]
    redirect_dns: bool,
    /// Capture all port-53 traffic, not only to resolv.conf's servers [env: CAPTURE_ALL_DNS].
    #[arg(long = "capture-all-dns")]
    capture_all_dns: bool,
    /// Drop conntrack-INVALID packets [env: DROP_INVALID or INVALID_DROP].
    #[arg(long = "drop-invalid")]
    drop_invalid: bool,
    /// Excluded inbound ports skip conntrack too: raw NOTRACK rules, off loopback (meshpass
    /// extension; see the README's "Untracked passthrough") [env: MESHPASS_UNTRACK_EXCLUDED_INBOUND].
    #[arg(long = "untrack-excluded-inbound")]
    untrack_excluded_inbound: bool,
    /// IPv6 when any local address is IPv6 [env: DUAL_STACK or ISTIO_DUAL_STACK].
    #[arg(long = "dual-stack")]
    dual_stack: bool,
    /// Emit IPv6 rules even where the pod address can't be detected (meshpass extension).
    #[arg(long = "ipv6")]
    ipv6: bool,
    /// Only remove the rules [env: CLEANUP_ONLY].
    #[arg(long = "cleanup-only")]
    cleanup_only: bool,
    /// Use native nftables (table `inet meshpass`) instead of iptables [env: NATIVE_NFTABLES].
    #[arg(long = "native-nftables")]
    native_nftables: bool,
    /// Capture with eBPF programs instead of netfilter rules: inbound by `sk_lookup`, outbound
    /// by connect hooks and a mark route; passthrough traffic then meets no per-packet hook
    /// (meshpass extension; see the README's "eBPF capture") [env: MESHPASS_EBPF_CAPTURE].
    #[arg(long = "ebpf")]
    ebpf: bool,
    /// With --ebpf: the cgroup v2 directory whose processes' connections are captured
    /// outbound (default: the cgroup v2 root; the programs ignore sockets of other network
    /// namespaces) [env: MESHPASS_CGROUP].
    #[arg(long = "cgroup")]
    cgroup: Option<String>,
    /// `legacy` or `nft` [env: FORCE_IPTABLES_BINARY].
    #[arg(long = "force-iptables-binary")]
    force_iptables_binary: Option<String>,
    /// Apply in this network namespace (name or path) [env: NETWORK_NAMESPACE].
    #[arg(long = "network-namespace")]
    network_namespace: Option<String>,
    /// Accepted for compatibility: meshpass always reconciles atomically [env: RECONCILE].
    #[arg(long = "reconcile")]
    reconcile: bool,
    /// Accepted for compatibility: apply even when the rules are in place [env: FORCE_APPLY].
    #[arg(long = "force-apply")]
    force_apply: bool,
    /// Do not apply rules (with --run-validation) [env: SKIP_RULE_APPLY].
    #[arg(long = "skip-rule-apply")]
    skip_rule_apply: bool,
    /// Not supported: Istio's redirect validation probe.
    #[arg(long = "run-validation")]
    run_validation: bool,
    /// Accepted for compatibility (validation probe port).
    #[arg(long = "iptables-probe-port")]
    iptables_probe_port: Option<String>,
    /// Accepted for compatibility (validation probe timeout).
    #[arg(long = "probe-timeout")]
    probe_timeout: Option<String>,
    /// Accepted for compatibility (pod-scoped xtables lock).
    #[arg(long = "cni-mode")]
    cni_mode: bool,
    /// Accepted for compatibility (Istio's log level flag, which the injector passes).
    #[arg(long = "log_output_level")]
    log_output_level: Option<String>,
    /// Read name servers from this file instead of /etc/resolv.conf (meshpass extension).
    #[arg(long = "resolv-conf", default_value = "/etc/resolv.conf")]
    resolv_conf: String,
}

fn truthy(v: Option<String>) -> bool {
    v.is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// Name servers of a resolv.conf text.
pub(crate) fn nameservers(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some("nameserver")).then(|| it.next().map(str::to_string)).flatten()
        })
        .collect()
}

/// istio-iptables' IPv6 detection: the first non-loopback, non-link-local address is IPv6
/// (with `dual_stack`: any such address is).
fn detect_ipv6(dual_stack: bool) -> bool {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return false };
    let usable = addrs.filter_map(|a| a.address).filter_map(|sa| {
        let ip: Option<IpAddr> = sa
            .as_sockaddr_in()
            .map(|s| IpAddr::V4(s.ip()))
            .or_else(|| sa.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())));
        ip.filter(|ip| !ip.is_loopback() && !is_link_local(ip))
    });
    let mut usable = usable.peekable();
    if dual_stack {
        usable.any(|ip| ip.is_ipv6())
    } else {
        usable.next().is_some_and(|ip| ip.is_ipv6())
    }
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Flags over environment, Istio's precedence.
fn to_istio_args(a: &Args, env: &dyn Fn(&str) -> Option<String>) -> IstioArgs {
    let pick = |flag: &Option<String>, var: &str| flag.clone().or_else(|| env(var));
    IstioArgs {
        proxy_port: a.envoy_port.clone(),
        inbound_capture_port: pick(&a.inbound_capture_port, "INBOUND_CAPTURE_PORT"),
        inbound_tunnel_port: pick(&a.inbound_tunnel_port, "INBOUND_TUNNEL_PORT"),
        proxy_uid: pick(&a.proxy_uid, "PROXY_UID"),
        proxy_gid: pick(&a.proxy_gid, "PROXY_GID"),
        mode: pick(&a.mode, "ISTIO_INBOUND_INTERCEPTION_MODE"),
        tproxy_mark: pick(&a.tproxy_mark, "ISTIO_INBOUND_TPROXY_MARK"),
        route_table: pick(&a.route_table, "ISTIO_INBOUND_TPROXY_ROUTE_TABLE"),
        include_inbound_ports: pick(&a.inbound_ports, "ISTIO_INBOUND_PORTS"),
        exclude_inbound_ports: pick(&a.local_exclude_ports, "ISTIO_LOCAL_EXCLUDE_PORTS"),
        include_outbound_ports: pick(&a.outbound_ports, "ISTIO_OUTBOUND_PORTS"),
        exclude_outbound_ports: pick(&a.outbound_ports_exclude, "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE"),
        include_ip_ranges: pick(&a.service_cidr, "ISTIO_SERVICE_CIDR"),
        exclude_ip_ranges: pick(&a.service_exclude_cidr, "ISTIO_SERVICE_EXCLUDE_CIDR"),
        virtual_interfaces: pick(&a.kube_virt_interfaces, "KUBE_VIRT_INTERFACES"),
        exclude_interfaces: pick(&a.exclude_interfaces, "ISTIO_EXCLUDE_INTERFACES"),
        redirect_dns: a.redirect_dns || truthy(env("REDIRECT_DNS")) || truthy(env("ISTIO_META_DNS_CAPTURE")),
        capture_all_dns: a.capture_all_dns || truthy(env("CAPTURE_ALL_DNS")),
        drop_invalid: a.drop_invalid || truthy(env("DROP_INVALID")) || truthy(env("INVALID_DROP")),
        untrack_excluded_inbound: a.untrack_excluded_inbound || truthy(env("MESHPASS_UNTRACK_EXCLUDED_INBOUND")),
        enable_ipv6: false,
        dns_servers: Vec::new(),
        owner_groups_include: env("ISTIO_OUTBOUND_OWNER_GROUPS"),
        owner_groups_exclude: env("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"),
        loopback_cidr: env("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"),
    }
}

/// Runs `meshpass iptables`.
pub(crate) fn run(a: Args, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ExitCode> {
    if a.run_validation || truthy(env("RUN_VALIDATION")) {
        anyhow::bail!("--run-validation (Istio's CNI redirect probe) is not supported by meshpass; use `meshpass explain --netns` to check live rules");
    }
    let mut args = to_istio_args(&a, env);
    let dual_stack = a.dual_stack || truthy(env("DUAL_STACK")) || truthy(env("ISTIO_DUAL_STACK"));
    args.enable_ipv6 = a.ipv6 || detect_ipv6(dual_stack);
    if args.redirect_dns && !args.capture_all_dns {
        // As Istio: no servers means DNS capture silently stays off.
        args.dns_servers = std::fs::read_to_string(&a.resolv_conf).map(|t| nameservers(&t)).unwrap_or_default();
    }
    let cfg = match args.to_config() {
        Ok(c) => c,
        Err(errors) => return Ok(invalid(&errors)),
    };
    let dry_run = a.dry_run || truthy(env("DRY_RUN"));
    let native = a.native_nftables || truthy(env("NATIVE_NFTABLES"));
    if a.ebpf || truthy(env("MESHPASS_EBPF_CAPTURE")) {
        if native {
            anyhow::bail!("--ebpf and --native-nftables exclude each other: eBPF capture installs no rules");
        }
        return run_ebpf(&a, env, &cfg, dry_run);
    }
    let plan = compile(&cfg);
    let backend = if native {
        RuleBackend::Nftables
    } else {
        match a.force_iptables_binary.clone().or_else(|| env("FORCE_IPTABLES_BINARY")).as_deref() {
            None | Some("") | Some("nft") => RuleBackend::Iptables,
            Some("legacy") => RuleBackend::IptablesLegacy,
            Some(other) => anyhow::bail!("invalid FORCE_IPTABLES_BINARY value {other:?}: use legacy or nft"),
        }
    };
    if dry_run {
        if native {
            print!("{}", meshpass_capture::render::nft::render(&plan));
        } else {
            print!("{}", render_restore(&plan, Family::V4));
            if plan.ipv6 {
                print!("{}", render_restore(&plan, Family::V6));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let netns = target_netns(&a, env);
    let runner = NetnsRunner::new(netns);
    if a.cleanup_only || truthy(env("CLEANUP_ONLY")) {
        linux::cleanup(backend, false, &runner).context("cleanup failed")?;
        eprintln!("meshpass: rules removed ({backend}, {})", runner.netns());
        return Ok(ExitCode::SUCCESS);
    }
    if a.skip_rule_apply || truthy(env("SKIP_RULE_APPLY")) {
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = linux::apply(&plan, backend, &runner).context("applying the rules failed")?;
    eprintln!(
        "meshpass: rules {} ({backend}, {})",
        match outcome {
            linux::ApplyOutcome::Applied => "applied",
            linux::ApplyOutcome::Unchanged => "already in place",
        },
        runner.netns()
    );
    Ok(ExitCode::SUCCESS)
}

/// `--network-namespace` / `NETWORK_NAMESPACE`, else the current namespace.
fn target_netns(a: &Args, env: &dyn Fn(&str) -> Option<String>) -> Netns {
    a.network_namespace.clone().or_else(|| env("NETWORK_NAMESPACE")).map(|n| Netns::parse(&n)).unwrap_or(Netns::Current)
}

fn run_ebpf(
    a: &Args,
    env: &dyn Fn(&str) -> Option<String>,
    cfg: &meshpass_capture::CaptureConfig,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    use meshpass_capture::linux::ebpf;
    let netns = target_netns(a, env);
    let runner = NetnsRunner::new(netns.clone());
    if a.cleanup_only || truthy(env("CLEANUP_ONLY")) {
        ebpf::remove(&netns, &runner).context("removing eBPF capture failed")?;
        eprintln!("meshpass: eBPF capture removed ({netns})");
        return Ok(ExitCode::SUCCESS);
    }
    // A dry run may have no namespace to ask; the cookie only filters sockets.
    let cookie = match ebpf::netns_cookie(&netns) {
        Ok(c) => c,
        Err(_) if dry_run => 0,
        Err(e) => return Err(e).context("reading the network namespace's cookie"),
    };
    let plan = match meshpass_capture::ebpf::compile_ebpf(cfg, cookie) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}; nothing was applied");
            return Ok(ExitCode::from(super::EXIT_INVALID));
        }
    };
    if dry_run {
        print!("{}", plan.listing());
        return Ok(ExitCode::SUCCESS);
    }
    if a.skip_rule_apply || truthy(env("SKIP_RULE_APPLY")) {
        return Ok(ExitCode::SUCCESS);
    }
    let cgroup = match a.cgroup.clone().or_else(|| env("MESHPASS_CGROUP")) {
        Some(c) => std::path::PathBuf::from(c),
        None => ebpf::cgroup2_root().context("finding the cgroup v2 root for the connect hooks")?,
    };
    ebpf::apply(&plan, &netns, &cgroup, &runner).context("applying eBPF capture failed")?;
    eprintln!("meshpass: eBPF capture applied ({netns}, connect hooks on {})", cgroup.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: Args,
    }

    #[test]
    fn flags_beat_environment() {
        let t = T::parse_from(["t", "-b", "*", "-d", "15090,15021", "--redirect-dns"]);
        let env = |k: &str| match k {
            "ISTIO_INBOUND_PORTS" => Some("80".to_string()),
            "ISTIO_SERVICE_CIDR" => Some("10.0.0.0/8".to_string()),
            "ISTIO_OUTBOUND_OWNER_GROUPS" => Some(String::new()),
            _ => None,
        };
        let args = to_istio_args(&t.a, &env);
        assert_eq!(args.include_inbound_ports.as_deref(), Some("*"));
        assert_eq!(args.include_ip_ranges.as_deref(), Some("10.0.0.0/8"));
        assert_eq!(args.owner_groups_include.as_deref(), Some(""));
        assert!(args.redirect_dns);
    }

    #[test]
    fn reads_nameservers() {
        assert_eq!(nameservers("# x\nnameserver 10.96.0.10\nsearch a\nnameserver ::1\n"), ["10.96.0.10", "::1"]);
    }
}
