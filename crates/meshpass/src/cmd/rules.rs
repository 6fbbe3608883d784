//! `meshpass rules`: a workload's annotations → capture rules, printed or applied.
//!
//! Settings come from `-a KEY=VALUE` (repeatable) and/or `--annotations FILE` (a YAML or JSON
//! map, or a Pod/Deployment manifest whose pod-template annotations are used), combined with
//! Istio's injector defaults exactly as the sidecar injector would.

use super::invalid;
use anyhow::{bail, Context};
use meshpass_capture::ir::Family;
use meshpass_capture::linux::{self, Netns, NetnsRunner, RuleBackend};
use meshpass_capture::render::iptables::render_restore;
use meshpass_capture::{compile, CaptureConfig, InjectorValues, Plan};
use meshpass_settings::{InterceptionMode, MeshDefaults, Settings};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::ExitCode;

/// Where settings come from, shared by `rules` and `explain`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SettingsArgs {
    /// An annotation, e.g. `-a traffic.sidecar.istio.io/excludeInboundPorts=5000` (repeatable;
    /// later values win over the file).
    #[arg(short = 'a', long = "annotation", value_name = "KEY=VALUE")]
    annotations: Vec<String>,
    /// A YAML or JSON map of annotations, or a Kubernetes manifest (Pod, Deployment, …).
    #[arg(long = "annotations", value_name = "FILE")]
    file: Option<String>,
    /// Emit IPv6 rules too (Istio does when the pod has an IPv6 address).
    #[arg(long)]
    ipv6: bool,
    /// The proxy's UID (istio-proxy's runAsUser).
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// The proxy's GID (default: the UID, as istio-iptables).
    #[arg(long)]
    proxy_gid: Option<u32>,
    /// The agent's status port, excluded inbound (0 = none; default: the mesh-wide
    /// `global.proxy.statusPort`, 15020).
    #[arg(long)]
    status_port: Option<u16>,
    /// The mesh-wide values of Istio's injector (`global.proxy.excludeIPRanges`,
    /// `excludeOutboundPorts`, …) that apply wherever an annotation is absent: a YAML/JSON
    /// file of Helm values, or the `istio-sidecar-injector` ConfigMap
    /// (`kubectl get cm -n istio-system istio-sidecar-injector -o yaml`).
    #[arg(long, value_name = "FILE")]
    injector_values: Option<String>,
    /// Capture DNS to the agent (ISTIO_META_DNS_CAPTURE).
    #[arg(long)]
    dns_capture: bool,
    /// A name server whose DNS is captured (repeatable); none with --dns-capture means all.
    #[arg(long = "dns-server", value_name = "IP")]
    dns_servers: Vec<IpAddr>,
    /// Drop conntrack-INVALID packets (INVALID_DROP).
    #[arg(long)]
    drop_invalid: bool,
    /// Excluded inbound ports skip connection tracking too (raw NOTRACK rules, off loopback;
    /// meshpass's own, see the README's "Untracked passthrough").
    #[arg(long)]
    untrack_excluded_inbound: bool,
}

/// Converts a YAML scalar to the string Kubernetes would need it to be.
fn scalar(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        serde_yaml::Value::Null => Some(String::new()),
        _ => None,
    }
}

/// Reads the injector's Helm values from a file: the values themselves (YAML or JSON), or
/// the `istio-sidecar-injector` ConfigMap, whose `data.values` holds them as text.
pub(crate) fn read_injector_values(path: &str) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let doc: serde_json::Value = serde_yaml::from_str(&text).with_context(|| format!("{path} is not YAML or JSON"))?;
    if doc.get("kind").and_then(|k| k.as_str()) == Some("ConfigMap") {
        let values = doc
            .pointer("/data/values")
            .and_then(|v| v.as_str())
            .with_context(|| format!("{path}: the ConfigMap has no data.values (the injector's Helm values)"))?;
        return serde_yaml::from_str(values).with_context(|| format!("{path}: data.values is not YAML or JSON"));
    }
    Ok(doc)
}

/// Reads annotations from a file: a flat map, or a manifest's pod-template / metadata
/// annotations.
pub(crate) fn read_annotations(path: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).with_context(|| format!("{path} is not YAML or JSON"))?;
    let pick = |v: &serde_yaml::Value, path: &[&str]| {
        let mut cur = v;
        for p in path {
            cur = cur.get(p)?;
        }
        Some(cur.clone())
    };
    let map = pick(&doc, &["spec", "template", "metadata", "annotations"])
        .or_else(|| doc.get("kind").and_then(|_| pick(&doc, &["metadata", "annotations"])))
        .unwrap_or(doc);
    let serde_yaml::Value::Mapping(m) = map else {
        bail!("{path}: expected a map of annotations (or a manifest with annotations)");
    };
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let k = scalar(&k).with_context(|| format!("{path}: annotation keys must be strings"))?;
        let v = scalar(&v).with_context(|| format!("{path}: annotation {k} must have a string value"))?;
        out.insert(k, v);
    }
    Ok(out)
}

impl SettingsArgs {
    /// The annotation map: the file, then `-a` pairs.
    pub(crate) fn annotations(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut map = match &self.file {
            Some(f) => read_annotations(f)?,
            None => BTreeMap::new(),
        };
        for pair in &self.annotations {
            let (k, v) = pair.split_once('=').with_context(|| format!("-a {pair:?}: expected KEY=VALUE"))?;
            map.insert(k.trim().to_string(), v.to_string());
        }
        Ok(map)
    }

    /// The mesh-wide capture values: `--injector-values`, Istio's defaults without it.
    fn mesh_defaults(&self) -> anyhow::Result<Result<MeshDefaults, ExitCode>> {
        let mut d = match &self.injector_values {
            None => MeshDefaults::default(),
            Some(path) => {
                let values = read_injector_values(path)?;
                let (d, errors) = MeshDefaults::from_values(&values);
                if !errors.is_empty() {
                    return Ok(Err(invalid(&meshpass_settings::SettingErrors(errors))));
                }
                d
            }
        };
        if let Some(p) = self.status_port {
            d.status_port = p;
        }
        Ok(Ok(d))
    }

    /// The injector's mesh-wide values these flags describe, around `defaults`.
    fn values(&self, defaults: MeshDefaults) -> InjectorValues {
        InjectorValues {
            defaults,
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            enable_ipv6: self.ipv6,
            redirect_dns: self.dns_capture,
            capture_all_dns: self.dns_capture && self.dns_servers.is_empty(),
            dns_servers: self.dns_servers.clone(),
            drop_invalid: self.drop_invalid,
            untrack_excluded_inbound: self.untrack_excluded_inbound,
            ..InjectorValues::default()
        }
    }

    /// Settings → config, or the exit code after printing every error. `Ok(None)` inside:
    /// interception mode NONE (no rules at all).
    pub(crate) fn config(&self) -> anyhow::Result<Result<Option<CaptureConfig>, ExitCode>> {
        let ann = self.annotations()?;
        for k in Settings::unknown_keys(ann.keys()) {
            eprintln!("warning: unknown annotation {k} is ignored (Istio ignores it too); a typo?");
        }
        let settings = match Settings::from_annotations(&ann) {
            Ok(s) => s,
            Err(e) => return Ok(Err(invalid(&e))),
        };
        let defaults = match self.mesh_defaults()? {
            Ok(d) => d,
            Err(code) => return Ok(Err(code)),
        };
        for r in meshpass_settings::effective(&settings, &defaults).replaced() {
            eprintln!("warning: {r}");
        }
        if settings.interception_mode == Some(InterceptionMode::None) {
            return Ok(Ok(None));
        }
        Ok(Ok(CaptureConfig::from_settings(&settings, &self.values(defaults))))
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Format {
    /// `iptables-restore` input (v4, then v6), exactly what istio-iptables generates.
    Iptables,
    /// One `nft -f` transaction for table `inet meshpass`.
    Nft,
    /// The istio-iptables command line Istio's injector would run.
    IstioArgs,
    /// The compiled plan as JSON (config and rule IR).
    Json,
}

/// `meshpass rules` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    settings: SettingsArgs,
    /// How to print the rules.
    #[arg(long, value_enum, default_value = "nft")]
    format: Format,
    /// Apply the rules instead of printing them.
    #[arg(long, conflicts_with = "cleanup")]
    apply: bool,
    /// Remove the rules meshpass applied.
    #[arg(long)]
    cleanup: bool,
    /// Print the live rules of --netns (read back from the kernel) with their counters.
    #[arg(long, conflicts_with_all = ["apply", "cleanup"])]
    live: bool,
    /// With --cleanup: also remove Istio's chains and tables.
    #[arg(long, requires = "cleanup")]
    istio: bool,
    /// Network namespace (name from `ip netns`, or a path) to apply in; default: the current one.
    #[arg(long)]
    netns: Option<String>,
    /// Rule backend for --apply / --cleanup: nftables, iptables or iptables-legacy.
    #[arg(long, default_value = "nftables", value_parser = parse_backend)]
    backend: RuleBackend,
}

/// Parses a backend name for clap.
pub(crate) fn parse_backend(s: &str) -> Result<RuleBackend, String> {
    RuleBackend::parse(s).ok_or_else(|| format!("{s:?} is not a backend: use nftables, iptables or iptables-legacy"))
}

fn print(plan: &Plan, cfg: &CaptureConfig, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Iptables => {
            print!("# iptables-restore --noflush\n{}", render_restore(plan, Family::V4));
            if plan.ipv6 {
                print!("# ip6tables-restore --noflush\n{}", render_restore(plan, Family::V6));
            }
        }
        Format::Nft => print!("{}", meshpass_capture::render::nft::render(plan)),
        Format::IstioArgs => println!("istio-iptables {}", shell_words(&cfg.to_istio_args())),
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "config": cfg, "plan": plan }))?)
        }
    }
    Ok(())
}

fn shell_words(args: &[String]) -> String {
    args.iter().map(|a| if a.is_empty() { "''".to_string() } else { a.clone() }).collect::<Vec<_>>().join(" ")
}

/// Runs `meshpass rules`.
pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let runner = NetnsRunner::new(a.netns.as_deref().map(Netns::parse).unwrap_or(Netns::Current));
    if a.live {
        return show_live(&runner, a.backend, a.format);
    }
    if a.cleanup {
        linux::cleanup(a.backend, a.istio, &runner).context("cleanup failed")?;
        eprintln!("meshpass: rules removed ({}, {})", a.backend, runner.netns());
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = match a.settings.config()? {
        Ok(Some(cfg)) => cfg,
        Ok(None) => {
            eprintln!("meshpass: sidecar.istio.io/interceptionMode is NONE: no capture rules");
            if a.apply {
                linux::cleanup(a.backend, false, &runner).context("cleanup failed")?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        Err(code) => return Ok(code),
    };
    let plan = compile(&cfg);
    if !a.apply {
        print(&plan, &cfg, a.format)?;
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = linux::apply(&plan, a.backend, &runner).context("applying the rules failed")?;
    eprintln!(
        "meshpass: rules {} ({}, {})",
        match outcome {
            linux::ApplyOutcome::Applied => "applied",
            linux::ApplyOutcome::Unchanged => "already in place",
        },
        a.backend,
        runner.netns()
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints the live rules, one per line with counters (or JSON), per family.
fn show_live(runner: &NetnsRunner, backend: RuleBackend, format: Format) -> anyhow::Result<ExitCode> {
    use meshpass_capture::parse::{iptables_save::parse_save, nft_json::parse_ruleset};
    let families = match backend {
        RuleBackend::Nftables => {
            let json = linux::nft::list_json(runner)?
                .with_context(|| format!("no meshpass nftables rules in {}", runner.netns()))?;
            let live = parse_ruleset(&json).context("reading the live nftables rules")?;
            vec![(Family::V4, live.v4), (Family::V6, live.v6)]
        }
        RuleBackend::Iptables | RuleBackend::IptablesLegacy => {
            let tools = linux::iptables::Tools::for_backend(backend);
            let mut out = Vec::new();
            for fam in Family::ALL {
                let text = linux::iptables::save(tools, fam, runner)?;
                out.push((fam, parse_save(&text).context("reading the live iptables rules")?));
            }
            out
        }
    };
    if matches!(format, Format::Json) {
        let v: BTreeMap<String, _> = families.iter().map(|(f, e)| (f.to_string(), e)).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<6} {:<7} {:<18} {:>4} {:>10} {:>12}  {:<28} rule",
        "family", "table", "chain", "#", "packets", "bytes", "label"
    );
    for (fam, eff) in &families {
        for (table, chains) in &eff.tables {
            for (chain, rules) in chains {
                for (i, r) in rules.rules.iter().enumerate() {
                    let c = r.counters.unwrap_or_default();
                    println!(
                        "{:<6} {:<7} {:<18} {:>4} {:>10} {:>12}  {:<28} {}",
                        fam.to_string(),
                        table.as_str(),
                        chain.as_str(),
                        i + 1,
                        c.packets,
                        c.bytes,
                        r.rule.label.as_deref().unwrap_or("-"),
                        r.text.as_deref().unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: SettingsArgs,
    }

    fn config(args: &[&str]) -> Result<Option<CaptureConfig>, ExitCode> {
        let cli = Cli::try_parse_from(std::iter::once("rules").chain(args.iter().copied())).expect("flags");
        cli.settings.config().expect("readable")
    }

    #[test]
    fn injector_values_come_from_the_configmap_and_yield_to_annotations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cm = dir.path().join("cm.yaml");
        // The ConfigMap as `kubectl get -o yaml` prints it: the values are JSON text.
        std::fs::write(
            &cm,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio-sidecar-injector, namespace: istio-system}\n\
             data:\n  config: 'policy: enabled'\n  values: |-\n    {\"global\": {\"proxy\": {\"excludeIPRanges\": \
             \"198.19.0.2/32\", \"excludeInboundPorts\": \"\", \"includeIPRanges\": \"*\", \"includeInboundPorts\": \
             \"*\", \"statusPort\": 15020}}}\n",
        )
        .expect("write");
        let path = cm.to_str().expect("utf-8");
        let mesh = config(&["--injector-values", path]).expect("valid").expect("capture");
        assert_eq!(mesh.exclude_outbound_ip_ranges.to_string(), "198.19.0.2/32");
        let own =
            config(&["--injector-values", path, "-a", "traffic.sidecar.istio.io/excludeOutboundIPRanges=10.0.0.0/8"])
                .expect("valid")
                .expect("capture");
        assert_eq!(own.exclude_outbound_ip_ranges.to_string(), "10.0.0.0/8", "the annotation replaces the value");
        // Bad values are refused like bad annotations (exit 2).
        let bad = dir.path().join("values.json");
        std::fs::write(&bad, r#"{"global": {"proxy": {"excludeIPRanges": "10.0.0.0/33"}}}"#).expect("write");
        assert!(config(&["--injector-values", bad.to_str().expect("utf-8")]).is_err());
    }
}
