//! A real probe of this machine's kernel. Needs root (throwaway network namespaces); the
//! checks program nothing outside them.

use switchyard_probe::{probe, Mode, ProbeRoots};

/// True when the test may go on; skips loudly (or fails under CI) without root.
fn have_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_string));
    if euid.as_deref() == Some("0") {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("this test needs root (network namespaces); CI runs as root");
    }
    eprintln!("SKIPPED: needs root (network namespaces)");
    false
}

fn netns_list() -> String {
    std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[test]
fn probes_this_machine() {
    if !have_root() {
        return;
    }
    let report = probe(&Mode::ENGINES);
    eprintln!("{}", report.table());
    assert_eq!(report.modes.len(), 4);
    assert_eq!(
        Some(report.kernel_release.clone()),
        ProbeRoots::default().kernel_release()
    );

    let nft = report.get(Mode::Nftables).unwrap();
    assert!(
        nft.available,
        "nftables: {}\n{}",
        nft.reason(),
        report.table()
    );

    let ipt = report.get(Mode::Iptables).unwrap();
    assert!(
        ipt.available,
        "iptables: {}\n{}",
        ipt.reason(),
        report.table()
    );
    let backend = ipt.checks.iter().find(|c| c.name == "backend").unwrap();
    assert!(
        backend.detail.starts_with("nft ") || backend.detail.starts_with("legacy "),
        "{backend:?}"
    );
    assert!(ipt
        .notes
        .iter()
        .any(|n| n.starts_with("iptables backend: nft (")));

    let ipvs = report.get(Mode::Ipvs).unwrap();
    if std::path::Path::new("/proc/net/ip_vs").exists() {
        assert!(ipvs.available, "IPVS is active but: {}", ipvs.reason());
    } else if !ipvs.available {
        // No IPVS here (this machine's kernel has none): it must say so precisely.
        assert!(
            ipvs.missing.contains(&"ip_vs".to_string())
                || ipvs.missing.contains(&"IPVS netlink family".to_string()),
            "{ipvs:#?}"
        );
        assert!(
            ipvs.reason().starts_with("missing kernel module"),
            "{}",
            ipvs.reason()
        );
    }

    // The JSON form round-trips.
    let json = serde_json::to_string(&report).unwrap();
    assert!(json.contains("\"kernelRelease\""));
    let back: switchyard_probe::ProbeReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);

    // No throwaway namespace is left behind.
    let prefix = format!("sy-probe-{}-", std::process::id());
    assert!(!netns_list().contains(&prefix), "{}", netns_list());
}

/// On this machine's kernel (no CONFIG_IP_VS) the probe names `ip_vs` as missing.
#[test]
fn no_ipvs_kernel_reports_ip_vs_missing() {
    if !have_root() {
        return;
    }
    if std::path::Path::new("/proc/net/ip_vs").exists() {
        eprintln!("IPVS is active on this kernel; covered by probes_this_machine");
        return;
    }
    let report = probe(&[Mode::Ipvs]);
    let ipvs = report.get(Mode::Ipvs).unwrap();
    let release = report.kernel_release.clone();
    let modules_dir = std::path::Path::new("/lib/modules").join(&release);
    let loadable = std::fs::read_to_string(modules_dir.join("modules.dep"))
        .map(|t| t.contains("/ip_vs.ko"))
        .unwrap_or(false);
    if !loadable {
        assert!(!ipvs.available, "{ipvs:#?}");
        assert_eq!(
            ipvs.missing.first().map(String::as_str),
            Some("ip_vs"),
            "{ipvs:#?}"
        );
        assert!(ipvs.reason().contains("ip_vs"), "{}", ipvs.reason());
    }
}
