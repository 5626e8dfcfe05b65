//! The nftables engine's needs, as kube-proxy's nftables mode states them: `nft` ≥ 1.0.1,
//! kernel ≥ 5.13, and a table with a verdict map and a `numgen random` rule accepted by
//! the kernel (tested in the probe's namespace, table removed afterwards).

use switchyard_crd::Mode;

use crate::{
    command,
    context::{Context, Findings},
    report::ModeReport,
    version::Version,
};

pub const MIN_NFT: Version = Version::new(1, 0, 1);
pub const MIN_KERNEL: Version = Version::new(5, 13, 0);

const TABLE: &str = "switchyard-probe";

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
            f.fail("nft version", e.to_string(), [format!("nft >= {MIN_NFT}")]);
            false
        }
    };
    if !nft_ok {
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
            return f.finish(Mode::Nftables);
        }
    };
    match netns.run(&nft, &["-f", "-"], Some(&test_ruleset())) {
        Ok(_) => f.pass(
            "vmap and numgen",
            format!(
                "table with a verdict map and a numgen random rule created in netns {}",
                netns.name()
            ),
        ),
        Err(e) => f.fail(
            "vmap and numgen",
            e.to_string(),
            ["nf_tables verdict maps and numgen"],
        ),
    }
    let _ = netns.run(&nft, &["delete", "table", "ip", TABLE], None);
    f.finish(Mode::Nftables)
}
