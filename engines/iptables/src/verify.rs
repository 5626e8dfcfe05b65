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
/// chains (tens of seconds at 10k services): the filter table (small) in full, and in
/// nat only the canary, the builtin chains' jumps and the rule count of `SY-SERVICES`.
/// A missing per-port chain goes unnoticed, but a flushed or deleted table does not.
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
    let filter = apply::save_table(netns, bins.save(family), "filter").await?;
    let kernel = KernelChains::parse(&filter);
    for c in Table::Filter.fixed_chains() {
        if !kernel.filter.contains(*c) {
            return Ok(Some(format!("{fam} filter: chain {c} is missing")));
        }
    }
    let count = filter
        .lines()
        .filter(|l| {
            l.strip_prefix("-A ")
                .is_some_and(|r| r.starts_with(chains::PREFIX))
        })
        .count();
    if count != record.chain_rules(Table::Filter) {
        return Ok(Some(format!(
            "{fam} filter: {count} rules in Switchyard's chains, {} applied",
            record.chain_rules(Table::Filter)
        )));
    }
    if apply::list_chain(netns, tool, "nat", chains::CANARY)
        .await?
        .is_none()
    {
        return Ok(Some(format!(
            "{fam} nat table: canary chain {} is gone (table flushed or deleted)",
            chains::CANARY
        )));
    }
    let mut listed = String::new();
    for b in builtins(Table::Nat) {
        if let Some(l) = apply::list_chain(netns, tool, "nat", b).await? {
            listed.push_str(&l);
        }
    }
    for (j, table) in JUMPS.iter().map(|j| (j, j.table)) {
        let ok = match table {
            Table::Filter => filter.lines().any(|l| j.matches_saved(l)),
            Table::Nat => listed.lines().any(|l| j.matches_saved(l)),
        };
        if !ok {
            return Ok(Some(format!(
                "{fam} {}: jump from {} to {} is missing",
                table.as_str(),
                j.builtin,
                j.target
            )));
        }
    }
    let services = apply::list_chain(netns, tool, "nat", chains::SERVICES)
        .await?
        .unwrap_or_default();
    let n = services.lines().filter(|l| l.starts_with("-A ")).count();
    if n != record.services_rules() {
        return Ok(Some(format!(
            "{fam} nat: {n} rules in {}, {} applied",
            chains::SERVICES,
            record.services_rules()
        )));
    }
    Ok(None)
}
