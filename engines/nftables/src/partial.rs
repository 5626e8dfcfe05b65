//! Partial syncs: the transaction that rewrites only some service ports
//! ([`render_partial`]), as data for a netlink batch ([`Partial::encode`]) and as nft
//! text (when the engine runs `nft`, a debugging option). A pure function of the model
//! and of the record of what was applied; [`Partial::commit`] brings the record to what
//! the kernel holds once it is applied. The per-port objects come from
//! [`crate::port::encode_port`]. An engine adopting a previous process's tables builds
//! a `Partial` of its repairs with [`Partial::from_ops`] (see `adopt`).

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
};

use switchyard_model::{ChangeSet, NodeModel, ServicePortName};

use crate::{
    element::{Element, ElementKey, ObjectRef, Verdict},
    full::family_ctx,
    netlink::Batch,
    port::{encode_port, Mapped, PortRules, SlotBook},
    record::{Applied, FamilyRecord, MappedRange, PortObjects},
    rule::Rule,
    ruleset::{
        backend_map_decl, backend_map_name, backend_map_spec, Family, MapKind, TableNames, TABLES,
    },
};

/// What a partial sync writes in one family's tables, as data.
#[derive(Default)]
pub struct FamilyOps {
    /// Chains created if missing, flushed, then filled with these rules.
    pub chains: Vec<(ObjectRef, Vec<Rule>)>,
    /// Affinity sets created (with their timeouts), before any rule uses them.
    pub new_sets: Vec<(ObjectRef, u32)>,
    /// Elements deleted (the kernel's current value tells the table).
    pub deletes: Vec<Element>,
    /// Elements added.
    pub adds: Vec<Element>,
    /// Chains created if missing, flushed, then deleted.
    pub stale_chains: Vec<ObjectRef>,
    /// Affinity sets deleted, last.
    pub stale_sets: Vec<ObjectRef>,
    /// Backend maps created (table, chunk), before any rule uses them; those left
    /// without elements are deleted with `stale_sets`.
    pub new_backend_maps: Vec<(usize, u8)>,
    /// Backend-map keys deleted (table, chunk, key).
    pub backend_deletes: Vec<(usize, u8, u32)>,
    /// Backend-map elements added.
    pub backend_adds: Vec<Mapped>,
}

impl FamilyOps {
    /// The backend-map deletes grouped per (table, chunk), as key bytes.
    fn backend_deletes_per_map(&self) -> BTreeMap<(usize, u8), Vec<u32>> {
        let mut out: BTreeMap<(usize, u8), Vec<u32>> = BTreeMap::new();
        for &(t, chunk, key) in &self.backend_deletes {
            out.entry((t, chunk)).or_default().push(key);
        }
        out
    }
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
    /// A transaction of the given operations per family (indexed by `Family::index`)
    /// that changes no port's record (an adopting engine's repairs).
    pub fn from_ops(ops: [FamilyOps; 2]) -> Partial {
        let [v4, v6] = ops;
        Partial {
            families: [
                FamilyPartial {
                    ports: Vec::new(),
                    ops: v4,
                },
                FamilyPartial {
                    ports: Vec::new(),
                    ops: v6,
                },
            ],
        }
    }

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
                && o.new_backend_maps.is_empty()
                && o.backend_deletes.is_empty()
                && o.backend_adds.is_empty()
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
            for &(t, chunk) in &ops.new_backend_maps {
                let map = backend_map_name(chunk);
                batch.add_set(family, tables.name(t), &backend_map_spec(family, &map));
            }
            for (chain, _) in &ops.chains {
                batch.add_chain(family, tables.name(chain.table), &chain.name);
                batch.flush_chain(family, tables.name(chain.table), &chain.name);
            }
            for_each_map(&ops.deletes, |table, kind, elements| {
                let keys: Vec<_> = elements.iter().map(|e| e.bytes()).collect();
                batch.delete_elements(family, tables.name(table), kind.name(), &keys);
            });
            for ((t, chunk), keys) in ops.backend_deletes_per_map() {
                let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.to_ne_bytes().to_vec()).collect();
                batch.delete_keys(family, tables.name(t), &backend_map_name(chunk), &keys);
            }
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
            for m in &ops.backend_adds {
                let (t, map) = (m.range.table(), backend_map_name(m.range.chunk));
                batch.add_value_elements(family, tables.name(t), &map, &m.elements());
            }
            for chain in &ops.stale_chains {
                // Created if missing (an adopting engine deletes every name a port it
                // no longer knows may have used), so the delete never fails.
                batch.add_chain(family, tables.name(chain.table), &chain.name);
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
    for &(t, chunk) in &ops.new_backend_maps {
        let _ = writeln!(
            text,
            "add map {fam} {} {} {{ {}; }}",
            tables.name(t),
            backend_map_name(chunk),
            backend_map_decl(family)
        );
    }
    for (chain, _) in &ops.chains {
        let _ = writeln!(text, "add chain {fam} {} {}", table(chain), chain.name);
        let _ = writeln!(text, "flush chain {fam} {} {}", table(chain), chain.name);
    }
    for ((t, chunk), keys) in ops.backend_deletes_per_map() {
        let keys: Vec<String> = keys.iter().map(u32::to_string).collect();
        let _ = writeln!(
            text,
            "delete element {fam} {} {} {{ {} }}",
            tables.name(t),
            backend_map_name(chunk),
            keys.join(", ")
        );
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
    for m in &ops.backend_adds {
        let items: Vec<String> = m.texts().collect();
        let _ = writeln!(
            text,
            "add element {fam} {} {} {{ {} }}",
            tables.name(m.range.table()),
            backend_map_name(m.range.chunk),
            items.join(", ")
        );
    }
    for chain in &ops.stale_chains {
        let _ = writeln!(text, "add chain {fam} {} {}", table(chain), chain.name);
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
        let rewritten: HashSet<&ServicePortName> = touched.iter().copied().collect();
        let released = |n: &ServicePortName| rewritten.contains(n);
        let mut slots = SlotBook::releasing(Some(record), &released);
        let ports: Vec<(ServicePortName, PortRules)> = touched
            .iter()
            .map(|name| {
                let rules = model
                    .services
                    .get(*name)
                    .map(|plan| encode_port(&ctx, plan, &mut slots))
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
    // Elements per backend map after the transaction, for the maps it touches.
    let mut counts: BTreeMap<(usize, u8), (u32, u32)> = BTreeMap::new();
    fn count<'c>(
        counts: &'c mut BTreeMap<(usize, u8), (u32, u32)>,
        record: &FamilyRecord,
        r: &MappedRange,
    ) -> &'c mut (u32, u32) {
        let before = record.tables[r.table()].backend_counts[usize::from(r.chunk)];
        counts
            .entry((r.table(), r.chunk))
            .or_insert((before, before))
    }
    for name in touched {
        if let Some(old) = record.ports.get(*name) {
            for r in &old.mapped {
                count(&mut counts, record, r).1 -= r.count;
                let keys = r.offset..r.offset + r.count;
                ops.backend_deletes
                    .extend(keys.map(|k| (r.table(), r.chunk, k)));
            }
        }
    }
    for (_, rules) in &ports {
        for m in &rules.mapped {
            count(&mut counts, record, &m.range).1 += m.range.count;
        }
    }
    for ((t, chunk), (before, after)) in counts {
        if before == 0 && after > 0 {
            ops.new_backend_maps.push((t, chunk));
        } else if before > 0 && after == 0 {
            ops.stale_sets
                .push(ObjectRef::new(t, backend_map_name(chunk)));
        }
    }
    for (_, rules) in &ports {
        ops.backend_adds.extend(rules.mapped.iter().cloned());
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
/// the kernel holds before (the first claimant's) and after (that of the smallest name
/// among the untouched claimants and the touched ports' new claims).
fn element_changes(
    touched: &[&ServicePortName],
    new_ports: &[(ServicePortName, PortObjects)],
    record: &FamilyRecord,
    ops: &mut FamilyOps,
) {
    let touched_set: HashSet<&ServicePortName> = touched.iter().copied().collect();
    let mut dirty: Vec<(MapKind, ElementKey)> = Vec::new();
    let mut seen: HashSet<(MapKind, ElementKey)> = HashSet::new();
    let mut first_new: std::collections::HashMap<
        (MapKind, ElementKey),
        (&ServicePortName, &Verdict),
    > = std::collections::HashMap::new();
    for name in touched {
        if let Some(old) = record.ports.get(*name) {
            for e in &old.elements {
                if seen.insert((e.kind, e.key)) {
                    dirty.push((e.kind, e.key));
                }
            }
        }
    }
    for (name, objects) in new_ports {
        for e in &objects.elements {
            let new = (name, &e.value);
            first_new
                .entry((e.kind, e.key))
                .and_modify(|old| {
                    if name < old.0 {
                        *old = new;
                    }
                })
                .or_insert(new);
            if seen.insert((e.kind, e.key)) {
                dirty.push((e.kind, e.key));
            }
        }
    }
    for (kind, key) in dirty {
        let claims = record.claims(kind, &key);
        let before = claims.and_then(|c| c.first()).map(|(_, v)| v);
        let kept = claims
            .and_then(|c| c.iter().find(|(n, _)| !touched_set.contains(n.as_ref())))
            .map(|(n, v)| (n.as_ref(), v));
        let after = match (kept, first_new.get(&(kind, key)).copied()) {
            (Some(k), Some(n)) => Some(if n.0 < k.0 { n.1 } else { k.1 }),
            (k, n) => k.or(n).map(|(_, v)| v),
        };
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
