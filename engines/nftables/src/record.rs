//! What the engine believes the kernel holds: per family, the chains, affinity sets and
//! map elements of every service port it applied, and who owns each map element. Partial
//! syncs are computed against this record (the kernel is never re-listed to find out),
//! and `verify` compares the kernel with it.

use std::collections::{HashMap, HashSet};

use switchyard_core::ServicePortName;

use crate::ruleset::{element_table, object_table, MapKind, TABLES};

/// One element of a map or set. `value` is empty for sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub kind: MapKind,
    pub key: String,
    pub value: String,
}

/// Everything one service port owns in one family's table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortObjects {
    /// Chains with their rule counts.
    pub chains: Vec<(String, usize)>,
    /// Affinity sets.
    pub sets: Vec<String>,
    pub elements: Vec<Element>,
}

impl PortObjects {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.sets.is_empty() && self.elements.is_empty()
    }
}

/// Who wants a map key, and with which value. Several service ports can want the same
/// key (e.g. two Services sharing an external IP and port); the first claimant's value
/// is the one in the kernel.
pub type Claims = Vec<(ServicePortName, String)>;

/// What one table (main or shard) holds.
#[derive(Clone, Debug, Default)]
pub struct TableRecord {
    /// Every chain in the table (fixed ones included) and its rule count.
    pub chains: HashMap<String, usize>,
    /// Affinity sets in the table.
    pub sets: HashSet<String>,
    /// Elements in the kernel per map (indexed by `MapKind::index`); only the maps the
    /// table has (see `MapKind::is_sharded`) count.
    pub map_counts: [usize; MapKind::ALL.len()],
}

impl TableRecord {
    pub fn rule_count(&self) -> usize {
        self.chains.values().sum()
    }
}

/// What one family's tables hold.
#[derive(Clone, Debug)]
pub struct FamilyRecord {
    pub ports: HashMap<ServicePortName, PortObjects>,
    pub claims: HashMap<(MapKind, String), Claims>,
    /// Per table (0: main, `1 + i`: shard `i`, see `ruleset::table_name`).
    pub tables: Vec<TableRecord>,
}

impl Default for FamilyRecord {
    fn default() -> Self {
        FamilyRecord {
            ports: HashMap::new(),
            claims: HashMap::new(),
            tables: vec![TableRecord::default(); TABLES],
        }
    }
}

impl FamilyRecord {
    /// The value in the kernel for `key`, if any.
    pub fn head(&self, kind: MapKind, key: &str) -> Option<&str> {
        self.claims
            .get(&(kind, key.to_string()))
            .and_then(|c| c.first())
            .map(|(_, v)| v.as_str())
    }

    /// Records a port's objects (after its elements were written, if it won them).
    pub fn insert_port(&mut self, name: &ServicePortName, objects: PortObjects) {
        for (chain, rules) in &objects.chains {
            self.tables[object_table(chain)]
                .chains
                .insert(chain.clone(), *rules);
        }
        for set in &objects.sets {
            self.tables[object_table(set)].sets.insert(set.clone());
        }
        for e in &objects.elements {
            let claims = self.claims.entry((e.kind, e.key.clone())).or_default();
            if claims.is_empty() {
                self.tables[element_table(e.kind, &e.value)].map_counts[e.kind.index()] += 1;
            }
            claims.push((name.clone(), e.value.clone()));
        }
        if !objects.is_empty() {
            self.ports.insert(name.clone(), objects);
        }
    }

    /// Forgets a port's objects.
    pub fn remove_port(&mut self, name: &ServicePortName) {
        let Some(objects) = self.ports.remove(name) else {
            return;
        };
        for (chain, _) in &objects.chains {
            self.tables[object_table(chain)].chains.remove(chain);
        }
        for set in &objects.sets {
            self.tables[object_table(set)].sets.remove(set);
        }
        for e in objects.elements {
            let kind = e.kind;
            let k = (e.kind, e.key);
            if let Some(claims) = self.claims.get_mut(&k) {
                let before = claims.first().map(|(_, v)| element_table(kind, v));
                claims.retain(|(n, _)| n != name);
                let after = claims.first().map(|(_, v)| element_table(kind, v));
                if claims.is_empty() {
                    self.claims.remove(&k);
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
    }

    /// Rules in the family's tables.
    pub fn rule_count(&self) -> usize {
        self.tables.iter().map(TableRecord::rule_count).sum()
    }

    /// Whether an affinity set exists.
    pub fn has_set(&self, set: &str) -> bool {
        self.tables[object_table(set)].sets.contains(set)
    }
}

/// Both tables.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub families: [FamilyRecord; 2],
}

impl Applied {
    pub fn rule_count(&self) -> usize {
        self.families.iter().map(FamilyRecord::rule_count).sum()
    }
}
