//! Readiness probes, run inside a pod's namespace: the sidecar's `/healthz/ready` on 15021
//! (meshed pods) and a TCP connect to each declared app port, all on loopback.

use super::net::{in_netns, netns_path};
use crate::plan::Probe;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Whether the pod of `probe` is ready; a pod whose containers have not settled is not.
pub fn ready(probe: &Probe) -> bool {
    if !probe.settled {
        return false;
    }
    in_netns(&netns_path(&probe.netns), || {
        let local = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        (!probe.sidecar || http_ok(local(15021), "/healthz/ready"))
            && probe.ports.iter().all(|&p| TcpStream::connect_timeout(&local(p), Duration::from_millis(300)).is_ok())
    })
    .unwrap_or(false)
}

/// True when `GET path` on `addr` answers 200.
fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.starts_with("HTTP/1.") && head.get(9..12) == Some("200")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PodKey;
    use std::net::TcpListener;

    #[test]
    fn http_ok_wants_a_200() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            for (i, c) in listener.incoming().take(2).enumerate() {
                let mut c = c.expect("conn");
                let mut buf = [0u8; 256];
                let _ = c.read(&mut buf);
                let status = if i == 0 { "200 OK" } else { "503 Service Unavailable" };
                let _ = c.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes());
            }
        });
        assert!(http_ok(addr, "/healthz/ready"));
        assert!(!http_ok(addr, "/healthz/ready"));
        server.join().expect("server");
    }

    #[test]
    fn a_pod_that_has_not_settled_is_not_ready_without_probing() {
        let p = Probe {
            pod: PodKey::new("a", "b"),
            netns: "does-not-exist".into(),
            sidecar: true,
            ports: vec![1],
            settled: false,
        };
        assert!(!ready(&p));
    }
}
