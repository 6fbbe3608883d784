//! Benchmark (not a test) of what `/metrics` and `GET /api/v1/workloads` cost with many
//! workloads: the real server (router, listener, shared state) on 127.0.0.1:0 over the test
//! double with `WORKLOADS` meshed workloads, whose backend calls take `LIST_MS` (the workload
//! list) and `COUNTER_MS` (one workload's rule counters, as the local mesh reads one pod's
//! network namespace) — the costs a real backend has, modelled, not measured here.
//!
//! Three configurations, interleaved in each of `REPS` repetitions so that ratios come from one
//! run on a shared machine:
//! * `every-scrape-sequential`: every scrape collects, counters read one workload at a time;
//! * `every-scrape`: every scrape collects, counters read [`COUNTER_READS`] at a time;
//! * `shared` (the server's defaults): figures collected at most every 2 s and the workload
//!   list shared for 1 s.
//!
//! For each: the latency of `SEQ` sequential requests of each endpoint (one client, a scraper's
//! view), and `CLIENTS` clients requesting `/metrics` for `DURATION` seconds (answers per second
//! and backend calls per answer). Prints a table; writes `results.json` to
//! `BENCH_RESULTS_DIR` when set. Run through `bench/api/run.sh`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use meshpass_api::fake::{FakeBackend, FakeCall};
use meshpass_api::metrics::COUNTER_READS;
use meshpass_api::model::{ServiceInfo, ServicePort, WorkloadRef};
use meshpass_api::server::{Reuse, Server, ServerConfig};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-token-0123456789abcdef";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn get(addr: SocketAddr, path: &str) -> (u16, usize) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.len())
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

struct Mode {
    name: &'static str,
    reuse: Reuse,
}

fn main() {
    let workloads = env_num("WORKLOADS", 200);
    let list_ms = env_num("LIST_MS", 20);
    let counter_ms = env_num("COUNTER_MS", 2);
    let reps = env_num("REPS", 3);
    let seq = env_num("SEQ", 30) as usize;
    let clients = env_num("CLIENTS", 4) as usize;
    let duration = Duration::from_secs(env_num("DURATION", 5));
    let modes = [
        Mode {
            name: "every-scrape-sequential",
            reuse: Reuse { list_ttl: Duration::ZERO, metrics_interval: Duration::ZERO, counter_reads: 1 },
        },
        Mode {
            name: "every-scrape",
            reuse: Reuse { list_ttl: Duration::ZERO, metrics_interval: Duration::ZERO, counter_reads: COUNTER_READS },
        },
        Mode { name: "shared", reuse: Reuse::default() },
    ];
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut rows = Vec::new();
    println!(
        "workloads={workloads} list_ms={list_ms} counter_ms={counter_ms} reps={reps} seq={seq} clients={clients} \
         duration={}s",
        duration.as_secs()
    );
    println!(
        "{:<24} {:>3} {:>12} {:>12} {:>14} {:>14} {:>12} {:>16}",
        "mode",
        "rep",
        "metrics_p50",
        "metrics_p90",
        "workloads_p50",
        "workloads_p90",
        "metrics_rps",
        "backend_calls/rq"
    );
    for rep in 0..reps {
        for mode in &modes {
            let fake = Arc::new(FakeBackend::new());
            for i in 0..workloads {
                fake.add(
                    WorkloadRef::new(format!("ns-{}", i % 10), format!("app-{i}")),
                    true,
                    vec![ServiceInfo {
                        name: format!("app-{i}"),
                        cluster_ip: Some(format!("198.19.{}.{}", i / 250, i % 250 + 1)),
                        ports: vec![ServicePort { port: 8080, target_port: 8080 }],
                    }],
                    Default::default(),
                );
            }
            fake.set_delay(FakeCall::List, Duration::from_millis(list_ms));
            fake.set_delay(FakeCall::RuleCounters, Duration::from_millis(counter_ms));
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
            cfg.token = Some(TOKEN.into());
            cfg.reuse = mode.reuse;
            let server = rt.block_on(Server::bind(&cfg, fake.clone())).unwrap();
            let addr = server.started().addr;
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let served = rt.spawn(server.run(async move {
                let _ = stop_rx.await;
            }));
            let lat = |path: &str| {
                let mut v: Vec<f64> = (0..seq)
                    .map(|_| {
                        let t = Instant::now();
                        let (status, _) = get(addr, path);
                        assert_eq!(status, 200, "{path}");
                        t.elapsed().as_secs_f64() * 1000.0
                    })
                    .collect();
                v.sort_by(|a, b| a.total_cmp(b));
                (quantile(&v, 0.5), quantile(&v, 0.9))
            };
            let (m50, m90) = lat("/metrics");
            let (w50, w90) = lat("/api/v1/workloads");
            let calls_before = fake.calls(FakeCall::List) + fake.calls(FakeCall::RuleCounters);
            let deadline = Instant::now() + duration;
            let answered: usize = std::thread::scope(|s| {
                let hs: Vec<_> = (0..clients)
                    .map(|_| {
                        s.spawn(move || {
                            let mut n = 0;
                            while Instant::now() < deadline {
                                assert_eq!(get(addr, "/metrics").0, 200);
                                n += 1;
                            }
                            n
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).sum()
            });
            let calls = fake.calls(FakeCall::List) + fake.calls(FakeCall::RuleCounters) - calls_before;
            let rps = answered as f64 / duration.as_secs_f64();
            let per = calls as f64 / answered.max(1) as f64;
            println!(
                "{:<24} {:>3} {:>10.2}ms {:>10.2}ms {:>12.2}ms {:>12.2}ms {:>12.1} {:>16.2}",
                mode.name, rep, m50, m90, w50, w90, rps, per
            );
            rows.push(serde_json::json!({
                "mode": mode.name, "rep": rep,
                "metrics_ms_p50": m50, "metrics_ms_p90": m90,
                "workloads_ms_p50": w50, "workloads_ms_p90": w90,
                "metrics_answers_per_s": rps, "backend_calls_per_answer": per,
                "answers": answered, "backend_calls": calls,
            }));
            let _ = stop_tx.send(());
            rt.block_on(served).unwrap().unwrap();
        }
    }
    // Ratios within each repetition, then their range.
    let pick = |rep: u64, mode: &str, key: &str| -> f64 {
        rows.iter().find(|r| r["rep"] == rep && r["mode"] == mode).and_then(|r| r[key].as_f64()).unwrap()
    };
    let mut ratios = serde_json::Map::new();
    for (name, num, den, key) in [
        (
            "metrics_p50 every-scrape-sequential / every-scrape",
            "every-scrape-sequential",
            "every-scrape",
            "metrics_ms_p50",
        ),
        ("metrics_p50 every-scrape / shared", "every-scrape", "shared", "metrics_ms_p50"),
        ("workloads_p50 every-scrape / shared", "every-scrape", "shared", "workloads_ms_p50"),
        ("metrics_answers_per_s shared / every-scrape", "shared", "every-scrape", "metrics_answers_per_s"),
    ] {
        let mut v: Vec<f64> = (0..reps).map(|r| pick(r, num, key) / pick(r, den, key)).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        println!("ratio {name}: median {:.2} (range {:.2}-{:.2})", quantile(&v, 0.5), v[0], v[v.len() - 1]);
        ratios.insert(
            name.into(),
            serde_json::json!({ "median": quantile(&v, 0.5), "min": v[0], "max": v[v.len() - 1] }),
        );
    }
    if let Ok(dir) = std::env::var("BENCH_RESULTS_DIR") {
        let doc = serde_json::json!({
            "params": { "workloads": workloads, "list_ms": list_ms, "counter_ms": counter_ms, "reps": reps,
                        "seq": seq, "clients": clients, "duration_s": duration.as_secs(), "counter_reads": COUNTER_READS },
            "rows": rows, "ratios": ratios,
        });
        std::fs::write(format!("{dir}/results.json"), serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    }
}
