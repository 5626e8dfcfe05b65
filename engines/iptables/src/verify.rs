//! Drift: whether the kernel still holds what the engine applied. One `*-save` per
//! family is compared with the record: the canary chains (a flushed or deleted table
//! loses them), the jumps from builtin chains, every chain of every service port, and
//! the number of rules in Switchyard's chains (catches `iptables -F`).

use switchyard_core::{Drift, IpFamily};

use crate::{
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
