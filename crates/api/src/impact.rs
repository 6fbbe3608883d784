//! What a passthrough change does to the mesh's mutual TLS, as the API reports it.
//!
//! The capture of every workload, before and after the change, is compiled from its pod
//! template's annotations exactly as the rule previews are; `meshpass-policy` then resolves
//! each client's TLS under the backend's `PeerAuthentication`s and `DestinationRule`s, as
//! Istio would, and says per (client, Service port) whether the calls fail, lose mutual TLS or
//! keep working. Pure: the backend's reads happen before ([`crate::backend::MeshPolicies`]),
//! the writes (fix rules) after.
//!
//! The changed workload is compared with itself *without* passthrough settings (everything
//! captured, Istio's defaults), not with its current settings: the answer is the whole cost of
//! the settings about to be written, so setting an exclusion that is already in place again
//! still lists the clients it breaks, and `fixClients` can still fix them.

use crate::backend::MeshPolicies;
use crate::model::{FixRule, ImpactEffect, ImpactEntry, ImpactEvidence, PolicyRef, WorkloadInfo};
use meshpass_capture::explain::{explain_plan, Flow};
use meshpass_capture::{compile, CaptureConfig, InjectorValues, Plan};
use meshpass_policy::impact::{stale_fixes, Capture, Effect, Evidence, Impact, Proposal, Side};
use meshpass_policy::{DestinationRule, Resource, ResourceRef, WorkloadId};
use meshpass_settings::{Direction, Settings};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Every workload's capture in one state of the mesh: the compiled plan of its template's
/// annotations (`None` for a workload without a sidecar, or interception mode `NONE`).
pub struct Captures {
    plans: BTreeMap<WorkloadId, Option<Plan>>,
    /// For workloads the backend did not list: Istio's default capture.
    default: Option<Plan>,
}

fn plan(meshed: bool, annotations: &BTreeMap<String, String>, values: &InjectorValues) -> Option<Plan> {
    if !meshed {
        return None;
    }
    // Annotations Istio would reject leave the pods uncreated; assuming the default capture
    // keeps the answer about the clients rather than about the broken template.
    let settings = Settings::from_annotations(annotations).unwrap_or_default();
    CaptureConfig::from_settings(&settings, values).map(|c| compile(&c))
}

impl Captures {
    /// The captures of `workloads` (whether they are meshed, their template annotations).
    pub fn new<'a>(
        workloads: impl IntoIterator<Item = (WorkloadId, bool, &'a BTreeMap<String, String>)>,
        values: &InjectorValues,
    ) -> Self {
        Captures {
            plans: workloads.into_iter().map(|(id, meshed, a)| (id, plan(meshed, a, values))).collect(),
            default: plan(true, &BTreeMap::new(), values),
        }
    }

    fn plan(&self, w: &WorkloadId) -> Option<&Plan> {
        match self.plans.get(w) {
            Some(p) => p.as_ref(),
            None => self.default.as_ref(),
        }
    }
}

fn inbound_captured(plan: Option<&Plan>, port: u16) -> bool {
    plan.is_some_and(|p| explain_plan(p, &Flow::inbound(port)).verdict.is_captured())
}

fn outbound_captured(plan: Option<&Plan>, dst: IpAddr, port: u16) -> bool {
    plan.is_some_and(|p| explain_plan(p, &Flow::outbound(dst, port)).verdict.is_captured())
}

impl Capture for Captures {
    fn inbound(&self, w: &WorkloadId, port: u16) -> bool {
        inbound_captured(self.plan(w), port)
    }

    fn outbound(&self, w: &WorkloadId, dst: IpAddr, port: u16) -> bool {
        outbound_captured(self.plan(w), dst, port)
    }
}

/// [`Captures`] with one workload's plan replaced: the mesh before or after one change,
/// without compiling every other workload again.
struct Overlay<'a> {
    base: &'a Captures,
    changed: &'a WorkloadId,
    plan: Option<Plan>,
}

impl Overlay<'_> {
    fn plan(&self, w: &WorkloadId) -> Option<&Plan> {
        if w == self.changed {
            self.plan.as_ref()
        } else {
            self.base.plan(w)
        }
    }
}

impl Capture for Overlay<'_> {
    fn inbound(&self, w: &WorkloadId, port: u16) -> bool {
        inbound_captured(self.plan(w), port)
    }

    fn outbound(&self, w: &WorkloadId, dst: IpAddr, port: u16) -> bool {
        outbound_captured(self.plan(w), dst, port)
    }
}

/// The impact of one proposed change, and the fix rules it makes unnecessary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assessment {
    /// Per affected (client, Service port, server), failures first; the fix rules; notes.
    pub impact: Impact,
    /// `DestinationRule`s meshpass created earlier that no workload needs after the change
    /// (their port is captured again, or their workload is gone).
    pub stale: Vec<ResourceRef>,
}

fn id(w: &WorkloadInfo) -> WorkloadId {
    WorkloadId::new(&w.workload.namespace, &w.workload.name)
}

/// What `workload`'s template annotations `after` cost, compared with the same template
/// without passthrough settings, with the other workloads as `others` list them (`workload`
/// itself may be among them), under `mesh`'s policies; with `fix_clients`, as it will be once
/// the fix rules exist. The stale fix rules are those `after` no longer needs.
pub fn assess(
    workload: &WorkloadInfo,
    after: &BTreeMap<String, String>,
    others: &[WorkloadInfo],
    values: &InjectorValues,
    mesh: &MeshPolicies,
    fix_clients: bool,
) -> Assessment {
    Assessor::new(others, values, mesh).assess(workload, after, fix_clients)
}

/// [`assess`] for several changes, each judged on its own against the mesh as it is (a
/// batch): the other workloads' captures are compiled once, not once per change.
pub struct Assessor<'a> {
    base: Captures,
    values: &'a InjectorValues,
    mesh: &'a MeshPolicies,
}

impl<'a> Assessor<'a> {
    /// The mesh with `workloads` as they are now, under `mesh`'s policies.
    pub fn new(workloads: &[WorkloadInfo], values: &'a InjectorValues, mesh: &'a MeshPolicies) -> Self {
        let base = Captures::new(workloads.iter().map(|w| (id(w), w.meshed, &w.annotations)), values);
        Assessor { base, values, mesh }
    }

    /// As [`assess`]: what `workload`'s annotations `after` cost.
    pub fn assess(&self, workload: &WorkloadInfo, after: &BTreeMap<String, String>, fix_clients: bool) -> Assessment {
        let changed = id(workload);
        let baseline = crate::passthrough::candidate(&workload.annotations, &crate::model::Passthrough::default());
        let now = Overlay { base: &self.base, changed: &changed, plan: plan(workload.meshed, &baseline, self.values) };
        let later = Overlay { base: &self.base, changed: &changed, plan: plan(workload.meshed, after, self.values) };
        let proposal = Proposal { workload: &changed, before: &now, after: &later, fix_clients };
        let impact = meshpass_policy::impact(&self.mesh.view, &self.mesh.policies, &proposal, &self.mesh.calls);
        let stale = stale_fixes(&self.mesh.policies, &self.mesh.view, &later);
        Assessment { impact, stale }
    }
}

/// The API's form of the impact entries.
pub fn entries(impact: &Impact) -> Vec<ImpactEntry> {
    impact
        .entries
        .iter()
        .map(|e| ImpactEntry {
            direction: match e.direction {
                Side::Inbound => Direction::Inbound,
                Side::Outbound => Direction::Outbound,
            },
            client: e.client.to_string(),
            server: e.server.to_string(),
            service: e.service.clone(),
            address: e.address.map(|a| a.to_string()),
            service_port: e.service_port,
            port: e.port,
            effect: match e.effect {
                Effect::Fails => ImpactEffect::Fails,
                Effect::LosesMtls => ImpactEffect::LosesMtls,
                Effect::Works => ImpactEffect::Works,
            },
            reason: e.reason.clone(),
            mtls_before: e.mtls_before,
            mtls_after: e.mtls_after,
            evidence: match e.evidence {
                Evidence::Observed => ImpactEvidence::Observed,
                Evidence::MayCall => ImpactEvidence::MayCall,
            },
        })
        .collect()
}

/// A reference in the API's form.
pub fn policy_ref(r: &ResourceRef) -> PolicyRef {
    PolicyRef { kind: r.kind.as_str().to_string(), namespace: r.namespace.clone(), name: r.name.clone() }
}

/// A fix rule in the API's form, with its YAML (what `kubectl get -o yaml` would show).
pub fn fix_rule(d: &DestinationRule) -> FixRule {
    let port = d.traffic_policy.as_ref().and_then(|t| t.port_level_settings.first()).map_or(0, |p| p.port);
    let resource = Resource::DestinationRule(d.clone());
    FixRule { reference: policy_ref(&resource.reference()), host: d.host.clone(), port, yaml: resource.to_yaml() }
}

/// The notes of an assessment as warnings: one line each.
pub fn notes(a: &Assessment) -> Vec<String> {
    a.impact.notes.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WorkloadRef;
    use meshpass_policy::{MeshView, PolicySet, Service, ServicePort, Workload};

    const INBOUND: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
    const OUT_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";

    fn info(ns: &str, name: &str, meshed: bool, annotations: &[(&str, &str)]) -> WorkloadInfo {
        WorkloadInfo {
            annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..WorkloadInfo::deployment(WorkloadRef::new(ns, name), meshed)
        }
    }

    fn workload(ns: &str, name: &str, sidecar: bool) -> Workload {
        Workload {
            id: WorkloadId::new(ns, name),
            labels: [("app".to_string(), name.to_string())].into(),
            service_account: name.to_string(),
            sidecar,
        }
    }

    fn service(name: &str, ip: &str, port: u16) -> Service {
        Service {
            namespace: "default".into(),
            name: name.into(),
            cluster_ip: Some(ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))),
            selector: [("app".to_string(), name.to_string())].into(),
            ports: vec![ServicePort { name: Some("http".into()), port, target_port: port }],
        }
    }

    /// The sample mesh: helloworld and sleep with sidecars, external without.
    fn mesh(policies: &str) -> MeshPolicies {
        let resources = meshpass_policy::parse_documents(policies, "default").unwrap_or_default();
        MeshPolicies {
            view: MeshView {
                workloads: vec![
                    workload("default", "helloworld", true),
                    workload("default", "sleep", true),
                    workload("default", "external", false),
                ],
                services: vec![
                    service("helloworld", "198.19.0.10", 5000),
                    service("sleep", "198.19.0.11", 80),
                    service("external", "198.19.0.12", 8080),
                ],
            },
            policies: PolicySet::from_resources(resources),
            calls: Default::default(),
        }
    }

    fn all() -> Vec<WorkloadInfo> {
        vec![
            info("default", "helloworld", true, &[]),
            info("default", "sleep", true, &[]),
            info("default", "external", false, &[]),
        ]
    }

    fn after(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn excluding_an_inbound_port_fails_the_meshed_caller_and_the_fix_makes_it_plaintext() {
        let ws = all();
        let m = mesh("");
        let a = assess(&ws[0], &after(&[(INBOUND, "5000")]), &ws, &InjectorValues::default(), &m, false);
        let e = entries(&a.impact);
        assert_eq!(e.len(), 1, "only sleep has a sidecar to call with: {e:?}");
        assert_eq!((e[0].client.as_str(), e[0].port, e[0].effect), ("default/sleep", 5000, ImpactEffect::Fails));
        assert!(e[0].mtls_before && !e[0].mtls_after, "{e:?}");
        assert_eq!(a.impact.fixes.len(), 1);
        let fix = fix_rule(&a.impact.fixes[0]);
        assert_eq!(
            (fix.reference.name.as_str(), fix.host.as_str(), fix.port),
            ("helloworld-passthrough-5000", "helloworld.default.svc.cluster.local", 5000)
        );
        assert!(fix.yaml.contains("mode: DISABLE"), "{}", fix.yaml);

        let fixed = assess(&ws[0], &after(&[(INBOUND, "5000")]), &ws, &InjectorValues::default(), &m, true);
        let e = entries(&fixed.impact);
        assert_eq!(e[0].effect, ImpactEffect::LosesMtls, "{e:?}");
        assert!(fixed.stale.is_empty());
    }

    #[test]
    fn a_port_that_stays_captured_affects_nobody() {
        let ws = all();
        let a = assess(&ws[0], &after(&[(INBOUND, "8080")]), &ws, &InjectorValues::default(), &mesh(""), false);
        assert!(a.impact.entries.is_empty(), "{:?}", a.impact.entries);
        assert!(a.impact.fixes.is_empty());
    }

    #[test]
    fn an_existing_fix_rule_keeps_callers_working_and_goes_when_the_port_is_captured_again() {
        let ws = all();
        let excluded = info("default", "helloworld", true, &[(INBOUND, "5000")]);
        let m = mesh("");
        let first = assess(&ws[0], &after(&[(INBOUND, "5000")]), &ws, &InjectorValues::default(), &m, true);
        let rules = first.impact.fixes.iter().cloned().map(Resource::DestinationRule).collect();
        let mut m2 = m.clone();
        m2.policies = m.policies.apply(rules).map(|(s, _)| s).unwrap_or_default();
        let others = vec![excluded.clone(), ws[1].clone(), ws[2].clone()];
        // Still excluded: the rule is needed; sleep already speaks plaintext to that port.
        let again = assess(&excluded, &after(&[(INBOUND, "5000")]), &others, &InjectorValues::default(), &m2, false);
        assert!(again.stale.is_empty());
        assert!(again.impact.fixes.is_empty(), "the rule exists");
        let e = entries(&again.impact);
        assert_eq!((e[0].effect, e[0].mtls_before), (ImpactEffect::Works, false), "{e:?}");
        // The same exclusion set again without the rule: still listed, still fixable.
        let unfixed = assess(&excluded, &after(&[(INBOUND, "5000")]), &others, &InjectorValues::default(), &m, false);
        assert_eq!(entries(&unfixed.impact)[0].effect, ImpactEffect::Fails);
        assert_eq!(unfixed.impact.fixes.len(), 1);
        // Cleared: the rule is stale.
        let cleared = assess(&excluded, &BTreeMap::new(), &others, &InjectorValues::default(), &m2, false);
        assert_eq!(cleared.stale.len(), 1);
        assert_eq!(policy_ref(&cleared.stale[0]).name, "helloworld-passthrough-5000");
    }

    #[test]
    fn excluded_outbound_ranges_send_plaintext_that_strict_refuses() {
        let ws = all();
        let strict = r"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
";
        let a = assess(
            &ws[1],
            &after(&[(OUT_RANGES, "198.19.0.0/24")]),
            &ws,
            &InjectorValues::default(),
            &mesh(strict),
            false,
        );
        let e = entries(&a.impact);
        let hw = e.iter().find(|e| e.server == "default/helloworld").unwrap_or_else(|| panic!("{e:?}"));
        assert_eq!(
            (hw.direction, hw.client.as_str(), hw.effect),
            (Direction::Outbound, "default/sleep", ImpactEffect::Fails)
        );
        let ext = e.iter().find(|e| e.server == "default/external").unwrap_or_else(|| panic!("{e:?}"));
        assert_eq!(ext.effect, ImpactEffect::Works, "no sidecar there: plaintext as before");
        // Without STRICT the same calls only lose mutual TLS.
        let a =
            assess(&ws[1], &after(&[(OUT_RANGES, "198.19.0.0/24")]), &ws, &InjectorValues::default(), &mesh(""), false);
        let e = entries(&a.impact);
        let hw = e.iter().find(|e| e.server == "default/helloworld").unwrap_or_else(|| panic!("{e:?}"));
        assert_eq!(hw.effect, ImpactEffect::LosesMtls);
    }

    #[test]
    fn unmeshed_workloads_capture_nothing() {
        let c = Captures::new([(WorkloadId::new("a", "b"), false, &BTreeMap::new())], &InjectorValues::default());
        assert!(!c.inbound(&WorkloadId::new("a", "b"), 80));
        assert!(c.inbound(&WorkloadId::new("a", "unknown"), 80), "unlisted: Istio's default capture");
    }
}
