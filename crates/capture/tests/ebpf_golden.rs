//! Golden listings of the eBPF capture programs for a few settings
//! (`testdata/ebpf/<name>.txt`; `UPDATE_GOLDEN=1` rewrites them — review the diff). The
//! kernel accepts and runs these programs in `differential.rs`; the goldens make every change
//! to what they do visible in review.

use meshpass_capture::ebpf::compile_ebpf;
use meshpass_capture::IstioArgs;
use std::path::PathBuf;

fn cases() -> Vec<(&'static str, IstioArgs)> {
    let s = |v: &str| Some(v.to_string());
    let sidecar = IstioArgs {
        proxy_uid: s("1337"),
        include_inbound_ports: s("*"),
        exclude_inbound_ports: s("15090,15021,15020,5000"),
        include_ip_ranges: s("*"),
        ..Default::default()
    };
    let dual = IstioArgs {
        exclude_inbound_ports: s("15090,15021,15020,8000-8100"),
        exclude_outbound_ports: s("3306,9000-9100"),
        exclude_ip_ranges: s("10.0.0.0/8,192.168.1.7/24,2001:db8::/32,fd00::/8"),
        include_outbound_ports: s("443"),
        enable_ipv6: true,
        ..sidecar.clone()
    };
    let listed = IstioArgs {
        proxy_uid: s("1337"),
        proxy_gid: s("1337,2000"),
        include_inbound_ports: s("8080,9000-9010"),
        include_ip_ranges: s("198.18.0.0/15,100.64.0.0/10"),
        ..Default::default()
    };
    vec![("sidecar-v4", sidecar), ("dual-stack-exclusions", dual), ("include-lists", listed)]
}

#[test]
fn ebpf_listings_match_goldens() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/ebpf");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for (name, args) in cases() {
        let cfg = args.to_config().unwrap_or_else(|e| panic!("{name}: {e}"));
        // A fixed cookie: the real one differs per namespace.
        let got = compile_ebpf(&cfg, 0x6d65_7368).unwrap_or_else(|e| panic!("{name}: {e}")).listing();
        let path = dir.join(format!("{name}.txt"));
        if update {
            std::fs::write(&path, &got).expect("write golden");
        } else if std::fs::read_to_string(&path).unwrap_or_default() != got {
            failures.push(format!("== {name} ({})\n{got}", path.display()));
        }
    }
    assert!(failures.is_empty(), "listings differ (UPDATE_GOLDEN=1 rewrites):\n{}", failures.join("\n"));
}
