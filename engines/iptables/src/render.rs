//! `iptables-restore` transactions: full ([`render_family_full`]), partial
//! ([`render_family_partial`]) and cleanup ([`render_cleanup`]). Rendering is pure: what
//! the kernel already holds comes in as a [`KernelChains`] (full sync) or the engine's
//! record (partial sync); the per-port rules come from [`crate::port`], the fixed ones
//! from [`crate::fixed`].

use std::{collections::HashSet, fmt::Write as _};

use switchyard_model::{ChangeSet, IpFamily, NodeModel, ServicePortName};

use crate::{
    chains::{Chains, Table},
    fixed::{fixed_rules, FixedRules},
    port::{encode_port, FamilyContext},
    record::{DispatchChain, FamilyRecord, PortRecord},
};

/// Above this many endpoints (all service ports together) per-endpoint rules carry no
/// comment, as upstream's large-cluster mode, to keep the ruleset small.
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// Whether `model` renders in large-cluster mode.
pub fn large_cluster(model: &NodeModel) -> bool {
    model.endpoint_count() > LARGE_CLUSTER_ENDPOINTS
}

/// What already exists in the kernel, from `iptables-save` (full syncs only).
#[derive(Clone, Debug, Default)]
pub struct KernelChains {
    /// The engine's chains present, per table (`Table::index`).
    pub chains: [HashSet<String>; 2],
    /// Which of the engine's jumps ([`Chains::jumps`]) are present.
    pub jumps: Vec<bool>,
}

impl KernelChains {
    /// Parses `iptables-save` output, keeping what `chains` owns.
    pub fn parse(saved: &str, chains: &Chains) -> KernelChains {
        let mut k = KernelChains {
            jumps: vec![false; chains.jumps().len()],
            ..Default::default()
        };
        let mut table = None;
        for line in saved.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = match t.trim() {
                    "nat" => Some(Table::Nat),
                    "filter" => Some(Table::Filter),
                    _ => None,
                };
                continue;
            }
            let Some(table) = table else { continue };
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or("");
                if chains.owns(table, name) {
                    k.chains[table.index()].insert(name.to_string());
                }
            } else if line.starts_with("-A ") {
                for (i, j) in chains.jumps().iter().enumerate() {
                    if j.table == table && j.matches_saved(line) {
                        k.jumps[i] = true;
                    }
                }
            }
        }
        k
    }

    pub fn has(&self, table: Table, chain: &str) -> bool {
        self.chains[table.index()].contains(chain)
    }
}

/// How the full restore input is shaped for the tool that reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Shape {
    /// Plain input, for any `*-restore` (and `--test`).
    #[default]
    Plain,
    /// For `iptables-nft-restore --noflush`: the nat section lists the table (`-S`,
    /// [`LIST_ALL`]) before declaring the per-port chains. Without it, the tool records
    /// every chain name a command names in a sorted linked list (`nft_cache_level_set`
    /// → `cache_chain_list_insert`, a linear scan per command): O(commands × chains),
    /// 78 s at 10k services. A command naming no chain makes it fetch all chains instead
    /// and skip that list; `-S` is the only such command that changes nothing (its
    /// output is discarded). It must come after the jumps into builtin chains: `-S`
    /// fakes missing builtin chains in the tool's cache, so a jump inserted after it
    /// into a builtin chain the kernel does not have yet would fail.
    NftListFirst,
}

/// The line that makes iptables-nft-restore fetch all chains of the table (see
/// [`Shape::NftListFirst`]).
pub const LIST_ALL: &str = "-S\n";

/// `text` without its [`LIST_ALL`] lines (for a table iptables-nft cannot list, e.g. one
/// holding rules made with `nft`: then the slow shape is the only one that works).
pub fn without_list_all(text: &str) -> String {
    text.replace(&format!("\n{LIST_ALL}"), "\n")
}

/// Whether `text` holds a [`LIST_ALL`] line.
pub fn has_list_all(text: &str) -> bool {
    text.contains(&format!("\n{LIST_ALL}"))
}

/// Every service port of one family encoded, in model order.
#[derive(Default)]
struct Encoded {
    record: FamilyRecord,
    /// Per table: the per-port chains' declarations and bodies.
    decls: [String; 2],
    bodies: [String; 2],
    /// Per shared chain: its per-port rules as `-A` lines.
    dispatch: [String; DispatchChain::ALL.len()],
}

fn encode_all(model: &NodeModel, ctx: &FamilyContext<'_>) -> Encoded {
    let mut e = Encoded::default();
    for sp in model.services.values() {
        let Some(rules) = encode_port(ctx, sp) else {
            continue;
        };
        for t in Table::BOTH {
            e.bodies[t.index()].push_str(&rules.body[t.index()]);
            for c in rules.record.chains(t) {
                declare(&mut e.decls[t.index()], c);
            }
        }
        for (chain, specs) in rules.record.dispatch.lists() {
            let name = chain.name(ctx.chains);
            for s in specs {
                push_spec(&mut e.dispatch[chain.index()], "-A", name, s);
            }
        }
        e.record.set(sp.name.clone(), Some(rules.record));
    }
    e
}

fn dispatch_lines(e: &Encoded, chain: DispatchChain) -> &str {
    &e.dispatch[chain.index()]
}

/// The full restore input for one family, with the record of what it programs.
///
/// The per-port chains are declared in model order, that is in no particular name
/// order (their names are hashes). iptables-nft sorts the chains it lists (`-S`,
/// `iptables-nft-save`) with a first-element-pivot quicksort of the kernel's chain list,
/// which is in creation order: chains created in name order make every listing
/// quadratic (`iptables-nft-save -t nat` 55 s at 10k services, 2.2 s otherwise).
pub fn render_family_full(
    model: &NodeModel,
    ctx: &FamilyContext<'_>,
    kernel: &KernelChains,
    shape: Shape,
) -> (String, FamilyRecord) {
    let mut e = encode_all(model, ctx);
    let size: usize = e.bodies.iter().map(String::len).sum();
    let mut out = String::with_capacity(size * 5 / 4 + 4096);
    filter_section(&mut out, ctx, kernel, &mut e);
    nat_section(&mut out, ctx, kernel, shape, &mut e);
    (out, e.record)
}

/// Opens the section of `table` declaring (flushing) its fixed chains; returns their
/// rules (counted in the record) and the engine's stale chains in the kernel.
fn begin_section<'k>(
    out: &mut String,
    table: Table,
    ctx: &FamilyContext<'_>,
    kernel: &'k KernelChains,
    e: &mut Encoded,
) -> (FixedRules, Vec<&'k str>) {
    let fixed = fixed_rules(table, ctx);
    e.record.fixed[table.index()] = fixed.count;
    let stale = stale(kernel, table, ctx.chains, &e.record);
    let _ = writeln!(out, "*{}", table.as_str());
    declare_sorted(out, ctx.chains.fixed(table));
    (fixed, stale)
}

/// `*filter`: fixed chains (flushed by their declaration), per-port chains, rules,
/// missing jumps, stale chains deleted.
fn filter_section(
    out: &mut String,
    ctx: &FamilyContext<'_>,
    kernel: &KernelChains,
    e: &mut Encoded,
) {
    let t = Table::Filter;
    let (fixed, stale) = begin_section(out, t, ctx, kernel, e);
    out.push_str(&e.decls[t.index()]);
    for c in &stale {
        declare(out, c);
    }
    out.push_str(&fixed.head);
    out.push_str(&e.bodies[t.index()]);
    for chain in DispatchChain::ALL.into_iter().filter(|c| c.table() == t) {
        out.push_str(dispatch_lines(e, chain));
    }
    jumps(out, t, ctx.chains, kernel);
    for c in &stale {
        delete(out, c);
    }
    out.push_str("COMMIT\n");
}

/// `*nat`: fixed chains and the jumps into them, [the listing], per-port chains, rules
/// (the NodePort jump last in `SERVICES`), stale chains deleted.
fn nat_section(
    out: &mut String,
    ctx: &FamilyContext<'_>,
    kernel: &KernelChains,
    shape: Shape,
    e: &mut Encoded,
) {
    let t = Table::Nat;
    let (fixed, stale) = begin_section(out, t, ctx, kernel, e);
    jumps(out, t, ctx.chains, kernel);
    if shape == Shape::NftListFirst {
        out.push_str(LIST_ALL);
    }
    out.push_str(&e.decls[t.index()]);
    for c in &stale {
        declare(out, c);
    }
    out.push_str(&fixed.head);
    out.push_str(&e.bodies[t.index()]);
    out.push_str(dispatch_lines(e, DispatchChain::NatServices));
    out.push_str(&fixed.tail);
    out.push_str(dispatch_lines(e, DispatchChain::NatNodePorts));
    for c in &stale {
        delete(out, c);
    }
    out.push_str("COMMIT\n");
}

/// The full restore input for one family of `model` with the default chain names, as
/// for a first sync on a node with none of the engine's chains (INVALID packets
/// dropped). Pure; for tests and benchmarks.
pub fn render_full(model: &NodeModel, family: IpFamily) -> String {
    render_full_shaped(model, family, Shape::Plain)
}

/// [`render_full`] in a given [`Shape`].
pub fn render_full_shaped(model: &NodeModel, family: IpFamily, shape: Shape) -> String {
    let chains = Chains::default();
    let ctx = FamilyContext::new(model, family, &chains, large_cluster(model), true);
    render_family_full(model, &ctx, &KernelChains::default(), shape).0
}

/// A partial sync of one family: its restore input (empty: nothing to do) and the
/// record updates to commit once it applied.
#[derive(Debug, Default)]
pub struct FamilyPartial {
    pub text: String,
    pub updates: Vec<(ServicePortName, Option<PortRecord>)>,
}

/// One table's part of a partial sync.
#[derive(Default)]
struct TablePatch {
    decls: Vec<String>,
    bodies: String,
    rules: String,
    deletes: Vec<String>,
}

impl TablePatch {
    fn is_empty(&self) -> bool {
        self.decls.is_empty() && self.rules.is_empty()
    }

    fn write(&self, out: &mut String, table: Table) {
        if self.is_empty() {
            return;
        }
        let _ = writeln!(out, "*{}", table.as_str());
        declare_sorted(out, self.decls.iter().map(String::as_str).collect());
        out.push_str(&self.bodies);
        out.push_str(&self.rules);
        for c in &self.deletes {
            delete(out, c);
        }
        out.push_str("COMMIT\n");
    }
}

/// Rewrites the chains of the service ports named in `changes` and patches their rules
/// in the shared chains (`-D` what went away, `-I`/`-A` what is new).
pub fn render_family_partial(
    model: &NodeModel,
    changes: &ChangeSet,
    record: &FamilyRecord,
    ctx: &FamilyContext<'_>,
) -> FamilyPartial {
    let mut patches = [TablePatch::default(), TablePatch::default()];
    let mut updates = Vec::new();
    let empty = PortRecord::default();
    for name in changes.touched() {
        let old = record.ports.get(name);
        let new = model.services.get(name).and_then(|sp| encode_port(ctx, sp));
        if old.is_none() && new.is_none() {
            continue;
        }
        let old_r = old.unwrap_or(&empty);
        let new_r = new.as_ref().map_or(&empty, |r| &r.record);
        for t in Table::BOTH {
            let patch = &mut patches[t.index()];
            patch_chains(patch, old_r.chains(t), new_r.chains(t));
            if let Some(r) = &new {
                patch.bodies.push_str(&r.body[t.index()]);
            }
        }
        for chain in DispatchChain::ALL {
            let patch = &mut patches[chain.table().index()];
            patch_dispatch(patch, ctx.chains, chain, old_r, new_r);
        }
        updates.push((name.clone(), new.map(|r| r.record)));
    }
    let mut text = String::new();
    for t in Table::BOTH {
        patches[t.index()].write(&mut text, t);
    }
    FamilyPartial { text, updates }
}

/// Declares (flushes) the port's new chains, and the old ones it no longer has, which
/// are deleted at the end.
fn patch_chains(patch: &mut TablePatch, old: &[String], new: &[String]) {
    patch.decls.extend(new.iter().cloned());
    let kept: HashSet<&str> = new.iter().map(String::as_str).collect();
    for c in old.iter().filter(|c| !kept.contains(c.as_str())) {
        patch.decls.push(c.clone());
        patch.deletes.push(c.clone());
    }
}

/// The port's rules in one shared chain: `-D` what went away, add what is new (nat
/// `SERVICES` at the top, before the NodePort jump that must stay last).
fn patch_dispatch(
    patch: &mut TablePatch,
    chains: &Chains,
    chain: DispatchChain,
    old: &PortRecord,
    new: &PortRecord,
) {
    let (old_l, new_l) = (old.dispatch.get(chain), new.dispatch.get(chain));
    let name = chain.name(chains);
    for s in old_l.iter().filter(|s| !new_l.contains(s)) {
        push_spec(&mut patch.rules, "-D", name, s);
    }
    let (op, at) = if chain == DispatchChain::NatServices {
        ("-I", format!("{name} 1"))
    } else {
        ("-A", name.to_string())
    };
    for s in new_l.iter().filter(|s| !old_l.contains(s)) {
        push_spec(&mut patch.rules, op, &at, s);
    }
}

/// Declares a few chains in name order (partial syncs and the fixed chains). A full
/// sync's per-port chains are declared in model order instead, see
/// [`render_family_full`].
fn declare_sorted(out: &mut String, mut chains: Vec<&str>) {
    chains.sort_unstable();
    chains.dedup();
    for c in chains {
        declare(out, c);
    }
}

fn declare(out: &mut String, chain: &str) {
    out.push(':');
    out.push_str(chain);
    out.push_str(" - [0:0]\n");
}

fn delete(out: &mut String, chain: &str) {
    out.push_str("-X ");
    out.push_str(chain);
    out.push('\n');
}

fn push_spec(out: &mut String, op: &str, chain: &str, spec: &str) {
    out.push_str(op);
    out.push(' ');
    out.push_str(chain);
    out.push(' ');
    out.push_str(spec);
    out.push('\n');
}

/// Missing jumps from builtin chains, inserted first in their chain.
fn jumps(out: &mut String, table: Table, chains: &Chains, kernel: &KernelChains) {
    // Inserted in reverse, so they end up in the list's order.
    for (i, j) in chains.jumps().iter().enumerate().rev() {
        if j.table == table && !kernel.jumps.get(i).copied().unwrap_or(false) {
            push_spec(out, "-I", &format!("{} 1", j.builtin), &j.spec());
        }
    }
}

/// Stale chains of the engine (present in the kernel, not wanted): flushed, then deleted
/// at the end of the table's section.
fn stale<'a>(
    kernel: &'a KernelChains,
    table: Table,
    chains: &Chains,
    record: &FamilyRecord,
) -> Vec<&'a str> {
    let mut wanted: HashSet<&str> = chains.fixed(table).into_iter().collect();
    wanted.extend(record.port_chains(table).map(String::as_str));
    let mut v: Vec<&str> = kernel.chains[table.index()]
        .iter()
        .map(String::as_str)
        .filter(|c| !wanted.contains(c))
        .collect();
    v.sort_unstable();
    v
}

/// Restore input removing everything `chains` owns in one family, given its
/// `iptables-save` output: rules in other chains jumping to one of ours (the jumps from
/// builtin chains), then every chain of ours. `None` when there is nothing to remove.
/// With [`Shape::NftListFirst`], each table's section starts with [`LIST_ALL`] (tens of
/// thousands of chains to delete otherwise cost minutes in iptables-nft-restore).
pub fn render_cleanup(saved: &str, shape: Shape, chains: &Chains) -> Option<String> {
    let mut out = String::new();
    let mut rules = String::new();
    let mut ours: Vec<String> = Vec::new();
    let mut table: Option<(&str, Option<Table>)> = None;
    for line in saved.lines() {
        if let Some(t) = line.strip_prefix('*') {
            let t = t.trim();
            let known = Table::BOTH.into_iter().find(|k| k.as_str() == t);
            table = Some((t, known));
            rules.clear();
            ours.clear();
            continue;
        }
        let Some((name, Some(t))) = table else {
            continue;
        };
        if line == "COMMIT" {
            if !rules.is_empty() || !ours.is_empty() {
                let _ = writeln!(out, "*{name}");
                if shape == Shape::NftListFirst {
                    out.push_str(LIST_ALL);
                }
                out.push_str(&rules);
                ours.iter().for_each(|c| declare(&mut out, c));
                ours.iter().for_each(|c| delete(&mut out, c));
                out.push_str("COMMIT\n");
            }
            table = None;
        } else if let Some(decl) = line.strip_prefix(':') {
            let chain = decl.split_whitespace().next().unwrap_or("");
            if chains.owns(t, chain) {
                ours.push(chain.to_string());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let words: Vec<&str> = rule.split_whitespace().collect();
            let targets_ours = words
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && chains.owns(t, w[1]));
            if !chains.owns(t, words.first().copied().unwrap_or("")) && targets_ours {
                let _ = writeln!(rules, "-D {rule}");
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chains::ChainPrefix;

    #[test]
    fn cleanup_removes_only_ours() {
        let saved = "*filter\n:INPUT ACCEPT [0:0]\n:FOREIGN - [0:0]\n:SY-FIREWALL - [0:0]\n:SY-B-FIREWALL - [0:0]\n-A INPUT -m comment --comment \"switchyard x\" -j SY-FIREWALL\n-A INPUT -m comment --comment \"switchyard x\" -j SY-B-FIREWALL\n-A INPUT -j FOREIGN\n-A FOREIGN -j ACCEPT\n-A SY-FIREWALL -j DROP\nCOMMIT\n*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n";
        let chains = Chains::default();
        let out = render_cleanup(saved, Shape::Plain, &chains).unwrap();
        assert_eq!(
            out,
            "*filter\n-D INPUT -m comment --comment \"switchyard x\" -j SY-FIREWALL\n:SY-FIREWALL - [0:0]\n-X SY-FIREWALL\nCOMMIT\n"
        );
        let other = Chains::new(&ChainPrefix::new("SY-B-").unwrap());
        let out = render_cleanup(saved, Shape::Plain, &other).unwrap();
        assert!(
            out.contains("-X SY-B-FIREWALL") && !out.contains("-X SY-FIREWALL"),
            "{out}"
        );
        assert!(render_cleanup(
            "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n",
            Shape::Plain,
            &chains
        )
        .is_none());
        let nft = render_cleanup(saved, Shape::NftListFirst, &chains).unwrap();
        assert!(nft.starts_with("*filter\n-S\n-D INPUT "), "{nft}");
    }
}
