//! Installing and removing eBPF capture ([`crate::ebpf`]) for one network namespace.
//!
//! Objects are pinned under `/sys/fs/bpf/meshpass/ns-<cookie>/` (the namespace's cookie, which
//! unlike its inode is never reused while the machine is up), so they outlive the command
//! that installed them and the sidecar can find its listener map from inside the namespace
//! without being told where: see [`pin_dir_for_current_netns`].
//!
//! Applying is all-or-nothing where it matters: every program is verified before anything is
//! attached, and a second apply swaps the programs behind the existing links in one step
//! (`BPF_LINK_UPDATE`), so there is no moment without capture.

use super::{in_netns, LinuxError, Netns, Runner};
use crate::ebpf::{
    Counter, EbpfPlan, EBPF_OUTBOUND_MARK, EBPF_ROUTE_TABLE, LISTENER_SLOTS, OUTBOUND_SOURCE_V4, OUTBOUND_SOURCE_V6,
};
use meshpass_bpf::{Link, LinkTarget, Map, MapKind, Prog, ProgKind};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where meshpass pins its objects.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf/meshpass";
/// The listener map's file in a namespace's pin directory.
pub const LISTENER_MAP: &str = "listeners";
/// The connection counters' file.
pub const COUNTERS_MAP: &str = "counters";
const LINKS: [&str; 3] = ["sk_lookup", "connect4", "connect6"];

fn file_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LinuxError + 'a {
    move |source| LinuxError::EbpfFile { what, path: path.to_owned(), source }
}

fn netns_file(netns: &Netns) -> PathBuf {
    netns.path().unwrap_or_else(|| PathBuf::from("/proc/self/ns/net"))
}

/// The pin directory of `netns`.
pub fn pin_dir(netns: &Netns) -> Result<PathBuf, LinuxError> {
    Ok(pin_dir_of_cookie(netns_cookie(netns)?))
}

fn pin_dir_of_cookie(cookie: u64) -> PathBuf {
    Path::new(BPFFS_ROOT).join(format!("ns-{cookie}"))
}

/// The pin directory of the namespace the calling thread is in: how the sidecar finds its
/// listener map.
pub fn pin_dir_for_current_netns() -> Result<PathBuf, LinuxError> {
    let path = Path::new("/proc/thread-self/ns/net");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").map_err(file_err("creating a socket in", path))?;
    let cookie = meshpass_bpf::netns_cookie(sock.as_fd()).map_err(file_err("reading SO_NETNS_COOKIE in", path))?;
    Ok(pin_dir_of_cookie(cookie))
}

/// The cookie `bpf_get_netns_cookie` returns for sockets of `netns`.
pub fn netns_cookie(netns: &Netns) -> Result<u64, LinuxError> {
    in_netns(netns, || {
        let sock =
            std::net::UdpSocket::bind("127.0.0.1:0").map_err(file_err("creating a socket in", &netns_file(netns)))?;
        meshpass_bpf::netns_cookie(sock.as_fd()).map_err(file_err("reading SO_NETNS_COOKIE in", &netns_file(netns)))
    })?
}

/// Mounts a bpf filesystem on /sys/fs/bpf if none is there.
fn ensure_bpffs() -> Result<(), LinuxError> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").map_err(file_err("reading", Path::new("/proc/self/mounts")))?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.split_whitespace().nth(2) == Some("bpf"))
    {
        return Ok(());
    }
    let out = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .output()
        .map_err(|source| LinuxError::Spawn { program: "mount".into(), source })?;
    if !out.status.success() {
        return Err(LinuxError::Failed {
            command: "mount -t bpf bpf /sys/fs/bpf".into(),
            netns: "the host".into(),
            status: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// The first cgroup v2 mount (the unified hierarchy), for callers that have no pod cgroup.
/// With none mounted (a cgroup v1-only host), one is mounted on `/run/meshpass/cgroup2`:
/// every process is in its root until someone moves it.
pub fn cgroup2_root() -> Result<PathBuf, LinuxError> {
    let mounts_path = Path::new("/proc/self/mounts");
    let mounts = std::fs::read_to_string(mounts_path).map_err(file_err("reading", mounts_path))?;
    if let Some(p) = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    }) {
        return Ok(p);
    }
    let dir = PathBuf::from("/run/meshpass/cgroup2");
    std::fs::create_dir_all(&dir).map_err(file_err("creating", &dir))?;
    let out = std::process::Command::new("mount")
        .args(["-t", "cgroup2", "none"])
        .arg(&dir)
        .output()
        .map_err(|source| LinuxError::Spawn { program: "mount".into(), source })?;
    if !out.status.success() {
        return Err(LinuxError::Failed {
            command: format!("mount -t cgroup2 none {}", dir.display()),
            netns: "the host".into(),
            status: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(dir)
}

fn families(ipv6: bool) -> &'static [&'static str] {
    if ipv6 {
        &["-4", "-6"]
    } else {
        &["-4"]
    }
}

fn routes(plan: &EbpfPlan, runner: &dyn Runner) -> Result<(), LinuxError> {
    let (mark, table) = (EBPF_OUTBOUND_MARK.to_string(), EBPF_ROUTE_TABLE.to_string());
    if plan.ipv6 {
        let addrs = runner.check("ip", &["-6", "addr", "show", "dev", "lo"], None)?.stdout;
        if !addrs.contains(&format!("inet6 {OUTBOUND_SOURCE_V6}/128")) {
            runner.check("ip", &["-6", "addr", "add", &format!("{OUTBOUND_SOURCE_V6}/128"), "dev", "lo"], None)?;
        }
    }
    for fam in families(plan.ipv6) {
        let rules = runner.check("ip", &[fam, "rule", "show"], None)?.stdout;
        if !rules.lines().any(|l| l.contains(&format!("lookup {table}"))) {
            runner.check("ip", &[fam, "rule", "add", "fwmark", &mark, "lookup", &table], None)?;
        }
        let (dst, src) = if *fam == "-4" {
            ("0.0.0.0/0".to_owned(), OUTBOUND_SOURCE_V4.to_string())
        } else {
            ("::/0".to_owned(), OUTBOUND_SOURCE_V6.to_string())
        };
        runner.check(
            "ip",
            &[fam, "route", "replace", "local", &dst, "dev", "lo", "table", &table, "src", &src],
            None,
        )?;
    }
    Ok(())
}

/// Installs (or replaces) eBPF capture for `netns`, with the connect hooks on `cgroup`.
/// `runner` must run in `netns` (it sets up the outbound route).
pub fn apply(plan: &EbpfPlan, netns: &Netns, cgroup: &Path, runner: &dyn Runner) -> Result<(), LinuxError> {
    ensure_bpffs()?;
    // The cookie (hence the directory) is looked up once: each lookup enters the namespace.
    let dir = pin_dir(netns)?;
    sweep_defunct(&dir);
    let fresh = !dir.join(LINKS[0]).exists();
    let result = install(plan, netns, &dir, cgroup, runner);
    if result.is_err() && fresh {
        // Nothing was there before: leave nothing behind (a replacement keeps the old
        // programs, whose links were never touched unless every program had verified).
        let _ = remove_at(&dir, runner);
    }
    result
}

fn install(plan: &EbpfPlan, netns: &Netns, dir: &Path, cgroup: &Path, runner: &dyn Runner) -> Result<(), LinuxError> {
    std::fs::create_dir_all(dir).map_err(file_err("creating", dir))?;
    let map_path = dir.join(LISTENER_MAP);
    let listeners = if map_path.exists() {
        Map::open_pinned(&map_path)?
    } else {
        let m = Map::create(MapKind::SockMap, 4, 8, LISTENER_SLOTS, "mp_listeners")?;
        m.pin(&map_path)?;
        m
    };
    let (uid, gid) = plan.proxy_owner;
    nix::unistd::chown(&map_path, Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)))
        .map_err(|e| LinuxError::EbpfFile {
            what: "handing the listener map to the sidecar:",
            path: map_path.clone(),
            source: e.into(),
        })?;
    // Counters survive a re-apply, as the netfilter backends' do.
    let counters_path = dir.join(COUNTERS_MAP);
    let counters = if counters_path.exists() {
        Map::open_pinned(&counters_path)?
    } else {
        let m = Map::create(MapKind::Array, 4, 8, Counter::ALL.len() as u32, "mp_counters")?;
        m.pin(&counters_path)?;
        m
    };
    // Verify every program before attaching anything.
    let progs = [
        Prog::load(ProgKind::SkLookup, &plan.sk_lookup, &[&listeners, &counters], "mp_sk_lookup")?,
        Prog::load(ProgKind::Connect4, &plan.connect4, &[&counters], "mp_connect4")?,
        Prog::load(ProgKind::Connect6, &plan.connect6, &[&counters], "mp_connect6")?,
    ];
    routes(plan, runner)?;
    let ns_path = netns_file(netns);
    let ns_file = File::open(&ns_path).map_err(file_err("opening", &ns_path))?;
    let cg_file = File::open(cgroup).map_err(file_err("opening the cgroup", cgroup))?;
    let cg_id = cg_file.metadata().map_err(file_err("reading", cgroup))?.ino();
    for (name, prog) in LINKS.iter().zip(&progs) {
        let path = dir.join(name);
        let sk_lookup = *name == "sk_lookup";
        let target = if sk_lookup { ns_file.as_fd() } else { cg_file.as_fd() };
        if !path.exists() {
            Link::attach(prog, target)?.pin(&path)?;
            continue;
        }
        let link = Link::open_pinned(&path)?;
        if sk_lookup || link.target()? == (LinkTarget::Cgroup { id: cg_id }) {
            link.update(prog)?;
        } else {
            // The connect hooks move to another cgroup: attach there first, then replace the
            // pin (a rename), which drops the old link. Both run for a moment; they agree.
            // (bpffs refuses names with a dot.)
            let fresh = dir.join(format!("{name}_new"));
            let _ = std::fs::remove_file(&fresh);
            Link::attach(prog, target)?.pin(&fresh)?;
            std::fs::rename(&fresh, &path).map_err(file_err("replacing", &path))?;
        }
    }
    Ok(())
}

/// Removes the pins of namespaces that no longer exist (deleted without `remove`): their
/// links are defunct, and only the pins keep the objects alive.
fn sweep_defunct(keep: &Path) {
    let Ok(entries) = std::fs::read_dir(BPFFS_ROOT) else { return };
    for e in entries.flatten() {
        let dir = e.path();
        if dir == keep || !e.file_name().to_string_lossy().starts_with("ns-") {
            continue;
        }
        let defunct = Link::open_pinned(&dir.join(LINKS[0]))
            .and_then(|l| l.target())
            .is_ok_and(|t| t == LinkTarget::Netns { ino: 0 });
        if defunct {
            tracing::info!(dir = %dir.display(), "removing eBPF capture of a namespace that is gone");
            let _ = remove_pins(&dir);
        }
    }
}

fn remove_pins(dir: &Path) -> Result<(), LinuxError> {
    // Every pin in the directory, including a `*_new` link left by an interrupted move.
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(file_err("reading", dir)(e)),
    };
    for e in entries.flatten() {
        let path = e.path();
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_err("removing", &path)(e)),
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(file_err("removing", dir)(e)),
    }
}

/// The connection counters of `netns`'s eBPF capture, by rule label (all zero-valued ones
/// included); `None` when eBPF capture is not installed there.
pub fn counters(netns: &Netns) -> Result<Option<Vec<(&'static str, u64)>>, LinuxError> {
    let path = pin_dir(netns)?.join(COUNTERS_MAP);
    if !path.exists() {
        return Ok(None);
    }
    let map = Map::open_pinned(&path)?;
    Counter::ALL
        .iter()
        .map(|c| {
            let mut v = [0u8; 8];
            map.lookup(&(*c as u32).to_ne_bytes(), &mut v)?;
            Ok((c.label(), u64::from_ne_bytes(v)))
        })
        .collect::<Result<_, LinuxError>>()
        .map(Some)
}

/// True when eBPF capture is installed for `netns`.
pub fn is_installed(netns: &Netns) -> Result<bool, LinuxError> {
    Ok(pin_dir(netns)?.join(LINKS[0]).exists())
}

/// Removes eBPF capture from `netns`: links (which detaches the programs), the listener map,
/// the route and `::7`. Idempotent.
pub fn remove(netns: &Netns, runner: &dyn Runner) -> Result<(), LinuxError> {
    remove_at(&pin_dir(netns)?, runner)
}

fn remove_at(dir: &Path, runner: &dyn Runner) -> Result<(), LinuxError> {
    remove_pins(dir)?;
    super::route::remove_table(runner, EBPF_ROUTE_TABLE)?;
    let _ = runner.run("ip", &["-6", "addr", "del", &format!("{OUTBOUND_SOURCE_V6}/128"), "dev", "lo"], None);
    Ok(())
}
