//! Istio conformance in the kernel: for every capture case with an iptables golden,
//! `meshpass iptables` applied in a fresh network namespace leaves exactly the
//! `iptables-save`/`ip6tables-save` state that Istio's golden restore input leaves in
//! another fresh namespace. For every `inject-*` case, `meshpass rules --apply --backend
//! iptables` from the case's annotations leaves the same state as the expected
//! istio-iptables arguments; every `inject-reject-*` case is rejected naming the annotation.

mod support;

use support::{meshpass, netfilter_state, Netns};

fn lines(v: &serde_json::Value) -> String {
    v.as_array().map(|a| a.iter().map(|l| format!("{}\n", l.as_str().expect("line"))).collect()).unwrap_or_default()
}

/// Applies Istio's golden restore input; `Err` with stderr when iptables rejects it.
fn apply_golden(ns: &Netns, v4: &str, v6: &str) -> Result<(), String> {
    for (prog, input) in [("iptables-restore", v4), ("ip6tables-restore", v6)] {
        if input.is_empty() {
            continue;
        }
        let out = ns.exec(&[prog, "--noflush"], Some(input));
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
    Ok(())
}

/// The owner groups a case names (`ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]=java,202`), with the
/// numbers the test gives them: iptables resolves a group name when it loads the rule, so both
/// sides need the groups to exist, and the machine's own `/etc/group` may not have them.
fn named_groups(case: &serde_json::Value) -> Vec<(String, u32)> {
    let mut names: Vec<String> = case["env"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.contains("OWNER_GROUPS"))
        .flat_map(|(_, v)| {
            v.as_str().unwrap_or_default().split(',').map(str::trim).map(String::from).collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty() && g != "*" && g.parse::<u32>().is_err())
        .collect();
    names.sort();
    names.dedup();
    names.into_iter().zip(5001..).collect()
}

meshpass_test_support::namespaced_test! {
    /// Every capture case applies on both sides (the owner groups a case names exist for the
    /// test in the namespaces' private `/etc/group`), installs rules, and leaves the same state.
    fn meshpass_iptables_matches_istio_state_for_every_capture_case(namespaces) {
        let Some(shared) = support::shared_dir() else { return };
        let mut checked = 0;
        let mut with_groups = 0;
        let mut failures = Vec::new();
        for (name, case) in support::cases(&shared) {
            if name.starts_with("cni-") || name.starts_with("inject-") {
                continue;
            }
            let Some(ipt) = case.pointer("/expected/iptables").filter(|v| !v.is_null()) else { continue };
            let groups = named_groups(&case);
            let groups: Vec<(&str, u32)> = groups.iter().map(|(n, g)| (n.as_str(), *g)).collect();
            with_groups += usize::from(!groups.is_empty());
            let (v4, v6) = (lines(&ipt["restore_v4"]), lines(&ipt["restore_v6"]));
            let reference = namespaces.create("ref").with_groups(&groups);
            if let Err(e) = apply_golden(&reference, &v4, &v6) {
                failures.push(format!("== {name}: Istio's golden does not apply: {e}"));
                continue;
            }

            let ours = namespaces.create("ours").with_groups(&groups);
            let servers: Vec<&str> = case["environment_facts"]["resolv_conf_nameservers"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
                .unwrap_or_default();
            // `ip netns exec` shows /etc/netns/<ns>/resolv.conf as /etc/resolv.conf: the real
            // path istio-iptables reads its DNS servers from.
            let dir = format!("/etc/netns/{}", ours.name());
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
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
            let out = ours.exec_with(&argv_ref, None, &env);
            if !out.status.success() {
                failures.push(format!(
                    "== {name}: meshpass iptables exit {:?}: {}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                ));
                continue;
            }
            // A side that installed nothing would compare equal to another that did nothing.
            let empty = netfilter_state(&namespaces.create("empty"), false);
            let (want, got) = (netfilter_state(&reference, false), netfilter_state(&ours, false));
            if want == empty || got == empty {
                failures.push(format!("== {name}: a side installed no rules (istio {}, meshpass {})", want != empty, got != empty));
            } else if want != got {
                failures.push(format!("== {name}\n-- istio\n{want}-- meshpass\n{got}"));
            } else {
                checked += 1;
            }
        }
        assert!(failures.is_empty(), "{} cases fail ({checked} match):\n{}", failures.len(), failures.join("\n"));
        assert_eq!(checked, 27, "every istio-iptables capture case compared");
        assert_eq!(with_groups, 4, "the owner-group cases (java, ftp) ran with their groups");
    }
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

meshpass_test_support::namespaced_test! {
    fn meshpass_rules_matches_injected_istio_iptables_for_every_inject_case(namespaces) {
        let Some(shared) = support::shared_dir() else { return };
        let mut checked = 0;
        for (name, case) in support::cases(&shared) {
            if !name.starts_with("inject-") || name.starts_with("inject-reject-") {
                continue;
            }
            let expected = namespaces.create("inj-ref");
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

            let ours = namespaces.create("inj-ours");
            let mut argv = vec![meshpass().to_string()];
            argv.extend(rules_argv(&case));
            let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
            let out = ours.exec_with(&argv_ref, None, &[]);
            assert!(out.status.success(), "{name}: {argv:?}: {}", String::from_utf8_lossy(&out.stderr));
            let (want, got) = (netfilter_state(&expected, false), netfilter_state(&ours, false));
            assert_ne!(want, netfilter_state(&namespaces.create("empty"), false), "{name}: no rules installed");
            assert_eq!(want, got, "{name}");
            checked += 1;
        }
        assert_eq!(checked, 18);
    }
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
