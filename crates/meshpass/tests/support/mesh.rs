//! The local mesh under test: `meshpass up` as a child process with its own state directory,
//! namespace prefix and address blocks, torn down by `Drop` even when an assertion fails.
#![allow(dead_code)]

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_meshpass");

/// Owns the supervisor child and the state directory.
pub(crate) struct Mesh {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub prefix: String,
    pub pod_cidr: &'static str,
    pub svc_cidr: &'static str,
    pub sample: bool,
    /// More `meshpass up` flags.
    pub up_args: Vec<&'static str>,
    /// `--drain-seconds`.
    pub drain_seconds: &'static str,
}

impl Mesh {
    /// A mesh (not started) with its own prefix and address blocks.
    pub(crate) fn new(prefix: &str, pod_cidr: &'static str, svc_cidr: &'static str, sample: bool) -> Result<Self> {
        Ok(Mesh {
            dir: tempfile::tempdir()?,
            child: None,
            prefix: prefix.to_string(),
            pod_cidr,
            svc_cidr,
            sample,
            up_args: Vec::new(),
            drain_seconds: "2",
        })
    }

    pub(crate) fn state(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `meshpass up` and waits for its control socket.
    pub(crate) fn up(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.state().join("up.log"))?;
        self.up_with(Stdio::from(log.try_clone()?), Stdio::from(log))
    }

    /// Starts `meshpass up` with its stdout and stderr where the caller says, in a process
    /// group of its own (as a shell's job: a signal to the group does not reach the test), and
    /// waits for its control socket.
    pub(crate) fn up_with(&mut self, stdout: Stdio, stderr: Stdio) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let _ = std::fs::remove_file(self.state().join("control.sock"));
        let mut cmd = Command::new(BIN);
        // A free port per mesh: tests run meshes side by side.
        cmd.args([
            "up",
            "--drain-seconds",
            self.drain_seconds,
            "--netns-prefix",
            &self.prefix,
            "--api-listen",
            "127.0.0.1:0",
        ]);
        if !self.sample {
            cmd.arg("--no-sample");
        }
        cmd.args(&self.up_args);
        let child = cmd
            .args(["--pod-cidr", self.pod_cidr, "--service-cidr", self.svc_cidr, "--state-dir"])
            .arg(self.state())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.state().join("control.sock").exists() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("supervisor exited ({status}): {}", self.log());
            }
            if Instant::now() > deadline {
                bail!("supervisor did not start: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// What the supervisor printed, when it printed to `up.log`.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.state().join("up.log")).unwrap_or_default()
    }

    /// Runs `meshpass ARGS --state-dir DIR`.
    pub(crate) fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(Command::new(BIN).args(args).arg("--state-dir").arg(self.state()).output()?)
    }

    /// Runs the CLI and returns stdout, failing with stderr on a non-zero exit.
    pub(crate) fn cli_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!("meshpass {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `meshpass exec --node -- curl ARGS URL`: the output (headers included with -i/-I).
    pub(crate) fn curl_from_node(&self, curl_args: &[&str], url: &str) -> Result<String> {
        let out = Command::new(BIN)
            .args(["exec", "--node", "--state-dir"])
            .arg(self.state())
            .args(["--", "curl", "-sS", "--max-time", "5"])
            .args(curl_args)
            .arg(url)
            .output()?;
        if !out.status.success() {
            bail!("curl {url} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The ClusterIP of service `name` (`meshpass get svc -o json`).
    pub(crate) fn service_ip(&self, name: &str) -> Result<String> {
        let svcs: serde_json::Value = serde_json::from_str(&self.cli_ok(&["get", "svc", "-o", "json"])?)?;
        svcs.as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name))
            .and_then(|s| s["cluster_ip"].as_str())
            .map(str::to_string)
            .with_context(|| format!("service {name} in {svcs}"))
    }

    /// The management plane's URL and token, once it listens.
    pub(crate) fn api(&self) -> Result<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let url = std::fs::read_to_string(self.state().join("api-address"));
            let token = std::fs::read_to_string(self.state().join("api-token"));
            if let (Ok(u), Ok(t)) = (url, token) {
                return Ok((u.trim().to_string(), t.trim().to_string()));
            }
            if Instant::now() > deadline {
                bail!("the management plane did not start: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn client(&self) -> Result<meshpass_mesh::Client> {
        Ok(meshpass_mesh::Client::connect(self.state())?)
    }

    /// Waits until every pod of the workload is ready and none is pending restart.
    pub(crate) fn wait_ready(&self, ns: &str, name: &str) -> Result<()> {
        let client = self.client()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let w = client.workloads(Some(ns))?;
            if w.iter().any(|w| w.name == name && w.ready == w.total && w.total > 0) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{ns}/{name} not ready: {w:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Namespaces with this mesh's prefix, and processes running samples from this binary
    /// with this test's state directory in their environment are not visible; count the
    /// sample processes started from this binary instead.
    pub(crate) fn residue(&self, sample_marker: &str) -> (Vec<String>, usize) {
        let netns: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&self.prefix))
                    .collect()
            })
            .unwrap_or_default();
        let procs = std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                    .filter(|c| {
                        let c = String::from_utf8_lossy(c);
                        c.contains(BIN) && c.contains(sample_marker)
                    })
                    .count()
            })
            .unwrap_or(0);
        (netns, procs)
    }

    /// A steady request loop from the node (`curl -f`); returns (successes, failures) once
    /// `stop` is set.
    pub(crate) fn request_loop(
        &self,
        url: String,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<(u32, Vec<String>)> {
        let state = self.state().to_path_buf();
        std::thread::spawn(move || {
            let (mut ok, mut failures) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let out = Command::new(BIN)
                    .args(["exec", "--node", "--state-dir"])
                    .arg(&state)
                    .args(["--", "curl", "-sS", "-f", "-o", "/dev/null", "--max-time", "5", &url])
                    .output();
                match out {
                    Ok(o) if o.status.success() => ok += 1,
                    Ok(o) => failures.push(String::from_utf8_lossy(&o.stderr).into_owned()),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (ok, failures)
        })
    }

    /// A steady request loop from inside pod `pod` of `ns` (through its sidecar), one new
    /// connection per request; returns (successes, failures) once `stop` is set.
    pub(crate) fn pod_request_loop(
        &self,
        pod: &str,
        ns: &str,
        url: String,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<(u32, Vec<String>)> {
        let (state, pod, ns) = (self.state().to_path_buf(), pod.to_string(), ns.to_string());
        std::thread::spawn(move || {
            let (mut ok, mut failures) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // curl keeps one connection for its URLs: ten requests per process, each on its own.
                let mut cmd = Command::new(BIN);
                cmd.args(["exec", &pod, "-n", &ns, "--state-dir"]).arg(&state).args([
                    "--",
                    "curl",
                    "-sS",
                    "-f",
                    "--max-time",
                    "5",
                ]);
                for i in 0..10 {
                    if i > 0 {
                        cmd.arg("--next").args(["-sS", "-f", "--max-time", "5"]);
                    }
                    cmd.args(["-o", "/dev/null", "-H", "Connection: close", &url]);
                }
                match cmd.output() {
                    Ok(o) if o.status.success() => ok += 10,
                    Ok(o) => failures.push(String::from_utf8_lossy(&o.stderr).into_owned()),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (ok, failures)
        })
    }

    /// Kills the supervisor with SIGKILL (a crash).
    pub(crate) fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().context("no supervisor")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = Command::new(BIN).arg("down").arg("--state-dir").arg(self.dir.path()).output();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
