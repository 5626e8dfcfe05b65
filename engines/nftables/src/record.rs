//! What the engine believes the kernel holds: per family, the chains, affinity sets and
//! map elements of every service port it applied, and who owns each map element. Partial
//! syncs are computed against this record (the kernel is never re-listed to find out),
//! and `verify` compares the kernel with it.

use std::sync::Arc;

use foldhash::{HashMap, HashSet};
use switchyard_model::ServicePortName;

use crate::{
    element::{table_of, Element, ElementKey, ObjectRef, Verdict},
    ruleset::{BackendSlot, Family, MapKind, BACKEND_MAPS, TABLES},
};

/// A backend chain's keys in a backend map: `offset .. offset + count` of map `chunk`
/// in table `table` (see `ruleset::BACKEND_MAPS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MappedRange {
    pub table: u8,
    pub chunk: u8,
    pub offset: u32,
    pub count: u32,
}

impl MappedRange {
    pub fn table(&self) -> usize {
        usize::from(self.table)
    }

    pub fn slot(&self) -> BackendSlot {
        BackendSlot {
            chunk: self.chunk,
            offset: self.offset,
        }
    }

    /// The keys, as the map holds them (host-endian `numgen` results).
    pub fn keys(&self) -> impl Iterator<Item = Vec<u8>> {
        (self.offset..self.offset + self.count).map(|k| k.to_ne_bytes().to_vec())
    }

    /// Whether the map key `key` (its bytes) is one of this range's.
    pub fn holds(&self, key: &[u8]) -> bool {
        <[u8; 4]>::try_from(key)
            .map(u32::from_ne_bytes)
            .is_ok_and(|k| k >= self.offset && k - self.offset < self.count)
    }
}

/// Everything one service port owns in one family's tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortObjects {
    /// Chains with their rule counts.
    pub chains: Vec<(ObjectRef, usize)>,
    /// Affinity sets.
    pub sets: Vec<ObjectRef>,
    pub elements: Vec<Element>,
    /// The backend-map keys of its backend chains.
    pub mapped: Vec<MappedRange>,
}

impl PortObjects {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
            && self.sets.is_empty()
            && self.elements.is_empty()
            && self.mapped.is_empty()
    }
}

/// Who wants a map key, and with which value, sorted by service port name. Several
/// service ports can want the same key (e.g. two Services sharing an external IP and
/// port); the first claimant's (the smallest name's) value is the one in the kernel, so
/// what the kernel holds depends on the model alone, never on the order of past syncs
/// (a restarted engine can then tell what a table should hold). The name is shared
/// with the port's record entry (one allocation per port, not one per element: 250k
/// hairpin elements at 50k services).
pub type Claims = Vec<(Arc<ServicePortName>, Verdict)>;

/// What one table (main or shard) holds.
#[derive(Clone, Debug)]
pub struct TableRecord {
    /// Every chain in the table (fixed ones included) and its rule count.
    pub chains: HashMap<Arc<str>, usize>,
    /// Affinity sets in the table.
    pub sets: HashSet<Arc<str>>,
    /// Elements in the kernel per map (indexed by `MapKind::index`); only the maps the
    /// table has (see `MapKind::is_sharded`) count.
    pub map_counts: [usize; MapKind::ALL.len()],
    /// Elements per backend map: a map exists while it has some.
    pub backend_counts: [u32; BACKEND_MAPS],
    /// Who holds each backend-map slot.
    pub backend_slots: HashMap<BackendSlot, Arc<ServicePortName>>,
}

impl Default for TableRecord {
    fn default() -> Self {
        TableRecord {
            chains: HashMap::default(),
            sets: HashSet::default(),
            map_counts: Default::default(),
            backend_counts: [0; BACKEND_MAPS],
            backend_slots: HashMap::default(),
        }
    }
}

impl TableRecord {
    /// Whether backend map `chunk` exists (has elements).
    pub fn has_backend_map(&self, chunk: u8) -> bool {
        self.backend_counts[usize::from(chunk)] > 0
    }

    pub fn rule_count(&self) -> usize {
        self.chains.values().sum()
    }
}

/// What one family's tables hold.
#[derive(Clone, Debug)]
pub struct FamilyRecord {
    pub ports: HashMap<Arc<ServicePortName>, PortObjects>,
    /// Claims per map (indexed by `MapKind::index`), by element key.
    pub claims: [HashMap<ElementKey, Claims>; MapKind::ALL.len()],
    /// Per table (0: main, `1 + i`: shard `i`).
    pub tables: Vec<TableRecord>,
    /// The digest of the tables' fixed part (in every table's `port-digests`).
    pub fixed_digest: [u8; 8],
}

impl Default for FamilyRecord {
    fn default() -> Self {
        FamilyRecord {
            ports: HashMap::default(),
            claims: Default::default(),
            tables: vec![TableRecord::default(); TABLES],
            fixed_digest: [0; 8],
        }
    }
}

impl FamilyRecord {
    /// The value in the kernel for `key`, if any.
    pub fn head(&self, kind: MapKind, key: &ElementKey) -> Option<&Verdict> {
        self.claims(kind, key)
            .and_then(|c| c.first())
            .map(|(_, v)| v)
    }

    /// Who claims `key` in the map `kind`.
    pub fn claims(&self, kind: MapKind, key: &ElementKey) -> Option<&Claims> {
        self.claims[kind.index()].get(key)
    }

    /// Records a port's objects (after its elements were written, if it won them).
    pub fn insert_port(&mut self, name: &ServicePortName, objects: PortObjects) {
        for (chain, rules) in &objects.chains {
            self.tables[chain.table]
                .chains
                .insert(chain.name.clone(), *rules);
        }
        for set in &objects.sets {
            self.tables[set.table].sets.insert(set.name.clone());
        }
        if objects.is_empty() {
            return;
        }
        let owner = Arc::new(name.clone());
        for r in &objects.mapped {
            let table = &mut self.tables[r.table()];
            table.backend_counts[usize::from(r.chunk)] += r.count;
            table.backend_slots.insert(r.slot(), owner.clone());
        }
        for e in &objects.elements {
            let kind = e.kind;
            let claims = self.claims[kind.index()].entry(e.key).or_default();
            let before = claims.first().map(|(_, v)| table_of(kind, &e.key, v));
            // Full renders insert in name order: the position is the end.
            let at = match claims.last() {
                Some((last, _)) if **last > *name => claims.partition_point(|(n, _)| **n < *name),
                _ => claims.len(),
            };
            claims.insert(at, (owner.clone(), e.value.clone()));
            if at == 0 {
                if let Some(t) = before {
                    self.tables[t].map_counts[kind.index()] -= 1;
                }
                self.tables[e.table()].map_counts[kind.index()] += 1;
            }
        }
        self.ports.insert(owner, objects);
    }

    /// Forgets a port's objects.
    pub fn remove_port(&mut self, name: &ServicePortName) {
        let Some(objects) = self.ports.remove(name) else {
            return;
        };
        for (chain, _) in &objects.chains {
            self.tables[chain.table].chains.remove(&chain.name);
        }
        for set in &objects.sets {
            self.tables[set.table].sets.remove(&set.name);
        }
        for r in &objects.mapped {
            let table = &mut self.tables[r.table()];
            table.backend_counts[usize::from(r.chunk)] -= r.count;
            if table
                .backend_slots
                .get(&r.slot())
                .is_some_and(|holder| **holder == *name)
            {
                table.backend_slots.remove(&r.slot());
            }
        }
        for e in objects.elements {
            let kind = e.kind;
            let map = &mut self.claims[kind.index()];
            let Some(claims) = map.get_mut(&e.key) else {
                continue;
            };
            let before = claims.first().map(|(_, v)| table_of(kind, &e.key, v));
            claims.retain(|(n, _)| **n != *name);
            let after = claims.first().map(|(_, v)| table_of(kind, &e.key, v));
            if claims.is_empty() {
                map.remove(&e.key);
            }
            if before != after {
                if let Some(t) = before {
                    self.tables[t].map_counts[kind.index()] -= 1;
                }
                if let Some(t) = after {
                    self.tables[t].map_counts[kind.index()] += 1;
                }
            }
        }
    }

    /// Rules in the family's tables.
    pub fn rule_count(&self) -> usize {
        self.tables.iter().map(TableRecord::rule_count).sum()
    }

    /// Who holds backend-map slot `slot` of table `table`.
    pub fn slot_holder(&self, table: usize, slot: BackendSlot) -> Option<&ServicePortName> {
        self.tables[table].backend_slots.get(&slot).map(|h| &**h)
    }

    /// Whether an affinity set exists.
    pub fn has_set(&self, set: &ObjectRef) -> bool {
        self.tables[set.table].sets.contains(&set.name)
    }
}

/// Both families' tables.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub families: [FamilyRecord; 2],
    /// The kernel has no IPv6: only the `ip` tables were programmed (partial syncs,
    /// `verify` and cleanup leave `ip6` alone).
    pub ipv4_only: bool,
}

impl Applied {
    /// The families this record covers.
    pub fn programmed(&self) -> &'static [Family] {
        Family::programmed(!self.ipv4_only)
    }

    pub fn rule_count(&self) -> usize {
        self.families.iter().map(FamilyRecord::rule_count).sum()
    }
}
