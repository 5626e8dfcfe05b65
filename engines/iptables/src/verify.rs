//! Drift: whether the kernel still holds what the engine applied. One `*-save` per
//! family is compared with the record: the canary chains (a flushed or deleted table
//! loses them), the jumps from builtin chains, every chain of every service port, and
//! the number of rules in Switchyard's chains (catches `iptables -F`). With
//! iptables-nft, whose listings are slow at scale, a targeted check instead
//! ([`compare_targeted`]).

use switchyard_core::{Drift, EngineError, IpFamily};

use crate::{
    apply,
    backend::Binaries,
    chains::{self, Table, JUMPS},
    record::FamilyRecord,
    render::KernelChains,
};

/// Compares one family's `*-save` output with its record; `None` when they agree.
pub fn compare(family: IpFamily, saved: &str, record: &FamilyRecord) -> Option<String> {
    let fam = match family {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    };
    let kernel = KernelChains::parse(saved);
    for table in Table::BOTH {
        let present = match table {
            Table::Nat => &kernel.nat,
            Table::Filter => &kernel.filter,
        };
        if !present.contains(chains::CANARY) {
            return Some(format!(
                "{fam} {} table: canary chain {} is gone (table flushed or deleted)",
                table.as_str(),
                chains::CANARY
            ));
        }
        for c in table.fixed_chains() {
            if !present.contains(*c) {
                return Some(format!("{fam} {}: chain {c} is missing", table.as_str()));
            }
        }
    }
    for (j, ok) in JUMPS.iter().zip(&kernel.jumps) {
        if !ok {
            return Some(format!(
                "{fam} {}: jump from {} to {} is missing",
                j.table.as_str(),
                j.builtin,
                j.target
            ));
        }
    }
    for (name, port) in &record.ports {
        if let Some(c) = port.chains.iter().find(|c| !kernel.nat.contains(*c)) {
            return Some(format!("{fam} nat: chain {c} of {name} is missing"));
        }
    }
    let mut counts = [0usize; 2];
    let mut table = None;
    for line in saved.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = match t.trim() {
                "filter" => Some(0),
                "nat" => Some(1),
                _ => None,
            };
        } else if let Some(i) = table {
            if line
                .strip_prefix("-A ")
                .is_some_and(|r| r.starts_with(chains::PREFIX))
            {
                counts[i] += 1;
            }
        }
    }
    for (i, t) in Table::BOTH.iter().enumerate() {
        let want = record.chain_rules(*t);
        if counts[i] != want {
            return Some(format!(
                "{fam} {}: {} rules in Switchyard's chains, {want} applied",
                t.as_str(),
                counts[i]
            ));
        }
    }
    None
}

/// The drift of both families, the first difference found.
pub fn drift(found: Vec<String>) -> Drift {
    match found.into_iter().next() {
        None => Drift::None,
        Some(what) => Drift::Found(what),
    }
}

/// The builtin chains our jumps leave from, per table.
fn builtins(table: Table) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = JUMPS
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
) -> Result<Option<String>, EngineError> {
    let fam = match family {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    };
    let tool = bins.iptables(family);
    let (nat_services, nat_nodeports) = record.ports.values().fold((0, 0), |(s, n), p| {
        (
            s + p.dispatch.nat_services.len(),
            n + p.dispatch.nat_nodeports.len(),
        )
    });
    for table in Table::BOTH {
        let t = table.as_str();
        let mut count = 0;
        for c in table.fixed_chains() {
            let Some(rules) = apply::list_chain(netns, tool, t, c).await? else {
                return Ok(Some(if *c == chains::CANARY {
                    format!("{fam} {t} table: canary chain {c} is gone (table flushed or deleted)")
                } else {
                    format!("{fam} {t}: chain {c} is missing")
                }));
            };
            count += rules.lines().filter(|l| l.starts_with("-A ")).count();
        }
        let want = match table {
            Table::Filter => record.chain_rules(Table::Filter),
            Table::Nat => record.fixed_nat + nat_services + nat_nodeports,
        };
        if count != want {
            return Ok(Some(format!(
                "{fam} {t}: {count} rules in Switchyard's fixed chains, {want} applied"
            )));
        }
        let mut listed = String::new();
        for b in builtins(table) {
            if let Some(l) = apply::list_chain(netns, tool, t, b).await? {
                listed.push_str(&l);
            }
        }
        for j in JUMPS.iter().filter(|j| j.table == table) {
            if !listed.lines().any(|l| j.matches_saved(l)) {
                return Ok(Some(format!(
                    "{fam} {t}: jump from {} to {} is missing",
                    j.builtin, j.target
                )));
            }
        }
    }
    Ok(None)
}
