//! What the engine believes the kernel holds: per family, the chains, affinity sets and
//! map elements of every service port it applied, and who owns each map element. Partial
//! syncs are computed against this record (the kernel is never re-listed to find out),
//! and `verify` compares the kernel with it.

use std::collections::{HashMap, HashSet};

use switchyard_core::ServicePortName;

use crate::ruleset::MapKind;

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

/// What one family's table holds.
#[derive(Clone, Debug, Default)]
pub struct FamilyRecord {
    pub ports: HashMap<ServicePortName, PortObjects>,
    pub claims: HashMap<(MapKind, String), Claims>,
    /// Every chain in the table (fixed ones included) and its rule count.
    pub chains: HashMap<String, usize>,
    /// Affinity sets in the table.
    pub sets: HashSet<String>,
    /// Elements in the kernel per map (indexed by `MapKind::index`).
    pub map_counts: [usize; MapKind::ALL.len()],
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
            self.chains.insert(chain.clone(), *rules);
        }
        for set in &objects.sets {
            self.sets.insert(set.clone());
        }
        for e in &objects.elements {
            let claims = self.claims.entry((e.kind, e.key.clone())).or_default();
            if claims.is_empty() {
                self.map_counts[e.kind.index()] += 1;
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
            self.chains.remove(chain);
        }
        for set in &objects.sets {
            self.sets.remove(set);
        }
        for e in objects.elements {
            let k = (e.kind, e.key);
            if let Some(claims) = self.claims.get_mut(&k) {
                claims.retain(|(n, _)| n != name);
                if claims.is_empty() {
                    self.claims.remove(&k);
                    self.map_counts[e.kind.index()] -= 1;
                }
            }
        }
    }

    /// Rules in the table.
    pub fn rule_count(&self) -> usize {
        self.chains.values().sum()
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
