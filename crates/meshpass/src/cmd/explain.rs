//! `meshpass explain`: what netfilter does with a connection, and which rule decides.
//!
//! Against the rules the settings *would* produce (default), or against the live rules read
//! back from a network namespace (`--netns`), with their counters.

use super::rules::SettingsArgs;
use anyhow::{bail, Context};
use meshpass_capture::compile;
use meshpass_capture::explain::{explain, explain_plan, Flow};
use meshpass_capture::ir::{Family, Proto};
use meshpass_capture::linux::{self, iptables::Tools, Netns, NetnsRunner, RuleBackend};
use meshpass_capture::parse::{iptables_save::parse_save, nft_json::parse_ruleset};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

/// `meshpass explain` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    settings: SettingsArgs,
    /// A connection leaving the pod (default).
    #[arg(long, conflicts_with = "inbound")]
    outbound: bool,
    /// A connection arriving at the pod.
    #[arg(long)]
    inbound: bool,
    /// Destination `IP`, `IP:PORT` or `[IPv6]:PORT` (inbound: the pod's address; default
    /// 10.0.0.2).
    #[arg(long)]
    dst: Option<String>,
    /// Destination port (when --dst has none).
    #[arg(long)]
    dst_port: Option<u16>,
    /// Source `IP` or `IP:PORT` (inbound: the client).
    #[arg(long)]
    src: Option<String>,
    /// tcp or udp.
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp"])]
    proto: String,
    /// UID of the sending process (outbound; 1337 is the proxy). Default 1000.
    #[arg(long)]
    uid: Option<u32>,
    /// GID of the sending process (default: the UID).
    #[arg(long)]
    gid: Option<u32>,
    /// The interface (inbound: where it arrives; outbound: where it leaves).
    #[arg(long)]
    iface: Option<String>,
    /// The pod's own address (outbound traffic to it leaves over `lo`).
    #[arg(long)]
    pod_ip: Option<IpAddr>,
    /// Explain against the live rules in this network namespace (name or path).
    #[arg(long)]
    netns: Option<String>,
    /// With --netns: which rules to read (default: nftables if table inet meshpass exists,
    /// else iptables).
    #[arg(long, value_parser = super::rules::parse_backend)]
    backend: Option<RuleBackend>,
    /// text or json.
    #[arg(long, short = 'o', default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

fn addr(s: &str, what: &str) -> anyhow::Result<(IpAddr, Option<u16>)> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    let ip = s.parse::<IpAddr>().with_context(|| format!("--{what} {s:?} is not IP, IP:PORT or [IPv6]:PORT"))?;
    Ok((ip, None))
}

fn flow(a: &Args) -> anyhow::Result<Flow> {
    let dst = a.dst.as_deref().map(|d| addr(d, "dst")).transpose()?;
    let port =
        a.dst_port.or(dst.and_then(|d| d.1)).context("give the destination port: --dst IP:PORT or --dst-port N")?;
    let mut f = if a.inbound {
        match dst {
            Some((ip, _)) => Flow::inbound_to(ip, port),
            None => Flow::inbound(port),
        }
    } else {
        let Some((ip, _)) = dst else { bail!("an outbound flow needs --dst IP[:PORT]") };
        Flow::outbound(ip, port)
    };
    if let Some(src) = &a.src {
        let (ip, p) = addr(src, "src")?;
        f = f.from(ip);
        if let Some(p) = p {
            f = f.src_port(p);
        }
    }
    if a.proto == "udp" {
        f = f.proto(Proto::Udp);
    }
    if let Some(u) = a.uid {
        f = f.uid(u).gid(a.gid.unwrap_or(u));
    } else if let Some(g) = a.gid {
        f = f.gid(g);
    }
    if let Some(i) = &a.iface {
        f = if a.inbound { f.in_iface(i) } else { f.out_iface(i) };
    }
    if let Some(p) = a.pod_ip {
        f = f.pod_ip(p);
    }
    Ok(f)
}

/// Runs `meshpass explain`.
pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let f = flow(&a)?;
    let e = match &a.netns {
        None => {
            let cfg = match a.settings.config()? {
                Ok(Some(cfg)) => cfg,
                Ok(None) => {
                    println!("sidecar.istio.io/interceptionMode is NONE: nothing is captured");
                    return Ok(ExitCode::SUCCESS);
                }
                Err(code) => return Ok(code),
            };
            explain_plan(&compile(&cfg), &f)
        }
        Some(ns) => {
            let runner = NetnsRunner::new(Netns::parse(ns));
            let backend = match a.backend {
                Some(b) => b,
                None if linux::nft::list_json(&runner)?.is_some() => RuleBackend::Nftables,
                None => RuleBackend::Iptables,
            };
            let family = f.family();
            let eff = match backend {
                RuleBackend::Nftables => {
                    let json = linux::nft::list_json(&runner)?
                        .with_context(|| format!("no meshpass nftables rules in {}", runner.netns()))?;
                    let live = parse_ruleset(&json).context("reading the live nftables rules")?;
                    if family == Family::V6 {
                        live.v6
                    } else {
                        live.v4
                    }
                }
                RuleBackend::Iptables | RuleBackend::IptablesLegacy => {
                    let text = linux::iptables::save(Tools::for_backend(backend), family, &runner)?;
                    parse_save(&text).context("reading the live iptables rules")?
                }
            };
            explain(&eff, &f)
        }
    };
    if a.output == "json" {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        let text = e.to_string();
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
    }
    Ok(ExitCode::SUCCESS)
}
