//! A pod's capture, decided from its template's annotations and the mesh-wide values: the
//! rules to install (netfilter), the eBPF programs, or none. Pure: the supervisor's
//! [`crate::effect::capture`] installs what is decided here, and the management plane's
//! previews compile with the same functions.

use crate::config::MeshConfig;
use crate::manifest::DeploymentSpec;
use meshpass_capture::{compile, CaptureConfig, InjectorValues, Plan};
use meshpass_settings::Settings;
use std::collections::BTreeMap;

/// The mesh-wide values of a mesh started with (or without) `--untrack-excluded-inbound`:
/// Istio's defaults otherwise. The supervisor and the management plane's backend (which
/// reads the flag back from state.json) both take them from here.
pub fn mesh_injector_values(untrack_excluded_inbound: bool) -> InjectorValues {
    InjectorValues { untrack_excluded_inbound, ..InjectorValues::default() }
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

/// The capture configuration of a pod's annotations (`None`: interception mode `NONE`).
pub fn capture_config(
    annotations: &BTreeMap<String, String>,
    values: &InjectorValues,
) -> Result<Option<CaptureConfig>, Vec<String>> {
    let s = Settings::from_annotations(annotations)
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    Ok(CaptureConfig::from_settings(&s, values))
}

/// The eBPF programs of a pod's annotations for the namespace with `cookie` (`None`: no
/// capture). Errors name the settings eBPF capture cannot honour.
pub fn ebpf_plan(
    annotations: &BTreeMap<String, String>,
    values: &InjectorValues,
    cookie: u64,
) -> Result<Option<meshpass_capture::ebpf::EbpfPlan>, Vec<String>> {
    let Some(cfg) = capture_config(annotations, values)? else { return Ok(None) };
    meshpass_capture::ebpf::compile_ebpf(&cfg, cookie).map(Some).map_err(|e| vec![e.to_string()])
}

/// How a meshed pod is captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capture {
    /// No capture: an unmeshed pod, or interception mode `NONE`.
    None,
    /// Netfilter rules, compiled.
    Rules(Plan),
    /// eBPF programs, compiled against the namespace's cookie when installed.
    Ebpf(BTreeMap<String, String>),
}

/// The capture of a pod with `annotations`, meshed or not, in a mesh configured as `cfg`.
/// Errors are every setting that cannot be honoured.
pub fn decide(meshed: bool, annotations: &BTreeMap<String, String>, cfg: &MeshConfig) -> Result<Capture, Vec<String>> {
    if !meshed {
        return Ok(Capture::None);
    }
    let values = cfg.injector_values();
    if cfg.ebpf_capture {
        // The cookie only filters sockets; any value checks the settings.
        return Ok(match ebpf_plan(annotations, &values, 0)? {
            Some(_) => Capture::Ebpf(annotations.clone()),
            None => Capture::None,
        });
    }
    Ok(capture_plan(annotations, &values)?.map_or(Capture::None, Capture::Rules))
}

/// Whether a meshed pod's annotations compile for this mesh's capture (rules, or eBPF
/// programs, which refuse a few more settings).
pub fn check(annotations: &BTreeMap<String, String>, cfg: &MeshConfig) -> Result<(), Vec<String>> {
    decide(true, annotations, cfg).map(drop)
}

/// Why re-applying `new`'s rules live over `old`'s would break open connections, if it
/// would: with untracked exclusions, a port that starts or stops being untracked changes
/// under its open connections (the tracked ones lose their NAT, the untracked ones are picked
/// up mid-stream and redirected), so they would be reset. A restart has no such window.
pub fn live_untrack_change(old: &DeploymentSpec, new: &DeploymentSpec, cfg: &MeshConfig) -> Option<String> {
    if !cfg.untrack_excluded_inbound || !old.template.differs_only_in_capture(&new.template) {
        return None;
    }
    let values = cfg.injector_values();
    let untracked = |a: &BTreeMap<String, String>| -> Vec<meshpass_capture::ir::Op> {
        let plan = capture_plan(a, &values).ok().flatten();
        plan.map(|p| p.ops.into_iter().filter(|op| op.rule.target == meshpass_capture::ir::Target::NoTrack).collect())
            .unwrap_or_default()
    };
    (untracked(&old.template.annotations) != untracked(&new.template.annotations)).then(|| {
        "the mesh untracks excluded inbound ports (--untrack-excluded-inbound), so changing them \
         live would reset the connections open to those ports; apply without --live and restart"
            .to_string()
    })
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
        let c = cfg();
        assert_eq!(decide(false, &ann(&[(EXCLUDE_IN, "99999")]), &c), Ok(Capture::None), "not even checked");
        assert!(matches!(decide(true, &BTreeMap::new(), &c), Ok(Capture::Rules(_))));
        let none = ann(&[("sidecar.istio.io/interceptionMode", "NONE")]);
        assert_eq!(decide(true, &none, &c), Ok(Capture::None));
    }

    #[test]
    fn bad_annotations_are_every_item_at_once() {
        let errs = check(&ann(&[(EXCLUDE_IN, "99999,abc")]), &cfg()).expect_err("invalid");
        let text = errs.join("\n");
        assert!(text.contains("99999") && text.contains("abc"), "{text}");
    }

    #[test]
    fn ebpf_capture_refuses_settings_it_cannot_honour_by_name() {
        let mut c = cfg();
        c.ebpf_capture = true;
        assert!(matches!(decide(true, &BTreeMap::new(), &c), Ok(Capture::Ebpf(_))));
        let errs = check(&ann(&[("traffic.sidecar.istio.io/kubevirtInterfaces", "eth1")]), &c).expect_err("refused");
        assert!(errs.join(" ").contains("kube-virt-interfaces") || errs.join(" ").contains("kubevirt"), "{errs:?}");
    }

    #[test]
    fn a_live_change_of_untracked_ports_is_refused_only_when_the_mesh_untracks() {
        let old = deployment("default", "hello", 1);
        let mut new = old.clone();
        new.template.annotations.insert(EXCLUDE_IN.into(), "5000".into());
        let mut c = cfg();
        assert_eq!(live_untrack_change(&old, &new, &c), None, "tracked exclusions change live safely");
        c.untrack_excluded_inbound = true;
        let why = live_untrack_change(&old, &new, &c).expect("refused");
        assert!(why.contains("apply without --live and restart"), "{why}");
        let mut outbound = old.clone();
        outbound.template.annotations.insert("traffic.sidecar.istio.io/excludeOutboundPorts".into(), "9".into());
        assert_eq!(live_untrack_change(&old, &outbound, &c), None, "untracked ports unchanged");
    }
}
