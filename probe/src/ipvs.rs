//! The IPVS engine's needs: the kernel modules `ip_vs`, `ip_vs_rr`, `ip_vs_wrr`,
//! `ip_vs_sh` and `nf_conntrack` (each loaded, built in or loadable), the `IPVS`
//! generic-netlink family, and `ipset` with a `hash:ip` set creatable in the probe's
//! namespace (set destroyed afterwards). Also which scheduler modules this kernel has.
//!
//! Loading: [`load_modules`] loads `ip_vs`, the configured scheduler and `nf_conntrack`
//! as kube-proxy does before it gives up on IPVS; with
//! [`Probe::load_ipvs_modules`](crate::Probe::load_ipvs_modules) the probe does that
//! first and reports each module that would not load with modprobe's error. Without it
//! the probe loads nothing itself, but resolving the `IPVS` family makes the kernel
//! autoload a loadable `ip_vs`; when that fails too, the cause named is "`ip_vs` not
//! loaded but loadable", not a missing module.

use std::time::Duration;

use switchyard_crd::Mode;

use crate::{
    command,
    context::{Context, Findings},
    error::{GenlError, ModuleLoadError},
    genl,
    kernel_module::{self, KernelModules, ModuleState},
    report::ModeReport,
};

/// Modules the IPVS engine needs, in the order they are reported.
pub const MODULES: [&str; 5] = ["ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack"];

/// The IPVS schedulers Linux has (module `ip_vs_<name>`), in the kernel's Kconfig order.
pub const SCHEDULERS: [&str; 14] = [
    "rr", "wrr", "lc", "wlc", "fo", "ovf", "lblc", "lblcr", "dh", "sh", "mh", "sed", "nq", "twos",
];

const SET: &str = "switchyard-probe";

/// How long one `modprobe` may take.
const MODPROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// One module [`load_modules`] tried.
#[derive(Debug)]
pub struct ModuleLoad {
    pub module: String,
    pub result: Result<(), ModuleLoadError>,
}

/// The modules to load for `scheduler`: `ip_vs`, `ip_vs_<scheduler>`, `nf_conntrack`.
pub fn modules_for(scheduler: &str) -> [String; 3] {
    [
        "ip_vs".to_string(),
        format!("ip_vs_{scheduler}"),
        "nf_conntrack".to_string(),
    ]
}

/// Loads [`modules_for`] `scheduler` with `modprobe`, each within `timeout`, and says
/// how each went. Changes the kernel; a bad scheduler name loads nothing for it.
pub fn load_modules(scheduler: &str, timeout: Duration) -> Vec<ModuleLoad> {
    modules_for(scheduler)
        .into_iter()
        .map(|module| ModuleLoad {
            result: kernel_module::load(&module, timeout),
            module,
        })
        .collect()
}

/// The schedulers whose module is loaded, built in or loadable.
pub fn available_schedulers(modules: &KernelModules) -> Vec<&'static str> {
    SCHEDULERS
        .iter()
        .copied()
        .filter(|s| modules.state(&format!("ip_vs_{s}")).is_present())
        .collect()
}

/// Adds one check per needed module ([`MODULES`], and the scheduler of `loads` when it
/// is another), naming modprobe's error for a module that would not load; returns the
/// state of `ip_vs`.
fn module_findings(modules: &KernelModules, loads: &[ModuleLoad], f: &mut Findings) -> ModuleState {
    let mut names: Vec<String> = MODULES.iter().map(|m| m.to_string()).collect();
    for load in loads {
        if !names.contains(&load.module) {
            names.push(load.module.clone());
        }
    }
    for name in &names {
        let check = format!("module {name}");
        let state = modules.state(name);
        let load_error = loads
            .iter()
            .find(|l| &l.module == name)
            .and_then(|l| l.result.as_ref().err());
        match (state, load_error) {
            (ModuleState::Loaded | ModuleState::Builtin, _) => f.pass(&check, state.to_string()),
            (_, Some(err)) => {
                let why = match err {
                    ModuleLoadError::Modprobe { source, .. } => source.to_string(),
                    other => other.to_string(),
                };
                let detail = format!(
                    "{}; loading it failed: {why}",
                    modules.describe(name, state)
                );
                f.fail_not_loaded(&check, detail, name, Some(why));
            }
            (ModuleState::Loadable, None) => f.pass(&check, modules.describe(name, state)),
            (ModuleState::Missing, None) => f.fail(&check, modules.describe(name, state), [name]),
        }
    }
    let schedulers = available_schedulers(modules);
    if schedulers.is_empty() {
        f.note("no IPVS scheduler module (ip_vs_rr, ip_vs_wrr, ...) is available");
    } else {
        f.pass(
            "schedulers",
            format!(
                "available: {} ({} of {})",
                schedulers.join(" "),
                schedulers.len(),
                SCHEDULERS.len()
            ),
        );
    }
    modules.state("ip_vs")
}

/// The module checks alone, as a report (what [`MODULES`] are missing from `modules`).
pub fn modules_report(modules: &KernelModules) -> ModeReport {
    let mut f = Findings::default();
    module_findings(modules, &[], &mut f);
    f.finish(Mode::Ipvs)
}

pub(crate) fn probe(ctx: &Context) -> ModeReport {
    let mut f = Findings::default();
    let loads = match &ctx.load_ipvs_scheduler {
        Some(scheduler) => load_modules(scheduler, MODPROBE_TIMEOUT.min(ctx.timeout * 3)),
        None => Vec::new(),
    };
    // Read after loading, so what loaded shows as loaded.
    let modules = KernelModules::read(&ctx.roots, &ctx.release);
    for gap in &modules.gaps {
        f.note(gap.clone());
    }

    let ip_vs = module_findings(&modules, &loads, &mut f);

    match genl::resolve_family("IPVS", ctx.timeout.min(Duration::from_secs(5))) {
        Ok(id) => f.pass(
            "netlink family",
            format!("IPVS resolves to family id {id:#x}"),
        ),
        Err(e @ GenlError::NotRegistered { .. }) => match ip_vs {
            // Without the module this is its consequence, already named.
            ModuleState::Missing => f.fail("netlink family", e.to_string(), ["ip_vs"]),
            // The module is there but not loaded, and the kernel did not autoload it.
            ModuleState::Loadable => f.fail_not_loaded(
                "netlink family",
                format!("{e}: ip_vs is loadable but not loaded (modprobe ip_vs)"),
                "ip_vs",
                None,
            ),
            // Loaded or built in, yet no family: the family itself is what is missing.
            _ => f.fail("netlink family", e.to_string(), ["IPVS netlink family"]),
        },
        Err(e) => f.fail("netlink family", e.to_string(), ["IPVS netlink family"]),
    }
    if ctx.roots.proc.join("net/ip_vs").exists() {
        f.note("/proc/net/ip_vs exists: IPVS is active in this namespace");
    }

    let Some(ipset) = command::find("ipset") else {
        f.fail("ipset", "ipset is not installed", ["ipset command"]);
        return f.finish(Mode::Ipvs);
    };
    if let Ok(out) = command::run(&ipset, &["version"], None, ctx.timeout) {
        f.note(command::first_lines(&out.stdout, 1));
    }
    match ctx.netns() {
        Ok(netns) => {
            let _ = netns.run(&ipset, &["destroy", SET], None);
            match netns.run(&ipset, &["create", SET, "hash:ip"], None) {
                Ok(_) => f.pass(
                    "ipset",
                    format!("hash:ip set created in netns {}", netns.name()),
                ),
                Err(e) => f.fail("ipset", e.to_string(), ["ip_set_hash_ip"]),
            }
            let _ = netns.run(&ipset, &["destroy", SET], None);
        }
        Err(e) => f.fail(
            "ipset",
            format!("not checked: {e}"),
            ["network namespace for tests"],
        ),
    }
    f.finish(Mode::Ipvs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{error::CommandError, roots::ProbeRoots};

    /// A kernel with `ip_vs` and three schedulers loadable, nothing loaded.
    fn loadable_kernel() -> (tempfile::TempDir, KernelModules) {
        let dir = tempfile::tempdir().unwrap();
        let release = "6.1.0-57-amd64";
        let m = dir.path().join("lib/modules").join(release);
        std::fs::create_dir_all(&m).unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(dir.path().join("proc/modules"), "").unwrap();
        std::fs::write(m.join("modules.builtin"), "").unwrap();
        std::fs::write(
            m.join("modules.dep"),
            "kernel/net/netfilter/ipvs/ip_vs.ko: kernel/net/netfilter/nf_conntrack.ko\n\
             kernel/net/netfilter/nf_conntrack.ko:\n\
             kernel/net/netfilter/ipvs/ip_vs_rr.ko: kernel/net/netfilter/ipvs/ip_vs.ko\n\
             kernel/net/netfilter/ipvs/ip_vs_wrr.ko: kernel/net/netfilter/ipvs/ip_vs.ko\n\
             kernel/net/netfilter/ipvs/ip_vs_sh.ko: kernel/net/netfilter/ipvs/ip_vs.ko\n",
        )
        .unwrap();
        let modules = KernelModules::read(&ProbeRoots::under(dir.path()), release);
        (dir, modules)
    }

    fn modprobe_failed(module: &str) -> ModuleLoad {
        ModuleLoad {
            module: module.to_string(),
            result: Err(ModuleLoadError::Modprobe {
                module: module.to_string(),
                source: CommandError::Failed {
                    command: format!("/usr/sbin/modprobe {module}"),
                    status: "1".into(),
                    stderr: format!("modprobe: FATAL: Module {module} not found in directory /lib/modules/6.1.0-57-amd64"),
                },
            }),
        }
    }

    #[test]
    fn lists_the_available_schedulers() {
        let (_dir, modules) = loadable_kernel();
        assert_eq!(available_schedulers(&modules), ["rr", "wrr", "sh"]);
        let report = modules_report(&modules);
        assert!(report.available, "{report:#?}");
        let check = report
            .checks
            .iter()
            .find(|c| c.name == "schedulers")
            .unwrap();
        assert_eq!(check.detail, "available: rr wrr sh (3 of 14)");
    }

    #[test]
    fn names_the_module_that_would_not_load_and_modprobes_words() {
        let (_dir, modules) = loadable_kernel();
        let loads = vec![
            ModuleLoad {
                module: "ip_vs".into(),
                result: Ok(()),
            },
            modprobe_failed("ip_vs_mh"),
        ];
        let mut f = Findings::default();
        module_findings(&modules, &loads, &mut f);
        let report = f.finish(Mode::Ipvs);
        assert!(!report.available);
        assert_eq!(report.missing, ["ip_vs_mh"]);
        assert_eq!(report.not_loaded.len(), 1);
        let check = report
            .checks
            .iter()
            .find(|c| c.name == "module ip_vs_mh")
            .unwrap();
        assert!(!check.ok);
        assert!(
            check.detail.starts_with("not loaded, not built in, not in modules.dep; loading it failed: `/usr/sbin/modprobe ip_vs_mh` failed"),
            "{}",
            check.detail
        );
        assert!(
            report.reason().starts_with(
                "kernel module ip_vs_mh could not be loaded: `/usr/sbin/modprobe ip_vs_mh` \
                 failed with exit status 1: modprobe: FATAL: Module ip_vs_mh not found"
            ),
            "{}",
            report.reason()
        );
    }

    #[test]
    fn modules_for_a_scheduler() {
        // Loading for real is a kernel test (probe/tests/kernel.rs, in the VM lane).
        assert_eq!(modules_for("wlc"), ["ip_vs", "ip_vs_wlc", "nf_conntrack"]);
    }
}
