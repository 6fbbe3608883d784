//! Mesh-wide defaults and a workload's effective settings, with Istio's exact precedence.
//!
//! Istio's sidecar injector renders `istio-init`'s command line from one template
//! (`manifests/charts/istio-control/istio-discovery/files/injection-template.yaml`, lines
//! 102-120 at istio/istio 86c9f01f). Each capture flag is
//! `annotation .ObjectMeta <key> <mesh-wide value>`, and `annotation` (`getAnnotation`,
//! `pkg/kube/inject/template.go` lines 179-185) returns the pod's annotation whenever the key
//! is *present*, even empty, and the mesh-wide value only when it is absent:
//!
//! | annotation (`traffic.sidecar.istio.io/…`) | mesh-wide value (Helm values) | flag | template line |
//! |---|---|---|---|
//! | `includeOutboundIPRanges` | `global.proxy.includeIPRanges` (`*`) | `-i` | 103 |
//! | `excludeOutboundIPRanges` | `global.proxy.excludeIPRanges` (`""`) | `-x` | 105 |
//! | `includeInboundPorts` | `global.proxy.includeInboundPorts` (`*`) | `-b` | 107 |
//! | `excludeInboundPorts` | `global.proxy.excludeInboundPorts` (`""`) | `-d` | 109-110 |
//! | `includeOutboundPorts` | `global.proxy.includeOutboundPorts` (`""`) | `-q` | 114-116 |
//! | `excludeOutboundPorts` | `global.proxy.excludeOutboundPorts` (`""`) | `-o` | 118-120 |
//! | `status.sidecar.istio.io/port` | `global.proxy.statusPort` (15020) | into `-d` | 109-110 |
//!
//! So the annotation **replaces** the mesh-wide value; nothing is merged. A workload that sets
//! `excludeOutboundIPRanges: 10.0.0.0/8` in a mesh whose `excludeIPRanges` is
//! `192.168.0.0/16` sends 192.168.0.0/16 through its sidecar again. [`Effective`] says where
//! each value comes from and [`Effective::replaced`] names what a workload's value drops.
//!
//! The defaults in parentheses are the chart's (`values.yaml` lines 350-361 and 408); the
//! injector reads the values from the `values` key of the `istio-sidecar-injector` ConfigMap
//! (`templates/istiod-injector-configmap.yaml`), which [`MeshDefaults::from_values`] parses
//! as the template reads it.

use crate::annotations::{IpRangeSpec, PortSpec, Settings};
use crate::error::{Reason, SettingError, SettingErrors};
use crate::ip::CidrSet;
use crate::keys;
use crate::ports::{PortRange, PortSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Istio's default status port (`global.proxy.statusPort`).
pub const DEFAULT_STATUS_PORT: u16 = 15020;

/// The Helm value behind each mesh-wide default (the path below `.Values`), and the
/// annotation that overrides it.
pub mod values {
    /// `global.proxy.includeIPRanges` ⇐ `traffic.sidecar.istio.io/includeOutboundIPRanges`.
    pub const INCLUDE_IP_RANGES: &str = "global.proxy.includeIPRanges";
    /// `global.proxy.excludeIPRanges` ⇐ `traffic.sidecar.istio.io/excludeOutboundIPRanges`.
    pub const EXCLUDE_IP_RANGES: &str = "global.proxy.excludeIPRanges";
    /// `global.proxy.includeInboundPorts` ⇐ `traffic.sidecar.istio.io/includeInboundPorts`.
    pub const INCLUDE_INBOUND_PORTS: &str = "global.proxy.includeInboundPorts";
    /// `global.proxy.excludeInboundPorts` ⇐ `traffic.sidecar.istio.io/excludeInboundPorts`.
    pub const EXCLUDE_INBOUND_PORTS: &str = "global.proxy.excludeInboundPorts";
    /// `global.proxy.includeOutboundPorts` ⇐ `traffic.sidecar.istio.io/includeOutboundPorts`.
    pub const INCLUDE_OUTBOUND_PORTS: &str = "global.proxy.includeOutboundPorts";
    /// `global.proxy.excludeOutboundPorts` ⇐ `traffic.sidecar.istio.io/excludeOutboundPorts`.
    pub const EXCLUDE_OUTBOUND_PORTS: &str = "global.proxy.excludeOutboundPorts";
    /// `global.proxy.statusPort` ⇐ `status.sidecar.istio.io/port`.
    pub const STATUS_PORT: &str = "global.proxy.statusPort";
}

/// Each Helm value with the annotation that replaces it, in the order they are listed.
pub const VALUE_KEYS: [(&str, &str); 7] = [
    (values::EXCLUDE_INBOUND_PORTS, keys::EXCLUDE_INBOUND_PORTS),
    (values::EXCLUDE_OUTBOUND_PORTS, keys::EXCLUDE_OUTBOUND_PORTS),
    (values::EXCLUDE_IP_RANGES, keys::EXCLUDE_OUTBOUND_IP_RANGES),
    (values::INCLUDE_INBOUND_PORTS, keys::INCLUDE_INBOUND_PORTS),
    (values::INCLUDE_OUTBOUND_PORTS, keys::INCLUDE_OUTBOUND_PORTS),
    (values::INCLUDE_IP_RANGES, keys::INCLUDE_OUTBOUND_IP_RANGES),
    (values::STATUS_PORT, keys::STATUS_PORT),
];

/// The Helm value an annotation replaces (`None` for annotations without a mesh-wide value).
pub fn value_key_for(annotation: &str) -> Option<&'static str> {
    VALUE_KEYS.iter().find(|(_, a)| *a == annotation).map(|(v, _)| *v)
}

/// The mesh-wide capture values: what a pod gets for every capture annotation it does not
/// have. [`Default`] is Istio's chart.
///
/// Serialized as the values' text (`{"excludeIPRanges": "10.0.0.0/8", …, "statusPort":
/// 15020}`, the leaf names of the Helm paths); deserializing validates every value as
/// [`MeshDefaults::set_value`] does, and a value left out keeps Istio's default.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "ValuesText")]
pub struct MeshDefaults {
    /// `global.proxy.includeInboundPorts` (`*`).
    #[serde(rename = "includeInboundPorts")]
    pub include_inbound_ports: PortSpec,
    /// `global.proxy.excludeInboundPorts` (empty).
    #[serde(rename = "excludeInboundPorts")]
    pub exclude_inbound_ports: PortSet,
    /// `global.proxy.includeOutboundPorts` (empty).
    #[serde(rename = "includeOutboundPorts")]
    pub include_outbound_ports: PortSet,
    /// `global.proxy.excludeOutboundPorts` (empty).
    #[serde(rename = "excludeOutboundPorts")]
    pub exclude_outbound_ports: PortSet,
    /// `global.proxy.includeIPRanges` (`*`).
    #[serde(rename = "includeIPRanges")]
    pub include_ip_ranges: IpRangeSpec,
    /// `global.proxy.excludeIPRanges` (empty).
    #[serde(rename = "excludeIPRanges")]
    pub exclude_ip_ranges: CidrSet,
    /// `global.proxy.statusPort` (15020; 0 = none).
    #[serde(rename = "statusPort")]
    pub status_port: u16,
}

/// [`MeshDefaults`] as text, the way it is stored and sent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValuesText {
    #[serde(rename = "includeInboundPorts")]
    include_inbound_ports: Option<String>,
    #[serde(rename = "excludeInboundPorts")]
    exclude_inbound_ports: Option<String>,
    #[serde(rename = "includeOutboundPorts")]
    include_outbound_ports: Option<String>,
    #[serde(rename = "excludeOutboundPorts")]
    exclude_outbound_ports: Option<String>,
    #[serde(rename = "includeIPRanges")]
    include_ip_ranges: Option<String>,
    #[serde(rename = "excludeIPRanges")]
    exclude_ip_ranges: Option<String>,
    #[serde(rename = "statusPort")]
    status_port: Option<u16>,
}

impl TryFrom<ValuesText> for MeshDefaults {
    type Error = SettingErrors;

    fn try_from(t: ValuesText) -> Result<Self, SettingErrors> {
        let status = t.status_port.map(|p| p.to_string());
        let pairs = [
            (values::INCLUDE_INBOUND_PORTS, t.include_inbound_ports),
            (values::EXCLUDE_INBOUND_PORTS, t.exclude_inbound_ports),
            (values::INCLUDE_OUTBOUND_PORTS, t.include_outbound_ports),
            (values::EXCLUDE_OUTBOUND_PORTS, t.exclude_outbound_ports),
            (values::INCLUDE_IP_RANGES, t.include_ip_ranges),
            (values::EXCLUDE_IP_RANGES, t.exclude_ip_ranges),
            (values::STATUS_PORT, status),
        ];
        MeshDefaults::from_value_strings(pairs.iter().filter_map(|(k, v)| Some((*k, v.as_deref()?))))
    }
}

impl Default for MeshDefaults {
    fn default() -> Self {
        Self {
            include_inbound_ports: PortSpec::Wildcard,
            exclude_inbound_ports: PortSet::new(),
            include_outbound_ports: PortSet::new(),
            exclude_outbound_ports: PortSet::new(),
            include_ip_ranges: IpRangeSpec::Wildcard,
            exclude_ip_ranges: CidrSet::new(),
            status_port: DEFAULT_STATUS_PORT,
        }
    }
}

impl MeshDefaults {
    /// Parses the values as text, keyed by their Helm path ([`values`]); keys not given keep
    /// Istio's default. The text is validated exactly as the annotation it stands in for
    /// (the template puts either into the same flag), every bad item reported at once under
    /// its Helm path. An unknown key is an error too.
    pub fn from_value_strings<'a, I>(pairs: I) -> Result<Self, SettingErrors>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut d = Self::default();
        let mut errors = Vec::new();
        for (k, v) in pairs {
            if let Err(e) = d.set_value(k, v) {
                errors.extend(e.0);
            }
        }
        if errors.is_empty() {
            Ok(d)
        } else {
            Err(SettingErrors(errors))
        }
    }

    /// Sets one value from its text (see [`MeshDefaults::from_value_strings`]); on error
    /// nothing changes.
    pub fn set_value(&mut self, key: &str, text: &str) -> Result<(), SettingErrors> {
        let Some(annotation) = VALUE_KEYS.iter().find(|(v, _)| *v == key).map(|(_, a)| *a) else {
            let known = VALUE_KEYS.iter().map(|(v, _)| *v).collect::<Vec<_>>().join(", ");
            return Err(SettingErrors(vec![SettingError::new(
                key,
                text,
                Reason::Other(format!("is not a mesh-wide capture value meshpass knows (known: {known})")),
            )]));
        };
        let map = BTreeMap::from([(annotation.to_string(), text.to_string())]);
        let s = Settings::from_annotations(&map).map_err(|e| {
            // Report under the Helm path the operator wrote, not the annotation's key.
            SettingErrors(e.0.into_iter().map(|e| SettingError::new(key, e.item, e.reason)).collect())
        })?;
        // The annotation was present, so its field is set whenever parsing succeeded.
        let d = self.clone();
        *self = MeshDefaults {
            include_inbound_ports: s.include_inbound_ports.unwrap_or(d.include_inbound_ports),
            exclude_inbound_ports: s.exclude_inbound_ports.unwrap_or(d.exclude_inbound_ports),
            include_outbound_ports: s.include_outbound_ports.unwrap_or(d.include_outbound_ports),
            exclude_outbound_ports: s.exclude_outbound_ports.unwrap_or(d.exclude_outbound_ports),
            include_ip_ranges: s.include_outbound_ip_ranges.unwrap_or(d.include_ip_ranges),
            exclude_ip_ranges: s.exclude_outbound_ip_ranges.unwrap_or(d.exclude_ip_ranges),
            status_port: s.status_port.unwrap_or(d.status_port),
        };
        Ok(())
    }

    /// Every value as text, keyed by Helm path, in [`VALUE_KEYS`] order: what is written
    /// back into the injector's values.
    pub fn to_value_strings(&self) -> Vec<(&'static str, String)> {
        VALUE_KEYS.iter().map(|(k, _)| (*k, self.value_string(k).unwrap_or_default())).collect()
    }

    /// One value as text (`None` for an unknown key).
    pub fn value_string(&self, key: &str) -> Option<String> {
        Some(match key {
            values::INCLUDE_INBOUND_PORTS => self.include_inbound_ports.to_string(),
            values::EXCLUDE_INBOUND_PORTS => self.exclude_inbound_ports.to_string(),
            values::INCLUDE_OUTBOUND_PORTS => self.include_outbound_ports.to_string(),
            values::EXCLUDE_OUTBOUND_PORTS => self.exclude_outbound_ports.to_string(),
            values::INCLUDE_IP_RANGES => self.include_ip_ranges.to_string(),
            values::EXCLUDE_IP_RANGES => self.exclude_ip_ranges.to_string(),
            values::STATUS_PORT => self.status_port.to_string(),
            _ => return None,
        })
    }

    /// Reads the mesh-wide values from the injector's Helm values (the `values` key of the
    /// `istio-sidecar-injector` ConfigMap, parsed from its JSON or YAML), as the template
    /// reads them: each value is turned into text the way Go's `fmt.Sprint` does (a number
    /// `15020` is `"15020"`), then validated like the annotation it stands in for.
    ///
    /// Lenient where Istio is: a value that is absent or bad is reported in the second half
    /// (naming the Helm path and why) and keeps Istio's default in the first, so one broken
    /// value never hides the others. Absent `excludeOutboundPorts`/`includeOutboundPorts`
    /// are not errors: the template guards them with `valueOrDefault … ""` (lines 114,
    /// 118). The others are rendered unguarded; Go renders a missing map entry as `<nil>`,
    /// which istio-iptables rejects, so pods without the annotation would not start.
    pub fn from_values(root: &serde_json::Value) -> (Self, Vec<SettingError>) {
        let mut d = Self::default();
        let mut errors = Vec::new();
        let proxy = root.get("global").and_then(|g| g.get("proxy"));
        for (path, _) in VALUE_KEYS {
            let leaf = path.rsplit('.').next().unwrap_or(path);
            let guarded = path == values::INCLUDE_OUTBOUND_PORTS || path == values::EXCLUDE_OUTBOUND_PORTS;
            let text = match proxy.and_then(|p| p.get(leaf)) {
                None | Some(serde_json::Value::Null) if guarded => continue,
                None | Some(serde_json::Value::Null) => {
                    errors.push(SettingError::new(
                        path,
                        "<nil>",
                        Reason::Other(
                            "is missing from the injector's values: Istio's template renders it as \"<nil>\", which \
                             istio-iptables rejects, so pods without the annotation fail to start"
                                .into(),
                        ),
                    ));
                    continue;
                }
                Some(v) => match go_sprint(v) {
                    Some(t) => t,
                    None => {
                        errors.push(SettingError::new(
                            path,
                            v.to_string(),
                            Reason::Other("must be a string (or a number), as Istio's template prints it".into()),
                        ));
                        continue;
                    }
                },
            };
            if let Err(e) = d.set_value(path, &text) {
                errors.extend(e.0);
            }
        }
        (d, errors)
    }

    /// Writes these values into the injector's Helm values, as strings the way the chart
    /// spells them (the status port as a number), keeping every other value as it is.
    /// Creates `global.proxy` if needed; fails only when `global` or `global.proxy` is not an
    /// object.
    pub fn write_values(&self, root: &mut serde_json::Value) -> Result<(), SettingError> {
        let not_object =
            |p: &str| SettingError::new(p, "", Reason::Other("is not an object in the injector's values".into()));
        if root.is_null() {
            *root = serde_json::Value::Object(Default::default());
        }
        let global = root
            .as_object_mut()
            .ok_or_else(|| not_object("(values)"))?
            .entry("global")
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        let proxy = global
            .as_object_mut()
            .ok_or_else(|| not_object("global"))?
            .entry("proxy")
            .or_insert_with(|| serde_json::Value::Object(Default::default()))
            .as_object_mut()
            .ok_or_else(|| not_object("global.proxy"))?;
        for (path, text) in self.to_value_strings() {
            let leaf = path.rsplit('.').next().unwrap_or(path).to_string();
            let v = if path == values::STATUS_PORT {
                serde_json::Value::from(self.status_port)
            } else {
                serde_json::Value::String(text)
            };
            proxy.insert(leaf, v);
        }
        Ok(())
    }
}

/// Go's `fmt.Sprint` of a scalar as `yaml.Unmarshal` into `map[string]any` leaves it:
/// strings as they are, numbers as `float64` printed with `%v` (integral values below 1e21
/// without a fraction), booleans as `true`/`false`. Objects and arrays: `None`.
fn go_sprint(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => Some(match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e21 => format!("{f:.0}"),
            Some(f) => f.to_string(),
            None => n.to_string(),
        }),
        _ => None,
    }
}

/// Where an effective value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The workload's own annotation (present, possibly empty).
    Workload,
    /// The mesh-wide value (the annotation is absent).
    Mesh,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Workload => "workload",
            Source::Mesh => "mesh",
        })
    }
}

/// A value and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Sourced<T> {
    /// The value in force.
    pub value: T,
    /// Its origin.
    pub source: Source,
}

fn pick<T: Clone>(annotation: &Option<T>, mesh: &T) -> Sourced<T> {
    match annotation {
        Some(v) => Sourced { value: v.clone(), source: Source::Workload },
        None => Sourced { value: mesh.clone(), source: Source::Mesh },
    }
}

/// A workload value that replaces a mesh-wide one and thereby drops some of its items.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replaced {
    /// The workload's annotation.
    pub annotation: &'static str,
    /// The Helm value it replaces.
    pub mesh_key: &'static str,
    /// The workload's value.
    pub workload_value: String,
    /// The mesh-wide value.
    pub mesh_value: String,
    /// The mesh-wide items that no longer apply to the workload.
    pub dropped: Vec<String>,
}

impl fmt::Display for Replaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |v: &str| if v.is_empty() { "\"\"".to_string() } else { v.to_string() };
        write!(
            f,
            "{} ({}) replaces the mesh-wide {} ({}) instead of adding to it: {} no longer {} to this workload; \
             list {} in the workload's value too to keep {}",
            self.annotation,
            shown(&self.workload_value),
            self.mesh_key,
            shown(&self.mesh_value),
            self.dropped.join(", "),
            if self.dropped.len() == 1 { "applies" } else { "apply" },
            if self.dropped.len() == 1 { "it" } else { "them" },
            if self.dropped.len() == 1 { "it" } else { "them" },
        )
    }
}

/// A workload's capture settings in force: each value with its [`Source`], as Istio's
/// injector resolves them ([`effective`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Effective {
    /// `-b`.
    pub include_inbound_ports: Sourced<PortSpec>,
    /// `-d`, without the sidecar's own ports (see [`Effective::status_port`]).
    pub exclude_inbound_ports: Sourced<PortSet>,
    /// `-q`.
    pub include_outbound_ports: Sourced<PortSet>,
    /// `-o`.
    pub exclude_outbound_ports: Sourced<PortSet>,
    /// `-i`.
    pub include_outbound_ip_ranges: Sourced<IpRangeSpec>,
    /// `-x`.
    pub exclude_outbound_ip_ranges: Sourced<CidrSet>,
    /// The status port excluded inbound besides 15090 and 15021 (0 = none).
    pub status_port: Sourced<u16>,
    replaced: Vec<Replaced>,
}

impl Effective {
    /// The workload values that drop mesh-wide items, in [`VALUE_KEYS`] order. Only values
    /// the operator changed from Istio's default can be dropped: a workload narrowing the
    /// default `*` is the ordinary use of the annotation.
    pub fn replaced(&self) -> &[Replaced] {
        &self.replaced
    }
}

/// A workload's effective settings: for each value, the annotation when present (even
/// empty), else the mesh-wide default — Istio's `annotation` template function
/// (`pkg/kube/inject/template.go` lines 179-185) applied as in the injection template lines
/// 102-120. Never merges.
pub fn effective(s: &Settings, d: &MeshDefaults) -> Effective {
    let istio = MeshDefaults::default();
    let mut replaced = Vec::new();
    let mut check = |annotation: &'static str, mesh_key: &'static str, dropped: Vec<String>, w: String, m: String| {
        if !dropped.is_empty() {
            replaced.push(Replaced { annotation, mesh_key, workload_value: w, mesh_value: m, dropped });
        }
    };
    if let Some(w) = &s.exclude_inbound_ports {
        let m = &d.exclude_inbound_ports;
        check(
            keys::EXCLUDE_INBOUND_PORTS,
            values::EXCLUDE_INBOUND_PORTS,
            ports_dropped(m, w),
            w.to_string(),
            m.to_string(),
        );
    }
    if let Some(w) = &s.exclude_outbound_ports {
        let m = &d.exclude_outbound_ports;
        let dropped = ports_dropped(m, w);
        check(keys::EXCLUDE_OUTBOUND_PORTS, values::EXCLUDE_OUTBOUND_PORTS, dropped, w.to_string(), m.to_string());
    }
    if let Some(w) = &s.exclude_outbound_ip_ranges {
        let m = &d.exclude_ip_ranges;
        check(
            keys::EXCLUDE_OUTBOUND_IP_RANGES,
            values::EXCLUDE_IP_RANGES,
            cidrs_dropped(m, w),
            w.to_string(),
            m.to_string(),
        );
    }
    if let Some(w) = &s.include_inbound_ports {
        let m = &d.include_inbound_ports;
        let dropped = match (m, w) {
            (_, PortSpec::Wildcard) => Vec::new(),
            (PortSpec::Wildcard, _) => Vec::new(),
            (PortSpec::List(m), PortSpec::List(w)) => ports_dropped(m, w),
        };
        check(keys::INCLUDE_INBOUND_PORTS, values::INCLUDE_INBOUND_PORTS, dropped, w.to_string(), m.to_string());
    }
    if let Some(w) = &s.include_outbound_ports {
        let m = &d.include_outbound_ports;
        let dropped = ports_dropped(m, w);
        check(keys::INCLUDE_OUTBOUND_PORTS, values::INCLUDE_OUTBOUND_PORTS, dropped, w.to_string(), m.to_string());
    }
    if let Some(w) = &s.include_outbound_ip_ranges {
        let m = &d.include_ip_ranges;
        let dropped = match (m, w) {
            (_, IpRangeSpec::Wildcard) | (IpRangeSpec::Wildcard, _) => Vec::new(),
            (IpRangeSpec::List(m), IpRangeSpec::List(w)) => cidrs_dropped(m, w),
        };
        check(keys::INCLUDE_OUTBOUND_IP_RANGES, values::INCLUDE_IP_RANGES, dropped, w.to_string(), m.to_string());
    }
    if let Some(w) = s.status_port {
        if d.status_port != istio.status_port && d.status_port != 0 && w != d.status_port {
            check(
                keys::STATUS_PORT,
                values::STATUS_PORT,
                vec![d.status_port.to_string()],
                w.to_string(),
                d.status_port.to_string(),
            );
        }
    }
    Effective {
        include_inbound_ports: pick(&s.include_inbound_ports, &d.include_inbound_ports),
        exclude_inbound_ports: pick(&s.exclude_inbound_ports, &d.exclude_inbound_ports),
        include_outbound_ports: pick(&s.include_outbound_ports, &d.include_outbound_ports),
        exclude_outbound_ports: pick(&s.exclude_outbound_ports, &d.exclude_outbound_ports),
        include_outbound_ip_ranges: pick(&s.include_outbound_ip_ranges, &d.include_ip_ranges),
        exclude_outbound_ip_ranges: pick(&s.exclude_outbound_ip_ranges, &d.exclude_ip_ranges),
        status_port: pick(&s.status_port, &d.status_port),
        replaced,
    }
}

/// The items of `mesh` that `workload` does not cover, port by port (a range counts as
/// covered when the workload's ranges together cover all of it).
fn ports_dropped(mesh: &PortSet, workload: &PortSet) -> Vec<String> {
    let mut w: Vec<PortRange> = workload.ranges().to_vec();
    w.sort();
    mesh.ranges()
        .iter()
        .filter(|m| {
            // Walk the sorted workload ranges, extending the covered prefix of `m`.
            let mut next = u32::from(m.start());
            for r in &w {
                if u32::from(r.start()) <= next && u32::from(r.end()) >= next {
                    next = u32::from(r.end()) + 1;
                }
            }
            next <= u32::from(m.end())
        })
        .map(|m| m.to_string())
        .collect()
}

/// The prefixes of `mesh` that no prefix of `workload` contains.
fn cidrs_dropped(mesh: &CidrSet, workload: &CidrSet) -> Vec<String> {
    mesh.nets()
        .iter()
        .filter(|m| {
            !workload
                .nets()
                .iter()
                .any(|w| w.is_ipv4() == m.is_ipv4() && w.len() <= m.len() && w.contains(m.network().addr()))
        })
        .map(|m| m.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let m: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_annotations(&m).expect("valid")
    }

    fn mesh(pairs: &[(&str, &str)]) -> MeshDefaults {
        MeshDefaults::from_value_strings(pairs.iter().copied()).expect("valid values")
    }

    #[test]
    fn a_pod_without_the_annotation_gets_the_mesh_value() {
        let d = mesh(&[(values::EXCLUDE_IP_RANGES, "198.19.0.2/32"), (values::EXCLUDE_OUTBOUND_PORTS, "3306")]);
        let e = effective(&Settings::default(), &d);
        assert_eq!(e.exclude_outbound_ip_ranges.value.to_string(), "198.19.0.2/32");
        assert_eq!(e.exclude_outbound_ip_ranges.source, Source::Mesh);
        assert_eq!(e.exclude_outbound_ports.value.to_string(), "3306");
        assert_eq!(e.include_inbound_ports, Sourced { value: PortSpec::Wildcard, source: Source::Mesh });
        assert_eq!(e.status_port, Sourced { value: 15020, source: Source::Mesh });
        assert!(e.replaced().is_empty());
    }

    #[test]
    fn the_annotation_replaces_the_mesh_value_and_says_what_it_drops() {
        let d = mesh(&[(values::EXCLUDE_IP_RANGES, "198.19.0.2/32,10.0.0.0/8")]);
        let s = settings(&[(keys::EXCLUDE_OUTBOUND_IP_RANGES, "10.1.0.0/16")]);
        let e = effective(&s, &d);
        assert_eq!(e.exclude_outbound_ip_ranges.value.to_string(), "10.1.0.0/16", "replaced, not merged");
        assert_eq!(e.exclude_outbound_ip_ranges.source, Source::Workload);
        let [r] = e.replaced() else { panic!("{:?}", e.replaced()) };
        assert_eq!(r.dropped, ["198.19.0.2/32", "10.0.0.0/8"]);
        assert_eq!(
            r.to_string(),
            "traffic.sidecar.istio.io/excludeOutboundIPRanges (10.1.0.0/16) replaces the mesh-wide \
             global.proxy.excludeIPRanges (198.19.0.2/32,10.0.0.0/8) instead of adding to it: 198.19.0.2/32, \
             10.0.0.0/8 no longer apply to this workload; list them in the workload's value too to keep them"
        );
    }

    #[test]
    fn an_empty_annotation_is_present_and_replaces_too() {
        let d = mesh(&[(values::EXCLUDE_OUTBOUND_PORTS, "3306")]);
        let e = effective(&settings(&[(keys::EXCLUDE_OUTBOUND_PORTS, "")]), &d);
        assert!(e.exclude_outbound_ports.value.is_empty());
        assert_eq!(e.exclude_outbound_ports.source, Source::Workload);
        assert_eq!(e.replaced()[0].dropped, ["3306"]);
        assert!(e.replaced()[0].to_string().contains("(\"\") replaces"), "{}", e.replaced()[0]);
    }

    #[test]
    fn a_workload_value_that_keeps_every_mesh_item_is_no_warning() {
        let d = mesh(&[(values::EXCLUDE_IP_RANGES, "10.1.2.0/24"), (values::EXCLUDE_INBOUND_PORTS, "8000-8010,9000")]);
        let s = settings(&[
            (keys::EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8,192.168.0.0/16"),
            (keys::EXCLUDE_INBOUND_PORTS, "9000,8006-8020,8000-8005"),
        ]);
        assert!(effective(&s, &d).replaced().is_empty(), "covered by a wider range / adjacent ranges");
        let s = settings(&[(keys::EXCLUDE_INBOUND_PORTS, "8000-8009,9000")]);
        assert_eq!(effective(&s, &d).replaced()[0].dropped, ["8000-8010"]);
    }

    #[test]
    fn narrowing_istios_default_wildcard_is_the_ordinary_use() {
        let s = settings(&[(keys::INCLUDE_INBOUND_PORTS, "80"), (keys::INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8")]);
        let e = effective(&s, &MeshDefaults::default());
        assert!(e.replaced().is_empty());
        // An operator's include list, though, is replaced like any other value.
        let d =
            mesh(&[(values::INCLUDE_IP_RANGES, "10.0.0.0/8,172.16.0.0/12"), (values::INCLUDE_INBOUND_PORTS, "80,443")]);
        let e = effective(&s, &d);
        let dropped: Vec<_> = e.replaced().iter().map(|r| (r.mesh_key, r.dropped.clone())).collect();
        assert_eq!(
            dropped,
            [
                (values::INCLUDE_INBOUND_PORTS, vec!["443".to_string()]),
                (values::INCLUDE_IP_RANGES, vec!["172.16.0.0/12".to_string()])
            ]
        );
        assert!(effective(&settings(&[(keys::INCLUDE_OUTBOUND_IP_RANGES, "*")]), &d).replaced().is_empty());
    }

    #[test]
    fn values_are_validated_like_their_annotation_and_reported_by_helm_path() {
        let err = MeshDefaults::from_value_strings([
            (values::EXCLUDE_IP_RANGES, "10.0.0.0/33,*"),
            (values::EXCLUDE_OUTBOUND_PORTS, "70000"),
            ("global.proxy.excludeIPRange", "10.0.0.0/8"),
        ])
        .expect_err("invalid");
        let lines: Vec<String> = err.iter().map(|e| e.to_string()).collect();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[0].starts_with("global.proxy.excludeIPRanges: \"10.0.0.0/33\" is not an IP range"), "{lines:?}");
        assert!(lines[1].starts_with("global.proxy.excludeIPRanges: \"*\""), "{lines:?}");
        assert_eq!(lines[2], "global.proxy.excludeOutboundPorts: \"70000\" is not a port (1-65535)");
        assert!(
            lines[3].starts_with("global.proxy.excludeIPRange: \"10.0.0.0/8\" is not a mesh-wide capture value"),
            "{lines:?}"
        );
        let mut d = MeshDefaults::default();
        assert!(d.set_value(values::EXCLUDE_IP_RANGES, "*").is_err(), "exclude lists take no wildcard");
        assert_eq!(d, MeshDefaults::default(), "nothing changed on error");
    }

    #[test]
    fn reads_the_injector_values_as_the_template_does() {
        // The chart's own values (pretty JSON in the ConfigMap), with an operator's changes.
        let v = json!({
            "global": {"proxy": {
                "excludeIPRanges": "198.19.0.2/32",
                "excludeInboundPorts": "",
                "includeIPRanges": "*",
                "includeInboundPorts": "*",
                "includeOutboundPorts": "",
                "excludeOutboundPorts": "3306",
                "statusPort": 15021,
                "image": "proxyv2"
            }},
            "sidecarInjectorWebhook": {}
        });
        let (d, errors) = MeshDefaults::from_values(&v);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(d.exclude_ip_ranges.to_string(), "198.19.0.2/32");
        assert_eq!(d.exclude_outbound_ports.to_string(), "3306");
        assert_eq!(d.status_port, 15021, "a JSON number prints as Go prints a float64");
        // Absent outbound port lists are guarded by valueOrDefault; the others are not.
        let (d, errors) = MeshDefaults::from_values(&json!({"global": {"proxy": {"excludeIPRanges": "10.0.0.0/8"}}}));
        assert_eq!(d.exclude_ip_ranges.to_string(), "10.0.0.0/8");
        let missing: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            missing,
            [
                values::EXCLUDE_INBOUND_PORTS,
                values::INCLUDE_INBOUND_PORTS,
                values::INCLUDE_IP_RANGES,
                values::STATUS_PORT
            ]
        );
        assert!(errors[0].to_string().contains("\"<nil>\""), "{}", errors[0]);
        // One bad value keeps Istio's default and is named; the rest still count.
        let mut v2 = v;
        v2["global"]["proxy"]["excludeIPRanges"] = json!("10.0.0.0/8,bogus");
        v2["global"]["proxy"]["includeInboundPorts"] = json!(["80"]);
        let (d, errors) = MeshDefaults::from_values(&v2);
        assert_eq!(d.exclude_ip_ranges, CidrSet::new());
        assert_eq!(d.exclude_outbound_ports.to_string(), "3306");
        let keys: Vec<(&str, &str)> = errors.iter().map(|e| (e.key.as_str(), e.item.as_str())).collect();
        assert_eq!(keys, [(values::EXCLUDE_IP_RANGES, "bogus"), (values::INCLUDE_INBOUND_PORTS, "[\"80\"]")]);
    }

    #[test]
    fn writes_back_into_the_values_keeping_everything_else() {
        let mut v = json!({"global": {"proxy": {"image": "proxyv2", "excludeIPRanges": ""}, "hub": "docker.io/istio"}});
        let d = mesh(&[(values::EXCLUDE_IP_RANGES, "198.19.0.2/32"), (values::INCLUDE_INBOUND_PORTS, "80,443")]);
        d.write_values(&mut v).expect("objects");
        assert_eq!(v["global"]["hub"], "docker.io/istio");
        assert_eq!(v["global"]["proxy"]["image"], "proxyv2");
        assert_eq!(v["global"]["proxy"]["excludeIPRanges"], "198.19.0.2/32");
        assert_eq!(v["global"]["proxy"]["includeInboundPorts"], "80,443");
        assert_eq!(v["global"]["proxy"]["statusPort"], 15020);
        let (back, errors) = MeshDefaults::from_values(&v);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(back, d, "round trip");
        let mut empty = serde_json::Value::Null;
        MeshDefaults::default().write_values(&mut empty).expect("created");
        assert_eq!(MeshDefaults::from_values(&empty), (MeshDefaults::default(), vec![]));
        assert!(MeshDefaults::default().write_values(&mut json!({"global": "x"})).is_err());
    }

    #[test]
    fn stored_as_the_values_text_and_validated_when_read() {
        let d = mesh(&[(values::EXCLUDE_IP_RANGES, "198.19.0.2/32"), (values::INCLUDE_INBOUND_PORTS, "80,8000-8100")]);
        let text = serde_json::to_value(&d).expect("serializes");
        assert_eq!(
            text,
            json!({"includeInboundPorts": "80,8000-8100", "excludeInboundPorts": "", "includeOutboundPorts": "",
                   "excludeOutboundPorts": "", "includeIPRanges": "*", "excludeIPRanges": "198.19.0.2/32",
                   "statusPort": 15020})
        );
        assert_eq!(serde_json::from_value::<MeshDefaults>(text).expect("reads back"), d);
        let partial: MeshDefaults = serde_json::from_value(json!({"excludeOutboundPorts": "3306"})).expect("partial");
        assert_eq!(partial, mesh(&[(values::EXCLUDE_OUTBOUND_PORTS, "3306")]));
        let bad = serde_json::from_value::<MeshDefaults>(json!({"excludeIPRanges": "10.0.0.0/33"})).expect_err("bad");
        assert!(bad.to_string().contains("global.proxy.excludeIPRanges: \"10.0.0.0/33\""), "{bad}");
        assert!(serde_json::from_value::<MeshDefaults>(json!({"excludeIpRanges": ""})).is_err(), "misspelt key");
    }

    #[test]
    fn status_port_replacement_is_named() {
        let d = mesh(&[(values::STATUS_PORT, "15099")]);
        let e = effective(&settings(&[(keys::STATUS_PORT, "15020")]), &d);
        assert_eq!(e.status_port, Sourced { value: 15020, source: Source::Workload });
        assert_eq!(e.replaced()[0].dropped, ["15099"]);
        assert!(effective(&settings(&[(keys::STATUS_PORT, "15020")]), &MeshDefaults::default()).replaced().is_empty());
    }
}
