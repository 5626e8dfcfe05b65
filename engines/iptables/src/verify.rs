//! Drift: whether the kernel still holds what the engine applied. One `*-save` per
//! family is compared with the record: the canary chains (a flushed or deleted table
//! loses them), the jumps from builtin chains, every chain of every service port, and
//! the number of rules in the engine's chains (catches `iptables -F`). With
//! iptables-nft, whose listings are slow at scale, a targeted check instead
//! ([`compare_targeted`]).

use switchyard_model::{Drift, EngineError, IpFamily};

use crate::{
    apply,
    backend::Binaries,
    chains::{Chains, Table},
    record::FamilyRecord,
    render::KernelChains,
};

/// Compares one family's `*-save` output with its record; `None` when they agree.
pub fn compare(
    family: IpFamily,
    saved: &str,
    record: &FamilyRecord,
    chains: &Chains,
) -> Option<String> {
    let kernel = KernelChains::parse(saved, chains);
    for table in Table::BOTH {
        let t = table.as_str();
        if !kernel.has(table, &chains.canary) {
            return Some(format!(
                "{family} {t} table: canary chain {} is gone (table flushed or deleted)",
                chains.canary
            ));
        }
        if let Some(c) = chains
            .fixed(table)
            .into_iter()
            .find(|c| !kernel.has(table, c))
        {
            return Some(format!("{family} {t}: chain {c} is missing"));
        }
        for (name, port) in &record.ports {
            if let Some(c) = port.chains(table).iter().find(|c| !kernel.has(table, c)) {
                return Some(format!("{family} {t}: chain {c} of {name} is missing"));
            }
        }
    }
    for (j, ok) in chains.jumps().iter().zip(&kernel.jumps) {
        if !ok {
            return Some(format!(
                "{family} {}: jump from {} to {} is missing",
                j.table.as_str(),
                j.builtin,
                j.target
            ));
        }
    }
    let counts = rules_in_our_chains(saved, chains);
    for t in Table::BOTH {
        let want = record.chain_rules(t);
        if counts[t.index()] != want {
            return Some(format!(
                "{family} {}: {} rules in the engine's chains, {want} applied",
                t.as_str(),
                counts[t.index()]
            ));
        }
    }
    None
}

/// Rules of `*-save` output in the chains `chains` owns, per table (`Table::index`).
fn rules_in_our_chains(saved: &str, chains: &Chains) -> [usize; 2] {
    let mut counts = [0usize; 2];
    let mut table = None;
    for line in saved.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = Table::BOTH.into_iter().find(|k| k.as_str() == t.trim());
        } else if let (Some(t), Some(rule)) = (table, line.strip_prefix("-A ")) {
            let chain = rule.split_whitespace().next().unwrap_or("");
            if chains.owns(t, chain) {
                counts[t.index()] += 1;
            }
        }
    }
    counts
}

/// The drift of both families, the first difference found.
pub fn drift(found: Vec<String>) -> Drift {
    match found.into_iter().next() {
        None => Drift::None,
        Some(what) => Drift::Found(what),
    }
}

/// The builtin chains our jumps leave from, in `table`.
fn builtins(chains: &Chains, table: Table) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = chains
        .jumps()
        .iter()
        .filter(|j| j.table == table)
        .map(|j| j.builtin)
        .collect();
    v.dedup();
    v
}

/// A cheaper check for iptables-nft, whose whole-table listings are slow with many
/// chains (tens of seconds at 10k services): each fixed chain is listed on its own
/// (`-S CHAIN` fetches only that chain) and its rules counted, and the builtin chains
/// are checked for the jumps. A missing per-port chain goes unnoticed, but a flushed or
/// deleted table, a flushed chain or a missing jump does not.
pub async fn compare_targeted(
    netns: Option<&str>,
    bins: &Binaries,
    family: IpFamily,
    record: &FamilyRecord,
    chains: &Chains,
) -> Result<Option<String>, EngineError> {
    let tool = bins.iptables(family);
    for table in Table::BOTH {
        let t = table.as_str();
        let mut count = 0;
        for c in chains.fixed(table) {
            let Some(rules) = apply::list_chain(netns, tool, t, c).await? else {
                return Ok(Some(if c == chains.canary {
                    format!(
                        "{family} {t} table: canary chain {c} is gone (table flushed or deleted)"
                    )
                } else {
                    format!("{family} {t}: chain {c} is missing")
                }));
            };
            count += rules.lines().filter(|l| l.starts_with("-A ")).count();
        }
        let want = record.fixed_chain_rules(table);
        if count != want {
            return Ok(Some(format!(
                "{family} {t}: {count} rules in the engine's fixed chains, {want} applied"
            )));
        }
        let mut listed = String::new();
        for b in builtins(chains, table) {
            if let Some(l) = apply::list_chain(netns, tool, t, b).await? {
                listed.push_str(&l);
            }
        }
        for j in chains.jumps().iter().filter(|j| j.table == table) {
            if !listed.lines().any(|l| j.matches_saved(l)) {
                return Ok(Some(format!(
                    "{family} {t}: jump from {} to {} is missing",
                    j.builtin, j.target
                )));
            }
        }
    }
    Ok(None)
}
