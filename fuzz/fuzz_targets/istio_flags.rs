//! Arbitrary istio-iptables flag values: validation must not panic, and an accepted config
//! must compile and render.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_capture::{compile, ir::Family, render::iptables::render_restore, IstioArgs};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.split('\u{1e}').map(|s| Some(s.to_string()));
    let mut next = || parts.next().flatten();
    let args = IstioArgs {
        include_inbound_ports: next(),
        exclude_inbound_ports: next(),
        include_outbound_ports: next(),
        exclude_outbound_ports: next(),
        include_ip_ranges: next(),
        exclude_ip_ranges: next(),
        virtual_interfaces: next(),
        exclude_interfaces: next(),
        proxy_uid: next(),
        owner_groups_include: next(),
        loopback_cidr: next(),
        enable_ipv6: true,
        ..IstioArgs::default()
    };
    if let Ok(cfg) = args.to_config() {
        let plan = compile(&cfg);
        let _ = render_restore(&plan, Family::V4);
        let _ = render_restore(&plan, Family::V6);
    }
});
