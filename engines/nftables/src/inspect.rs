//! Reading one service port back from the kernel (`switchyard explain`): what the
//! engine would write for the port's plan (`port::encode_port`) compared with what the
//! kernel's tables hold, object by object, through netlink lookups (no table dump: a
//! port's objects are found by name and key, so the cost does not grow with the number
//! of services):
//!
//! - the port's chains (`svc-H`, `local-H`, `alt-H`, `ext-H`, `fw-H`): present or not,
//!   rule counts, and the addresses the backend chains DNAT to; its affinity sets
//!   (`aff-E-T`, ClientIP affinity only): present;
//! - every element the plan wants (`service-ips`, `no-endpoint-services`,
//!   `cluster-ips`, `hairpin`, `port-digests`...) looked up with its verdict;
//! - the port's keys (VIP . protocol . port, protocol . NodePort) looked up in the maps
//!   the plan does not put them in (in every shard for the sharded maps): a stale
//!   element there would send the traffic elsewhere.
//!
//! A `port-digests` element other than the plan's says the kernel holds what was
//! written for another plan of the port (an agent that has not synced yet, or another
//! node-wide config).

use std::collections::BTreeMap;

use switchyard_model::{EngineError, KernelObject, NodeModel, PortInspection, ServicePortName};

use crate::{
    element::{Element, ElementKey},
    full::family_ctx,
    netlink::NftSocket,
    port::{encode_port, mapped_address, PortRules, SlotBook},
    record::Applied,
    rule::{dnat_address, dnat_keys, dnat_map, Action},
    ruleset::{backend_map_name, Family, MapKind, PortChains, TableNames, TABLES},
};

/// Maps a `Vip` key can be an element of, and maps a `NodePort` key can.
const VIP_MAPS: [MapKind; 3] = [
    MapKind::ServiceIps,
    MapKind::NoEndpointServices,
    MapKind::FirewallIps,
];
const NODE_PORT_MAPS: [MapKind; 2] = [MapKind::ServiceNodePorts, MapKind::NoEndpointNodePorts];

/// Reads back service port `name` of `model` in every programmed family.
pub fn inspect(
    socket: &mut NftSocket,
    tables: &TableNames,
    families: &[Family],
    model: &NodeModel,
    applied: Option<&Applied>,
    name: &ServicePortName,
    out: &mut PortInspection,
) -> Result<(), EngineError> {
    for &family in families {
        let record = applied.map(|a| &a.families[family.index()]);
        let expected = model
            .services
            .get(name)
            .map(|plan| encode_port(&family_ctx(model, family), plan, &mut SlotBook::new(record)))
            .unwrap_or_default();
        let mut reader = Reader {
            socket: &mut *socket,
            tables,
            family,
            out: &mut *out,
        };
        reader.chains(name, &expected)?;
        reader.affinity_sets(&expected)?;
        reader.elements(&expected)?;
    }
    Ok(())
}

struct Reader<'a> {
    socket: &'a mut NftSocket,
    tables: &'a TableNames,
    family: Family,
    out: &'a mut PortInspection,
}

impl Reader<'_> {
    fn place(&self, table: usize, object: &str) -> String {
        format!("{} {} {object}", self.family.nft(), self.tables.name(table))
    }

    /// Every chain name the port can have: present ones are read; expected ones must
    /// be there with the plan's rule count and DNAT targets.
    fn chains(&mut self, name: &ServicePortName, expected: &PortRules) -> Result<(), EngineError> {
        let names = PortChains::new(name);
        let base = names.base();
        for chain in PortChains::all_chains(names.table(), &base) {
            let table = self.tables.name(chain.table).to_string();
            let place = self.place(chain.table, &chain.name);
            let want = expected.chains.iter().find(|(c, _)| *c == chain);
            let present = self
                .socket
                .table_chains(self.family, &table)?
                .unwrap_or_default()
                .iter()
                .any(|c| *c == *chain.name);
            if !present {
                if want.is_some() {
                    self.out.differs(format!("chain {place} is missing"));
                }
                continue;
            }
            let rules = self
                .socket
                .rule_exprs(self.family, &table, &chain.name)?
                .unwrap_or_default();
            let mut dnat: Vec<String> = rules
                .iter()
                .filter_map(|r| dnat_address(r))
                .map(|ip| ip.to_string())
                .collect();
            for rule in &rules {
                if let (Some(map), Some(keys)) = (dnat_map(rule), dnat_keys(rule)) {
                    let found = self
                        .socket
                        .element_infos(self.family, &table, &map)?
                        .unwrap_or_default();
                    dnat.extend(
                        found
                            .iter()
                            .filter(|e| {
                                <[u8; 4]>::try_from(&e.key[..])
                                    .is_ok_and(|k| keys.contains(&u32::from_ne_bytes(k)))
                            })
                            .filter_map(|e| mapped_address(self.family, e.value.as_deref()?))
                            .map(|ip| ip.to_string()),
                    );
                }
            }
            dnat.sort();
            let mut detail = match rules.len() {
                1 => "1 rule".to_string(),
                n => format!("{n} rules"),
            };
            if !dnat.is_empty() {
                detail.push_str(&format!(", DNAT to {}", dnat.join(", ")));
            }
            self.out.found(KernelObject::new("chain", &place, detail));
            let Some((_, want)) = want else {
                self.out
                    .differs(format!("chain {place} is not in the plan"));
                continue;
            };
            if rules.len() != want.len() {
                self.out.differs(format!(
                    "chain {place} has {} rules, the plan {}",
                    rules.len(),
                    want.len()
                ));
            }
            let mut want_dnat: Vec<String> = Vec::new();
            for r in want.iter() {
                match &r.action {
                    Action::Dnat { ip, .. } => want_dnat.push(ip.to_string()),
                    Action::DnatMapped { map, offset, .. } => want_dnat.extend(
                        expected
                            .mapped
                            .iter()
                            .filter(|m| {
                                m.range.offset == *offset && backend_map_name(m.range.chunk) == *map
                            })
                            .flat_map(|m| m.targets.iter().map(|(ip, _)| ip.to_string())),
                    ),
                    _ => {}
                }
            }
            want_dnat.sort();
            if dnat != want_dnat {
                self.out.differs(format!(
                    "chain {place} DNATs to [{}], the plan to [{}]",
                    dnat.join(", "),
                    want_dnat.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The port's ClientIP affinity sets (one per backend), present.
    fn affinity_sets(&mut self, expected: &PortRules) -> Result<(), EngineError> {
        if expected.sets.is_empty() {
            return Ok(());
        }
        let table = expected.sets[0].0.table;
        let present = self
            .socket
            .sets(self.family, self.tables.name(table))?
            .unwrap_or_default();
        for (set, timeout) in &expected.sets {
            let place = self.place(set.table, &set.name);
            if present.iter().any(|s| **s == *set.name) {
                let detail = format!("affinity, timeout {timeout} s");
                self.out.found(KernelObject::new("set", &place, detail));
            } else {
                self.out.differs(format!("set {place} is missing"));
            }
        }
        Ok(())
    }

    /// The plan's elements, and the port's keys in the maps the plan leaves them out of.
    fn elements(&mut self, expected: &PortRules) -> Result<(), EngineError> {
        let mut wanted: BTreeMap<(MapKind, ElementKey), &Element> = BTreeMap::new();
        for e in &expected.elements {
            wanted.insert((e.kind, e.key), e);
        }
        for e in &expected.elements {
            self.wanted(e)?;
        }
        let mut keys: Vec<ElementKey> = expected
            .elements
            .iter()
            .map(|e| e.key)
            .filter(|k| matches!(k, ElementKey::Vip(..) | ElementKey::NodePort(..)))
            .collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let maps: &[MapKind] = match key {
                ElementKey::Vip(..) => &VIP_MAPS,
                _ => &NODE_PORT_MAPS,
            };
            for &kind in maps {
                let wanted_here = wanted.get(&(kind, key)).map(|e| e.table());
                let tables = if kind.is_sharded() { 1..TABLES } else { 0..1 };
                for t in tables.filter(|t| Some(*t) != wanted_here) {
                    if let Some(verdict) = self.lookup(t, kind, &key)? {
                        let place = self.place(t, kind.name());
                        self.found_element(&place, &key, &verdict);
                        self.out
                            .differs(format!("{place} holds {key}, not in the plan"));
                    }
                }
            }
        }
        Ok(())
    }

    /// One element the plan wants: present, with the plan's verdict.
    fn wanted(&mut self, e: &Element) -> Result<(), EngineError> {
        let t = e.table();
        let place = self.place(t, e.kind.name());
        let key = match e.kind {
            MapKind::PortDigests => "(this port's digest)".to_string(),
            _ => e.key.to_string(),
        };
        match self.lookup(t, e.kind, &e.key)? {
            None if e.kind == MapKind::PortDigests => self.out.differs(format!(
                "{place} lacks this plan's digest: the port's objects were written for another plan"
            )),
            None => self.out.differs(format!("{place} lacks {key}")),
            Some(verdict) => {
                self.found_element(&place, &e.key, &verdict);
                let want = e.value.chain().map(|c| c.name.to_string());
                if e.kind.is_map() && verdict != want {
                    self.out.differs(format!(
                        "{place} maps {key} to {}, the plan to {}",
                        verdict_text(&verdict),
                        e.value
                    ));
                }
            }
        }
        Ok(())
    }

    fn found_element(&mut self, place: &str, key: &ElementKey, verdict: &Option<String>) {
        let name = match key {
            ElementKey::Digest(_) => place.to_string(),
            _ => format!("{place} {key}"),
        };
        let detail = match verdict {
            Some(chain) => format!("goto {chain}"),
            None => String::new(),
        };
        self.out.found(KernelObject::new("element", name, detail));
    }

    /// `Some(verdict chain)` when table `t`'s `kind` holds `key`.
    fn lookup(
        &mut self,
        t: usize,
        kind: MapKind,
        key: &ElementKey,
    ) -> Result<Option<Option<String>>, EngineError> {
        let table = self.tables.name(t).to_string();
        let found =
            self.socket
                .elements_present(self.family, &table, kind.name(), &[key.bytes()])?;
        Ok(found.into_iter().next())
    }
}

fn verdict_text(verdict: &Option<String>) -> String {
    match verdict {
        Some(chain) => format!("goto {chain}"),
        None => "drop (or no verdict)".to_string(),
    }
}
