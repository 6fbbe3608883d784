//! `explain_plan` over plans compiled from capture configurations: one table test per Istio
//! semantic of istio-semantics.md §4–§6 and §12, each naming the verdict, the port and the
//! rule (by label) that decided.

use meshpass_capture::explain::{explain_plan, Direction, Flow, StepKind, Verdict};
use meshpass_capture::ir::{OwnerId, Plan, Proto};
use meshpass_capture::{compile, CaptureConfig, InjectorValues, OwnerGroups};
use meshpass_settings::{keys, InterceptionMode, Settings};
use std::collections::BTreeMap;
use std::net::IpAddr;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// The pod's address in these tests.
const POD: &str = "198.18.0.10";

/// What Istio's injector gives a pod with these annotations (mesh defaults otherwise).
fn config(annotations: &[(&str, &str)], values: InjectorValues) -> CaptureConfig {
    let map: BTreeMap<String, String> = annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let settings = Settings::from_annotations(&map).expect("valid annotations");
    CaptureConfig::from_settings(&settings, &values).expect("capture enabled")
}

fn plan(annotations: &[(&str, &str)]) -> Plan {
    compile(&config(annotations, InjectorValues::default()))
}

fn plan_cfg(annotations: &[(&str, &str)], edit: impl FnOnce(&mut CaptureConfig)) -> Plan {
    let mut cfg = config(annotations, InjectorValues::default());
    edit(&mut cfg);
    compile(&cfg)
}

fn out(dst: &str, port: u16) -> Flow {
    Flow::outbound(ip(dst), port).pod_ip(ip(POD))
}

fn inb(port: u16) -> Flow {
    Flow::inbound_to(ip(POD), port)
}

/// Expected outcome: verdict, port, label of the deciding rule (`None`: no rule decided).
type Want = (Verdict, Option<u16>, Option<&'static str>);

const CAPTURED_OUT: Want = (Verdict::Redirect, Some(15001), Some("capture-outbound"));
const CAPTURED_IN: Want = (Verdict::Redirect, Some(15006), Some("capture-inbound"));

#[track_caller]
fn check(plan: &Plan, cases: &[(&str, Flow, Want)]) {
    let mut failures = Vec::new();
    for (name, flow, want) in cases {
        let e = explain_plan(plan, flow);
        let got = (e.verdict, e.port, e.decided_by.as_ref().and_then(|r| r.label.as_deref()));
        if got != *want {
            failures.push(format!("{name}: want {want:?}, got {got:?}\n{e}\n"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn injector_defaults() {
    let p = plan(&[]);
    check(
        &p,
        &[
            ("app tcp out", out("10.0.0.1", 80), CAPTURED_OUT),
            ("udp is not redirected", out("10.0.0.1", 80).udp(), (Verdict::Passthrough, None, None)),
            ("inbound app port", inb(8080), CAPTURED_IN),
            ("inbound health", inb(15021), (Verdict::Passthrough, None, Some("sidecar-ports"))),
            ("inbound prometheus", inb(15090), (Verdict::Passthrough, None, Some("sidecar-ports"))),
            ("inbound status", inb(15020), (Verdict::Passthrough, None, Some("sidecar-ports"))),
            ("inbound tunnel", inb(15008), (Verdict::Passthrough, None, Some("tunnel-port"))),
            ("inbound udp", inb(8080).udp(), (Verdict::Passthrough, None, None)),
            ("app to localhost", out("127.0.0.1", 8080), (Verdict::Passthrough, None, Some("app-loopback"))),
        ],
    );
    let e = explain_plan(&p, &out("10.0.0.1", 80).udp());
    assert!(e.trace.iter().any(|s| s.message == "no rule matched in nat OUTPUT: not captured"), "{e}");
}

#[test]
fn exclude_outbound_ports_beat_everything() {
    let p = plan_cfg(&[(keys::EXCLUDE_OUTBOUND_PORTS, "5432,53")], |c| {
        c.redirect_dns = true;
        c.dns_servers_v4 = vec![ip("10.96.0.10")];
    });
    let x = (Verdict::Passthrough, None, Some("exclude-outbound-ports"));
    check(
        &p,
        &[
            ("tcp", out("10.0.0.1", 5432), x),
            ("udp", out("10.0.0.1", 5432).udp(), x),
            ("dns udp to the resolver", out("10.96.0.10", 53).udp(), x),
            ("dns tcp to the resolver", out("10.96.0.10", 53), x),
            ("proxy to own pod over lo", out(POD, 5432).as_proxy(), x),
            ("other port captured", out("10.0.0.1", 5433), CAPTURED_OUT),
        ],
    );
    let e = explain_plan(&p, &out("10.0.0.1", 5432).udp());
    assert_eq!(e.decided_by.map(|r| r.text), Some("-p udp --dport 5432 -j RETURN".into()));
}

#[test]
fn exclude_cidrs_beat_includes() {
    let p = plan(&[
        (keys::INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8"),
        (keys::EXCLUDE_OUTBOUND_IP_RANGES, "10.1.0.0/16,192.168.0.0/16"),
    ]);
    let x = (Verdict::Passthrough, None, Some("exclude-outbound-ip-ranges"));
    check(
        &p,
        &[
            ("in both lists", out("10.1.2.3", 80), x),
            ("excluded only", out("192.168.1.1", 80), x),
            ("included", out("10.2.0.1", 80), (Verdict::Redirect, Some(15001), Some("include-outbound-ip-ranges"))),
            ("neither", out("172.16.0.1", 80), (Verdict::Passthrough, None, None)),
        ],
    );
    let e = explain_plan(&p, &out("192.168.1.1", 80));
    assert_eq!(e.decided_by.map(|r| r.text), Some("-d 192.168.0.0/16 -j RETURN".into()));
    // Exclusions are emitted even without an include list.
    let p = plan(&[(keys::EXCLUDE_OUTBOUND_IP_RANGES, "10.1.0.0/16")]);
    check(&p, &[("excluded with *", out("10.1.0.1", 80), x), ("other", out("10.2.0.1", 80), CAPTURED_OUT)]);
}

#[test]
fn include_ports_ignore_include_cidrs() {
    let p = plan(&[
        (keys::INCLUDE_OUTBOUND_IP_RANGES, ""),
        (keys::INCLUDE_OUTBOUND_PORTS, "443,3000-3010"),
        (keys::EXCLUDE_OUTBOUND_IP_RANGES, "10.9.0.0/16"),
    ]);
    let inc = (Verdict::Redirect, Some(15001), Some("include-outbound-ports"));
    check(
        &p,
        &[
            ("included port anywhere", out("203.0.113.5", 443), inc),
            ("range", out("203.0.113.5", 3005), inc),
            ("other port", out("203.0.113.5", 80), (Verdict::Passthrough, None, None)),
            (
                "excluded cidr still wins",
                out("10.9.1.1", 443),
                (Verdict::Passthrough, None, Some("exclude-outbound-ip-ranges")),
            ),
            ("include ports are tcp only", out("203.0.113.5", 443).udp(), (Verdict::Passthrough, None, None)),
        ],
    );
    let e = explain_plan(&p, &out("203.0.113.5", 3005));
    assert_eq!(e.decided_by.map(|r| r.text), Some("-p tcp --dport 3000:3010 -j ISTIO_REDIRECT".into()));
}

#[test]
fn empty_include_ranges_capture_nothing_outbound() {
    let p = plan(&[(keys::INCLUDE_OUTBOUND_IP_RANGES, "")]);
    check(
        &p,
        &[
            ("nothing by ip", out("10.0.0.1", 80), (Verdict::Passthrough, None, None)),
            ("inbound still", inb(80), CAPTURED_IN),
        ],
    );
}

#[test]
fn exclude_inbound_ports_ignored_with_include_list() {
    let p = plan(&[(keys::INCLUDE_INBOUND_PORTS, "8080,9000-9010"), (keys::EXCLUDE_INBOUND_PORTS, "8080")]);
    let inc = (Verdict::Redirect, Some(15006), Some("include-inbound-ports"));
    check(
        &p,
        &[
            ("excluded but listed", inb(8080), inc),
            ("range", inb(9005), inc),
            ("not listed", inb(7070), (Verdict::Passthrough, None, None)),
            ("tunnel", inb(15008), (Verdict::Passthrough, None, Some("tunnel-port"))),
        ],
    );
    let p = plan(&[(keys::INCLUDE_INBOUND_PORTS, "")]);
    check(
        &p,
        &[
            ("no inbound capture", inb(8080), (Verdict::Passthrough, None, None)),
            ("outbound still", out("10.0.0.1", 80), CAPTURED_OUT),
        ],
    );
}

#[test]
fn exclude_inbound_port_ranges() {
    let p = plan(&[(keys::EXCLUDE_INBOUND_PORTS, "9000-9100")]);
    let x = (Verdict::Passthrough, None, Some("exclude-inbound-ports"));
    check(&p, &[("in range", inb(9050), x), ("edge", inb(9100), x), ("past", inb(9101), CAPTURED_IN)]);
    let e = explain_plan(&p, &inb(9050));
    assert_eq!(e.decided_by.map(|r| r.text), Some("-p tcp --dport 9000:9100 -j RETURN".into()));
    let p = plan(&[(keys::EXCLUDE_OUTBOUND_PORTS, "8000-8100")]);
    let x = (Verdict::Passthrough, None, Some("exclude-outbound-ports"));
    check(&p, &[("out range", out("10.0.0.1", 8050), x), ("out past", out("10.0.0.1", 8101), CAPTURED_OUT)]);
}

#[test]
fn proxy_and_loopback() {
    let p = plan(&[]);
    let own = (Verdict::Passthrough, None, Some("proxy-own-traffic"));
    check(
        &p,
        &[
            ("proxy out", out("10.0.0.1", 80).as_proxy(), own),
            ("proxy udp out", out("10.0.0.1", 53).udp().as_proxy(), own),
            ("proxy by uid only", out("10.0.0.1", 80).uid(1337), own),
            ("proxy by gid only (TPROXY: uid 0)", out("10.0.0.1", 80).uid(0).gid(1337), own),
            (
                "proxy to own pod over lo",
                out(POD, 8080).as_proxy(),
                (Verdict::Redirect, Some(15006), Some("proxy-to-self")),
            ),
            ("proxy to own pod, tunnel port", out(POD, 15008).as_proxy(), own),
            ("proxy to localhost", out("127.0.0.1", 8080).as_proxy(), own),
            ("app to own pod over lo", out(POD, 8080), (Verdict::Passthrough, None, Some("app-loopback"))),
            (
                "inbound passthrough from 127.0.0.6",
                out(POD, 8080).as_proxy().from(ip("127.0.0.6")),
                (Verdict::Passthrough, None, Some("inbound-passthrough-source")),
            ),
            // Without knowing the pod's address the flow leaves through eth0.
            ("own address unknown", Flow::outbound(ip(POD), 8080), CAPTURED_OUT),
        ],
    );
}

#[test]
fn multiple_proxy_uids_first_loopback_rule_wins() {
    // §12.4: the first UID's `-o lo ! --uid-owner U1 -j RETURN` also returns U2's traffic.
    let p = plan_cfg(&[], |c| c.proxy_uids = vec![OwnerId::numeric(1337), OwnerId::numeric(2000)]);
    check(
        &p,
        &[
            ("second uid to own pod", out(POD, 8080).uid(2000), (Verdict::Passthrough, None, Some("app-loopback"))),
            ("second uid out", out("10.0.0.1", 80).uid(2000), (Verdict::Passthrough, None, Some("proxy-own-traffic"))),
        ],
    );
}

#[test]
fn include_loopback_cidr_captures_loopback() {
    // §6: an include CIDR with a loopback address drops the app-loopback RETURN.
    let p = plan(&[(keys::INCLUDE_OUTBOUND_IP_RANGES, "127.1.2.3/32")]);
    check(
        &p,
        &[
            (
                "included loopback",
                out("127.1.2.3", 80),
                (Verdict::Redirect, Some(15001), Some("include-outbound-ip-ranges")),
            ),
            ("localhost", out("127.0.0.1", 80), (Verdict::Passthrough, None, Some("localhost"))),
            ("own pod over lo", out(POD, 80), (Verdict::Passthrough, None, None)),
        ],
    );
}

#[test]
fn tproxy_inbound() {
    let p = plan(&[(keys::INTERCEPTION_MODE, "TPROXY"), (keys::EXCLUDE_INBOUND_PORTS, "7000")]);
    let tp = (Verdict::Tproxy, Some(15006), Some("capture-inbound"));
    check(
        &p,
        &[
            ("app port", inb(8080), tp),
            // §12.6: no 15008 exemption on the mangle path.
            ("tunnel port is tproxied", inb(15008), tp),
            ("excluded", inb(7000), (Verdict::Passthrough, None, Some("exclude-inbound-ports"))),
            ("health", inb(15021), (Verdict::Passthrough, None, Some("sidecar-ports"))),
            ("over lo without mark 1338", inb(8080).in_iface("lo"), (Verdict::Passthrough, None, Some("app-loopback"))),
            (
                "from 127.0.0.6 over lo",
                Flow::inbound_to(ip("127.0.0.1"), 8080).in_iface("lo").from(ip("127.0.0.6")),
                (Verdict::Passthrough, None, Some("inbound-passthrough-source")),
            ),
            ("outbound unchanged", out("10.0.0.1", 80), CAPTURED_OUT),
            (
                "proxy (uid 0, gid 1337)",
                out("10.0.0.1", 80).uid(0).gid(1337),
                (Verdict::Passthrough, None, Some("proxy-own-traffic")),
            ),
            (
                "proxy to own pod over lo",
                out(POD, 8080).as_proxy(),
                (Verdict::Redirect, Some(15006), Some("proxy-to-self")),
            ),
        ],
    );
    // The proxy's call to its own pod gets mark 1338 in mangle OUTPUT first.
    let e = explain_plan(&p, &out(POD, 8080).as_proxy());
    assert!(e.trace.iter().any(|s| s.message.contains("packet mark set to 0x53a")), "{e}");
    let p = plan(&[(keys::INTERCEPTION_MODE, "TPROXY"), (keys::INCLUDE_INBOUND_PORTS, "8080")]);
    check(
        &p,
        &[
            ("listed", inb(8080), (Verdict::Tproxy, Some(15006), Some("include-inbound-ports"))),
            ("not listed", inb(9090), (Verdict::Passthrough, None, None)),
        ],
    );
}

#[test]
fn per_family_includes() {
    let v6 = |c: &mut CaptureConfig| c.enable_ipv6 = true;
    let p = plan_cfg(&[(keys::INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8")], v6);
    check(
        &p,
        &[
            ("v4 included", out("10.1.1.1", 80), (Verdict::Redirect, Some(15001), Some("include-outbound-ip-ranges"))),
            ("v6 uncaptured", Flow::outbound(ip("2001:db8:5::1"), 80), (Verdict::Passthrough, None, None)),
            ("v6 inbound still", Flow::inbound_to(ip("2001:db8::10"), 8080), CAPTURED_IN),
        ],
    );
    let p = plan_cfg(&[], v6);
    check(
        &p,
        &[
            ("v6 wildcard", Flow::outbound(ip("2001:db8:5::1"), 80), CAPTURED_OUT),
            ("v6 localhost", Flow::outbound(ip("::1"), 80), (Verdict::Passthrough, None, Some("app-loopback"))),
            (
                "v6 inbound passthrough source",
                Flow::outbound(ip("2001:db8::10"), 80).pod_ip(ip("2001:db8::10")).as_proxy().from(ip("::6")),
                (Verdict::Passthrough, None, Some("inbound-passthrough-source")),
            ),
        ],
    );
    let p = plan(&[]);
    let e = explain_plan(&p, &Flow::outbound(ip("2001:db8:5::1"), 80));
    assert_eq!(e.verdict, Verdict::Passthrough);
    assert!(e.trace.iter().any(|s| s.message.contains("IPv6 capture disabled")), "{e}");
}

#[test]
fn virtual_interfaces() {
    let p = plan(&[(keys::REROUTE_VIRTUAL_INTERFACES, "virt0"), (keys::EXCLUDE_OUTBOUND_IP_RANGES, "10.5.0.0/16")]);
    let vi = (Verdict::Redirect, Some(15001), Some("reroute-virtual-interfaces"));
    check(
        &p,
        &[
            ("any port", inb(8080).in_iface("virt0"), vi),
            ("excluded inbound port too", inb(15021).in_iface("virt0"), vi),
            // §12.8: the reroute bypasses ISTIO_OUTPUT, so exclusions do not apply.
            ("excluded cidr too", Flow::inbound_to(ip("10.5.0.1"), 80).in_iface("virt0"), vi),
            ("eth0 as usual", inb(8080), CAPTURED_IN),
        ],
    );
    let p = plan(&[(keys::REROUTE_VIRTUAL_INTERFACES, "virt0"), (keys::INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8")]);
    check(
        &p,
        &[
            ("included dst", Flow::inbound_to(ip("10.1.0.1"), 80).in_iface("virt0"), vi),
            (
                "other dst",
                inb(8080).in_iface("virt0"),
                (Verdict::Passthrough, None, Some("reroute-virtual-interfaces")),
            ),
        ],
    );
}

#[test]
fn owner_groups() {
    let g = |n: u32| OwnerId::numeric(n);
    let p = plan_cfg(&[], |c| c.owner_groups = OwnerGroups::AllExcept(vec![g(3000)]));
    check(
        &p,
        &[
            ("excluded group", out("10.0.0.1", 80).gid(3000), (Verdict::Passthrough, None, Some("owner-groups"))),
            ("other group", out("10.0.0.1", 80), CAPTURED_OUT),
        ],
    );
    let p = plan_cfg(&[], |c| c.owner_groups = OwnerGroups::Only(vec![g(3000), g(3001)]));
    check(
        &p,
        &[
            ("included group", out("10.0.0.1", 80).gid(3001), CAPTURED_OUT),
            ("other group", out("10.0.0.1", 80), (Verdict::Passthrough, None, Some("owner-groups"))),
        ],
    );
    // §12.12: set but empty disables outbound capture.
    let p = plan_cfg(&[], |c| c.owner_groups = OwnerGroups::Only(vec![]));
    check(&p, &[("nothing", out("10.0.0.1", 80).gid(3000), (Verdict::Passthrough, None, Some("owner-groups")))]);
    // A group name cannot be resolved without the pod's /etc/group: undetermined, named.
    let named = OwnerId::parse("apps").expect("name");
    let p = plan_cfg(&[], |c| c.owner_groups = OwnerGroups::Only(vec![named]));
    let e = explain_plan(&p, &out("10.0.0.1", 80));
    assert_eq!(e.verdict, Verdict::Undetermined, "{e}");
    let by = e.decided_by.as_ref().expect("names the rule");
    assert_eq!(
        (by.label.as_deref(), by.text.as_str()),
        (Some("owner-groups"), "-m owner ! --gid-owner apps -j RETURN")
    );
    // ... but the proxy's own traffic is decided before that rule is reached.
    assert_eq!(explain_plan(&p, &out("10.0.0.1", 80).as_proxy()).verdict, Verdict::Passthrough);
}

#[test]
fn dns_capture() {
    let dns = |all: bool| {
        plan_cfg(&[(keys::EXCLUDE_OUTBOUND_IP_RANGES, "10.96.0.0/12")], move |c| {
            c.redirect_dns = true;
            c.capture_all_dns = all;
            c.dns_servers_v4 = vec![ip("10.96.0.10")];
        })
    };
    let p = dns(false);
    let d = (Verdict::Redirect, Some(15053), Some("dns-capture"));
    check(
        &p,
        &[
            ("udp to resolver", out("10.96.0.10", 53).udp(), d),
            ("tcp to resolver", out("10.96.0.10", 53), d),
            ("udp elsewhere", out("8.8.8.8", 53).udp(), (Verdict::Passthrough, None, None)),
            ("tcp elsewhere", out("8.8.8.8", 53), CAPTURED_OUT),
            (
                "proxy's own dns",
                out("10.96.0.10", 53).udp().as_proxy(),
                (Verdict::Passthrough, None, Some("proxy-own-traffic")),
            ),
            (
                "other port to resolver",
                out("10.96.0.10", 80),
                (Verdict::Passthrough, None, Some("exclude-outbound-ip-ranges")),
            ),
        ],
    );
    let e = explain_plan(&p, &out("10.96.0.10", 53).udp());
    assert_eq!(
        e.decided_by.map(|r| r.text),
        Some("-p udp --dport 53 -d 10.96.0.10/32 -j REDIRECT --to-port 15053".into())
    );
    // The raw table's conntrack zone is recorded, not acted on.
    let e = explain_plan(&p, &out("10.96.0.10", 53).udp().as_proxy());
    assert!(e.trace.iter().any(|s| s.message.contains("conntrack zone 1")), "{e}");
    let p = dns(true);
    check(&p, &[("capture all", out("8.8.8.8", 53).udp(), d)]);
    // Silently off without servers (§8).
    let p = plan_cfg(&[], |c| c.redirect_dns = true);
    check(&p, &[("no servers", out("10.96.0.10", 53).udp(), (Verdict::Passthrough, None, None))]);
}

#[test]
fn excluded_interfaces() {
    let p = plan(&[(keys::EXCLUDE_INTERFACES, "eth1")]);
    let x = (Verdict::Passthrough, None, Some("exclude-interfaces"));
    check(
        &p,
        &[
            ("inbound", inb(8080).in_iface("eth1"), x),
            ("outbound", out("10.0.0.1", 80).out_iface("eth1"), x),
            ("other iface", out("10.0.0.1", 80), CAPTURED_OUT),
        ],
    );
    let p = plan(&[(keys::EXCLUDE_INTERFACES, "eth1"), (keys::INTERCEPTION_MODE, "TPROXY")]);
    check(
        &p,
        &[
            ("tproxy inbound", inb(8080).in_iface("eth1"), x),
            ("tproxy eth0", inb(8080), (Verdict::Tproxy, Some(15006), Some("capture-inbound"))),
        ],
    );
}

#[test]
fn drop_invalid_spares_new_connections() {
    let v =
        InjectorValues { drop_invalid: true, interception_mode: InterceptionMode::Tproxy, ..InjectorValues::default() };
    let p = compile(&config(&[], v));
    check(&p, &[("new inbound", inb(8080), (Verdict::Tproxy, Some(15006), Some("capture-inbound")))]);
}

#[test]
fn json_and_display() {
    let p = plan(&[(keys::EXCLUDE_OUTBOUND_IP_RANGES, "10.1.0.0/16")]);
    let e = explain_plan(&p, &out("10.0.0.1", 80));
    let j = serde_json::to_value(&e).expect("json");
    assert_eq!(j["verdict"], "redirect");
    assert_eq!(j["port"], 15001);
    assert_eq!(j["rule"], "-j ISTIO_REDIRECT");
    assert_eq!(j["table"], "nat");
    assert_eq!(j["chain"], "ISTIO_OUTPUT");
    assert_eq!(j["label"], "capture-outbound");
    assert_eq!(j["family"], "v4");
    assert!(j["trace"].as_array().is_some_and(|t| t.len() > 3), "{j}");
    assert_eq!(j["trace"][0]["kind"], "flow");
    let e = explain_plan(&p, &out("10.1.0.1", 80));
    let j = serde_json::to_value(&e).expect("json");
    assert_eq!((j["verdict"].as_str(), j["port"].is_null()), (Some("passthrough"), true));
    assert_eq!(j["rule"], "-d 10.1.0.0/16 -j RETURN");
    assert_eq!(j["label"], "exclude-outbound-ip-ranges");
    let e = explain_plan(&p, &out("10.1.0.1", 80).udp().out_iface("eth9"));
    let text = e.to_string();
    assert!(text.starts_with("not captured (passthrough) by nat ISTIO_OUTPUT #"), "{text}");
    assert!(
        text.contains("trace:\n  outbound ipv4 udp 198.18.0.10:40000 -> 10.1.0.1:80, uid 1000 gid 1000, out eth9"),
        "{text}"
    );
    assert_eq!(e.trace.last().map(|s| s.kind), Some(StepKind::Verdict));
    assert_eq!(Flow::inbound(80).direction, Direction::Inbound);
    assert_eq!(Flow::inbound(80).proto, Proto::Tcp);
}

#[test]
fn untracked_exclusions_bypass_nat_off_loopback_only() {
    let untracked = |mode: InterceptionMode| {
        plan_cfg(&[(keys::EXCLUDE_INBOUND_PORTS, "5000")], |c| {
            c.untrack_excluded_inbound = true;
            c.mode = mode;
        })
    };
    let p = untracked(InterceptionMode::Redirect);
    let bypass = (Verdict::Passthrough, None, Some("exclude-inbound-ports"));
    check(
        &p,
        &[
            ("excluded port", inb(5000), bypass),
            ("sidecar port", inb(15021), (Verdict::Passthrough, None, Some("sidecar-ports"))),
            ("captured port", inb(8080), CAPTURED_IN),
            ("outbound", out("10.1.2.3", 5000), CAPTURED_OUT),
            // The documented price: a connection of the app's own from an excluded port.
            (
                "outbound from an excluded local port",
                out("10.1.2.3", 80).src_port(5000),
                (Verdict::Passthrough, None, Some("untrack-excluded-inbound")),
            ),
            // Loopback stays tracked, exactly as Istio has it: nat decides.
            ("excluded port over lo", inb(5000).in_iface("lo"), bypass),
        ],
    );
    let e = explain_plan(&p, &inb(5000));
    assert_eq!(e.decided_by.as_ref().map(|r| r.table), Some(meshpass_capture::ir::Table::Raw), "{e}");
    assert!(e.to_string().contains("untracked packet is never NATed"), "{e}");
    let e = explain_plan(&p, &inb(5000).in_iface("lo"));
    assert_eq!(e.decided_by.as_ref().map(|r| r.table), Some(meshpass_capture::ir::Table::Nat), "{e}");
    // TPROXY: the mangle exclusion lets it through as before, and it is untracked too.
    let p = untracked(InterceptionMode::Tproxy);
    let tp = (Verdict::Tproxy, Some(15006), Some("capture-inbound"));
    check(&p, &[("excluded port", inb(5000), bypass), ("captured port", inb(8080), tp)]);
    assert!(explain_plan(&p, &inb(5000)).to_string().contains("NOTRACK"));
}
