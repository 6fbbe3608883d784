//! Istio conformance in the kernel: for every capture case with an iptables golden,
//! `meshpass iptables` applied in a fresh network namespace leaves exactly the
//! `iptables-save`/`ip6tables-save` state that Istio's golden restore input leaves in
//! another fresh namespace. For every `inject-*` case, `meshpass rules --apply --backend
//! iptables` from the case's annotations leaves the same state as the expected
//! istio-iptables arguments; every `inject-reject-*` case is rejected naming the annotation.

mod support;

use support::{meshpass, TestNetns};

fn lines(v: &serde_json::Value) -> String {
    v.as_array().map(|a| a.iter().map(|l| format!("{}\n", l.as_str().expect("line"))).collect()).unwrap_or_default()
}

/// Applies Istio's golden restore input; `Err` with stderr when iptables rejects it.
fn apply_golden(ns: &TestNetns, v4: &str, v6: &str) -> Result<(), String> {
    for (prog, input) in [("iptables-restore", v4), ("ip6tables-restore", v6)] {
        if input.is_empty() {
            continue;
        }
        let out = ns.exec_with(&[prog, "--noflush"], Some(input), &[]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
    Ok(())
}

#[test]
fn meshpass_iptables_matches_istio_state_for_every_capture_case() {
    if !support::privileged("meshpass_iptables_matches_istio_state_for_every_capture_case") {
        return;
    }
    let Some(shared) = support::shared_dir() else { return };
    let mut checked = 0;
    let mut failures = Vec::new();
    for (name, case) in support::cases(&shared) {
        if name.starts_with("cni-") || name.starts_with("inject-") {
            continue;
        }
        let Some(ipt) = case.pointer("/expected/iptables").filter(|v| !v.is_null()) else { continue };
        let reference = TestNetns::new("ref");
        let golden = apply_golden(&reference, &lines(&ipt["restore_v4"]), &lines(&ipt["restore_v6"]));

        let ours = TestNetns::new("ours");
        let servers: Vec<&str> = case["environment_facts"]["resolv_conf_nameservers"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
            .unwrap_or_default();
        // `ip netns exec` shows /etc/netns/<ns>/resolv.conf as /etc/resolv.conf: the real
        // path istio-iptables reads its DNS servers from.
        let dir = format!("/etc/netns/{}", ours.name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let resolv: String = servers.iter().map(|s| format!("nameserver {s}\n")).collect();
        std::fs::write(format!("{dir}/resolv.conf"), resolv).expect("resolv.conf");

        let mut argv: Vec<String> = vec![meshpass().into(), "iptables".into()];
        argv.extend(
            case["istio_iptables_argv"].as_array().expect("argv")[1..]
                .iter()
                .map(|a| a.as_str().expect("arg").to_string())
                .filter(|a| a != "--dry-run"),
        );
        if case["config"]["enable_ipv6"] == true {
            argv.push("--ipv6".into());
        }
        let env: Vec<(String, String)> = case["env"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default();
        let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = ours.exec_with(&argv_ref, None, &env);
        let ok = out.status.success();
        match (&golden, ok) {
            (Ok(()), true) => {
                let (want, got) = (reference.netfilter_state(false), ours.netfilter_state(false));
                if want != got {
                    failures.push(format!("== {name}\n-- istio\n{want}-- meshpass\n{got}"));
                }
            }
            // Both refuse (e.g. an owner group name the machine does not know): same outcome,
            // and meshpass must leave nothing behind.
            (Err(_), false) => {
                let empty = TestNetns::new("empty");
                if ours.netfilter_state(false) != empty.netfilter_state(false) {
                    failures.push(format!("== {name}: failed apply left rules behind"));
                }
            }
            (g, _) => failures.push(format!(
                "== {name}: istio {:?}, meshpass exit {:?}: {}",
                g,
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            )),
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{} of {checked} cases differ:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(checked, 27);
}

/// `meshpass rules` flags and annotations equivalent to an inject case's install values.
fn rules_argv(case: &serde_json::Value) -> Vec<String> {
    let mut argv: Vec<String> = vec!["rules".into(), "--apply".into(), "--backend".into(), "iptables".into()];
    let mut ann: Vec<(String, String)> = case["input"]["pod_traffic_annotations"]
        .as_object()
        .expect("annotations")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("str").to_string()))
        .collect();
    for f in case["input"]["install_set_flags"].as_array().into_iter().flatten() {
        let (k, v) = f.as_str().expect("flag").split_once('=').expect("k=v");
        let key = match k {
            "values.global.proxy.statusPort" => {
                argv.extend(["--status-port".into(), v.into()]);
                continue;
            }
            "values.global.proxy.includeIPRanges" => "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "values.global.proxy.excludeIPRanges" => "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "values.global.proxy.excludeInboundPorts" => "traffic.sidecar.istio.io/excludeInboundPorts",
            _ => continue,
        };
        if !ann.iter().any(|(k, _)| k == key) {
            ann.push((key.into(), v.into()));
        }
    }
    if case["input"]["mesh_override"].as_str() == Some("meshConfig.defaultConfig.interceptionMode=TPROXY") {
        ann.push(("sidecar.istio.io/interceptionMode".into(), "TPROXY".into()));
    }
    if let Some(uid) = case.pointer("/input/istio_proxy_securityContext_in_input/runAsUser").and_then(|u| u.as_u64()) {
        argv.extend(["--proxy-uid".into(), uid.to_string()]);
    }
    for (k, v) in ann {
        argv.extend(["-a".into(), format!("{k}={v}")]);
    }
    argv
}

#[test]
fn meshpass_rules_matches_injected_istio_iptables_for_every_inject_case() {
    if !support::privileged("meshpass_rules_matches_injected_istio_iptables_for_every_inject_case") {
        return;
    }
    let Some(shared) = support::shared_dir() else { return };
    let mut checked = 0;
    for (name, case) in support::cases(&shared) {
        if !name.starts_with("inject-") || name.starts_with("inject-reject-") {
            continue;
        }
        let expected = TestNetns::new("inj-ref");
        // The CNI flavour only validates in the init container; the rules are the same.
        let mut argv: Vec<String> = vec![meshpass().into(), "iptables".into()];
        argv.extend(
            case["expected"]["istio_iptables_args"].as_array().expect("args")[1..]
                .iter()
                .map(|a| a.as_str().expect("arg").to_string())
                .filter(|a| a != "--run-validation" && a != "--skip-rule-apply"),
        );
        let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = expected.exec_with(&argv_ref, None, &[]);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));

        let ours = TestNetns::new("inj-ours");
        let mut argv = vec![meshpass().to_string()];
        argv.extend(rules_argv(&case));
        let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = ours.exec_with(&argv_ref, None, &[]);
        assert!(out.status.success(), "{name}: {argv:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(expected.netfilter_state(false), ours.netfilter_state(false), "{name}");
        checked += 1;
    }
    assert_eq!(checked, 18);
}

#[test]
fn inject_reject_cases_are_rejected_naming_the_annotation() {
    let Some(shared) = support::shared_dir() else { return };
    for (name, case) in support::cases(&shared) {
        if !name.starts_with("inject-reject-") {
            continue;
        }
        let (key, value) = case["input"]["pod_annotations"].as_object().expect("ann").iter().next().expect("one");
        let out = std::process::Command::new(meshpass())
            .args(["rules", "--format", "iptables", "-a", &format!("{key}={}", value.as_str().expect("str"))])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key.as_str()), "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}: printed rules despite the error");
    }
}
