//! The IPVS engine's needs: the kernel modules `ip_vs`, `ip_vs_rr`, `ip_vs_wrr`,
//! `ip_vs_sh` and `nf_conntrack` (each loaded, built in or loadable), the `IPVS`
//! generic-netlink family, and `ipset` with a `hash:ip` set creatable in the probe's
//! namespace (set destroyed afterwards).

use std::time::Duration;

use switchyard_crd::Mode;

use crate::{
    command,
    context::{Context, Findings},
    error::GenlError,
    genl,
    kernel_module::{KernelModules, ModuleState},
    report::ModeReport,
};

/// Modules the IPVS engine needs, in the order they are reported.
pub const MODULES: [&str; 5] = ["ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack"];

const SET: &str = "switchyard-probe";

/// Adds one check per module in [`MODULES`]; returns whether `ip_vs` is there.
fn module_findings(modules: &KernelModules, f: &mut Findings) -> bool {
    let mut ip_vs_present = true;
    for name in MODULES {
        let check = format!("module {name}");
        match modules.state(name) {
            ModuleState::Missing => {
                if name == "ip_vs" {
                    ip_vs_present = false;
                }
                f.fail(
                    &check,
                    "not loaded, not built in, not in modules.dep",
                    [name],
                );
            }
            state @ ModuleState::Loadable => f.pass(&check, format!("{state} (modules.dep)")),
            state => f.pass(&check, state.to_string()),
        }
    }
    ip_vs_present
}

/// The module checks alone, as a report (what [`MODULES`] are missing from `modules`).
pub fn modules_report(modules: &KernelModules) -> ModeReport {
    let mut f = Findings::default();
    module_findings(modules, &mut f);
    f.finish(Mode::Ipvs)
}

pub(crate) fn probe(ctx: &Context) -> ModeReport {
    let mut f = Findings::default();
    let modules = ctx.modules();
    for gap in &modules.gaps {
        f.note(gap.clone());
    }

    let ip_vs_present = module_findings(modules, &mut f);

    match genl::resolve_family("IPVS", ctx.timeout.min(Duration::from_secs(5))) {
        Ok(id) => f.pass(
            "netlink family",
            format!("IPVS resolves to family id {id:#x}"),
        ),
        Err(e @ GenlError::NotRegistered { .. }) => {
            // Without the module this is its consequence, already named; with it, the
            // family itself is what is missing.
            let missing = if ip_vs_present {
                "IPVS netlink family"
            } else {
                "ip_vs"
            };
            f.fail("netlink family", e.to_string(), [missing]);
        }
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
