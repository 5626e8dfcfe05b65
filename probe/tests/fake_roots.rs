//! Kernel-module lookup against fake `/proc`, `/sys` and `/lib/modules` trees: each IPVS
//! module loaded, built in, loadable or missing, and the `missing` list and reason that
//! follow.

use std::{fs, path::Path};

use switchyard_probe::{
    ipvs,
    kernel_module::{KernelModules, ModuleState},
    Mode, Probe, ProbeRoots,
};

const RELEASE: &str = "6.1.0-18-amd64";

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

/// A kernel whose `/lib/modules/<release>` exists, with `nf_conntrack` in /sys/module.
fn fake_kernel() -> (tempfile::TempDir, ProbeRoots) {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "proc/sys/kernel/osrelease",
        &format!("{RELEASE}\n"),
    );
    write(dir.path(), "proc/modules", "");
    fs::create_dir_all(dir.path().join("sys/module/nf_conntrack/parameters")).unwrap();
    write(
        dir.path(),
        &format!("lib/modules/{RELEASE}/modules.builtin"),
        "kernel/fs/ext4/ext4.ko\n",
    );
    write(
        dir.path(),
        &format!("lib/modules/{RELEASE}/modules.dep"),
        "kernel/drivers/net/dummy.ko.xz:\n",
    );
    let roots = ProbeRoots::under(dir.path());
    (dir, roots)
}

fn modules(roots: &ProbeRoots) -> KernelModules {
    KernelModules::read(roots, RELEASE)
}

#[test]
fn ip_vs_loaded() {
    let (dir, roots) = fake_kernel();
    write(
        dir.path(),
        "proc/modules",
        "ip_vs_sh 12288 0 - Live 0x0000000000000000\n\
         ip_vs_wrr 12288 0 - Live 0x0000000000000000\n\
         ip_vs_rr 12288 0 - Live 0x0000000000000000\n\
         ip_vs 229376 6 ip_vs_sh,ip_vs_wrr,ip_vs_rr, Live 0x0000000000000000\n",
    );
    let m = modules(&roots);
    assert_eq!(m.state("ip_vs"), ModuleState::Loaded);
    assert_eq!(
        m.state("nf_conntrack"),
        ModuleState::Loaded,
        "via /sys/module"
    );
    let report = ipvs::modules_report(&m);
    assert!(report.available, "{report:#?}");
    assert!(report.missing.is_empty());
    assert_eq!(report.reason(), "available");
}

#[test]
fn ip_vs_builtin() {
    let (dir, roots) = fake_kernel();
    write(
        dir.path(),
        &format!("lib/modules/{RELEASE}/modules.builtin"),
        "kernel/net/netfilter/ipvs/ip_vs.ko\nkernel/net/netfilter/ipvs/ip_vs_rr.ko\n\
         kernel/net/netfilter/ipvs/ip_vs_wrr.ko\nkernel/net/netfilter/ipvs/ip_vs_sh.ko\n",
    );
    let m = modules(&roots);
    assert_eq!(m.state("ip_vs"), ModuleState::Builtin);
    assert_eq!(m.state("ip_vs_sh"), ModuleState::Builtin);
    let report = ipvs::modules_report(&m);
    assert!(report.available, "{report:#?}");
    assert!(report.checks.iter().any(|c| c.detail == "built in"));
}

#[test]
fn ip_vs_loadable() {
    let (dir, roots) = fake_kernel();
    write(
        dir.path(),
        &format!("lib/modules/{RELEASE}/modules.dep"),
        "kernel/net/netfilter/ipvs/ip_vs.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz\n\
         kernel/net/netfilter/ipvs/ip_vs_rr.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz\n\
         kernel/net/netfilter/ipvs/ip_vs_wrr.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz\n\
         kernel/net/netfilter/ipvs/ip_vs_sh.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz\n",
    );
    let m = modules(&roots);
    assert_eq!(m.state("ip_vs_rr"), ModuleState::Loadable);
    let report = ipvs::modules_report(&m);
    assert!(report.available, "{report:#?}");
    assert!(report
        .checks
        .iter()
        .any(|c| c.name == "module ip_vs_rr" && c.detail.contains("loadable")));
}

#[test]
fn ip_vs_partly_missing() {
    let (dir, roots) = fake_kernel();
    write(
        dir.path(),
        &format!("lib/modules/{RELEASE}/modules.dep"),
        "kernel/net/netfilter/ipvs/ip_vs.ko: kernel/net/netfilter/nf_conntrack.ko\n\
         kernel/net/netfilter/ipvs/ip_vs_wrr.ko: kernel/net/netfilter/ipvs/ip_vs.ko\n",
    );
    let report = ipvs::modules_report(&modules(&roots));
    assert!(!report.available);
    assert_eq!(report.missing, ["ip_vs_rr", "ip_vs_sh"]);
    assert_eq!(report.reason(), "missing kernel modules ip_vs_rr, ip_vs_sh");
}

#[test]
fn ip_vs_missing_everything_and_no_modules_dir() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "proc/sys/kernel/osrelease", "6.18.44-fc-v657\n");
    let roots = ProbeRoots::under(dir.path());
    let m = KernelModules::read(&roots, "6.18.44-fc-v657");
    assert!(m.gaps[0].contains("absent"), "{:?}", m.gaps);
    let report = ipvs::modules_report(&m);
    assert_eq!(
        report.missing,
        ["ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack"]
    );
    assert_eq!(
        report.reason(),
        "missing kernel modules ip_vs, ip_vs_rr, ip_vs_wrr, ip_vs_sh, nf_conntrack"
    );
}

/// The whole IPVS probe over fake roots: the module findings come from the fake tree
/// (the netlink and ipset checks still ask the real kernel, and never name a module the
/// fake tree has).
#[test]
fn ipvs_probe_over_fake_roots_names_missing_modules() {
    let (_dir, roots) = fake_kernel();
    let report = Probe::new()
        .with_roots(roots)
        .run(&[Mode::Ipvs, Mode::Auto]);
    assert_eq!(report.kernel_release, RELEASE);
    assert_eq!(report.modes.len(), 1, "auto is not probed");
    let ipvs = report.get(Mode::Ipvs).unwrap();
    assert!(!ipvs.available);
    assert_eq!(
        &ipvs.missing[..4],
        ["ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh"]
    );
    assert!(!ipvs.missing.contains(&"nf_conntrack".to_string()));
    assert!(
        ipvs.reason()
            .starts_with("missing kernel modules ip_vs, ip_vs_rr, ip_vs_wrr, ip_vs_sh"),
        "{}",
        ipvs.reason()
    );
}
