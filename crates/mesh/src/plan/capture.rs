//! A pod's capture, decided from its template's annotations and the mesh-wide values: the
//! rules to install (netfilter), the eBPF programs, or none. Pure: the supervisor's
//! [`crate::effect::capture`] installs what is decided here, and the management plane's
//! previews compile with the same functions.

use crate::config::MeshConfig;
use crate::manifest::DeploymentSpec;
use meshpass_capture::{compile, CaptureConfig, InjectorValues, Plan};
use meshpass_settings::{MeshDefaults, Settings};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

/// The mesh-wide values of a mesh started with (or without) `--untrack-excluded-inbound`,
/// around the mesh-wide `defaults` kept in its state. The supervisor and the management
/// plane's backend (which reads both back from state.json) both take them from here.
pub fn mesh_injector_values(untrack_excluded_inbound: bool, defaults: &MeshDefaults) -> InjectorValues {
    InjectorValues { untrack_excluded_inbound, defaults: defaults.clone(), ..InjectorValues::default() }
}

/// Parses and validates a pod template's capture annotations, with the mesh-wide `values`,
/// into the rules to install
/// (`None`: interception mode NONE, no rules). Errors are every bad item, one line each.
pub fn capture_plan(
    annotations: &BTreeMap<String, String>,
    values: &InjectorValues,
) -> Result<Option<Plan>, Vec<String>> {
    Ok(capture_config(annotations, values)?.map(|c| compile(&c)))
}

/// The capture configuration of a pod's annotations (`None`: interception mode `NONE`):
/// each value the annotation's when present, else the mesh-wide one.
pub fn capture_config(
    annotations: &BTreeMap<String, String>,
    values: &InjectorValues,
) -> Result<Option<CaptureConfig>, Vec<String>> {
    let s = Settings::from_annotations(annotations)
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    Ok(CaptureConfig::from_settings(&s, values))
}

/// The eBPF programs of a capture configuration for the namespace with `cookie`. Errors
/// name the settings eBPF capture cannot honour.
pub fn ebpf_plan(cfg: &CaptureConfig, cookie: u64) -> Result<meshpass_capture::ebpf::EbpfPlan, Vec<String>> {
    meshpass_capture::ebpf::compile_ebpf(cfg, cookie).map_err(|e| vec![e.to_string()])
}

/// How a meshed pod is captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capture {
    /// No capture: an unmeshed pod, or interception mode `NONE`.
    None,
    /// Netfilter rules, compiled.
    Rules(Plan),
    /// eBPF programs of this configuration, compiled against the namespace's cookie when
    /// installed.
    Ebpf(Box<CaptureConfig>),
}

/// A short stamp of the capture a pod with `annotations` gets under `defaults`, which the
/// pod keeps: a meshed pod whose stamp differs from its template's current one (a
/// mesh-wide default changed under it) is pending restart. Equal settings give equal stamps
/// whichever way they are spelt.
pub fn stamp(
    meshed: bool,
    annotations: &BTreeMap<String, String>,
    cfg: &MeshConfig,
    defaults: &MeshDefaults,
) -> String {
    if !meshed {
        return "unmeshed".to_string();
    }
    match capture_config(annotations, &cfg.injector_values(defaults)) {
        Ok(Some(c)) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            c.hash(&mut h);
            format!("{:016x}", h.finish())
        }
        Ok(None) => "none".to_string(),
        Err(_) => "invalid".to_string(),
    }
}

/// The capture of a pod with `annotations`, meshed or not, in a mesh configured as `cfg`
/// whose mesh-wide defaults are `defaults`. Errors are every setting that cannot be honoured.
pub fn decide(
    meshed: bool,
    annotations: &BTreeMap<String, String>,
    cfg: &MeshConfig,
    defaults: &MeshDefaults,
) -> Result<Capture, Vec<String>> {
    if !meshed {
        return Ok(Capture::None);
    }
    let values = cfg.injector_values(defaults);
    let Some(config) = capture_config(annotations, &values)? else { return Ok(Capture::None) };
    if cfg.ebpf_capture {
        // The cookie only filters sockets; any value checks the settings.
        ebpf_plan(&config, 0)?;
        return Ok(Capture::Ebpf(Box::new(config)));
    }
    Ok(Capture::Rules(compile(&config)))
}

/// Whether a meshed pod's annotations compile for this mesh's capture (rules, or eBPF
/// programs, which refuse a few more settings).
pub fn check(
    annotations: &BTreeMap<String, String>,
    cfg: &MeshConfig,
    defaults: &MeshDefaults,
) -> Result<(), Vec<String>> {
    decide(true, annotations, cfg, defaults).map(drop)
}

/// Why re-applying live the capture of `new` (annotations under mesh-wide defaults) over
/// that of `old` would break open connections, if it would: with untracked exclusions, a
/// port that starts or stops being untracked changes under its open connections (the
/// tracked ones lose their NAT, the untracked ones are picked up mid-stream and redirected),
/// so they would be reset. A restart has no such window.
pub fn live_untrack_change(
    old: (&BTreeMap<String, String>, &MeshDefaults),
    new: (&BTreeMap<String, String>, &MeshDefaults),
    cfg: &MeshConfig,
) -> Option<String> {
    if !cfg.untrack_excluded_inbound {
        return None;
    }
    let untracked = |(a, d): (&BTreeMap<String, String>, &MeshDefaults)| -> Vec<meshpass_capture::ir::Op> {
        let plan = capture_plan(a, &cfg.injector_values(d)).ok().flatten();
        plan.map(|p| p.ops.into_iter().filter(|op| op.rule.target == meshpass_capture::ir::Target::NoTrack).collect())
            .unwrap_or_default()
    };
    (untracked(old) != untracked(new)).then(|| {
        "the mesh untracks excluded inbound ports (--untrack-excluded-inbound), so changing them \
         live would reset the connections open to those ports; apply without --live and restart"
            .to_string()
    })
}

/// [`live_untrack_change`] for a Deployment's template change (only a change of capture
/// annotations alone is re-applied live at all).
pub fn live_template_change(
    old: &DeploymentSpec,
    new: &DeploymentSpec,
    cfg: &MeshConfig,
    defaults: &MeshDefaults,
) -> Option<String> {
    if !old.template.differs_only_in_capture(&new.template) {
        return None;
    }
    live_untrack_change((&old.template.annotations, defaults), (&new.template.annotations, defaults), cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::{cfg, deployment};

    const EXCLUDE_IN: &str = "traffic.sidecar.istio.io/excludeInboundPorts";

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn unmeshed_pods_get_no_capture_and_meshed_ones_get_rules() {
        let (c, d) = (cfg(), MeshDefaults::default());
        assert_eq!(decide(false, &ann(&[(EXCLUDE_IN, "99999")]), &c, &d), Ok(Capture::None), "not even checked");
        assert!(matches!(decide(true, &BTreeMap::new(), &c, &d), Ok(Capture::Rules(_))));
        let none = ann(&[("sidecar.istio.io/interceptionMode", "NONE")]);
        assert_eq!(decide(true, &none, &c, &d), Ok(Capture::None));
    }

    #[test]
    fn bad_annotations_are_every_item_at_once() {
        let errs = check(&ann(&[(EXCLUDE_IN, "99999,abc")]), &cfg(), &MeshDefaults::default()).expect_err("invalid");
        let text = errs.join("\n");
        assert!(text.contains("99999") && text.contains("abc"), "{text}");
    }

    #[test]
    fn ebpf_capture_refuses_settings_it_cannot_honour_by_name() {
        let (mut c, d) = (cfg(), MeshDefaults::default());
        c.ebpf_capture = true;
        assert!(matches!(decide(true, &BTreeMap::new(), &c, &d), Ok(Capture::Ebpf(_))));
        let errs =
            check(&ann(&[("traffic.sidecar.istio.io/kubevirtInterfaces", "eth1")]), &c, &d).expect_err("refused");
        assert!(errs.join(" ").contains("kube-virt-interfaces") || errs.join(" ").contains("kubevirt"), "{errs:?}");
    }

    #[test]
    fn the_stamp_follows_the_effective_capture_not_the_spelling() {
        let c = cfg();
        let d = MeshDefaults::default();
        let mut wide = MeshDefaults::default();
        wide.set_value(meshpass_settings::mesh::values::EXCLUDE_IP_RANGES, "198.19.0.2/32").expect("valid");
        let none = BTreeMap::new();
        assert_ne!(stamp(true, &none, &c, &d), stamp(true, &none, &c, &wide), "a mesh-wide change reaches the pod");
        let own = ann(&[("traffic.sidecar.istio.io/excludeOutboundIPRanges", "10.0.0.0/8")]);
        assert_eq!(stamp(true, &own, &c, &d), stamp(true, &own, &c, &wide), "its own value shields it");
        let spelt = ann(&[("traffic.sidecar.istio.io/excludeOutboundIPRanges", "198.19.0.2/32")]);
        assert_eq!(stamp(true, &spelt, &c, &d), stamp(true, &none, &c, &wide), "same rules, same stamp");
        assert_eq!(stamp(false, &none, &c, &wide), "unmeshed");
    }

    #[test]
    fn a_live_change_of_untracked_ports_is_refused_only_when_the_mesh_untracks() {
        let old = deployment("default", "hello", 1);
        let mut new = old.clone();
        new.template.annotations.insert(EXCLUDE_IN.into(), "5000".into());
        let (mut c, d) = (cfg(), MeshDefaults::default());
        assert_eq!(live_template_change(&old, &new, &c, &d), None, "tracked exclusions change live safely");
        c.untrack_excluded_inbound = true;
        let why = live_template_change(&old, &new, &c, &d).expect("refused");
        assert!(why.contains("apply without --live and restart"), "{why}");
        let mut outbound = old.clone();
        outbound.template.annotations.insert("traffic.sidecar.istio.io/excludeOutboundPorts".into(), "9".into());
        assert_eq!(live_template_change(&old, &outbound, &c, &d), None, "untracked ports unchanged");
    }
}
