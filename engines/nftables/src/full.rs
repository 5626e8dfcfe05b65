//! Full syncs: the whole ruleset of every table (main and shards, both families) as one
//! atomic transaction that deletes and re-creates each table, written as an nf_tables
//! netlink batch ([`render_full_batch`]) or, when the engine is told to run `nft` (a
//! debugging option), as `nft -f` text ([`render_full_pieces`]); and the record alone
//! ([`render_record`]), for an engine adopting what a previous process wrote.
//!
//! One walk ([`render_family`]) drives all three: the fixed part of each table, then
//! every service port in name order (its chains, rules and affinity sets), then each
//! table's map elements, taken from the record's claims (so a key several ports claim
//! holds the first claimant's value). The batch follows nft's order within a table:
//! chains and sets (interval sets with their prefixes), map elements, then rules — but
//! for the backend maps' elements, which come last (see `BatchSink`).
//! Ports are encoded one at a time and dropped, so only the encoded batch and the
//! record grow with the model.

use std::fmt::Write as _;

use switchyard_model::NodeModel;

use crate::{
    digest,
    element::Element,
    fixed::{FixedTable, NodeCtx},
    netlink::{Batch, ElementBytes, SetFlags, SetSpec},
    port::{encode_port, FamilyCtx, PortRules, SlotBook},
    record::{Applied, FamilyRecord},
    rule::Rule,
    ruleset::{
        backend_map_decl, backend_map_name, backend_map_spec, Family, MapKind, TableNames, TABLES,
    },
};

/// Where one family's full rendering goes, table by table.
trait Sink {
    /// The fixed part of table `t` (first, for every table).
    fn fixed(&mut self, t: usize, fixed: &FixedTable);
    /// One service port's chains, rules and affinity sets.
    fn port(&mut self, port: &PortRules);
    /// The elements of table `t`, per map (after every port); ends the table.
    fn table_end(&mut self, t: usize, elements: &[Vec<Element>]);
}

pub(crate) fn family_ctx(model: &NodeModel, family: Family) -> FamilyCtx {
    FamilyCtx {
        family,
        pod_detector: !model.cluster_cidrs(family.ip_family()).is_empty(),
    }
}

/// Renders one family's tables into `sink`, returning their record.
fn render_family(model: &NodeModel, family: Family, sink: &mut dyn Sink) -> FamilyRecord {
    let node = NodeCtx::new(model, family);
    let ctx = family_ctx(model, family);
    let mut record = FamilyRecord::default();
    let fixed: Vec<FixedTable> = (0..TABLES).map(|t| FixedTable::new(&node, t)).collect();
    record.fixed_digest = digest::fixed(family, &fixed);
    for (t, table) in fixed.iter().enumerate() {
        table.record(&mut record.tables[t]);
        record.tables[t].map_counts[MapKind::PortDigests.index()] += 1;
        sink.fixed(t, table);
    }
    drop(fixed);
    for plan in model.services.values() {
        let port = encode_port(&ctx, plan, &mut SlotBook::new(Some(&record)));
        sink.port(&port);
        record.insert_port(&plan.name, port.objects());
    }
    let fixed_element = digest::element(digest::FIXED_ID, record.fixed_digest, None);
    let mut elements: Vec<Vec<Vec<Element>>> = vec![vec![Vec::new(); MapKind::ALL.len()]; TABLES];
    for kind in MapKind::ALL {
        for (key, claims) in &record.claims[kind.index()] {
            if let Some((_, value)) = claims.first() {
                let e = Element {
                    kind,
                    key: *key,
                    value: value.clone(),
                };
                elements[e.table()][kind.index()].push(e);
            }
        }
    }
    for (t, mut per_map) in elements.into_iter().enumerate() {
        per_map[MapKind::PortDigests.index()].push(fixed_element.clone());
        sink.table_end(t, &per_map);
    }
    record
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
    let applied = render_all(ipv6, |family| {
        let mut sink = TextSink::new(family, tables);
        let record = render_family(model, family, &mut sink);
        out.append(&mut sink.out);
        record
    });
    (out, applied)
}

/// The whole ruleset appended to `batch` (an empty one from the socket), and the
/// record of what the kernel holds once it is committed.
pub fn render_full_batch(
    model: &NodeModel,
    tables: &TableNames,
    ipv6: bool,
    mut batch: Batch,
) -> (Batch, Applied) {
    let applied = render_all(ipv6, |family| {
        let mut sink = BatchSink::new(family, tables);
        let record = render_family(model, family, &mut sink);
        sink.finish(&mut batch);
        record
    });
    (batch, applied)
}

/// The record a full sync of `model` would leave, without encoding anything.
pub fn render_record(model: &NodeModel, ipv6: bool) -> Applied {
    render_all(ipv6, |family| render_family(model, family, &mut NoSink))
}

fn render_all(ipv6: bool, mut family: impl FnMut(Family) -> FamilyRecord) -> Applied {
    let mut applied = Applied {
        ipv4_only: !ipv6,
        ..Applied::default()
    };
    for &f in applied.programmed() {
        applied.families[f.index()] = family(f);
    }
    applied
}

/// The interval sets' declaration (`flags interval; auto-merge`).
fn interval_spec(family: Family, name: &str) -> SetSpec<'_> {
    SetSpec {
        flags: SetFlags {
            interval: true,
            auto_merge: true,
            ..SetFlags::default()
        },
        name,
        ..MapKind::ClusterIps.spec(family)
    }
}

/// Records nothing but the record.
struct NoSink;

impl Sink for NoSink {
    fn fixed(&mut self, _: usize, _: &FixedTable) {}
    fn port(&mut self, _: &PortRules) {}
    fn table_end(&mut self, _: usize, _: &[Vec<Element>]) {}
}

/// Writes netlink messages: per table, declarations (table, chains, sets), elements,
/// rules and backend-map elements, appended in that order at the end.
struct BatchSink<'a> {
    family: Family,
    tables: &'a TableNames,
    /// Per table: declarations, elements, rules, backend-map elements (after the
    /// rules: a rule bound to a map that has elements makes the kernel walk them all,
    /// while an element added to a bound map is checked against its few rules).
    parts: Vec<[Batch; 4]>,
    /// Per table: the backend maps declared so far (bit `chunk`).
    backend_maps: Vec<u64>,
}

impl<'a> BatchSink<'a> {
    fn new(family: Family, tables: &'a TableNames) -> BatchSink<'a> {
        BatchSink {
            family,
            tables,
            parts: (0..TABLES)
                .map(|_| [Batch::new(0), Batch::new(0), Batch::new(0), Batch::new(0)])
                .collect(),
            backend_maps: vec![0; TABLES],
        }
    }

    fn rules(&mut self, t: usize, chain: &str, rules: &[Rule]) {
        let (family, table) = (self.family, self.tables.name(t));
        for rule in rules {
            self.parts[t][2].add_rule(family, table, chain, |a| rule.encode(family, a));
        }
    }

    fn finish(self, batch: &mut Batch) {
        for [decl, elements, rules, backends] in self.parts {
            batch.append(decl);
            batch.append(elements);
            batch.append(rules);
            batch.append(backends);
        }
    }
}

impl Sink for BatchSink<'_> {
    fn fixed(&mut self, t: usize, fixed: &FixedTable) {
        let (family, table) = (self.family, self.tables.name(t));
        let decl = &mut self.parts[t][0];
        decl.add_table(family, table);
        decl.delete_table(family, table);
        decl.add_table(family, table);
        for (base, _) in &fixed.base_chains {
            decl.add_base_chain(family, table, base.name, base.netlink());
        }
        for (name, _) in &fixed.chains {
            decl.add_chain(family, table, name);
        }
        for (name, nets) in &fixed.interval_sets {
            decl.add_set(family, table, &interval_spec(family, name));
            let prefixes: Vec<_> = nets.iter().map(|n| (n.addr(), n.prefix_len())).collect();
            decl.add_prefixes(family, table, name, &prefixes);
        }
        for kind in MapKind::ALL.into_iter().filter(|k| k.in_table(t)) {
            decl.add_set(family, table, &kind.spec(family));
        }
        for (base, rules) in &fixed.base_chains {
            self.rules(t, base.name, rules);
        }
        for (name, rules) in &fixed.chains {
            self.rules(t, name, rules);
        }
    }

    fn port(&mut self, port: &PortRules) {
        let family = self.family;
        for (set, timeout) in &port.sets {
            let table = self.tables.name(set.table);
            self.parts[set.table][0].add_affinity_set(family, table, &set.name, *timeout);
        }
        for m in &port.mapped {
            let (t, chunk) = (m.range.table(), m.range.chunk);
            let table = self.tables.name(t);
            let map = backend_map_name(chunk);
            if self.backend_maps[t] & (1 << chunk) == 0 {
                self.backend_maps[t] |= 1 << chunk;
                self.parts[t][0].add_set(family, table, &backend_map_spec(family, &map));
            }
            self.parts[t][3].add_value_elements(family, table, &map, &m.elements());
        }
        for (chain, rules) in &port.chains {
            let table = self.tables.name(chain.table);
            self.parts[chain.table][0].add_chain(family, table, &chain.name);
            self.rules(chain.table, &chain.name, rules);
        }
    }

    fn table_end(&mut self, t: usize, elements: &[Vec<Element>]) {
        let (family, table) = (self.family, self.tables.name(t));
        for kind in MapKind::ALL {
            let these = &elements[kind.index()];
            if !these.is_empty() {
                let bytes: Vec<ElementBytes> = these.iter().map(|e| e.bytes()).collect();
                self.parts[t][1].add_elements(family, table, kind.name(), &bytes);
            }
        }
    }
}

/// Writes `nft -f` text: per table, a header deleting the table, the fixed part and
/// the ports' chains (a body per table), then the maps with their elements.
struct TextSink<'a> {
    family: Family,
    tables: &'a TableNames,
    bodies: Vec<String>,
    /// Per table and backend map: its elements' text.
    backend_maps: Vec<std::collections::BTreeMap<u8, Vec<String>>>,
    out: Vec<String>,
}

impl<'a> TextSink<'a> {
    fn new(family: Family, tables: &'a TableNames) -> TextSink<'a> {
        TextSink {
            family,
            tables,
            bodies: vec![String::new(); TABLES],
            backend_maps: vec![Default::default(); TABLES],
            out: Vec::new(),
        }
    }
}

/// Writes a chain block (`chain NAME { [declaration] rules }`).
fn chain_block(out: &mut String, family: Family, name: &str, decl: Option<&str>, rules: &[Rule]) {
    let _ = writeln!(out, "\tchain {name} {{");
    if let Some(decl) = decl {
        let _ = writeln!(out, "\t\t{decl}");
    }
    for r in rules {
        let _ = writeln!(out, "\t\t{}", r.text(family));
    }
    out.push_str("\t}\n");
}

/// `{ a, b, c }`, or empty for no items.
fn set_literal<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let mut out = String::new();
    for item in items {
        out.push_str(if out.is_empty() { "{ " } else { ", " });
        let _ = write!(out, "{item}");
    }
    if !out.is_empty() {
        out.push_str(" }");
    }
    out
}

impl Sink for TextSink<'_> {
    fn fixed(&mut self, t: usize, fixed: &FixedTable) {
        let family = self.family;
        let body = &mut self.bodies[t];
        for (base, rules) in &fixed.base_chains {
            chain_block(body, family, base.name, Some(&base.declaration()), rules);
        }
        for (name, rules) in &fixed.chains {
            chain_block(body, family, name, None, rules);
        }
        for (name, nets) in &fixed.interval_sets {
            let _ = write!(
                body,
                "\tset {name} {{\n\t\ttype {}\n\t\tflags interval\n\t\tauto-merge\n",
                family.addr_type()
            );
            if !nets.is_empty() {
                let _ = writeln!(body, "\t\telements = {}", set_literal(nets.iter()));
            }
            body.push_str("\t}\n");
        }
    }

    fn port(&mut self, port: &PortRules) {
        let family = self.family;
        for (set, timeout) in &port.sets {
            let _ = writeln!(
                self.bodies[set.table],
                "\tset {} {{\n\t\ttype {}\n\t\tflags dynamic,timeout\n\t\ttimeout {timeout}s\n\t}}",
                set.name,
                family.addr_type()
            );
        }
        for m in &port.mapped {
            self.backend_maps[m.range.table()]
                .entry(m.range.chunk)
                .or_default()
                .extend(m.texts());
        }
        for (chain, rules) in &port.chains {
            chain_block(
                &mut self.bodies[chain.table],
                family,
                &chain.name,
                None,
                rules,
            );
        }
    }

    fn table_end(&mut self, t: usize, elements: &[Vec<Element>]) {
        let (fam, table) = (self.family.nft(), self.tables.name(t));
        self.out.push(format!(
            "add table {fam} {table}\ndelete table {fam} {table}\ntable {fam} {table} {{\n"
        ));
        self.out.push(std::mem::take(&mut self.bodies[t]));
        let mut tail = String::new();
        for kind in MapKind::ALL.into_iter().filter(|k| k.in_table(t)) {
            let keyword = if kind.is_map() { "map" } else { "set" };
            let _ = write!(
                tail,
                "\t{keyword} {} {{\n\t\t{}\n",
                kind.name(),
                kind.type_decl(self.family)
            );
            let these = &elements[kind.index()];
            if !these.is_empty() {
                let items = set_literal(these.iter().map(|e| e.text()));
                let _ = writeln!(tail, "\t\telements = {items}");
            }
            tail.push_str("\t}\n");
        }
        for (chunk, items) in std::mem::take(&mut self.backend_maps[t]) {
            let _ = writeln!(
                tail,
                "\tmap {} {{\n\t\t{}\n\t\telements = {}\n\t}}",
                backend_map_name(chunk),
                backend_map_decl(self.family),
                set_literal(items.iter())
            );
        }
        tail.push_str("}\n");
        self.out.push(tail);
    }
}
