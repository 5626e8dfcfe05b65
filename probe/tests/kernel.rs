//! A real probe of this machine's kernel. Needs root (throwaway network namespaces); the
//! checks program nothing outside them. Each IPVS test asserts what is right for the kind
//! of kernel it finds: the host's has no IPVS at all; the VM lane's (`e2e/tests/vm_lane.rs`
//! runs this binary there) has `ip_vs` loaded; a kernel where it is only loadable is
//! covered too.

use switchyard_probe::{
    kernel_module::{KernelModules, ModuleState},
    probe, Mode, ModeReport, Probe, ProbeRoots,
};

/// True when the test may go on; skips loudly (or fails under CI) without root.
/// Held by every test of this file: the probe names its throwaway namespaces after this
/// process's pid, and `a_stale_probe_namespace_of_the_same_pid_is_replaced` makes (and
/// deletes) namespaces of those very names; run alongside a probe, it deleted the
/// probe's namespace under it (every feature check then failed).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

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
    let _serial = serial();
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

    assert_ipvs_fits_this_kernel(report.get(Mode::Ipvs).unwrap());

    // Issue 12 part 4: every missing feature of every mode comes with a known fix.
    for m in &report.modes {
        let named: Vec<&str> = m.fixes.iter().map(|f| f.missing.as_str()).collect();
        assert_eq!(named, m.missing, "{}: a fix per missing feature", m.mode);
        for f in &m.fixes {
            assert!(
                !f.fix.starts_with("no known fix"),
                "{}: {} has no fix: {f:?}",
                m.mode,
                f.missing
            );
            assert!(
                report
                    .table()
                    .contains(&format!("  {}: {}", f.missing, f.fix)),
                "the table prints it"
            );
        }
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

/// The state of `ip_vs` on the running kernel, read before any probe (which may load it).
fn ip_vs_state() -> ModuleState {
    let roots = ProbeRoots::default();
    let release = roots.kernel_release().expect("kernel release");
    KernelModules::read(&roots, &release).state("ip_vs")
}

fn in_vm_lane() -> bool {
    std::env::var("SWITCHYARD_VM_LANE").as_deref() == Ok("1")
}

fn check<'a>(report: &'a ModeReport, name: &str) -> &'a switchyard_probe::Check {
    report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name:?}: {report:#?}"))
}

/// What the IPVS report must say, given what the kernel has.
fn assert_ipvs_fits_this_kernel(ipvs: &ModeReport) {
    let state = ip_vs_state();
    eprintln!("ip_vs on this kernel: {state}; IPVS: {}", ipvs.reason());
    match state {
        ModuleState::Loaded | ModuleState::Builtin => {
            assert!(check(ipvs, "module ip_vs").ok, "{ipvs:#?}");
            let family = check(ipvs, "netlink family");
            assert!(family.ok && family.detail.starts_with("IPVS resolves to family id"));
            assert!(check(ipvs, "schedulers").detail.contains("rr"), "{ipvs:#?}");
            assert!(ipvs.available, "IPVS is loaded but: {}", ipvs.reason());
        }
        // Resolving the family autoloads it; if that cannot happen, the cause is named.
        ModuleState::Loadable => {
            let family = check(ipvs, "netlink family");
            if !family.ok {
                assert!(ipvs.not_loaded.iter().any(|n| n.module == "ip_vs"));
                assert!(
                    ipvs.reason()
                        .contains("kernel module ip_vs not loaded but loadable"),
                    "{}",
                    ipvs.reason()
                );
            }
        }
        ModuleState::Missing => {
            assert!(!ipvs.available, "{ipvs:#?}");
            assert_eq!(ipvs.missing.first().map(String::as_str), Some("ip_vs"));
            assert!(ipvs.not_loaded.is_empty(), "{ipvs:#?}");
            assert!(
                ipvs.reason().starts_with("missing kernel module"),
                "{}",
                ipvs.reason()
            );
            assert!(!check(ipvs, "module ip_vs").ok);
            assert!(!check(ipvs, "netlink family").ok);
        }
    }
}

/// The IPVS report on its own (the whole-machine test covers it among the others).
#[test]
fn ipvs_report_fits_this_kernel() {
    let _serial = serial();
    if !have_root() {
        return;
    }
    let report = probe(&[Mode::Ipvs]);
    assert_ipvs_fits_this_kernel(report.get(Mode::Ipvs).unwrap());
}

/// `load_ipvs_modules` with a scheduler no kernel has: each module that would not load
/// is named, with modprobe's error. Runs only where it cannot change the host's kernel:
/// in the VM lane, or where `ip_vs` cannot be loaded at all.
#[test]
fn loading_ipvs_modules_names_each_failure_and_why() {
    let _serial = serial();
    if !have_root() {
        return;
    }
    let state = ip_vs_state();
    if !in_vm_lane() && state == ModuleState::Loadable {
        eprintln!(
            "SKIPPED: ip_vs is loadable here, and this test would load it into the host's \
             kernel; the VM lane runs it"
        );
        return;
    }
    let report = Probe::new().load_ipvs_modules("nosuch").run(&[Mode::Ipvs]);
    let ipvs = report.get(Mode::Ipvs).unwrap();
    eprintln!("{}", report.table());
    let nosuch = ipvs
        .not_loaded
        .iter()
        .find(|n| n.module == "ip_vs_nosuch")
        .unwrap_or_else(|| panic!("{ipvs:#?}"));
    let error = nosuch.load_error.as_deref().unwrap_or_default();
    assert!(error.contains("ip_vs_nosuch"), "{error}");
    assert!(!ipvs.available);
    assert!(
        ipvs.reason()
            .contains("kernel module ip_vs_nosuch could not be loaded: "),
        "{}",
        ipvs.reason()
    );
    if state == ModuleState::Missing {
        // Not loadable at all: ip_vs is named, with modprobe's words.
        let ip_vs = ipvs.not_loaded.iter().find(|n| n.module == "ip_vs");
        let error = ip_vs.and_then(|n| n.load_error.as_deref());
        assert!(error.is_some_and(|e| e.contains("ip_vs")), "{ipvs:#?}");
        assert!(
            ipvs.reason()
                .starts_with("kernel module ip_vs could not be loaded: "),
            "{}",
            ipvs.reason()
        );
    } else {
        assert!(check(ipvs, "module ip_vs").ok, "{ipvs:#?}");
        assert!(check(ipvs, "netlink family").ok, "{ipvs:#?}");
        assert_eq!(ipvs.missing, ["ip_vs_nosuch"], "{ipvs:#?}");
    }
}

/// A namespace left by a killed process with this process's pid (as every restart of a
/// containerised agent has) does not stop the probe from making its own.
#[test]
fn a_stale_probe_namespace_of_the_same_pid_is_replaced() {
    let _serial = serial();
    if !have_root() {
        return;
    }
    let ip = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let pid = std::process::id();
    let stale: Vec<String> = (0..64)
        .map(|n| format!("sy-probe-{pid}-{n}"))
        .filter(|name| !std::path::Path::new("/run/netns").join(name).exists())
        .filter(|name| ip(&["netns", "add", name]))
        .collect();
    let made = switchyard_probe::netns::Netns::throwaway(std::time::Duration::from_secs(10));
    for name in &stale {
        ip(&["netns", "delete", name]);
    }
    let made = made.expect("a throwaway namespace despite stale ones of the same name");
    assert!(made.is_throwaway());
}
