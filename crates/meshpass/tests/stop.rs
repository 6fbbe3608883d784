//! Stopping `meshpass up` is unconditional, whatever happens to its output: the supervisor
//! runs with stdout and stderr on one pipe, as in `meshpass up | tee up.log`, and
//!
//! - the pipe's reader exits (tee dies with the Ctrl-C), then SIGINT goes to the process group;
//! - the same with SIGTERM;
//! - a second SIGINT during the drain of a pod that ignores SIGTERM (drain set to 300 s)
//!   tears the mesh down without waiting for it;
//! - the pipe is full and nobody reads it, then SIGTERM.
//!
//! Each time the supervisor must exit, successfully, within a generous bound (a correctness
//! check: a supervisor that hangs or dies half-way fails it, however slow the machine), and
//! leave no network namespace, link or process behind.
//!
//! Needs root: `#[ignore = "needs root"]`, run as root by `scripts/test` (`--include-ignored`).

mod support;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Write};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use support::mesh::Mesh;

/// Far above a healthy teardown (seconds), far below the 300 s drain a second signal cuts.
const EXIT_BOUND: Duration = Duration::from_secs(90);

/// A meshed workload (app and sidecar) behind a Service, in Kubernetes namespace `ns`.
fn meshed(ns: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}, labels: {{istio-injection: enabled}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: hello, namespace: {ns}}}
spec:
  selector: {{app: hello}}
  ports: [{{name: http, port: 80, targetPort: 5000}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: hello, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: hello}}}}
  template:
    metadata: {{labels: {{app: hello}}}}
    spec:
      containers:
      - name: hello
        command: [meshpass, sample, helloworld, --port, "5000", --version, v1]
        ports: [{{containerPort: 5000}}]
"#
    )
}

/// A pod whose only process ignores SIGTERM: its drain lasts the whole drain period.
fn stubborn(ns: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: stubborn, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: stubborn}}}}
  template:
    metadata: {{labels: {{app: stubborn}}}}
    spec:
      containers:
      - name: stubborn
        command: [sh, -c, "trap '' TERM; while :; do sleep 1; done"]
"#
    )
}

/// One pipe for stdout and stderr (`2>&1 |`): its read end and the two write ends.
fn one_pipe() -> Result<(std::io::PipeReader, Stdio, Stdio)> {
    let (r, w) = std::io::pipe()?;
    let w2 = w.try_clone()?;
    Ok((r, Stdio::from(w), Stdio::from(w2)))
}

/// Applies `yaml` and waits until `ns/name` is ready.
fn deploy(mesh: &Mesh, yaml: &str, ns: &str, name: &str) -> Result<()> {
    let lines = mesh.client()?.apply(yaml, false)?;
    anyhow::ensure!(lines.iter().any(|l| l.contains("created")), "{lines:?}");
    mesh.wait_ready(ns, name)
}

fn signal_group(mesh: &Mesh, sig: Signal) -> Result<()> {
    let pid = mesh.child.as_ref().context("no supervisor")?.id();
    killpg(Pid::from_raw(i32::try_from(pid)?), sig)?;
    Ok(())
}

/// Waits up to [`EXIT_BOUND`] for the supervisor to exit.
fn wait_exit(mesh: &mut Mesh) -> Result<(ExitStatus, Duration)> {
    let started = Instant::now();
    let child = mesh.child.as_mut().context("no supervisor")?;
    loop {
        if let Some(status) = child.try_wait()? {
            mesh.child = None;
            return Ok((status, started.elapsed()));
        }
        if started.elapsed() > EXIT_BOUND {
            bail!("the supervisor did not exit within {EXIT_BOUND:?} of the signal");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// PIDs of processes started for pods of Kubernetes namespace `ns` (their environment says so).
fn pod_processes(ns: &str) -> Vec<i32> {
    let marker = format!("POD_NAMESPACE={ns}\0");
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/environ"))
                        .is_ok_and(|env| String::from_utf8_lossy(&env).contains(&marker))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Nothing of the mesh is left: namespaces with its prefix, links naming it, pod processes,
/// the control socket and pidfile.
fn assert_nothing_left(mesh: &Mesh, ns: &str) -> Result<()> {
    let (netns, _) = mesh.residue("");
    anyhow::ensure!(netns.is_empty(), "network namespaces left: {netns:?}");
    let links = std::process::Command::new("ip").args(["-o", "link"]).output()?;
    let links = String::from_utf8_lossy(&links.stdout);
    anyhow::ensure!(!links.contains(mesh.prefix.as_str()), "links left: {links}");
    let procs = pod_processes(ns);
    anyhow::ensure!(procs.is_empty(), "pod processes left: {procs:?}");
    for file in ["control.sock", "supervisor.pid"] {
        anyhow::ensure!(!mesh.state().join(file).exists(), "{file} left in the state directory");
    }
    Ok(())
}

/// `meshpass up 2>&1 | reader`: the reader takes the output until both pods of `ns` are
/// announced ready and then exits, as tee does on the Ctrl-C; then `sig` goes to the process
/// group.
fn reader_gone_then(sig: Signal, prefix: &str, pods: &'static str, svcs: &'static str, ns: &str) -> Result<()> {
    let mut mesh = Mesh::new(prefix, pods, svcs, false)?;
    let (r, out, err) = one_pipe()?;
    let ready = format!("pod {ns}/hello-");
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut pods_ready = 0;
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            pods_ready += usize::from(line.starts_with(&ready) && line.ends_with(" ready"));
            if pods_ready == 2 {
                break;
            }
        }
        // The read end closes here: every later write of the supervisor meets EPIPE.
        seen
    });
    mesh.up_with(out, err)?;
    deploy(&mesh, &meshed(ns), ns, "hello")?;
    let seen = reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))?;
    anyhow::ensure!(seen.contains("creating node namespace"), "the supervisor's output: {seen}");
    anyhow::ensure!(pod_processes(ns).len() >= 4, "two pods with app and sidecar each");
    signal_group(&mesh, sig)?;
    let (status, took) = wait_exit(&mut mesh)?;
    anyhow::ensure!(status.success(), "{sig} with the reader gone: the supervisor exited with {status} after {took:?}");
    assert_nothing_left(&mesh, ns)
}

meshpass_test_support::namespaced_test! {
    fn sigint_with_the_output_reader_gone_tears_everything_down(namespaces) -> Result<()> {
        reader_gone_then(Signal::SIGINT, namespaces.prefix(), "198.18.88.0/24", "198.19.88.0/24", "stop-int")
    }
}

meshpass_test_support::namespaced_test! {
    fn sigterm_with_the_output_reader_gone_tears_everything_down(namespaces) -> Result<()> {
        reader_gone_then(Signal::SIGTERM, namespaces.prefix(), "198.18.89.0/24", "198.19.89.0/24", "stop-term")
    }
}

meshpass_test_support::namespaced_test! {
    fn a_second_signal_cuts_the_drain_short(namespaces) -> Result<()> {
        let ns = "stop-twice";
        let mut mesh = Mesh::new(namespaces.prefix(), "198.18.90.0/24", "198.19.90.0/24", false)?;
        mesh.drain_seconds = "300";
        let (r, out, err) = one_pipe()?;
        mesh.up_with(out, err)?;
        drop(r);
        deploy(&mesh, &stubborn(ns), ns, "stubborn")?;
        let before = pod_processes(ns);
        anyhow::ensure!(!before.is_empty(), "the stubborn pod runs");
        signal_group(&mesh, Signal::SIGINT)?;
        // The pod ignores SIGTERM: the teardown is now draining it, for up to 300 s.
        std::thread::sleep(Duration::from_secs(2));
        let alive: Vec<i32> =
            before.iter().copied().filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists()).collect();
        anyhow::ensure!(!alive.is_empty(), "the stubborn pod should still be draining after the first signal");
        anyhow::ensure!(mesh.child.as_mut().context("supervisor")?.try_wait()?.is_none(), "exited before the drain ended");
        signal_group(&mesh, Signal::SIGINT)?;
        let (status, took) = wait_exit(&mut mesh)?;
        anyhow::ensure!(status.success(), "second SIGINT: the supervisor exited with {status} after {took:?}");
        assert_nothing_left(&mesh, ns)
    }
}

meshpass_test_support::namespaced_test! {
    fn a_full_output_pipe_nobody_reads_does_not_stall_the_mesh(namespaces) -> Result<()> {
        let ns = "stop-full";
        let mut mesh = Mesh::new(namespaces.prefix(), "198.18.91.0/24", "198.19.91.0/24", false)?;
        let (r, mut w) = std::io::pipe()?;
        // Fill the pipe to its capacity before the supervisor writes a byte: its first write blocks.
        let capacity = nix::fcntl::fcntl(std::os::fd::AsRawFd::as_raw_fd(&w), nix::fcntl::FcntlArg::F_GETPIPE_SZ)?;
        w.write_all(&vec![b'.'; usize::try_from(capacity)?])?;
        let w2 = w.try_clone()?;
        mesh.up_with(Stdio::from(w), Stdio::from(w2))?;
        deploy(&mesh, &meshed(ns), ns, "hello")?;
        signal_group(&mesh, Signal::SIGTERM)?;
        let (status, took) = wait_exit(&mut mesh)?;
        anyhow::ensure!(status.success(), "full pipe: the supervisor exited with {status} after {took:?}");
        drop(r);
        assert_nothing_left(&mesh, ns)
    }
}
