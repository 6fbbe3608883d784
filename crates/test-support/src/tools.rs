//! The external tools the end-to-end tests drive: the browser test (`e2e/passthrough.mjs`,
//! node + Debian's Chromium through playwright-core), the OpenAPI fuzzer
//! (`scripts/schemathesis`) and the manifest validator (`kubernetes-validate`). One copy of "is it installed" (skip outside CI, fail in CI) and of
//! "run it against this server, bounded in time, show its log".

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// True when nothing is missing; else skips (false, with a message) outside CI and panics in
/// CI, like [`shared_dir`](crate::shared_dir).
fn available(test: &str, missing: &[String]) -> bool {
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: cannot run, missing: {} (scripts/setup installs them)", missing.join(", "));
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set, so this is a failure, not a skip)");
    }
    eprintln!("SKIPPED {msg}");
    false
}

/// True when `node` runs (for the GUI's unit tests, which need no browser).
pub fn node_ready(test: &str) -> bool {
    let ok = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    available(test, &if ok { Vec::new() } else { vec!["node (apt-get install -y nodejs)".to_string()] })
}

/// Runs `node --test FILE` (a path under the repository root), bounded in time, its report
/// shown; `Err` when a test failed.
pub fn run_node_tests(file: &str) -> Result<(), String> {
    let mut cmd = Command::new("node");
    cmd.arg("--test").arg(file);
    run(&format!("node --test {file}"), cmd, Duration::from_secs(120)).map(|_| ())
}

/// True when the browser test can run: node, Chromium (`CHROMIUM`, default
/// `/usr/bin/chromium`) and `e2e/node_modules`.
pub fn browser_ready(test: &str) -> bool {
    let mut missing = Vec::new();
    if !Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()) {
        missing.push("node (apt-get install -y nodejs npm)".to_string());
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
    if !Path::new(&chromium).exists() {
        missing.push(format!("{chromium} (apt-get install -y chromium)"));
    }
    if !repo_root().join("e2e/node_modules/playwright-core").is_dir() {
        missing.push("e2e/node_modules (cd e2e && npm ci)".to_string());
    }
    available(test, &missing)
}

/// The schemathesis venv (`MESHPASS_VENV`, default `/opt/meshpass-venv`) when it is
/// installed; `None` after skipping (outside CI).
pub fn schemathesis_venv(test: &str) -> Option<PathBuf> {
    let venv = venv();
    let st = venv.join("bin/schemathesis");
    let missing = if st.exists() { Vec::new() } else { vec![format!("{} (scripts/setup)", st.display())] };
    available(test, &missing).then_some(venv)
}

/// `kubernetes-validate` in the venv (`MESHPASS_VENV`, default `/opt/meshpass-venv`, made by
/// `scripts/setup`) when it is installed; `None` after skipping (outside CI).
pub fn kubernetes_validate(test: &str) -> Option<PathBuf> {
    let kv = venv().join("bin/kubernetes-validate");
    let missing = if kv.exists() { Vec::new() } else { vec![format!("{} (scripts/setup)", kv.display())] };
    available(test, &missing).then_some(kv)
}

/// The Python venv of the test tools.
fn venv() -> PathBuf {
    std::env::var_os("MESHPASS_VENV")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/opt/meshpass-venv"), PathBuf::from)
}

/// `E2E_ARTIFACTS/sub`, else `<target>/e2e-artifacts/sub` for a test whose
/// `CARGO_TARGET_TMPDIR` is `target_tmpdir`; created.
pub fn artifacts_dir(target_tmpdir: &str, sub: &str) -> PathBuf {
    let base = match std::env::var_os("E2E_ARTIFACTS").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let tmp = Path::new(target_tmpdir);
            tmp.parent().unwrap_or(tmp).join("e2e-artifacts")
        }
    };
    let dir = if sub.is_empty() { base } else { base.join(sub) };
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Runs `cmd` (from the repository root) for at most `timeout`, killing it after that; prints
/// its output either way; `Err` names what failed.
fn run(what: &str, mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    let child = cmd
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out.map_err(|e| format!("{what}: {e}"))?,
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            return Err(format!("{what} did not finish within {timeout:?} (killed)"));
        }
    };
    println!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!("{what} failed ({}); its log is above", out.status))
    }
}

/// Runs the browser test `e2e/passthrough.mjs` (the seed's GUI steps on
/// `default/helloworld-v1`, port 5000) against the server at `url`, screenshots into
/// `artifacts`.
pub fn run_browser_flow(url: &str, token: &str, artifacts: &Path) -> Result<(), String> {
    run_browser_flow_with(url, token, artifacts, &[])
}

/// [`run_browser_flow`] with extra environment for the script (`E2E_MTLS_CLIENT=""` skips the
/// mutual-TLS impact step where the server cannot read Istio's policies).
pub fn run_browser_flow_with(url: &str, token: &str, artifacts: &Path, env: &[(&str, &str)]) -> Result<(), String> {
    let mut env = env.to_vec();
    env.extend([("E2E_WORKLOAD", "default/helloworld-v1"), ("E2E_PORT", "5000")]);
    run_browser_script("e2e/passthrough.mjs", url, token, artifacts, &env)
}

/// Runs the browser script `script` (a path under the repository root, such as
/// `e2e/fleet.mjs`) against the server at `url` with `env`, screenshots into `artifacts`.
pub fn run_browser_script(
    script: &str,
    url: &str,
    token: &str,
    artifacts: &Path,
    env: &[(&str, &str)],
) -> Result<(), String> {
    let mut cmd = Command::new("node");
    cmd.arg(script).env("MESHPASS_URL", url).env("MESHPASS_TOKEN", token).env("E2E_ARTIFACTS", artifacts);
    cmd.envs(env.iter().copied());
    let result = run(script, cmd, Duration::from_secs(600));
    println!("screenshots in {}", artifacts.display());
    result.map(|_| ())
}

/// Runs `scripts/schemathesis --no-install ARGS` against the server at `url` with at most
/// `max_examples` per operation and seed 1; JUnit reports into `reports`.
pub fn run_schemathesis(
    url: &str,
    token: &str,
    venv: &Path,
    reports: &Path,
    args: &[&str],
    max_examples: u32,
) -> Result<(), String> {
    let mut cmd = Command::new("bash");
    cmd.arg("scripts/schemathesis")
        .arg("--no-install")
        .args(args)
        .env("MESHPASS_URL", url)
        .env("MESHPASS_TOKEN", token)
        .env("MESHPASS_VENV", venv)
        .env("ST_MAX_EXAMPLES", std::env::var("ST_MAX_EXAMPLES").unwrap_or_else(|_| max_examples.to_string()))
        .env("ST_SEED", std::env::var("ST_SEED").unwrap_or_else(|_| "1".to_string()))
        .env("ST_REPORT_DIR", reports);
    run("scripts/schemathesis", cmd, Duration::from_secs(900)).map(|_| ())
}
