//! Istio conformance of the pure core: for every istio-iptables capture case, the rendered
//! `iptables-restore` input is byte-for-byte Istio's golden (per family), and every
//! `inject-*` case's annotations give Istio's expected istio-iptables arguments.

mod common;

use meshpass_capture::render::iptables::render_restore;
use meshpass_capture::{compile, ir::Family, CaptureConfig, InjectorValues, IstioArgs};
use meshpass_settings::Settings;
use std::collections::BTreeMap;

fn lines(v: &serde_json::Value) -> String {
    v.as_array().expect("array").iter().map(|l| format!("{}\n", l.as_str().expect("line"))).collect()
}

#[test]
fn iptables_restore_input_matches_istio_goldens() {
    let Some(shared) = common::shared_dir() else { return };
    let mut checked = 0;
    let mut failures = Vec::new();
    for (name, case) in common::cases(&shared) {
        let Some(ipt) = case.pointer("/expected/iptables").filter(|v| !v.is_null()) else { continue };
        if name.starts_with("cni-") || name.starts_with("inject-") {
            continue;
        }
        let args = IstioArgs::from_case_config(&case["config"]);
        let cfg = args.to_config().unwrap_or_else(|e| panic!("{name}: {e}"));
        let plan = compile(&cfg);
        // A case counts only when a golden with rules was compared: two empty texts agree on
        // nothing.
        let mut compared = false;
        for (family, key) in [(Family::V4, "restore_v4"), (Family::V6, "restore_v6")] {
            // Istio copies resolv.conf's text into DNS rules ("::127.0.0.53"); meshpass prints
            // the canonical RFC 5952 form of the same address. Same kernel state.
            let want = ipt
                .get(key)
                .filter(|v| !v.is_null())
                .map(lines)
                .unwrap_or_default()
                .replace("::127.0.0.53/128", "::7f00:35/128");
            let got = render_restore(&plan, family);
            if got != want {
                failures.push(format!("== {name} {key}\n-- want\n{want}-- got\n{got}"));
            }
            compared |= want.lines().any(|l| l.starts_with("-A "));
        }
        if compared {
            checked += 1;
        } else {
            failures.push(format!("== {name}: Istio's golden has no rule to compare"));
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(checked, 27, "expected the 27 istio-iptables capture cases");
}

#[test]
fn cni_plugin_goldens_match() {
    let Some(shared) = common::shared_dir() else { return };
    let mut checked = 0;
    for (name, case) in common::cases(&shared) {
        if !name.starts_with("cni-") {
            continue;
        }
        let args = IstioArgs::from_case_config(&case["config"]);
        let cfg = args.to_config().unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = lines(&case["expected"]["iptables"]["restore_v4"]);
        assert!(want.lines().any(|l| l.starts_with("-A ")), "{name}: Istio's golden has no rule to compare");
        assert_eq!(render_restore(&compile(&cfg), Family::V4), want, "{name}");
        checked += 1;
    }
    assert!(checked >= 8, "expected the CNI plugin cases, got {checked}");
}

/// Mesh-wide values of an inject case (helm `--set` flags and mesh overrides).
fn injector_values(case: &serde_json::Value) -> InjectorValues {
    let mut v = InjectorValues::default();
    for f in case["input"]["install_set_flags"].as_array().into_iter().flatten() {
        let f = f.as_str().expect("flag");
        let (k, val) = f.split_once('=').expect("k=v");
        // Every `values.global.proxy.*` capture value is read as the injector reads it.
        if let Some(path) = k.strip_prefix("values.") {
            if meshpass_settings::mesh::VALUE_KEYS.iter().any(|(p, _)| *p == path) {
                v.defaults.set_value(path, val).expect("valid value");
            }
        }
    }
    if case["input"]["mesh_override"].as_str() == Some("meshConfig.defaultConfig.interceptionMode=TPROXY") {
        v.interception_mode = meshpass_settings::InterceptionMode::Tproxy;
    }
    if let Some(uid) = case.pointer("/input/istio_proxy_securityContext_in_input/runAsUser").and_then(|u| u.as_u64()) {
        v.proxy_uid = uid as u32;
    }
    v
}

#[test]
fn injector_derives_istio_iptables_args() {
    let Some(shared) = common::shared_dir() else { return };
    let mut checked = 0;
    for (name, case) in common::cases(&shared) {
        if !name.starts_with("inject-") || name.starts_with("inject-reject-") {
            continue;
        }
        let ann: BTreeMap<String, String> =
            serde_json::from_value(case["input"]["pod_traffic_annotations"].clone()).expect("annotations");
        let settings = Settings::from_annotations(&ann).unwrap_or_else(|e| panic!("{name}: {e}"));
        let cfg = CaptureConfig::from_settings(&settings, &injector_values(&case)).expect("mode is not NONE");
        let want = &case["expected"]["istio_iptables_flag_map"];
        let got = cfg.to_istio_args();
        let mut got_map = BTreeMap::new();
        for pair in got.chunks(2) {
            got_map.insert(pair[0].clone(), pair[1].clone());
        }
        for (flag, val) in want.as_object().expect("map") {
            if let Some(v) = val.as_str() {
                assert_eq!(got_map.get(flag).map(String::as_str), Some(v), "{name}: {flag}");
            }
        }
        for flag in got_map.keys() {
            assert!(want.get(flag).is_some(), "{name}: unexpected {flag}");
        }
        checked += 1;
    }
    assert_eq!(checked, 18);
}

#[test]
fn rejects_what_istio_rejects() {
    let Some(shared) = common::shared_dir() else { return };
    let mut checked = 0;
    for (name, case) in common::cases(&shared) {
        if !name.starts_with("inject-reject-") {
            continue;
        }
        let ann: BTreeMap<String, String> =
            serde_json::from_value(case["input"]["pod_annotations"].clone()).expect("ann");
        let err = Settings::from_annotations(&ann).expect_err(&name);
        let key = ann.keys().next().expect("one key");
        assert!(err.iter().all(|e| &e.key == key), "{name}: {err}");
        checked += 1;
    }
    let text = std::fs::read_to_string(shared.join("conformance/istio/validation.json")).expect("validation.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    for c in v["webhook"]["cases"].as_array().expect("cases") {
        let (key, value) = (c["annotation"].as_str().expect("k"), c["value"].as_str().expect("v"));
        if value == "<anything>" {
            continue;
        }
        let ann = BTreeMap::from([(key.to_string(), value.to_string())]);
        if c["accepted"] == false {
            let err = Settings::from_annotations(&ann).expect_err(&format!("{key}={value:?} must be rejected"));
            assert_eq!(err.iter().next().expect("error").key, key);
            checked += 1;
        }
    }
    assert!(checked > 30);
}
