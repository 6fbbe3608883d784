//! Privileged test of the mesh's network layer without any supervisor: a node namespace, two
//! routed pods, the services DNAT table (node-originated and pod-originated traffic both
//! DNATed, replies un-NATed), an atomic endpoint switch, and `sweep` leaving nothing behind.
//!
//! Needs root: `#[ignore = "needs root"]`, run as root by `scripts/test` (`--include-ignored`).
//! Its namespaces carry the test's prefix and own addresses; the guard sweeps them on drop.

use meshpass_mesh::effect::net;
use meshpass_mesh::plan::services::ServiceNat;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

fn serve_once_in(netns: &str, port: u16, answer: &'static str) -> anyhow::Result<()> {
    let listener = net::in_netns(&net::netns_path(netns), move || TcpListener::bind(("0.0.0.0", port)))??;
    std::thread::spawn(move || {
        for mut c in listener.incoming().take(4).flatten() {
            let _ = c.write_all(answer.as_bytes());
        }
    });
    Ok(())
}

fn fetch_in(netns: &str, to: SocketAddr) -> anyhow::Result<String> {
    Ok(net::in_netns(&net::netns_path(netns), move || -> std::io::Result<String> {
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    })??)
}

meshpass_test_support::namespaced_test! {
    fn routed_pods_and_service_dnat_from_node_and_pod(namespaces) -> anyhow::Result<()> {
        let state = tempfile::tempdir()?;
        let prefix = namespaces.prefix();
        let (node, a, b) = (format!("{prefix}node"), format!("{prefix}a"), format!("{prefix}b"));
        let gw = Ipv4Addr::new(198, 18, 65, 1);
        let (ip_a, ip_b) = (Ipv4Addr::new(198, 18, 65, 2), Ipv4Addr::new(198, 18, 65, 3));
        let vip = Ipv4Addr::new(198, 19, 65, 1);
        net::create_node(&node, gw, "198.19.65.0/24")?;
        net::create_pod(&node, &a, "mpt1", ip_a, gw)?;
        net::create_pod(&node, &b, "mpt2", ip_b, gw)?;
        serve_once_in(&a, 7000, "from-a")?;
        serve_once_in(&b, 7000, "from-b")?;

        let svc = |eps: Vec<Ipv4Addr>| vec![ServiceNat { cluster_ip: vip, ports: vec![(80, 7000)], endpoints: eps }];
        net::apply_services(&node, &svc(vec![ip_a]))?;
        let to = SocketAddr::from((vip, 80));
        assert_eq!(fetch_in(&node, to)?, "from-a", "node -> ClusterIP");
        assert_eq!(fetch_in(&b, to)?, "from-a", "pod b -> ClusterIP -> pod a");
        // The switch is one transaction: the next connection goes to the new endpoint.
        net::apply_services(&node, &svc(vec![ip_b]))?;
        assert_eq!(fetch_in(&a, to)?, "from-b", "pod a -> ClusterIP -> pod b");
        // No endpoints: refused at once, not a hang.
        net::apply_services(&node, &svc(vec![]))?;
        assert!(fetch_in(&node, to).is_err());

        let removed = meshpass_mesh::effect::sweep::sweep(state.path(), prefix)?;
        assert_eq!(removed.iter().filter(|l| l.contains("removed network namespace")).count(), 3, "{removed:?}");
        assert!(net::list_netns(prefix).is_empty());
        Ok(())
    }
}
