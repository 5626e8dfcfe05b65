//! Transactions: the whole ruleset of every table (`render_full`, nft text) and the
//! partial transaction that rewrites only some service ports (`render_partial`: the
//! same change as data for a netlink batch, [`Partial::encode`], and as nft text for
//! the `nft` fallback). Both are pure functions of the model (and, for partial, of the
//! record of what was applied); they also return the record the kernel will hold once
//! applied. The per-port objects come from [`crate::port::encode_port`].

use std::{collections::HashSet, fmt::Write as _};

use switchyard_model::{ChangeSet, NodeModel, ServicePortName};

use crate::{
    element::{Element, ElementKey, ObjectRef, Verdict},
    fixed::{self, NodeCtx},
    netlink::Batch,
    port::{encode_port, FamilyCtx, PortRules},
    record::{Applied, FamilyRecord, PortObjects},
    rule::Rule,
    ruleset::{Family, MapKind, TableNames, TABLES},
};

fn family_ctx(model: &NodeModel, family: Family) -> FamilyCtx {
    FamilyCtx {
        family,
        pod_detector: !model.cluster_cidrs(family.ip_family()).is_empty(),
    }
}

/// Writes a chain block (`chain NAME { rules }`).
fn chain_block(out: &mut String, family: Family, chain: &ObjectRef, rules: &[Rule]) {
    let _ = writeln!(out, "\tchain {} {{", chain.name);
    for r in rules {
        let _ = writeln!(out, "\t\t{}", r.text(family));
    }
    out.push_str("\t}\n");
}

/// Writes an affinity set block.
fn affinity_set_block(out: &mut String, family: Family, set: &ObjectRef, timeout: u32) {
    let _ = writeln!(
        out,
        "\tset {} {{\n\t\ttype {}\n\t\tflags dynamic,timeout\n\t\ttimeout {timeout}s\n\t}}",
        set.name,
        family.addr_type()
    );
}

/// Appends `item` to a comma-separated list.
fn push_item(buf: &mut String, item: &str) {
    if !buf.is_empty() {
        buf.push_str(", ");
    }
    buf.push_str(item);
}

/// Element lists per table and map, as nft text.
type ElementText = Vec<[String; MapKind::ALL.len()]>;

/// Renders one family's tables (main, then shards) as pieces of text appended to `out`
/// (bodies are moved, not copied), returning their record.
fn render_family_full(
    model: &NodeModel,
    tables: &TableNames,
    family: Family,
    out: &mut Vec<String>,
) -> FamilyRecord {
    let node = NodeCtx::new(model, family);
    let ctx = family_ctx(model, family);
    let mut record = FamilyRecord::default();
    let mut bodies: Vec<String> = vec![String::new(); TABLES];
    fixed::main(&node, &mut bodies[0], &mut record.tables[0]);
    for (t, body) in bodies.iter_mut().enumerate().skip(1) {
        fixed::shard(&node, body, &mut record.tables[t]);
    }
    let mut elements: ElementText = vec![Default::default(); TABLES];
    for plan in model.services.values() {
        let port = encode_port(&ctx, plan);
        for (set, timeout) in &port.sets {
            affinity_set_block(&mut bodies[set.table], family, set, *timeout);
        }
        for (chain, rules) in &port.chains {
            chain_block(&mut bodies[chain.table], family, chain, rules);
        }
        for e in &port.elements {
            // The first claimant's value is the kernel's (`insert_port` below records
            // the claim; `head` sees earlier ports only).
            if record.head(e.kind, &e.key).is_none() {
                push_item(&mut elements[e.table()][e.kind.index()], &e.text());
            }
        }
        record.insert_port(&plan.name, port.objects());
    }
    for (t, body) in bodies.into_iter().enumerate() {
        let fam = family.nft();
        let table = tables.name(t);
        out.push(format!(
            "add table {fam} {table}\ndelete table {fam} {table}\ntable {fam} {table} {{\n"
        ));
        out.push(body);
        out.push(map_blocks(family, t, &elements[t]));
    }
    record
}

/// The map and set declarations of table `t`, with their elements, closing the table.
fn map_blocks(family: Family, t: usize, elements: &[String; MapKind::ALL.len()]) -> String {
    let mut tail = String::new();
    for kind in MapKind::ALL {
        if kind.is_sharded() != (t > 0) {
            continue;
        }
        let keyword = if kind.is_map() { "map" } else { "set" };
        let _ = write!(
            tail,
            "\t{keyword} {} {{\n\t\t{}\n",
            kind.name(),
            kind.type_decl(family)
        );
        let buf = &elements[kind.index()];
        if !buf.is_empty() {
            let _ = writeln!(tail, "\t\telements = {{ {buf} }}");
        }
        tail.push_str("\t}\n");
    }
    tail.push_str("}\n");
    tail
}

/// The whole ruleset of every table (main and shards, both families), as one `nft -f`
/// transaction that atomically replaces whatever tables were there.
pub fn render_full(model: &NodeModel) -> String {
    render_full_with_record(model).0
}

/// `render_full`, and the record of what the kernel holds once it is applied.
pub fn render_full_with_record(model: &NodeModel) -> (String, Applied) {
    let (pieces, applied) = render_full_pieces(model, &TableNames::default(), true);
    (pieces.concat(), applied)
}

/// `render_full_with_record` as consecutive pieces of text (per table: header, chains,
/// maps), to be fed to `nft` one after the other without concatenating them.
/// Without `ipv6` (a kernel without IPv6) only the `ip` tables are written.
pub fn render_full_pieces(
    model: &NodeModel,
    tables: &TableNames,
    ipv6: bool,
) -> (Vec<String>, Applied) {
    let mut out = Vec::with_capacity(4 * TABLES * Family::BOTH.len());
    let mut applied = Applied {
        ipv4_only: !ipv6,
        ..Applied::default()
    };
    for &family in applied.programmed() {
        applied.families[family.index()] = render_family_full(model, tables, family, &mut out);
    }
    (out, applied)
}

/// What a partial sync writes in one family's tables, as data.
#[derive(Default)]
struct FamilyOps {
    /// Chains created if missing, flushed, then filled with these rules.
    chains: Vec<(ObjectRef, Vec<Rule>)>,
    /// Affinity sets created (with their timeouts), before any rule uses them.
    new_sets: Vec<(ObjectRef, u32)>,
    /// Elements deleted (the kernel's current value tells the table).
    deletes: Vec<Element>,
    /// Elements added.
    adds: Vec<Element>,
    /// Chains flushed, then deleted.
    stale_chains: Vec<ObjectRef>,
    /// Affinity sets deleted, last.
    stale_sets: Vec<ObjectRef>,
}

/// The touched service ports of one family and what each now owns.
#[derive(Default)]
struct FamilyPartial {
    ports: Vec<(ServicePortName, PortObjects)>,
    ops: FamilyOps,
}

/// A partial transaction and what it changes in the record.
pub struct Partial {
    families: [FamilyPartial; 2],
}

impl Partial {
    /// Whether nothing needs to change.
    pub fn is_empty(&self) -> bool {
        self.families.iter().all(|f| {
            let o = &f.ops;
            o.chains.is_empty()
                && o.new_sets.is_empty()
                && o.deletes.is_empty()
                && o.adds.is_empty()
                && o.stale_chains.is_empty()
                && o.stale_sets.is_empty()
        })
    }

    /// Brings `applied` to what the kernel holds after the transaction was applied.
    pub fn commit(self, applied: &mut Applied) {
        for (record, family) in applied.families.iter_mut().zip(self.families) {
            for (name, _) in &family.ports {
                record.remove_port(name);
            }
            for (name, objects) in family.ports {
                record.insert_port(&name, objects);
            }
        }
    }

    /// Appends the transaction to a netlink batch. Order: create sets and chains; drop
    /// elements pointing at old chains; fill chains; add elements; empty, then delete,
    /// chains and sets nothing refers to any more.
    pub fn encode(&self, batch: &mut Batch, tables: &TableNames) {
        for (family, partial) in Family::BOTH.into_iter().zip(&self.families) {
            let ops = &partial.ops;
            for (set, timeout) in &ops.new_sets {
                batch.add_affinity_set(family, tables.name(set.table), &set.name, *timeout);
            }
            for (chain, _) in &ops.chains {
                batch.add_chain(family, tables.name(chain.table), &chain.name);
                batch.flush_chain(family, tables.name(chain.table), &chain.name);
            }
            for_each_map(&ops.deletes, |table, kind, elements| {
                let keys: Vec<_> = elements.iter().map(|e| e.bytes()).collect();
                batch.delete_elements(family, tables.name(table), kind.name(), &keys);
            });
            for (chain, rules) in &ops.chains {
                for rule in rules {
                    batch.add_rule(family, tables.name(chain.table), &chain.name, |a| {
                        rule.encode(family, a)
                    });
                }
            }
            for_each_map(&ops.adds, |table, kind, elements| {
                let items: Vec<_> = elements.iter().map(|e| e.bytes()).collect();
                batch.add_elements(family, tables.name(table), kind.name(), &items);
            });
            for chain in &ops.stale_chains {
                batch.flush_chain(family, tables.name(chain.table), &chain.name);
            }
            for chain in &ops.stale_chains {
                batch.delete_chain(family, tables.name(chain.table), &chain.name);
            }
            for set in &ops.stale_sets {
                batch.delete_set(family, tables.name(set.table), &set.name);
            }
        }
    }

    /// The same transaction as `nft -f` input (for the `nft` path: a batch too large for
    /// one datagram, or netlink partials turned off).
    pub fn text(&self, tables: &TableNames) -> String {
        let mut text = String::new();
        for (family, partial) in Family::BOTH.into_iter().zip(&self.families) {
            write_family_text(&mut text, family, &partial.ops, tables);
        }
        text
    }
}

/// Calls `f` once per (table, map) with the elements of `elements` in it.
fn for_each_map(elements: &[Element], mut f: impl FnMut(usize, MapKind, &[&Element])) {
    for t in 0..TABLES {
        for kind in MapKind::ALL {
            let these: Vec<&Element> = elements
                .iter()
                .filter(|e| e.kind == kind && e.table() == t)
                .collect();
            if !these.is_empty() {
                f(t, kind, &these);
            }
        }
    }
}

fn write_family_text(text: &mut String, family: Family, ops: &FamilyOps, tables: &TableNames) {
    let fam = family.nft();
    let table = |o: &ObjectRef| tables.name(o.table).to_string();
    for (set, timeout) in &ops.new_sets {
        let _ = writeln!(
            text,
            "add set {fam} {} {} {{ type {}; flags dynamic,timeout; timeout {timeout}s; }}",
            table(set),
            set.name,
            family.addr_type()
        );
    }
    for (chain, _) in &ops.chains {
        let _ = writeln!(text, "add chain {fam} {} {}", table(chain), chain.name);
        let _ = writeln!(text, "flush chain {fam} {} {}", table(chain), chain.name);
    }
    for_each_map(&ops.deletes, |t, kind, elements| {
        let keys: Vec<String> = elements.iter().map(|e| e.key.to_string()).collect();
        let _ = writeln!(
            text,
            "delete element {fam} {} {} {{ {} }}",
            tables.name(t),
            kind.name(),
            keys.join(", ")
        );
    });
    for (chain, rules) in &ops.chains {
        for rule in rules {
            let _ = writeln!(
                text,
                "add rule {fam} {} {} {}",
                table(chain),
                chain.name,
                rule.text(family)
            );
        }
    }
    for_each_map(&ops.adds, |t, kind, elements| {
        let items: Vec<String> = elements.iter().map(|e| e.text()).collect();
        let _ = writeln!(
            text,
            "add element {fam} {} {} {{ {} }}",
            tables.name(t),
            kind.name(),
            items.join(", ")
        );
    });
    for chain in &ops.stale_chains {
        let _ = writeln!(text, "flush chain {fam} {} {}", table(chain), chain.name);
    }
    for chain in &ops.stale_chains {
        let _ = writeln!(text, "delete chain {fam} {} {}", table(chain), chain.name);
    }
    for set in &ops.stale_sets {
        let _ = writeln!(text, "delete set {fam} {} {}", table(set), set.name);
    }
}

/// Renders a transaction rewriting only the service ports `changes` names (added,
/// changed or removed), against `applied`, the record of what the kernel holds.
pub fn render_partial(model: &NodeModel, changes: &ChangeSet, applied: &Applied) -> Partial {
    let touched: Vec<&ServicePortName> = changes.touched().collect();
    let mut families: [FamilyPartial; 2] = Default::default();
    for &family in applied.programmed() {
        let record = &applied.families[family.index()];
        let ctx = family_ctx(model, family);
        let ports: Vec<(ServicePortName, PortRules)> = touched
            .iter()
            .map(|name| {
                let rules = model
                    .services
                    .get(*name)
                    .map(|plan| encode_port(&ctx, plan))
                    .unwrap_or_default();
                ((*name).clone(), rules)
            })
            .collect();
        families[family.index()] = family_partial(&touched, ports, record);
    }
    Partial { families }
}

/// The partial of one family: chains and sets of the touched ports, element changes,
/// and what they no longer own.
fn family_partial(
    touched: &[&ServicePortName],
    ports: Vec<(ServicePortName, PortRules)>,
    record: &FamilyRecord,
) -> FamilyPartial {
    let mut ops = FamilyOps::default();
    for (_, rules) in &ports {
        ops.chains.extend(rules.chains.iter().cloned());
        for (set, timeout) in &rules.sets {
            if !record.has_set(set) && !ops.new_sets.iter().any(|(s, _)| s == set) {
                ops.new_sets.push((set.clone(), *timeout));
            }
        }
    }
    let new_ports: Vec<(ServicePortName, PortObjects)> = ports
        .into_iter()
        .map(|(name, rules)| (name, rules.objects()))
        .collect();
    element_changes(touched, &new_ports, record, &mut ops);
    stale_objects(touched, &new_ports, record, &mut ops);
    FamilyPartial {
        ports: new_ports,
        ops,
    }
}

/// Element deletes and adds: for every key a touched port claimed or claims, the value
/// the kernel holds before (the first claimant's) and after (the first untouched
/// claimant's, else the first new one's).
fn element_changes(
    touched: &[&ServicePortName],
    new_ports: &[(ServicePortName, PortObjects)],
    record: &FamilyRecord,
    ops: &mut FamilyOps,
) {
    let touched_set: HashSet<&ServicePortName> = touched.iter().copied().collect();
    let mut dirty: Vec<(MapKind, ElementKey)> = Vec::new();
    let mut seen: HashSet<(MapKind, ElementKey)> = HashSet::new();
    let mut first_new: std::collections::HashMap<(MapKind, ElementKey), &Verdict> =
        std::collections::HashMap::new();
    for name in touched {
        if let Some(old) = record.ports.get(*name) {
            for e in &old.elements {
                if seen.insert((e.kind, e.key)) {
                    dirty.push((e.kind, e.key));
                }
            }
        }
    }
    for (_, objects) in new_ports {
        for e in &objects.elements {
            first_new.entry((e.kind, e.key)).or_insert(&e.value);
            if seen.insert((e.kind, e.key)) {
                dirty.push((e.kind, e.key));
            }
        }
    }
    for (kind, key) in dirty {
        let claims = record.claims(kind, &key);
        let before = claims.and_then(|c| c.first()).map(|(_, v)| v);
        let after = claims
            .and_then(|c| c.iter().find(|(n, _)| !touched_set.contains(n.as_ref())))
            .map(|(_, v)| v)
            .or_else(|| first_new.get(&(kind, key)).copied());
        if before == after {
            continue;
        }
        if let Some(value) = before {
            ops.deletes.push(Element {
                kind,
                key,
                value: value.clone(),
            });
        }
        if let Some(value) = after {
            ops.adds.push(Element {
                kind,
                key,
                value: value.clone(),
            });
        }
    }
}

/// Chains and sets a touched port owned and no longer owns.
fn stale_objects(
    touched: &[&ServicePortName],
    new_ports: &[(ServicePortName, PortObjects)],
    record: &FamilyRecord,
    ops: &mut FamilyOps,
) {
    let mut kept_chains: HashSet<&ObjectRef> = HashSet::new();
    let mut kept_sets: HashSet<&ObjectRef> = HashSet::new();
    for (_, objects) in new_ports {
        kept_chains.extend(objects.chains.iter().map(|(c, _)| c));
        kept_sets.extend(objects.sets.iter());
    }
    for name in touched {
        if let Some(old) = record.ports.get(*name) {
            ops.stale_chains.extend(
                old.chains
                    .iter()
                    .map(|(c, _)| c)
                    .filter(|c| !kept_chains.contains(c))
                    .cloned(),
            );
            ops.stale_sets
                .extend(old.sets.iter().filter(|s| !kept_sets.contains(s)).cloned());
        }
    }
}
