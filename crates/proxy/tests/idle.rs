//! 10,000 concurrent idle connections: the proxy stays up, serves a normal request meanwhile,
//! and afterwards has released every file descriptor and (allocator caching aside) the memory.
//!
//! Its own test binary on purpose: fd and RSS accounting of the whole process would be
//! disturbed by other tests running in parallel threads of the same binary.

// Test code: a panic is the failure report, also in helpers outside #[test] fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use meshpass_proxy::ProxyConfig;

/// Ask glibc to give freed heap memory back to the kernel. The only `unsafe` in the crate's
/// tests: `malloc_trim` has no preconditions, it just walks the allocator's free lists.
#[allow(unsafe_code)]
fn trim_allocator() {
    // SAFETY: plain FFI call without pointers or invariants to uphold.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Raise the soft RLIMIT_NOFILE as far as the hard limit allows; returns it.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    hard
}

const HOLD_ADDR_ENV: &str = "MESHPASS_TEST_HOLD_ADDR";
const HOLD_COUNT_ENV: &str = "MESHPASS_TEST_HOLD_COUNT";
const HOLD_BATCH: usize = 1000;

/// Not a test on its own: when re-executed by `ten_thousand_idle_connections` with
/// `MESHPASS_TEST_HOLD_ADDR` set, this opens the idle client connections in a *separate
/// process* (so client and proxy fds do not share one RLIMIT_NOFILE, whose hard limit may be
/// too low and not raisable in a sandbox), prints `HELD`, and holds them until stdin closes.
#[test]
fn helper_idle_client_holder() {
    let (Ok(addr), Ok(n)) = (std::env::var(HOLD_ADDR_ENV), std::env::var(HOLD_COUNT_ENV)) else {
        return;
    };
    raise_nofile();
    let n: usize = n.parse().unwrap();
    use std::io::{BufRead, Write};
    let mut stdin = std::io::stdin().lock();
    let mut conns = Vec::with_capacity(n);
    // Connect in batches, each released by the parent once the proxy accepted the previous
    // one: a tight loop would overflow the listen backlog (somaxconn) and stall in SYN retries.
    while conns.len() < n {
        for _ in 0..HOLD_BATCH.min(n - conns.len()) {
            conns.push(std::net::TcpStream::connect(&addr).unwrap());
        }
        println!("HELD {}", conns.len());
        std::io::stdout().flush().unwrap();
        let mut line = String::new();
        if stdin.read_line(&mut line).unwrap() == 0 {
            return;
        }
    }
    // Hold until stdin closes.
    let mut line = String::new();
    while stdin.read_line(&mut line).unwrap_or(0) > 0 {
        line.clear();
    }
    drop(conns);
}

/// Kills the holder child if the test fails midway.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections() {
    const N: usize = 10_000;
    let limit = raise_nofile();
    assert!(limit as usize > N + 1000, "RLIMIT_NOFILE hard limit {limit} too low");
    let up = Upstream::hello().await;
    let cfg = ProxyConfig {
        // Idle clients stay in the sniffing phase for the whole test.
        sniff_timeout: Duration::from_secs(120),
        ..test_config()
    };
    let p = start_proxy(cfg, up.addr).await;
    // Warm up (pool, runtime, allocator) before taking the baseline.
    for _ in 0..3 {
        assert_eq!(raw_request(p.addrs().inbound, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.status(), 200);
    }
    eventually("warm-up connections released", || p.active_connections() == 0).await;
    let fds_before = fd_count();
    let links_before: Vec<_> =
        std::fs::read_dir("/proc/self/fd").unwrap().filter_map(|e| std::fs::read_link(e.ok()?.path()).ok()).collect();
    let rss_before = rss_kib();

    let mut peaks = Vec::new();
    for round in 0..2 {
        // The idle clients live in a child process (this test binary, re-executed).
        let mut child = Child(
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "helper_idle_client_holder", "--nocapture", "--test-threads=1"])
                .env(HOLD_ADDR_ENV, p.addrs().inbound.to_string())
                .env(HOLD_COUNT_ENV, N.to_string())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let stdout = child.0.stdout.take().unwrap();
        let mut stdin = child.0.stdin.take().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may print "test name ... " on the same line first.
                if let Some((_, n)) = l.split_once("HELD ") {
                    let _ = tx.send(n.trim().parse().unwrap());
                }
            }
        });
        loop {
            let held = tokio::time::timeout(GUARD, rx.recv()).await.expect("holder progress").expect("holder alive");
            eventually("batch accepted", || p.active_connections() == held).await;
            if held == N {
                break;
            }
            use std::io::Write;
            stdin.write_all(b"next\n").unwrap();
            stdin.flush().unwrap();
        }
        let rss_peak = rss_kib();
        assert!(fd_count() >= fds_before + N, "the proxy holds one fd per idle connection");

        // The proxy still serves a normal request meanwhile.
        let r = raw_request(p.addrs().inbound, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text(), "hello");
        let metrics = p.shared().metrics.render();
        let active: usize = metrics
            .lines()
            .find_map(|l| l.strip_prefix("meshpass_proxy_active_connections{direction=\"inbound\"} "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(active >= N, "active gauge {active}");

        // Close the clients: the child exits when its stdin closes.
        drop(stdin);
        let status = tokio::task::spawn_blocking(move || {
            let st = child.0.wait();
            std::mem::forget(child);
            st
        })
        .await
        .unwrap()
        .unwrap();
        assert!(status.success());
        reader.join().unwrap();
        eventually("idle connections released", || p.active_connections() == 0).await;
        let settled = tokio::time::timeout(Duration::from_secs(20), async {
            while fd_count() > fds_before {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if settled.is_err() {
            let links: Vec<_> = std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .collect();
            panic!("fd leak: {} before, {} after: {links:?} before: {links_before:?}", fds_before, fd_count());
        }
        peaks.push(rss_peak);
        eprintln!("round {round}: RSS KiB before {rss_before}, with {N} idle {rss_peak}");
    }
    // The second round must reuse the memory the first one freed (no per-connection leak).
    let grew = peaks[0].saturating_sub(rss_before);
    assert!(peaks[1] <= peaks[0] + grew / 4, "second round grew RSS further: {peaks:?} (baseline {rss_before} KiB)");
    // glibc keeps freed heap pages mapped; once asked to return them, RSS must be near the
    // baseline again, i.e. the memory was really released, not leaked.
    trim_allocator();
    let rss_after = rss_kib();
    eprintln!("RSS KiB: baseline {rss_before}, peaks {peaks:?}, after trim {rss_after}");
    assert!(
        rss_after <= rss_before + grew / 4 + 4 * 1024,
        "RSS did not return near baseline: {rss_before} -> {peaks:?} -> {rss_after} KiB"
    );
    assert_eq!(up.seen.connections.load(Ordering::SeqCst), 1);
}
