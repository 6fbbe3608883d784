//! The mesh's network: a node namespace, one namespace per pod, routed veth pairs, and the
//! services' DNAT table — all through `ip` and `nft` run inside the namespaces, never in the
//! host's root namespace.
//!
//! Layout (defaults): the node namespace holds the gateway address 198.18.0.1/32 on `lo`, a
//! route for the service block via `lo` (so node-originated traffic to a ClusterIP has a route
//! and reaches the output NAT hook, which DNATs it and re-routes it to the pod; no dummy device
//! because container kernels often lack that module), and one /32 route per pod over the
//! pod's veth. A pod has its address on `eth0` and a default route via the gateway. There is no
//! uplink: nothing leaves the machine. Every packet between pods or from the node to a pod
//! crosses the node's netfilter, so the service DNAT (and its reverse on replies) always applies.

use crate::plan::services::ServiceNat;
use crate::MeshError;
use meshpass_capture::linux::{Netns, NetnsRunner, Runner};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The nftables table holding the services' DNAT in the node namespace.
pub const SERVICE_TABLE: &str = "meshpass-services";

/// The file of a named network namespace.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Runs `program args` in the current namespace while doing `what`; a command that cannot
/// run or exits non-zero is a [`MeshError::Command`] carrying its stderr.
pub fn run(what: impl Into<String>, program: &str, args: &[&str]) -> Result<String, MeshError> {
    NetnsRunner::new(Netns::Current)
        .check(program, args, None)
        .map(|out| out.stdout)
        .map_err(|source| MeshError::Command { what: what.into(), source })
}

/// Runs `ip -n NETNS args…` while doing `what`.
fn ip_in(what: &str, netns: &str, args: &[&str]) -> Result<String, MeshError> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    run(what, "ip", &all)
}

/// Runs `f` on a thread that has entered the network namespace at `path` (see
/// [`meshpass_capture::linux::in_netns`]).
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, MeshError> {
    meshpass_capture::linux::in_netns(&Netns::Path(path.to_path_buf()), f)
        .map_err(|source| MeshError::Netns { path: path.to_path_buf(), source })
}

/// Names of the existing network namespaces that start with `prefix`.
pub fn list_netns(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else { return Vec::new() };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// PIDs of the processes living in the named namespace.
pub fn netns_pids(name: &str) -> Vec<i32> {
    run("listing the processes of a namespace", "ip", &["netns", "pids", name])
        .map(|out| out.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Deletes a named namespace (its veth ends go with it). Missing is fine.
pub fn netns_del(name: &str) -> Result<(), MeshError> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    run(format!("removing network namespace {name}"), "ip", &["netns", "del", name]).map(|_| ())
}

/// Creates the node namespace: gateway address, service route, forwarding on.
pub fn create_node(name: &str, gateway: Ipv4Addr, service_cidr: &str) -> Result<(), MeshError> {
    let what = format!("creating the node namespace {name}");
    run(&what, "ip", &["netns", "add", name])?;
    let gw = format!("{gateway}/32");
    let gws = gateway.to_string();
    ip_in(&what, name, &["link", "set", "lo", "up"])?;
    ip_in(&what, name, &["addr", "add", &gw, "dev", "lo"])?;
    ip_in(&what, name, &["route", "add", service_cidr, "dev", "lo", "src", &gws])?;
    // /proc/sys/net is per network namespace of the *thread* that opens it.
    in_netns(&netns_path(name), || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(MeshError::io("cannot enable forwarding", "/proc/sys/net/ipv4/ip_forward"))
    })??;
    Ok(())
}

/// Creates a pod namespace wired to the node with a routed veth pair.
pub fn create_pod(node: &str, pod: &str, veth: &str, ip: Ipv4Addr, gateway: Ipv4Addr) -> Result<(), MeshError> {
    let what = format!("creating pod namespace {pod}");
    run(&what, "ip", &["netns", "add", pod])?;
    let result = (|| {
        let wire = format!("wiring pod namespace {pod} to {node} ({veth}, {ip})");
        let (ip32, ips, gws) = (format!("{ip}/32"), ip.to_string(), gateway.to_string());
        ip_in(&wire, node, &["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod])?;
        ip_in(&wire, node, &["link", "set", veth, "up"])?;
        ip_in(&wire, node, &["route", "add", &ip32, "dev", veth, "src", &gws])?;
        ip_in(&wire, pod, &["link", "set", "lo", "up"])?;
        ip_in(&wire, pod, &["addr", "add", &ip32, "dev", "eth0"])?;
        ip_in(&wire, pod, &["link", "set", "eth0", "up"])?;
        ip_in(&wire, pod, &["route", "add", &gws, "dev", "eth0", "scope", "link"])?;
        ip_in(&wire, pod, &["route", "add", "default", "via", &gws, "dev", "eth0", "src", &ips])?;
        Ok(())
    })();
    if result.is_err() {
        // Leave nothing half-made behind.
        let _ = netns_del(pod);
    }
    result
}

/// Renders the whole services table as one `nft -f` transaction that replaces the previous
/// one atomically: a connection is DNATed by either the old or the new table, never neither.
/// Established connections keep their conntrack mapping. A service without ready endpoints
/// rejects with a TCP reset rather than letting clients hang.
pub fn render_services(services: &[ServiceNat]) -> String {
    let t = SERVICE_TABLE;
    let mut dispatch = String::new();
    let mut chains = String::new();
    let mut reject = String::new();
    for (i, s) in services.iter().enumerate() {
        for &(port, target) in &s.ports {
            if s.endpoints.is_empty() {
                reject.push_str(&format!("\t\tip daddr {} tcp dport {port} reject with tcp reset\n", s.cluster_ip));
                continue;
            }
            let chain = format!("svc-{i}-{port}");
            dispatch.push_str(&format!("\t\tip daddr {} tcp dport {port} jump {chain}\n", s.cluster_ip));
            if s.endpoints.len() == 1 {
                chains.push_str(&format!(
                    "\tchain {chain} {{\n\t\tmeta l4proto tcp dnat to {}:{target}\n\t}}\n",
                    s.endpoints[0]
                ));
                continue;
            }
            let arms: Vec<String> = (0..s.endpoints.len()).map(|e| format!("{e} : jump {chain}-ep{e}")).collect();
            chains.push_str(&format!(
                "\tchain {chain} {{\n\t\tnumgen random mod {} vmap {{ {} }}\n\t}}\n",
                s.endpoints.len(),
                arms.join(", ")
            ));
            for (e, ep) in s.endpoints.iter().enumerate() {
                chains
                    .push_str(&format!("\tchain {chain}-ep{e} {{\n\t\tmeta l4proto tcp dnat to {ep}:{target}\n\t}}\n"));
            }
        }
    }
    format!(
        "table ip {t} {{}}\ndelete table ip {t}\ntable ip {t} {{\n\
         \tchain prerouting {{\n\t\ttype nat hook prerouting priority -100; policy accept;\n\t\tjump services\n\t}}\n\
         \tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}}\n\
         \tchain services {{\n{dispatch}\t}}\n{chains}\
         \tchain reject-out {{\n\t\ttype filter hook output priority 0; policy accept;\n{reject}\t}}\n\
         \tchain reject-fwd {{\n\t\ttype filter hook forward priority 0; policy accept;\n{reject}\t}}\n}}\n"
    )
}

/// Applies the services table in the node namespace.
pub fn apply_services(node: &str, services: &[ServiceNat]) -> Result<(), MeshError> {
    let text = render_services(services);
    let runner = NetnsRunner::new(Netns::Named(node.to_string()));
    runner
        .check("nft", &["-f", "-"], Some(&text))
        .map(|_| ())
        .map_err(|source| MeshError::Command { what: format!("writing the services table in {node}"), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_random_choice_over_ready_endpoints_and_rejects_empty_services() {
        let text = render_services(&[
            ServiceNat {
                cluster_ip: Ipv4Addr::new(198, 19, 0, 1),
                ports: vec![(5000, 5000)],
                endpoints: vec![Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 3)],
            },
            ServiceNat { cluster_ip: Ipv4Addr::new(198, 19, 0, 2), ports: vec![(80, 8080)], endpoints: vec![] },
            ServiceNat {
                cluster_ip: Ipv4Addr::new(198, 19, 0, 3),
                ports: vec![(80, 8080)],
                endpoints: vec![Ipv4Addr::new(198, 18, 0, 9)],
            },
        ]);
        assert!(text.starts_with("table ip meshpass-services {}\ndelete table ip meshpass-services\n"), "{text}");
        assert!(text.contains("ip daddr 198.19.0.1 tcp dport 5000 jump svc-0-5000"), "{text}");
        assert!(text.contains("numgen random mod 2 vmap { 0 : jump svc-0-5000-ep0, 1 : jump svc-0-5000-ep1 }"));
        assert!(text.contains("dnat to 198.18.0.3:5000"));
        assert!(text.contains("ip daddr 198.19.0.2 tcp dport 80 reject with tcp reset"));
        assert!(text.contains("dnat to 198.18.0.9:8080"));
        assert!(text.contains("type nat hook prerouting") && text.contains("type nat hook output"));
    }
}
