//! Adoption: a new process whose kernel already holds the engine's tables (an agent
//! restarted on a busy node) reads back what it needs to trust them, and rewrites only
//! what differs, instead of deleting and re-creating every table (at 50k services a
//! full write keeps the kernel busy for seconds; this costs a read-back).
//!
//! What makes a stale rule impossible to adopt: every transaction writes, with the
//! objects of each service port, a digest of them (`port-digests`, see `digest`), and
//! with each table's fixed part, the digest of the fixed part. The kernel applies a
//! transaction whole or not at all, so a digest in the kernel describes exactly what
//! was written for that port. On adoption the engine renders the model (the record it
//! would hold after a full sync, nothing encoded) and reads every `port-digests` set
//! back (one dump per table, about 3k elements per shard at 50k services):
//!
//! - a missing table or set, or a fixed-part digest other than today's (other
//!   node-wide settings, another version's layout): nothing is adopted, the sync is
//!   full;
//! - ports whose digest matches are adopted as they are;
//! - ports whose digest differs, is missing, or that the model no longer has are
//!   repaired in one batch: their chains are rewritten (or deleted), and the maps they
//!   may have elements in are read back and compared element by element (the shard's
//!   verdict maps, the main table's small maps and `cluster-ips`); stale `hairpin`
//!   pairs are found from the old chains' DNAT targets (the 250k-element set itself is
//!   never dumped: its dump restarts its walk for every message, seconds at 50k).
//!
//! Tampering with adopted objects between the two processes is not looked for here:
//! the periodic `verify` finds it, as it does while the process runs.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use switchyard_model::{EngineError, NodeModel, ServicePortName};

use crate::{
    digest,
    element::{table_of, Element, ElementKey, ObjectRef, Verdict},
    fixed::{FixedTable, NodeCtx},
    full::{family_ctx, render_record},
    netlink::userdata_comment,
    netlink::NftSocket,
    partial::{FamilyOps, Partial},
    port::{encode_port, mapped_address, SlotBook},
    record::{Applied, FamilyRecord, MappedRange},
    rule::{dnat_address, dnat_map},
    ruleset::{
        backend_map_chunk, backend_map_name, shard_table, Family, MapKind, PortChains, TableNames,
        TABLES,
    },
};

/// What adopting the kernel's tables takes.
pub struct Adoption {
    /// What the kernel holds once `repair` is applied (a full sync's record).
    pub applied: Applied,
    /// The repairs (empty when every digest matched).
    pub repair: Partial,
    /// Service ports (per family) whose objects are rewritten or removed.
    pub dirty_ports: usize,
}

/// A port whose kernel objects differ from the model's: its id, its name when the
/// model has it, and the base of its chain names.
struct Dirty {
    id: [u8; 8],
    name: Option<Arc<ServicePortName>>,
    base: String,
}

/// Plans the adoption of the tables the kernel holds for `model`; `None` when there is
/// nothing to adopt (see the module doc).
pub fn plan(
    socket: &mut NftSocket,
    tables: &TableNames,
    model: &NodeModel,
    ipv6: bool,
) -> Result<Option<Adoption>, EngineError> {
    let families = Family::programmed(ipv6);
    // Cheap first: the main tables' fixed digests, before rendering anything.
    for &family in families {
        let node = NodeCtx::new(model, family);
        let fixed: Vec<FixedTable> = (0..TABLES).map(|t| FixedTable::new(&node, t)).collect();
        let expected = digest::element(digest::FIXED_ID, digest::fixed(family, &fixed), None);
        let set = MapKind::PortDigests.name();
        let key = expected.key.bytes();
        if socket
            .elements_present(family, tables.name(0), set, &[key])?
            .is_empty()
        {
            return Ok(None);
        }
    }
    let applied = render_record(model, ipv6);
    let mut ops: [FamilyOps; 2] = Default::default();
    let mut dirty_ports = 0;
    for &family in families {
        let record = &applied.families[family.index()];
        let Some(kernel) = read_digests(socket, tables, family, record)? else {
            return Ok(None);
        };
        let Some(dirty) = dirty_ports_of(&kernel, record) else {
            return Ok(None);
        };
        dirty_ports += dirty.len();
        if dirty.is_empty() {
            continue;
        }
        let repair = Repair {
            socket: &mut *socket,
            tables,
            family,
            record,
            ops: FamilyOps::default(),
            kernel_sets: HashMap::new(),
        };
        let Some(family_ops) = repair.run(model, &kernel, &dirty)? else {
            return Ok(None);
        };
        ops[family.index()] = family_ops;
    }
    Ok(Some(Adoption {
        applied,
        repair: Partial::from_ops(ops),
        dirty_ports,
    }))
}

/// The kernel's `port-digests` of one family: per port id, the digest and the comment
/// (the base of the port's chain names).
struct KernelDigests {
    ports: HashMap<[u8; 8], ([u8; 8], Option<String>)>,
}

/// Reads every table's `port-digests`; `None` when a table or set is missing, a fixed
/// part's digest differs from the record's, or a key is not one of ours.
fn read_digests(
    socket: &mut NftSocket,
    tables: &TableNames,
    family: Family,
    record: &FamilyRecord,
) -> Result<Option<KernelDigests>, EngineError> {
    let mut ports = HashMap::new();
    for t in 0..TABLES {
        let set = MapKind::PortDigests.name();
        let Some(elements) = socket.element_infos(family, tables.name(t), set)? else {
            return Ok(None);
        };
        let mut fixed_seen = false;
        for e in elements {
            let Some((id, digest)) = digest::split(&e.key) else {
                return Ok(None);
            };
            if id == digest::FIXED_ID {
                if digest != record.fixed_digest || fixed_seen {
                    return Ok(None);
                }
                fixed_seen = true;
            } else if t == 0 || shard_table(id[0]) != t {
                return Ok(None);
            } else {
                let base = e.userdata.as_deref().and_then(userdata_comment);
                ports.insert(id, (digest, base.map(str::to_string)));
            }
        }
        if !fixed_seen {
            return Ok(None);
        }
    }
    Ok(Some(KernelDigests { ports }))
}

/// A port's `port-digests` element, its id and digest.
fn port_digest(elements: &[Element]) -> Option<(&Element, [u8; 8], [u8; 8])> {
    elements.iter().find_map(|e| match (e.kind, e.key) {
        (MapKind::PortDigests, ElementKey::Digest(key)) => {
            digest::split(&key).map(|(id, d)| (e, id, d))
        }
        _ => None,
    })
}

/// Ports whose digests differ between the kernel and the record, in either direction;
/// `None` when a port the model no longer has carries no chain base.
fn dirty_ports_of(kernel: &KernelDigests, record: &FamilyRecord) -> Option<Vec<Dirty>> {
    let mut dirty = Vec::new();
    let mut expected: HashSet<[u8; 8]> = HashSet::with_capacity(record.ports.len());
    for (name, objects) in &record.ports {
        let Some((e, id, digest)) = port_digest(&objects.elements) else {
            continue;
        };
        expected.insert(id);
        if kernel.ports.get(&id).map(|(d, _)| d) != Some(&digest) {
            let Verdict::Comment(base) = &e.value else {
                return None;
            };
            dirty.push(Dirty {
                id,
                name: Some(name.clone()),
                base: base.to_string(),
            });
        }
    }
    for (id, (_, base)) in kernel
        .ports
        .iter()
        .filter(|(id, _)| !expected.contains(*id))
    {
        dirty.push(Dirty {
            id: *id,
            name: None,
            base: base.clone()?,
        });
    }
    Some(dirty)
}

/// The repairs of one family, built while reading what they need.
struct Repair<'a> {
    socket: &'a mut NftSocket,
    tables: &'a TableNames,
    family: Family,
    record: &'a FamilyRecord,
    ops: FamilyOps,
    /// The sets of each table read.
    kernel_sets: HashMap<usize, HashSet<String>>,
}

impl Repair<'_> {
    /// Reads what the dirty ports may have touched and plans the repairs; `None` when
    /// the kernel holds something this engine would not have written.
    fn run(
        mut self,
        model: &NodeModel,
        kernel: &KernelDigests,
        dirty: &[Dirty],
    ) -> Result<Option<FamilyOps>, EngineError> {
        self.digests(kernel);
        let mut pending: BTreeSet<usize> = dirty.iter().map(|d| shard_table(d.id[0])).collect();
        pending.insert(0);
        pending.extend(self.claimant_shards(dirty));
        let (mut old_backends, old_maps) = self.old_chains(dirty)?;
        let mut done = BTreeSet::new();
        while let Some(t) = pending.pop_first() {
            done.insert(t);
            let Some(moved) = self.table(t)? else {
                return Ok(None);
            };
            pending.extend(moved.into_iter().filter(|m| !done.contains(m)));
        }
        let ctx = family_ctx(model, self.family);
        let mut hairpin: Vec<Element> = Vec::new();
        for name in dirty.iter().filter_map(|d| d.name.as_ref()) {
            let Some(plan) = model.services.get(&**name) else {
                continue;
            };
            let port = encode_port(&ctx, plan, &mut SlotBook::new(Some(self.record)));
            for (set, timeout) in port.sets {
                let present = self.kernel_sets.get(&set.table);
                if !present.is_some_and(|s| s.contains(&*set.name)) {
                    self.ops.new_sets.push((set, timeout));
                }
            }
            self.ops.chains.extend(port.chains);
            self.ops.backend_adds.extend(port.mapped);
            hairpin.extend(
                port.elements
                    .into_iter()
                    .filter(|e| e.kind == MapKind::Hairpin),
            );
        }
        let mut seen = HashSet::new();
        hairpin.retain(|e| seen.insert(e.key));
        old_backends.extend(self.backend_maps(dirty, old_maps)?);
        self.stale_hairpin(old_backends)?;
        self.ops.adds.extend(hairpin);
        Ok(Some(self.ops))
    }

    /// `port-digests`: the exact difference (every table's set was read whole).
    fn digests(&mut self, kernel: &KernelDigests) {
        let mut expected: HashMap<[u8; 8], &Element> = HashMap::new();
        for objects in self.record.ports.values() {
            if let Some((e, id, _)) = port_digest(&objects.elements) {
                expected.insert(id, e);
            }
        }
        for (id, (d, _)) in &kernel.ports {
            let want = expected.get(id);
            if want
                .and_then(|e| digest::split(&e.key.bytes()))
                .map(|(_, d)| d)
                != Some(*d)
            {
                self.ops.deletes.push(digest::element(*id, *d, None));
            }
        }
        for (id, e) in expected {
            let (_, d) = digest::split(&e.key.bytes()).expect("a digest key");
            if kernel.ports.get(&id).map(|(k, _)| *k) != Some(d) {
                self.ops.adds.push(e.clone());
            }
        }
    }

    /// The chains dirty ports may have (every name their base gives): those the model
    /// does not want are deleted; returns the addresses their backend chains DNAT to,
    /// and the backend maps (table, chunk) they pick from.
    #[allow(clippy::type_complexity)]
    fn old_chains(
        &mut self,
        dirty: &[Dirty],
    ) -> Result<(HashSet<IpAddr>, BTreeSet<(usize, u8)>), EngineError> {
        let mut backends = HashSet::new();
        let mut maps = BTreeSet::new();
        for d in dirty {
            for chain in PortChains::all_chains(shard_table(d.id[0]), &d.base) {
                let table = self.tables.name(chain.table);
                if ["svc-", "local-", "alt-"]
                    .iter()
                    .any(|p| chain.name.starts_with(p))
                {
                    let rules = self.socket.rule_exprs(self.family, table, &chain.name)?;
                    for rule in rules.unwrap_or_default() {
                        backends.extend(dnat_address(&rule));
                        if let Some(chunk) = dnat_map(&rule).and_then(|m| backend_map_chunk(&m)) {
                            maps.insert((chain.table, chunk));
                        }
                    }
                }
                if !self.record.tables[chain.table]
                    .chains
                    .contains_key(&chain.name)
                {
                    self.ops.stale_chains.push(chain);
                }
            }
        }
        Ok((backends, maps))
    }

    /// The backend maps dirty ports used (`old`, read from their old rules) or use now
    /// (the record's): each is read back (they are small) and every key no clean port
    /// holds is deleted — the dirty ports' new elements are added by `run`; maps the
    /// record needs and the kernel lacks are created. Returns the addresses the deleted
    /// elements pointed at (hairpin candidates).
    fn backend_maps(
        &mut self,
        dirty: &[Dirty],
        mut maps: BTreeSet<(usize, u8)>,
    ) -> Result<HashSet<IpAddr>, EngineError> {
        let dirty_names: HashSet<&ServicePortName> =
            dirty.iter().filter_map(|d| d.name.as_deref()).collect();
        for name in &dirty_names {
            if let Some(objects) = self.record.ports.get(*name) {
                maps.extend(objects.mapped.iter().map(|r| (r.table(), r.chunk)));
            }
        }
        let mut clean: HashMap<(usize, u8), Vec<MappedRange>> = HashMap::new();
        for (name, objects) in &self.record.ports {
            if dirty_names.contains(&**name) {
                continue;
            }
            for r in &objects.mapped {
                if maps.contains(&(r.table(), r.chunk)) {
                    clean.entry((r.table(), r.chunk)).or_default().push(*r);
                }
            }
        }
        let mut old_targets = HashSet::new();
        for (t, chunk) in maps {
            let name = backend_map_name(chunk);
            let table = self.tables.name(t);
            let Some(found) = self.socket.element_infos(self.family, table, &name)? else {
                if self.record.tables[t].has_backend_map(chunk) {
                    self.ops.new_backend_maps.push((t, chunk));
                }
                continue;
            };
            let kept = clean
                .get(&(t, chunk))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let wanted = self.record.tables[t].has_backend_map(chunk);
            if !wanted {
                self.ops.stale_sets.push(ObjectRef::new(t, name.as_str()));
            }
            for e in found {
                if kept.iter().any(|r| r.holds(&e.key)) {
                    continue;
                }
                let Ok(key) = <[u8; 4]>::try_from(&e.key[..]) else {
                    continue;
                };
                if wanted {
                    self.ops
                        .backend_deletes
                        .push((t, chunk, u32::from_ne_bytes(key)));
                }
                old_targets.extend(
                    e.value
                        .as_deref()
                        .and_then(|v| mapped_address(self.family, v)),
                );
            }
        }
        Ok(old_targets)
    }

    /// Shards holding claims, by other ports, of the sharded keys dirty ports claim.
    fn claimant_shards(&self, dirty: &[Dirty]) -> Vec<usize> {
        let mut out = Vec::new();
        for name in dirty.iter().filter_map(|d| d.name.as_ref()) {
            let Some(objects) = self.record.ports.get(name) else {
                continue;
            };
            for e in objects.elements.iter().filter(|e| e.kind.is_sharded()) {
                for (_, v) in self.record.claims(e.kind, &e.key).into_iter().flatten() {
                    out.push(table_of(e.kind, &e.key, v));
                }
            }
        }
        out
    }

    /// Reads table `t`: its affinity sets (shards) and the maps dirty ports may have
    /// elements in, planning what differs. Returns the tables keys found here in the
    /// wrong table belong in (read them too), or `None` when something is not ours.
    fn table(&mut self, t: usize) -> Result<Option<Vec<usize>>, EngineError> {
        if t > 0 {
            let (family, table) = (self.family, self.tables.name(t));
            let Some(sets) = self.socket.sets(family, table)? else {
                return Ok(None);
            };
            let expected = &self.record.tables[t];
            let fixed = [
                crate::ruleset::NODEPORT_IPS_SET,
                crate::ruleset::CLUSTER_CIDRS_SET,
            ];
            for set in &sets {
                let ours = MapKind::ALL.iter().any(|k| k.name() == set)
                    || fixed.contains(&set.as_str())
                    || backend_map_chunk(set).is_some();
                if !ours && !expected.sets.contains(set.as_str()) {
                    self.ops.stale_sets.push(ObjectRef::new(t, set.as_str()));
                }
            }
            self.kernel_sets.insert(t, sets.into_iter().collect());
        }
        let maps: &[MapKind] = if t == 0 {
            &[
                MapKind::NoEndpointServices,
                MapKind::NoEndpointNodePorts,
                MapKind::FirewallIps,
                MapKind::ClusterIps,
            ]
        } else {
            &[MapKind::ServiceIps, MapKind::ServiceNodePorts]
        };
        let mut moved = Vec::new();
        for &kind in maps {
            match self.map(t, kind)? {
                Some(m) => moved.extend(m),
                None => return Ok(None),
            }
        }
        Ok(Some(moved))
    }

    /// Compares map `kind` of table `t` with the record, element by element; returns
    /// the tables that should hold keys found here in the wrong table.
    fn map(&mut self, t: usize, kind: MapKind) -> Result<Option<Vec<usize>>, EngineError> {
        let (family, table) = (self.family, self.tables.name(t));
        let Some(found) = self.socket.element_infos(family, table, kind.name())? else {
            return Ok(None);
        };
        let mut expected: HashMap<ElementKey, &Verdict> = HashMap::new();
        for (key, claims) in &self.record.claims[kind.index()] {
            if let Some((_, v)) = claims.first() {
                if table_of(kind, key, v) == t {
                    expected.insert(*key, v);
                }
            }
        }
        let mut moved = Vec::new();
        for e in found {
            let (Some(key), Some(value)) = (
                ElementKey::from_bytes(kind, family, &e.key),
                Verdict::from_dump(e.verdict.as_ref(), t),
            ) else {
                return Ok(None);
            };
            match expected.remove(&key) {
                Some(v) if *v == value => continue,
                Some(v) => self.ops.adds.push(Element {
                    kind,
                    key,
                    value: v.clone(),
                }),
                None => {
                    if let Some((_, v)) = self.record.claims(kind, &key).and_then(|c| c.first()) {
                        moved.push(table_of(kind, &key, v));
                    }
                }
            }
            self.ops.deletes.push(Element { kind, key, value });
        }
        for (key, v) in expected {
            self.ops.adds.push(Element {
                kind,
                key,
                value: v.clone(),
            });
        }
        Ok(Some(moved))
    }

    /// Deletes the hairpin pairs of backends dirty ports had that no port has now, when
    /// the kernel holds them.
    fn stale_hairpin(&mut self, old_backends: HashSet<IpAddr>) -> Result<(), EngineError> {
        let kind = MapKind::Hairpin;
        let mut candidates: Vec<ElementKey> = old_backends
            .into_iter()
            .filter(|ip| self.family.has(ip))
            .map(|ip| ElementKey::Pair(ip, ip))
            .filter(|key| self.record.claims(kind, key).is_none())
            .collect();
        candidates.sort();
        let table = self.tables.name(0);
        // A lookup answers with the keys found up to the first missing one.
        let mut rest = &candidates[..];
        while !rest.is_empty() {
            let keys: Vec<Vec<u8>> = rest.iter().map(ElementKey::bytes).collect();
            let found = self
                .socket
                .elements_present(self.family, table, kind.name(), &keys)?;
            for key in &rest[..found.len()] {
                self.ops.deletes.push(Element {
                    kind,
                    key: *key,
                    value: Verdict::None,
                });
            }
            rest = &rest[(found.len() + 1).min(rest.len())..];
        }
        Ok(())
    }
}
