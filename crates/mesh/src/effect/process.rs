//! Processes in pod namespaces: spawned from a thread that entered the namespace (a child
//! inherits its parent thread's network namespace), as a given UID/GID, in a process group of
//! their own (so a signal reaches whatever they fork), output appended to a log file, and a
//! pidfile that identifies them by PID *and* start time, so a reused PID is never killed.

use super::net::in_netns;
use crate::stop::Stop;
use crate::MeshError;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How to start one process.
#[derive(Clone, Debug)]
pub struct ProcSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment (on top of a minimal PATH/HOME).
    pub env: Vec<(String, String)>,
    /// UID and GID to run as.
    pub uid: u32,
    /// GID.
    pub gid: u32,
    /// Where stdout and stderr go (appended).
    pub log: PathBuf,
    /// The network namespace file.
    pub netns: PathBuf,
}

/// Starts `spec`.
pub fn spawn(spec: &ProcSpec) -> Result<Child, MeshError> {
    let Some((program, args)) = spec.argv.split_first() else {
        return Err(MeshError::Invalid(vec!["empty command".into()]));
    };
    if let Some(dir) = spec.log.parent() {
        std::fs::create_dir_all(dir).map_err(MeshError::io("cannot create log directory", dir))?;
    }
    let open_log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(MeshError::io("cannot open log", &spec.log))
    };
    let (out, err) = (open_log()?, open_log()?);
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/tmp")
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .uid(spec.uid)
        .gid(spec.gid)
        .current_dir("/")
        .process_group(0);
    in_netns(&spec.netns, move || cmd.spawn())?.map_err(MeshError::io("cannot start", program))
}

/// The start time of `pid` (clock ticks since boot, field 22 of /proc/PID/stat).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Writes `pid start_time` to `path`.
pub fn write_pidfile(path: &Path, pid: i32) -> Result<(), MeshError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(MeshError::io("cannot create", dir))?;
    }
    let st = start_time(pid).unwrap_or(0);
    std::fs::write(path, format!("{pid} {st}\n")).map_err(MeshError::io("cannot write pidfile", path))
}

/// The PID recorded in `path` if that very process (same start time) is still alive.
pub fn live_pid(path: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace();
    let pid: i32 = it.next()?.parse().ok()?;
    let st: u64 = it.next()?.parse().ok()?;
    (pid > 1 && start_time(pid) == Some(st)).then_some(pid)
}

/// Sends `sig` to the process group led by `pid` (falls back to the process alone).
pub fn signal_group(pid: i32, sig: Signal) {
    let p = Pid::from_raw(pid);
    if killpg(p, sig).is_err() {
        let _ = nix::sys::signal::kill(p, sig);
    }
}

/// SIGTERM to the child's process group, wait up to `grace` for it to exit (less once `stop`
/// is hurried), then SIGKILL to the group; reaps the child.
pub fn terminate(child: &mut Child, grace: Duration, stop: &Stop) {
    let Ok(pid) = i32::try_from(child.id()) else { return };
    if matches!(child.try_wait(), Ok(Some(_))) {
        // The leader is gone but its group may not be.
        signal_group(pid, Signal::SIGKILL);
        return;
    }
    signal_group(pid, Signal::SIGTERM);
    stop.wait_until(grace, || matches!(child.try_wait(), Ok(Some(_))));
    signal_group(pid, Signal::SIGKILL);
    let _ = child.wait();
}

/// Kills (TERM, then KILL after `grace`, or at once when `stop` is hurried) processes that are
/// not our children (found through pidfiles or `ip netns pids`), waiting until they are gone.
pub fn kill_pids(pids: &[i32], grace: Duration, stop: &Stop) {
    let alive = |pid: i32| Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid);
    for &pid in pids {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    stop.wait_until(grace, || !pids.iter().any(|&p| alive(p)));
    for &pid in pids {
        if alive(pid) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    // SIGKILL cannot be ignored: this wait is short even when hurried, and not cut.
    Stop::new().wait_until(Duration::from_secs(5), || !pids.iter().any(|&p| alive(p)));
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().starts_with('Z')))
        .unwrap_or(false)
}
