//! [`Passthrough`] ⇄ the seven pod-template annotations, canonical values, validation with the
//! engine, warnings and rule previews.
//!
//! Pure: no I/O, no async. A write is [`prepare`]d: every list is brought to its canonical
//! spelling (`meshpass_settings::canon`: trimmed, no leading zeros, duplicates collapsed,
//! ranges kept where the backend's injector takes them, lists capped), then the *candidate*
//! template (the current annotations with the seven replaced) is validated by
//! `meshpass_settings::Settings::from_annotations`, so the API refuses exactly what the engine
//! (and Istio's injector) refuses, with the engine's messages, and also notices when another
//! capture annotation of the template is already broken. What is stored is the canonical form,
//! and [`from_annotations`] shows the annotations as stored, item for item.

use crate::model::{
    DiffLine, EffectiveValue, FieldError, IstioArgsPair, ListItems, Passthrough, Preview, RuleFormat, ValueSource,
    WorkloadInfo,
};
use meshpass_capture::ir::Family;
use meshpass_capture::render::{iptables::render_restore, nft};
use meshpass_capture::{compile, CaptureConfig, InjectorValues};
use meshpass_settings::canon::{self, Dialect};
use meshpass_settings::{keys, mesh, InterceptionMode, MeshDefaults, SettingError, SettingErrors, Settings};
use std::collections::BTreeMap;

/// The seven annotations a [`Passthrough`] owns, in field order.
pub const KEYS: [&str; 7] = [
    keys::EXCLUDE_INBOUND_PORTS,
    keys::EXCLUDE_OUTBOUND_PORTS,
    keys::EXCLUDE_OUTBOUND_IP_RANGES,
    keys::INCLUDE_INBOUND_PORTS,
    keys::INCLUDE_OUTBOUND_PORTS,
    keys::INCLUDE_OUTBOUND_IP_RANGES,
    keys::INTERCEPTION_MODE,
];

/// The camelCase [`Passthrough`] field of each of [`KEYS`].
pub const FIELDS: [&str; 7] = [
    "inboundPorts",
    "outboundPorts",
    "outboundIpRanges",
    "includeInboundPorts",
    "includeOutboundPorts",
    "includeOutboundIpRanges",
    "interceptionMode",
];

/// The field a key's errors are reported under: the [`Passthrough`] field for the seven keys,
/// the key itself for any other annotation.
pub fn field_for_key(key: &str) -> &str {
    KEYS.iter().position(|k| *k == key).map_or(key, |i| FIELDS[i])
}

/// The passthrough settings of a template (the seven annotations; others are ignored), item
/// for item as stored: a list annotation is split at its commas and nothing else (an empty
/// value is an empty list), so what the API shows is exactly what the template holds.
pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Passthrough {
    let list = |k: &str| annotations.get(k).map(|v| canon::split(v)).unwrap_or_default();
    let raw = |k: &str| annotations.get(k).cloned();
    Passthrough {
        inbound_ports: list(keys::EXCLUDE_INBOUND_PORTS),
        outbound_ports: list(keys::EXCLUDE_OUTBOUND_PORTS),
        outbound_ip_ranges: list(keys::EXCLUDE_OUTBOUND_IP_RANGES),
        include_inbound_ports: raw(keys::INCLUDE_INBOUND_PORTS),
        include_outbound_ports: raw(keys::INCLUDE_OUTBOUND_PORTS),
        include_outbound_ip_ranges: raw(keys::INCLUDE_OUTBOUND_IP_RANGES),
        interception_mode: raw(keys::INTERCEPTION_MODE),
    }
}

/// Only the seven passthrough annotations of `annotations`.
pub fn passthrough_annotations(annotations: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    annotations.iter().filter(|(k, _)| KEYS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The seven annotations `p` stands for: a list becomes its items joined with `,` (an empty
/// list: no annotation); an optional value is the annotation as is (`None`: no annotation;
/// `Some("")` is kept, because an empty include list means "none", not "default").
pub fn to_annotations(p: &Passthrough) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let lists = [&p.inbound_ports, &p.outbound_ports, &p.outbound_ip_ranges];
    for (key, list) in KEYS.iter().zip(lists) {
        if !list.is_empty() {
            m.insert(key.to_string(), list.join(","));
        }
    }
    let opts =
        [&p.include_inbound_ports, &p.include_outbound_ports, &p.include_outbound_ip_ranges, &p.interception_mode];
    for (key, v) in KEYS[3..].iter().zip(opts) {
        if let Some(v) = v {
            m.insert(key.to_string(), v.clone());
        }
    }
    m
}

/// The template annotations after applying `p`: every other annotation kept, the seven
/// exactly as `p` says.
pub fn candidate(current: &BTreeMap<String, String>, p: &Passthrough) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> =
        current.iter().filter(|(k, _)| !KEYS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
    m.extend(to_annotations(p));
    m
}

/// The patch that turns `current` into [`candidate`]: annotations to set (only those that
/// change) and to remove (only those present). Both empty = nothing to write.
pub fn patch(current: &BTreeMap<String, String>, p: &Passthrough) -> (BTreeMap<String, String>, Vec<String>) {
    let want = to_annotations(p);
    let set = want.iter().filter(|(k, v)| current.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let remove =
        KEYS.iter().filter(|k| current.contains_key(**k) && !want.contains_key(**k)).map(|k| k.to_string()).collect();
    (set, remove)
}

/// `p` in canonical form (see `meshpass_settings::canon`), with the warnings about what it
/// accepted but probably was not meant; `Err` names every refused item.
pub fn canonicalise(p: &Passthrough, dialect: Dialect) -> Result<(Passthrough, Vec<String>), SettingErrors> {
    let mut errors: Vec<SettingError> = Vec::new();
    let mut warnings = Vec::new();
    let mut out = Passthrough::default();
    let mut take = |r: Result<canon::Canonical, Vec<SettingError>>, into: &mut Vec<String>| match r {
        Ok(c) => {
            warnings.extend(c.warnings);
            *into = c.items;
        }
        Err(e) => errors.extend(e),
    };
    take(canon::port_list(keys::EXCLUDE_INBOUND_PORTS, &p.inbound_ports, dialect), &mut out.inbound_ports);
    take(canon::port_list(keys::EXCLUDE_OUTBOUND_PORTS, &p.outbound_ports, dialect), &mut out.outbound_ports);
    take(canon::cidr_list(keys::EXCLUDE_OUTBOUND_IP_RANGES, &p.outbound_ip_ranges), &mut out.outbound_ip_ranges);
    let mut spec = |r: Result<(String, Vec<String>), Vec<SettingError>>| match r {
        Ok((value, w)) => {
            warnings.extend(w);
            Some(value)
        }
        Err(e) => {
            errors.extend(e);
            None
        }
    };
    out.include_inbound_ports = p
        .include_inbound_ports
        .as_deref()
        .and_then(|v| spec(canon::port_spec(keys::INCLUDE_INBOUND_PORTS, v, dialect, true)));
    out.include_outbound_ports = p
        .include_outbound_ports
        .as_deref()
        .and_then(|v| spec(canon::port_spec(keys::INCLUDE_OUTBOUND_PORTS, v, dialect, false)));
    out.include_outbound_ip_ranges = p
        .include_outbound_ip_ranges
        .as_deref()
        .and_then(|v| spec(canon::cidr_spec(keys::INCLUDE_OUTBOUND_IP_RANGES, v)));
    // The mode is case-sensitive, as Istio's injector takes it; only spaces around it go.
    out.interception_mode = p.interception_mode.as_deref().map(|m| m.trim().to_string());
    if errors.is_empty() {
        Ok((out, warnings))
    } else {
        Err(SettingErrors(errors))
    }
}

/// One [`FieldError`] per engine error.
pub fn field_errors(errors: &SettingErrors) -> Vec<FieldError> {
    errors
        .iter()
        .map(|e| FieldError {
            field: field_for_key(&e.key).to_string(),
            key: e.key.clone(),
            item: e.item.clone(),
            reason: e.reason.to_string(),
        })
        .collect()
}

/// A write, ready to be stored: the settings in canonical form, the engine's view of the
/// resulting template, and the warnings about the canonical values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// The passthrough settings as they will be stored.
    pub canonical: Passthrough,
    /// The candidate template's capture settings.
    pub settings: Settings,
    /// Accepted, but probably not meant (host bits, IPv4-mapped IPv6, covered ports).
    pub warnings: Vec<String>,
}

/// Prepares `p` as the new passthrough settings of a template whose annotations are
/// `current`, for a backend whose injector speaks `dialect`: canonical form, then the engine's
/// verdict on the whole candidate template. `Err` holds every bad item (of the seven keys or of
/// any other capture annotation of the template), in key order, the caller's item order within
/// a key.
pub fn prepare(
    current: &BTreeMap<String, String>,
    p: &Passthrough,
    dialect: Dialect,
) -> Result<Prepared, SettingErrors> {
    let (canonical, warnings, mut errors) = match canonicalise(p, dialect) {
        Ok((c, w)) => (c, w, Vec::new()),
        // The items refused so far are left out of the engine's input, so that each problem is
        // reported once, under the item as the caller wrote it.
        Err(e) => {
            let refused: Vec<&str> = e.iter().map(|x| x.key.as_str()).collect();
            let mut rest = p.clone();
            for (key, list) in [
                (keys::EXCLUDE_INBOUND_PORTS, &mut rest.inbound_ports),
                (keys::EXCLUDE_OUTBOUND_PORTS, &mut rest.outbound_ports),
                (keys::EXCLUDE_OUTBOUND_IP_RANGES, &mut rest.outbound_ip_ranges),
            ] {
                if refused.contains(&key) {
                    list.clear();
                }
            }
            for (key, v) in [
                (keys::INCLUDE_INBOUND_PORTS, &mut rest.include_inbound_ports),
                (keys::INCLUDE_OUTBOUND_PORTS, &mut rest.include_outbound_ports),
                (keys::INCLUDE_OUTBOUND_IP_RANGES, &mut rest.include_outbound_ip_ranges),
            ] {
                if refused.contains(&key) {
                    *v = None;
                }
            }
            let rest = canonicalise(&rest, dialect).map(|(c, _)| c).unwrap_or_default();
            (rest, Vec::new(), e.0)
        }
    };
    match Settings::from_annotations(&candidate(current, &canonical)) {
        Ok(settings) if errors.is_empty() => Ok(Prepared { canonical, settings, warnings }),
        Ok(_) => Err(sorted(errors)),
        Err(e) => {
            errors.extend(e.0);
            Err(sorted(errors))
        }
    }
}

/// Key order (as the engine reports), the caller's item order within a key.
fn sorted(mut errors: Vec<SettingError>) -> SettingErrors {
    let rank = |k: &str| keys::ALL.iter().position(|a| *a == k).unwrap_or(usize::MAX);
    errors.sort_by_key(|e| rank(&e.key));
    SettingErrors(errors)
}

/// Warnings about annotations as stored: a passthrough annotation not in canonical form
/// (written around the API: the next save writes the canonical one), one the backend's
/// injector refuses, and the canonical values' own warnings.
pub fn stored_warnings(annotations: &BTreeMap<String, String>, dialect: Dialect) -> Vec<String> {
    let shown = from_annotations(annotations);
    let (canonical, mut warnings) = match canonicalise(&shown, dialect) {
        Ok(c) => c,
        Err(refused) => {
            let who = match dialect {
                Dialect::Istio => "Istio's sidecar injector",
                Dialect::Meshpass => "meshpass",
            };
            return vec![format!(
                "The template's passthrough annotations hold items that {who} refuses; replace them before saving \
                 other changes:\n{refused}"
            )];
        }
    };
    let want = to_annotations(&canonical);
    for key in KEYS {
        if let (Some(stored), Some(canon)) = (annotations.get(key), want.get(key)) {
            if stored != canon {
                warnings.push(format!(
                    "{key} is stored as {stored:?}; its canonical form is {canon:?}, written when the settings are next \
                     saved"
                ));
            }
        }
    }
    warnings
}

/// Warnings about `settings` (already valid) for `workload`; `others` is every workload the
/// backend knows (the workload itself is skipped).
pub fn warnings(workload: &WorkloadInfo, settings: &Settings, others: &[WorkloadInfo]) -> Vec<String> {
    let mut out = Vec::new();
    let me = &workload.workload;
    if !workload.meshed {
        out.push(format!(
            "{me} has no sidecar: passthrough settings only take effect once its pods are meshed \
             (there are no capture rules to change)"
        ));
        return out;
    }
    if let Some(excluded) = &settings.exclude_inbound_ports {
        let clients: Vec<String> =
            others.iter().filter(|w| w.meshed && w.workload != *me).map(|w| w.workload.to_string()).collect();
        let mut ports: Vec<u16> = workload
            .services
            .iter()
            .flat_map(|s| s.ports.iter().map(|p| p.target_port))
            .filter(|p| excluded.contains(*p))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        if !clients.is_empty() {
            for port in ports {
                out.push(format!(
                    "Port {port} of {me} is excluded from its sidecar, but meshed clients ({}) still send mesh \
                     traffic to it through their own sidecars; with mutual TLS (Istio) those calls fail, and \
                     their responses still show their own sidecar's headers.",
                    clients.join(", ")
                ));
            }
        }
        let include_all = matches!(settings.include_inbound_ports, None | Some(meshpass_settings::PortSpec::Wildcard));
        if !excluded.is_empty() && !include_all {
            out.push(format!(
                "Inbound ports are only excluded when {} is \"*\" (Istio ignores the exclusion otherwise).",
                keys::INCLUDE_INBOUND_PORTS
            ));
        }
    }
    if let Some(ranges) = &settings.exclude_outbound_ip_ranges {
        for net in ranges.nets().iter().filter(|n| n.is_empty()) {
            let family = if net.is_ipv4() { "IPv4" } else { "IPv6" };
            out.push(format!(
                "Outbound IP range {net} covers every {family} destination: all outbound {family} traffic of {me} \
                 skips the sidecar."
            ));
        }
    }
    if settings.interception_mode == Some(InterceptionMode::None) {
        out.push(format!(
            "{} is NONE: {me} gets no capture rules at all, so every port bypasses the sidecar.",
            keys::INTERCEPTION_MODE
        ));
    }
    out
}

/// Warnings about template annotations that look like capture settings but are not ones the
/// engine knows (most likely typos such as `excludeOutboundPort`, which Istio silently ignores).
pub fn unknown_key_warnings(annotations: &BTreeMap<String, String>) -> Vec<String> {
    Settings::unknown_keys(annotations.keys())
        .into_iter()
        .map(|k| format!("Annotation {k} is not a capture setting Istio knows, so it has no effect (a typo?)."))
        .collect()
}

/// Every capture value in force for pods with these settings under the mesh-wide
/// `defaults`, each with its source (Istio's precedence: the annotation when present, even
/// empty, else the mesh-wide value; never merged), and one warning per workload value that
/// drops mesh-wide items by replacing them.
pub fn effective(settings: &Settings, defaults: &MeshDefaults) -> (Vec<EffectiveValue>, Vec<String>) {
    let e = mesh::effective(settings, defaults);
    let source = |s: mesh::Source| match s {
        mesh::Source::Workload => ValueSource::Workload,
        mesh::Source::Mesh => ValueSource::Mesh,
    };
    let v = |annotation: &str, text: String, s: mesh::Source| EffectiveValue {
        annotation: annotation.to_string(),
        mesh_key: mesh::value_key_for(annotation).unwrap_or_default().to_string(),
        value: text,
        source: source(s),
    };
    let values = vec![
        v(keys::EXCLUDE_INBOUND_PORTS, e.exclude_inbound_ports.value.to_string(), e.exclude_inbound_ports.source),
        v(keys::EXCLUDE_OUTBOUND_PORTS, e.exclude_outbound_ports.value.to_string(), e.exclude_outbound_ports.source),
        v(
            keys::EXCLUDE_OUTBOUND_IP_RANGES,
            e.exclude_outbound_ip_ranges.value.to_string(),
            e.exclude_outbound_ip_ranges.source,
        ),
        v(keys::INCLUDE_INBOUND_PORTS, e.include_inbound_ports.value.to_string(), e.include_inbound_ports.source),
        v(keys::INCLUDE_OUTBOUND_PORTS, e.include_outbound_ports.value.to_string(), e.include_outbound_ports.source),
        v(
            keys::INCLUDE_OUTBOUND_IP_RANGES,
            e.include_outbound_ip_ranges.value.to_string(),
            e.include_outbound_ip_ranges.source,
        ),
        v(keys::STATUS_PORT, e.status_port.value.to_string(), e.status_port.source),
    ];
    let warnings = e.replaced().iter().map(ToString::to_string).collect();
    (values, warnings)
}

/// [`effective`] for a template's annotations; nothing when they are invalid (the
/// document's warnings say so already).
pub fn effective_of(
    annotations: &BTreeMap<String, String>,
    defaults: &MeshDefaults,
) -> (Vec<EffectiveValue>, Vec<String>) {
    match Settings::from_annotations(annotations) {
        Ok(s) => effective(&s, defaults),
        Err(_) => (Vec::new(), Vec::new()),
    }
}

/// One list slot: its annotation, the settings' list, and the batch's items for it.
type ListSlot<'a> = (&'static str, &'a mut Vec<String>, Option<&'a Vec<String>>);

/// The three lists of `items` paired with the [`Passthrough`] lists they edit, with the
/// mesh-wide value each list's annotation replaces.
fn list_slots<'a>(p: &'a mut Passthrough, items: &'a ListItems) -> [ListSlot<'a>; 3] {
    [
        (keys::EXCLUDE_INBOUND_PORTS, &mut p.inbound_ports, items.inbound_ports.as_ref()),
        (keys::EXCLUDE_OUTBOUND_PORTS, &mut p.outbound_ports, items.outbound_ports.as_ref()),
        (keys::EXCLUDE_OUTBOUND_IP_RANGES, &mut p.outbound_ip_ranges, items.outbound_ip_ranges.as_ref()),
    ]
}

/// The same item of annotation `key`'s list, as a list compares them: trimmed; IP ranges and
/// ports by what they cover when they parse (`10.0.0.0/8` = `10.0.0.0/08`), else as written.
pub fn same_item(key: &str, a: &str, b: &str) -> bool {
    let (a, b) = (a.trim(), b.trim());
    if a == b {
        return true;
    }
    let one = |v: &str| BTreeMap::from([(key.to_string(), v.to_string())]);
    match (Settings::from_annotations(&one(a)), Settings::from_annotations(&one(b))) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// A batch's change applied to one workload's settings: `set` lists replace, then `add`
/// items are appended when not already there, then `remove` items are taken out. A list the
/// workload has no annotation for starts, for `add` and `remove`, from the mesh-wide value it
/// inherits, so that adding to it keeps what the mesh gave it (Istio would otherwise replace
/// the mesh-wide value with the added items alone). Returns the new settings and notes for
/// the operator (items already there, items not there to remove, values copied from the mesh).
pub fn edit_lists(
    current: &Passthrough,
    annotations: &BTreeMap<String, String>,
    defaults: &MeshDefaults,
    set: &ListItems,
    add: &ListItems,
    remove: &ListItems,
) -> (Passthrough, Vec<String>) {
    let mut p = current.clone();
    let mut notes = Vec::new();
    for (_, list, items) in list_slots(&mut p, set) {
        if let Some(items) = items {
            *list = items.iter().map(|i| i.trim().to_string()).collect();
        }
    }
    let touched = |items: &ListItems, key: &str| match key {
        keys::EXCLUDE_INBOUND_PORTS => items.inbound_ports.is_some(),
        keys::EXCLUDE_OUTBOUND_PORTS => items.outbound_ports.is_some(),
        _ => items.outbound_ip_ranges.is_some(),
    };
    for (key, list, _) in list_slots(&mut p, &ListItems::default()) {
        let edited = touched(add, key) || touched(remove, key);
        if edited && !touched(set, key) && !annotations.contains_key(key) {
            let mesh_key = mesh::value_key_for(key).unwrap_or_default();
            let inherited = defaults.value_string(mesh_key).unwrap_or_default();
            let from_mesh: Vec<String> =
                inherited.split(',').map(str::trim).filter(|i| !i.is_empty()).map(str::to_string).collect();
            if !from_mesh.is_empty() {
                notes.push(format!(
                    "{key} had no value of its own, so it starts from the mesh-wide {mesh_key} ({inherited}): the \
                     annotation replaces the mesh-wide value, and this keeps what the mesh gave the workload"
                ));
                *list = from_mesh;
            }
        }
    }
    for (key, list, items) in list_slots(&mut p, add) {
        for item in items.into_iter().flatten() {
            if list.iter().any(|x| same_item(key, x, item)) {
                notes.push(format!("{key}: {} is already there", item.trim()));
            } else {
                list.push(item.trim().to_string());
            }
        }
    }
    for (key, list, items) in list_slots(&mut p, remove) {
        for item in items.into_iter().flatten() {
            let before = list.len();
            list.retain(|x| !same_item(key, x, item));
            if list.len() == before {
                notes.push(format!("{key}: {} is not there to remove", item.trim()));
            }
        }
    }
    (p, notes)
}

/// Rules and istio-iptables arguments for one annotation map, as the backend would apply them.
fn render(settings: &Settings, values: &InjectorValues, format: RuleFormat) -> (String, Vec<String>) {
    let Some(cfg) = CaptureConfig::from_settings(settings, values) else {
        return (format!("# {} is NONE: no capture rules\n", keys::INTERCEPTION_MODE), Vec::new());
    };
    let plan = compile(&cfg);
    let text = match format {
        RuleFormat::Nft => nft::render(&plan),
        RuleFormat::Iptables => {
            let mut s = format!("# iptables-restore --noflush\n{}", render_restore(&plan, Family::V4));
            if plan.ipv6 {
                s.push_str(&format!("# ip6tables-restore --noflush\n{}", render_restore(&plan, Family::V6)));
            }
            s
        }
    };
    (text, cfg.to_istio_args())
}

/// The preview of changing `workload`'s passthrough settings to `proposed`. `Err`: the
/// proposed settings are invalid (every bad item).
pub fn preview(
    workload: &WorkloadInfo,
    proposed: &Passthrough,
    others: &[WorkloadInfo],
    values: &InjectorValues,
    format: RuleFormat,
    dialect: Dialect,
) -> Result<Preview, SettingErrors> {
    let prepared = prepare(&workload.annotations, proposed, dialect)?;
    let new_settings = prepared.settings;
    let mut warnings = prepared.warnings;
    warnings.extend(self::warnings(workload, &new_settings, others));
    warnings.extend(unknown_key_warnings(&workload.annotations));
    let (mut current, mut proposed_text) = (String::new(), String::new());
    let mut args = IstioArgsPair::default();
    if workload.meshed {
        match Settings::from_annotations(&workload.annotations) {
            Ok(s) => (current, args.current) = render(&s, values, format),
            // The template is already broken (written around the API): no current rules can be
            // shown, but the proposed ones still can.
            Err(e) => {
                warnings.push(format!("The current annotations are invalid, so no current rules are shown:\n{e}"))
            }
        }
        (proposed_text, args.proposed) = render(&new_settings, values, format);
    }
    Ok(Preview {
        // The server names the cluster; the engine does not know it.
        cluster: String::new(),
        settings: prepared.canonical,
        format,
        diff: diff_lines(&current, &proposed_text),
        current,
        proposed: proposed_text,
        istio_args: args,
        warnings,
        impact: Vec::new(),
        fixes: Vec::new(),
        removes: Vec::new(),
    })
}

/// A line diff of `a` → `b` (longest common subsequence). Very long inputs, where the
/// quadratic table would be too big, fall back to "all removed, all added".
pub fn diff_lines(a: &str, b: &str) -> Vec<DiffLine> {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let line = |op: &str, l: &str| DiffLine { op: op.to_string(), line: l.to_string() };
    // Common prefix and suffix cost nothing and keep the table small.
    let pre = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..].iter().rev().zip(b[pre..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (ma, mb) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    let mut out: Vec<DiffLine> = a[..pre].iter().map(|l| line(" ", l)).collect();
    if ma.len().saturating_mul(mb.len()) > 4_000_000 {
        out.extend(ma.iter().map(|l| line("-", l)));
        out.extend(mb.iter().map(|l| line("+", l)));
    } else {
        // lcs[i][j] = LCS length of ma[i..] and mb[j..].
        let (n, m) = (ma.len(), mb.len());
        let mut lcs = vec![0u32; (n + 1) * (m + 1)];
        let at = |i: usize, j: usize| i * (m + 1) + j;
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[at(i, j)] =
                    if ma[i] == mb[j] { lcs[at(i + 1, j + 1)] + 1 } else { lcs[at(i + 1, j)].max(lcs[at(i, j + 1)]) };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n && j < m {
            if ma[i] == mb[j] {
                out.push(line(" ", ma[i]));
                i += 1;
                j += 1;
            } else if lcs[at(i + 1, j)] >= lcs[at(i, j + 1)] {
                out.push(line("-", ma[i]));
                i += 1;
            } else {
                out.push(line("+", mb[j]));
                j += 1;
            }
        }
        out.extend(ma[i..].iter().map(|l| line("-", l)));
        out.extend(mb[j..].iter().map(|l| line("+", l)));
    }
    out.extend(a[a.len() - suf..].iter().map(|l| line(" ", l)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ServiceInfo, ServicePort, WorkloadRef};

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn workload(ns: &str, name: &str, meshed: bool, target: Option<u16>) -> WorkloadInfo {
        WorkloadInfo {
            services: target
                .map(|t| ServiceInfo {
                    name: name.into(),
                    cluster_ip: None,
                    ports: vec![ServicePort { port: t, target_port: t }],
                })
                .into_iter()
                .collect(),
            ..WorkloadInfo::deployment(WorkloadRef::new(ns, name), meshed)
        }
    }

    fn ports(list: &[&str]) -> Passthrough {
        Passthrough { inbound_ports: list.iter().map(|s| s.to_string()).collect(), ..Passthrough::default() }
    }

    #[test]
    fn round_trip_and_patch() {
        let p = Passthrough {
            inbound_ports: vec!["5000".into(), "8000-8100".into()],
            outbound_ip_ranges: vec!["10.0.0.0/8".into()],
            include_inbound_ports: Some(String::new()),
            ..Passthrough::default()
        };
        let a = to_annotations(&p);
        assert_eq!(a[keys::EXCLUDE_INBOUND_PORTS], "5000,8000-8100");
        assert_eq!(a[keys::INCLUDE_INBOUND_PORTS], "");
        assert!(!a.contains_key(keys::EXCLUDE_OUTBOUND_PORTS));
        assert_eq!(from_annotations(&a), p);

        let current = ann(&[
            ("other", "x"),
            (keys::EXCLUDE_OUTBOUND_PORTS, "25"),
            (keys::EXCLUDE_INBOUND_PORTS, "5000,8000-8100"),
        ]);
        let (set, remove) = patch(&current, &p);
        assert_eq!(set.keys().collect::<Vec<_>>(), vec![keys::EXCLUDE_OUTBOUND_IP_RANGES, keys::INCLUDE_INBOUND_PORTS]);
        assert_eq!(remove, vec![keys::EXCLUDE_OUTBOUND_PORTS.to_string()]);
        let c = candidate(&current, &p);
        assert_eq!(c["other"], "x");
        assert!(!c.contains_key(keys::EXCLUDE_OUTBOUND_PORTS));
        let (set, remove) = patch(&c, &p);
        assert!(set.is_empty() && remove.is_empty(), "writing the same values is a no-op");
    }

    #[test]
    fn every_bad_item_with_the_engines_message() {
        let err = prepare(&BTreeMap::new(), &ports(&["70000", "abc", "5000"]), Dialect::Meshpass).unwrap_err();
        let f = field_errors(&err);
        assert_eq!(f.len(), 2);
        assert_eq!(
            f[0],
            FieldError {
                field: "inboundPorts".into(),
                key: keys::EXCLUDE_INBOUND_PORTS.into(),
                item: "70000".into(),
                reason: "is not a port (1-65535)".into()
            }
        );
        assert_eq!(f[1].item, "abc");
        assert_eq!(
            err.to_string(),
            "traffic.sidecar.istio.io/excludeInboundPorts: \"70000\" is not a port (1-65535)\n\
             traffic.sidecar.istio.io/excludeInboundPorts: \"abc\" is not a port (1-65535)"
        );
    }

    #[test]
    fn blank_and_comma_items_and_other_keys() {
        let p = Passthrough {
            inbound_ports: vec!["".into(), "80,81".into()],
            outbound_ip_ranges: vec!["10.0.0.0/33".into()],
            interception_mode: Some("redirect".into()),
            ..Passthrough::default()
        };
        let current = ann(&[(keys::EXCLUDE_INTERFACES, "1bad")]);
        let f = field_errors(&prepare(&current, &p, Dialect::Meshpass).unwrap_err());
        let got: Vec<(&str, &str)> = f.iter().map(|e| (e.field.as_str(), e.item.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("inboundPorts", ""),
                ("inboundPorts", "80,81"),
                ("outboundIpRanges", "10.0.0.0/33"),
                (keys::EXCLUDE_INTERFACES, "1bad"),
                ("interceptionMode", "redirect"),
            ]
        );
    }

    #[test]
    fn the_istio_trap_and_catch_all_ranges() {
        let me = workload("default", "helloworld-v1", true, Some(5000));
        let others = vec![me.clone(), workload("default", "sleep", true, Some(80)), workload("x", "ext", false, None)];
        let s = prepare(
            &BTreeMap::new(),
            &Passthrough {
                inbound_ports: vec!["5000".into()],
                outbound_ip_ranges: vec!["0.0.0.0/0".into(), "::/0".into()],
                ..Passthrough::default()
            },
            Dialect::Meshpass,
        )
        .unwrap()
        .settings;
        let w = warnings(&me, &s, &others);
        assert_eq!(w.len(), 3, "{w:?}");
        assert_eq!(
            w[0],
            "Port 5000 of default/helloworld-v1 is excluded from its sidecar, but meshed clients (default/sleep) \
             still send mesh traffic to it through their own sidecars; with mutual TLS (Istio) those calls fail, \
             and their responses still show their own sidecar's headers."
        );
        assert!(w[1].contains("0.0.0.0/0") && w[2].contains("::/0"));
        // No other meshed workload: nobody falls into the trap.
        assert!(warnings(&me, &s, std::slice::from_ref(&me)).iter().all(|w| !w.starts_with("Port")));
        // Unmeshed: one warning that says so.
        let ext = workload("x", "ext", false, None);
        assert!(warnings(&ext, &s, &others)[0].contains("has no sidecar"));
    }

    #[test]
    fn preview_renders_both_formats_and_diffs() {
        let me = workload("default", "helloworld-v1", true, Some(5000));
        let p = ports(&["5000"]);
        let v = InjectorValues::default();
        let nft = preview(&me, &p, &[], &v, RuleFormat::Nft, Dialect::Meshpass).unwrap();
        assert!(nft.current.contains("table inet meshpass"));
        assert_ne!(nft.current, nft.proposed);
        assert!(nft.diff.iter().any(|d| d.op == "+" && d.line.contains("5000")));
        assert!(
            nft.istio_args.proposed.join(" ").contains("15090,15021,5000,15020")
                || nft.istio_args.proposed.join(" ").contains("5000")
        );
        let ipt = preview(&me, &p, &[], &v, RuleFormat::Iptables, Dialect::Istio).unwrap();
        assert!(ipt.current.starts_with("# iptables-restore --noflush\n* nat\n"));
        assert!(ipt.diff.iter().any(|d| d.op == "+" && d.line.contains("--dport 5000")));
        let unmeshed = workload("x", "ext", false, None);
        let u = preview(&unmeshed, &p, &[], &v, RuleFormat::Nft, Dialect::Meshpass).unwrap();
        assert_eq!((u.current.as_str(), u.proposed.as_str()), ("", ""));
        assert!(u.diff.is_empty() && u.warnings[0].contains("no sidecar"));
        assert!(preview(&me, &ports(&["x"]), &[], &v, RuleFormat::Nft, Dialect::Meshpass).is_err());
    }

    #[test]
    fn typos_are_warned_about() {
        let a = ann(&[("traffic.sidecar.istio.io/excludeOutboundPort", "25"), (keys::EXCLUDE_INBOUND_PORTS, "1")]);
        let w = unknown_key_warnings(&a);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("excludeOutboundPort ") && w[0].contains("typo"));
    }

    #[test]
    fn lcs_diff() {
        let d = diff_lines("a\nb\nc\nd\n", "a\nc\nx\nd\n");
        let s: Vec<String> = d.iter().map(|l| format!("{}{}", l.op, l.line)).collect();
        assert_eq!(s, vec![" a", "-b", " c", "+x", " d"]);
        assert!(diff_lines("", "").is_empty());
        assert_eq!(diff_lines("", "x").len(), 1);
    }

    #[test]
    fn stored_values_are_judged_in_the_backends_dialect() {
        // Written around the API: not canonical, with a range (fine locally, refused by Istio).
        let stored = ann(&[(keys::EXCLUDE_INBOUND_PORTS, "05000,8000-8100")]);
        let local = stored_warnings(&stored, Dialect::Meshpass);
        assert_eq!(local.len(), 1, "{local:?}");
        assert!(local[0].contains("its canonical form is \"5000,8000-8100\""), "{}", local[0]);
        let istio = stored_warnings(&stored, Dialect::Istio);
        assert_eq!(istio.len(), 1, "{istio:?}");
        assert!(
            istio[0].contains("Istio's sidecar injector refuses") && istio[0].contains("8000-8100"),
            "{}",
            istio[0]
        );
        assert!(stored_warnings(&ann(&[(keys::EXCLUDE_INBOUND_PORTS, "5000")]), Dialect::Istio).is_empty());
    }
}
