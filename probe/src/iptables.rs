//! The iptables engine's needs: the restore tools, the backend in use (nft or legacy,
//! chosen by kube-proxy's rule: whichever `*-save` shows more rules in this namespace,
//! read-only; a tie means nft), and a `nat` table with the `statistic`, `recent`,
//! `comment`, `addrtype`, `mark` and `bpf` (with `conntrack`: the hairpin check)
//! extensions — tested for real by restoring a tiny
//! ruleset in the probe's namespace (`--noflush`, one private chain, removed afterwards).

use std::path::PathBuf;

use switchyard_crd::Mode;

use crate::{
    command,
    context::{Context, Findings},
    report::ModeReport,
};

/// The private chain the ruleset tests use.
const CHAIN: &str = "SWITCHYARD-PROBE";

/// Binaries the engine runs.
const REQUIRED: [&str; 2] = ["iptables-restore", "ip6tables-restore"];
/// Backend-specific variants (Debian ships both).
const VARIANTS: [&str; 2] = ["iptables-nft-restore", "iptables-legacy-restore"];

/// The extensions tested, the rules exercising them, and the module named when missing.
const EXTENSIONS: [(&str, &[&str], &str); 5] = [
    (
        "statistic",
        &["-m statistic --mode random --probability 0.5000000000 -j RETURN"],
        "xt_statistic",
    ),
    (
        "recent",
        &[
            "-m recent --name SWITCHYARD-PROBE --rcheck --seconds 10800 --reap -j RETURN",
            "-m recent --name SWITCHYARD-PROBE --set -j RETURN",
        ],
        "xt_recent",
    ),
    (
        "comment",
        &["-m comment --comment \"switchyard probe\" -j RETURN"],
        "xt_comment",
    ),
    (
        "addrtype",
        &["-m addrtype --dst-type LOCAL -j RETURN"],
        "xt_addrtype",
    ),
    (
        "mark",
        &[
            "-m mark --mark 0x4000/0x4000 -j RETURN",
            "-j MARK --or-mark 0x4000",
        ],
        "xt_mark",
    ),
];

/// The extensions tested: [`EXTENSIONS`], then the engine's hairpin check (the `bpf`
/// match with the engine's own IPv4 program, after `conntrack`).
fn extensions() -> Vec<(&'static str, Vec<String>, &'static str)> {
    let hairpin = format!(
        "-m conntrack --ctstate DNAT -m bpf --bytecode \"{}\" -j RETURN",
        switchyard_iptables::fixed::hairpin_bytecode(switchyard_model::IpFamily::V4)
    );
    EXTENSIONS
        .iter()
        .map(|(name, rules, module)| {
            (
                *name,
                rules.iter().map(|r| r.to_string()).collect(),
                *module,
            )
        })
        .chain(std::iter::once(("bpf", vec![hairpin], "xt_bpf")))
        .collect()
}

/// An iptables backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }
}

/// Rules (`-A` lines) in `*-save` output.
pub fn count_rules(save_output: &str) -> usize {
    save_output.lines().filter(|l| l.starts_with("-A ")).count()
}

/// kube-proxy's rule: the backend holding more rules; a tie (including none) is nft.
pub fn choose_backend(nft_rules: usize, legacy_rules: usize) -> Backend {
    if legacy_rules > nft_rules {
        Backend::Legacy
    } else {
        Backend::Nft
    }
}

/// Counts the rules `{iptables,ip6tables}-<backend>-save` show in this namespace.
fn rules_in(backend: Backend, ctx: &Context, errors: &mut Vec<String>) -> usize {
    let mut total = 0;
    for family in ["iptables", "ip6tables"] {
        let tool = format!("{family}-{}-save", backend.as_str());
        let Some(path) = command::find(&tool) else {
            continue;
        };
        match command::run(&path, &[], None, ctx.timeout) {
            Ok(out) => total += count_rules(&out.stdout),
            Err(e) => errors.push(e.to_string()),
        }
    }
    total
}

/// The restore tool for `family` (`iptables`/`ip6tables`) with `backend`: the variant,
/// or the plain tool when its `--version` names the backend.
fn restore_tool(family: &str, backend: Backend, ctx: &Context) -> Option<PathBuf> {
    if let Some(p) = command::find(&format!("{family}-{}-restore", backend.as_str())) {
        return Some(p);
    }
    let plain = command::find(&format!("{family}-restore"))?;
    let version = command::run(&plain, &["--version"], None, ctx.timeout).ok()?;
    let tag = match backend {
        Backend::Nft => "nf_tables",
        Backend::Legacy => "legacy",
    };
    version.stdout.contains(tag).then_some(plain)
}

fn ruleset(table: &str, rules: &[impl AsRef<str>]) -> String {
    let mut s = format!("*{table}\n:{CHAIN} - [0:0]\n");
    for r in rules {
        s.push_str(&format!("-A {CHAIN} {}\n", r.as_ref()));
    }
    s.push_str("COMMIT\n");
    s
}

pub(crate) fn probe(ctx: &Context) -> ModeReport {
    let mut f = Findings::default();

    // Binaries.
    let absent: Vec<&str> = REQUIRED
        .iter()
        .chain(VARIANTS.iter())
        .copied()
        .filter(|b| command::find(b).is_none())
        .collect();
    let required_absent: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|b| absent.contains(b))
        .collect();
    let detail = if absent.is_empty() {
        format!("{} present", [REQUIRED, VARIANTS].concat().join(", "))
    } else {
        format!("absent: {}", absent.join(", "))
    };
    if required_absent.is_empty() {
        f.pass("binaries", detail);
    } else {
        f.fail(
            "binaries",
            detail,
            required_absent.iter().map(|b| format!("{b} command")),
        );
    }

    // Backend in use.
    let mut errors = Vec::new();
    let nft_rules = rules_in(Backend::Nft, ctx, &mut errors);
    let legacy_rules = rules_in(Backend::Legacy, ctx, &mut errors);
    let backend = choose_backend(nft_rules, legacy_rules);
    let counts = format!("nft ({nft_rules} rules) vs legacy ({legacy_rules} rules)");
    f.note(format!("iptables backend: {counts}"));
    for e in errors {
        f.note(format!("while counting rules: {e}"));
    }
    let v4 = restore_tool("iptables", backend, ctx);
    let v6 = restore_tool("ip6tables", backend, ctx);
    let Some(v4) = v4 else {
        f.fail(
            "backend",
            format!(
                "{} chosen ({counts}) but no iptables-{}-restore",
                backend.as_str(),
                backend.as_str()
            ),
            [format!("iptables-{}-restore command", backend.as_str())],
        );
        return f.finish(Mode::Iptables);
    };
    f.pass(
        "backend",
        format!("{} chosen: {counts} (a tie means nft)", backend.as_str()),
    );
    if let Ok(out) = command::run(&v4, &["--version"], None, ctx.timeout) {
        let line = command::first_lines(&out.stdout, 1);
        if !line.is_empty() {
            f.note(line);
        }
    }

    // Ruleset tests, in the probe's namespace.
    let netns = match ctx.netns() {
        Ok(n) => n,
        Err(e) => {
            f.fail(
                "nat table",
                format!("not checked: {e}"),
                ["network namespace for tests"],
            );
            return f.finish(Mode::Iptables);
        }
    };
    let cleanup = format!("*nat\n:{CHAIN} - [0:0]\n-X {CHAIN}\nCOMMIT\n");
    let restore = |tool: &PathBuf, input: &str| netns.run(tool, &["--noflush"], Some(input));

    let nat_ok = match restore(&v4, &ruleset("nat", &[] as &[&str])) {
        Ok(_) => {
            f.pass(
                "nat table",
                format!("chain created in netns {}", netns.name()),
            );
            true
        }
        Err(e) => {
            f.fail("nat table", e.to_string(), ["iptable_nat"]);
            false
        }
    };
    for (name, rules, module) in extensions() {
        let check = format!("{name} match");
        if !nat_ok {
            f.fail(&check, "not checked: nat table unusable", [module]);
            continue;
        }
        match restore(&v4, &ruleset("nat", &rules)) {
            Ok(_) => f.pass(&check, format!("accepted: {}", rules.join("; "))),
            Err(e) => f.fail(&check, e.to_string(), [module]),
        }
    }
    match &v6 {
        Some(v6) => match restore(v6, &ruleset("nat", &[] as &[&str])) {
            Ok(_) => {
                f.pass("ip6 nat table", "chain created");
                let _ = restore(v6, &cleanup);
            }
            Err(e) => f.fail("ip6 nat table", e.to_string(), ["ip6table_nat"]),
        },
        None => f.fail(
            "ip6 nat table",
            format!("no ip6tables-{}-restore", backend.as_str()),
            [format!("ip6tables-{}-restore command", backend.as_str())],
        ),
    }
    if nat_ok {
        if let Err(e) = restore(&v4, &cleanup) {
            f.note(format!("could not remove test chain {CHAIN}: {e}"));
        }
    }
    f.finish(Mode::Iptables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_follows_kube_proxy_rule() {
        let save = "# Generated by iptables-nft-save\n*nat\n:PREROUTING ACCEPT [0:0]\n\
                    -A PREROUTING -j KUBE-SERVICES\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n";
        assert_eq!(count_rules(save), 2);
        assert_eq!(choose_backend(2, 0), Backend::Nft);
        assert_eq!(choose_backend(0, 3), Backend::Legacy);
        assert_eq!(choose_backend(0, 0), Backend::Nft);
        assert_eq!(choose_backend(5, 5), Backend::Nft);
    }
}
