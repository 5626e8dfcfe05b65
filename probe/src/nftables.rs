//! The nftables engine's needs, as kube-proxy's nftables mode states them: `nft` ≥ 1.0.1,
//! kernel ≥ 5.13, and a table with a verdict map and a `numgen random` rule accepted by
//! the kernel (tested in the probe's namespace, table removed afterwards).
//!
//! The `nf_tables` module is judged with that test: a kernel that runs it has the module
//! (loaded, built in, or loaded on demand). When the test fails and `nf_tables` is
//! loadable but not loaded (the kernel could not autoload it: no `modprobe`, no module
//! tree in the agent's root), that is the cause named — "kernel module nf_tables not
//! loaded but loadable" — not the ruleset or the `nft` version (`nft --version` itself
//! fails there: nft 1.0.6 opens a netfilter netlink socket first, and gets "Protocol not
//! supported").

use switchyard_crd::Mode;

use crate::{
    command,
    context::{Context, Findings},
    kernel_module::ModuleState,
    report::ModeReport,
    version::Version,
};

pub const MIN_NFT: Version = Version::new(1, 0, 1);
pub const MIN_KERNEL: Version = Version::new(5, 13, 0);

const TABLE: &str = "switchyard-probe";
const MODULE: &str = "nf_tables";
const MODULE_CHECK: &str = "module nf_tables";

/// The `nf_tables` module's check, given whether the kernel accepted the test ruleset
/// (`None`: not tested). Returns whether the module is the cause of a failed test.
fn module_finding(
    ctx: &Context,
    state: ModuleState,
    ruleset_ok: Option<bool>,
    f: &mut Findings,
) -> bool {
    let modules = ctx.modules();
    match (state, ruleset_ok) {
        (ModuleState::Loaded | ModuleState::Builtin, _) => {
            f.pass(MODULE_CHECK, state.to_string());
            false
        }
        (_, Some(true)) => {
            let how = if state == ModuleState::Loadable {
                "was not loaded; the kernel loaded it on demand".to_string()
            } else {
                format!("in use (the test ruleset ran); {}", modules.gaps.join("; "))
            };
            f.pass(MODULE_CHECK, how);
            false
        }
        (ModuleState::Loadable, _) => {
            f.fail_not_loaded(
                MODULE_CHECK,
                format!(
                    "{}; the kernel did not load it on demand",
                    modules.describe(MODULE, state)
                ),
                MODULE,
                None,
            );
            true
        }
        (ModuleState::Missing, _) if modules.has_module_lists() => {
            f.fail(MODULE_CHECK, modules.describe(MODULE, state), [MODULE]);
            true
        }
        // Module lists unreadable and nothing tested: no verdict on the module.
        (ModuleState::Missing, _) => false,
    }
}

fn test_ruleset() -> String {
    format!(
        "add table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tmap probe-vmap {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}\n\
         \tchain probe-target {{ }}\n\
         \tchain probe-dispatch {{\n\
         \t\tip daddr . meta l4proto . th dport vmap @probe-vmap\n\
         \t\tnumgen random mod 2 vmap {{ 0 : goto probe-target, 1 : goto probe-target }}\n\
         \t}}\n\
         }}\n\
         add element ip {TABLE} probe-vmap {{ 10.96.0.1 . tcp . 80 : goto probe-target }}\n"
    )
}

pub(crate) fn probe(ctx: &Context) -> ModeReport {
    let mut f = Findings::default();
    // Before any `nft` run, which may load it.
    let module = ctx.modules().state(MODULE);

    let kernel = Version::from_kernel_release(&ctx.release);
    match kernel {
        Some(v) if v >= MIN_KERNEL => f.pass("kernel version", format!("{v} >= {MIN_KERNEL}")),
        Some(v) => f.fail(
            "kernel version",
            format!("{v} < {MIN_KERNEL}"),
            [format!(
                "kernel >= {}.{}",
                MIN_KERNEL.major, MIN_KERNEL.minor
            )],
        ),
        None => f.fail(
            "kernel version",
            format!("cannot parse kernel release {:?}", ctx.release),
            [format!(
                "kernel >= {}.{}",
                MIN_KERNEL.major, MIN_KERNEL.minor
            )],
        ),
    }

    let Some(nft) = command::find("nft") else {
        f.fail("nft version", "nft is not installed", ["nft command"]);
        module_finding(ctx, module, None, &mut f);
        return f.finish(Mode::Nftables);
    };
    let nft_ok = match command::run(&nft, &["--version"], None, ctx.timeout) {
        Ok(out) => match Version::from_nft_version(&out.stdout) {
            Some(v) if v >= MIN_NFT => {
                f.pass("nft version", format!("{v} >= {MIN_NFT}"));
                true
            }
            Some(v) => {
                f.fail(
                    "nft version",
                    format!("{v} < {MIN_NFT}"),
                    [format!("nft >= {MIN_NFT}")],
                );
                false
            }
            None => {
                f.fail(
                    "nft version",
                    format!("cannot parse {:?}", out.stdout.trim()),
                    [format!("nft >= {MIN_NFT}")],
                );
                false
            }
        },
        Err(e) => {
            // nft opens a netfilter netlink socket even for --version ("Protocol not
            // supported" without nf_tables): when that module is not loaded, it is the
            // cause, not nft.
            let missing = if module_finding(ctx, module, None, &mut f) {
                MODULE.to_string()
            } else {
                format!("nft >= {MIN_NFT}")
            };
            f.fail("nft version", e.to_string(), [missing]);
            return f.finish(Mode::Nftables);
        }
    };
    if !nft_ok {
        module_finding(ctx, module, None, &mut f);
        return f.finish(Mode::Nftables);
    }

    let netns = match ctx.netns() {
        Ok(n) => n,
        Err(e) => {
            f.fail(
                "vmap and numgen",
                format!("not checked: {e}"),
                ["network namespace for tests"],
            );
            module_finding(ctx, module, None, &mut f);
            return f.finish(Mode::Nftables);
        }
    };
    let ruleset = netns.run(&nft, &["-f", "-"], Some(&test_ruleset()));
    let module_is_cause = module_finding(ctx, module, Some(ruleset.is_ok()), &mut f);
    match ruleset {
        Ok(_) => f.pass(
            "vmap and numgen",
            format!(
                "table with a verdict map and a numgen random rule created in netns {}",
                netns.name()
            ),
        ),
        // The module's check already names what is missing.
        Err(e) if module_is_cause => f.fail("vmap and numgen", e.to_string(), [MODULE]),
        Err(e) => f.fail(
            "vmap and numgen",
            e.to_string(),
            ["nf_tables verdict maps and numgen"],
        ),
    }
    let _ = netns.run(&nft, &["delete", "table", "ip", TABLE], None);
    f.finish(Mode::Nftables)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::roots::ProbeRoots;

    const RELEASE: &str = "6.1.0-57-amd64";

    /// A context over fake roots where `nf_tables` is loadable (or, with `lists` false,
    /// where the module lists are unreadable).
    fn context(lists: bool) -> (tempfile::TempDir, Context) {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("lib/modules").join(RELEASE);
        std::fs::create_dir_all(&m).unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(dir.path().join("proc/modules"), "").unwrap();
        if lists {
            std::fs::write(m.join("modules.builtin"), "").unwrap();
            std::fs::write(
                m.join("modules.dep"),
                "kernel/net/netfilter/nf_tables.ko: kernel/lib/libcrc32c.ko\n",
            )
            .unwrap();
        }
        let roots = ProbeRoots::under(dir.path());
        let ctx = Context::new(roots, RELEASE.into(), Duration::from_secs(1), None);
        (dir, ctx)
    }

    fn verdict(lists: bool, ruleset_ok: Option<bool>) -> (bool, ModeReport) {
        let (_dir, ctx) = context(lists);
        let mut f = Findings::default();
        let state = ctx.modules().state(MODULE);
        let cause = module_finding(&ctx, state, ruleset_ok, &mut f);
        (cause, f.finish(Mode::Nftables))
    }

    #[test]
    fn a_loadable_module_that_did_not_load_is_the_named_cause() {
        let (cause, report) = verdict(true, Some(false));
        assert!(cause);
        assert_eq!(
            report.reason(),
            "kernel module nf_tables not loaded but loadable (modprobe nf_tables)"
        );
        let (cause, report) = verdict(true, None);
        assert!(cause && !report.available, "{report:#?}");
    }

    #[test]
    fn a_loadable_module_the_kernel_loaded_on_demand_passes() {
        let (cause, report) = verdict(true, Some(true));
        assert!(!cause && report.available, "{report:#?}");
        assert_eq!(
            report.checks[0].detail,
            "was not loaded; the kernel loaded it on demand"
        );
    }

    #[test]
    fn unreadable_module_lists_leave_the_verdict_to_the_ruleset() {
        let (cause, report) = verdict(false, None);
        assert!(!cause && report.checks.is_empty(), "{report:#?}");
        let (cause, report) = verdict(false, Some(true));
        assert!(!cause && report.available, "{report:#?}");
        let (cause, report) = verdict(false, Some(false));
        assert!(!cause && report.checks.is_empty(), "{report:#?}");
    }
}
