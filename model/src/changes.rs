//! `ChangeSet`: which service ports differ between the model an engine last applied and
//! the one it is asked to apply. A full resync is a ChangeSet that names everything.

use std::collections::{BTreeMap, BTreeSet};

use crate::{model::NodeModel, name::ServicePortName, plan::ServicePortPlan};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Rewrite everything (first sync, after a failure or drift, hourly, or node-wide
    /// settings changed).
    pub full: bool,
    /// Present in the new model only.
    pub added: BTreeSet<ServicePortName>,
    /// Present in both, different.
    pub changed: BTreeSet<ServicePortName>,
    /// Present in the old model only.
    pub removed: BTreeSet<ServicePortName>,
    /// The old plans of the `changed` and `removed` service ports (for what depends on
    /// the difference, such as stale conntrack flows). Empty for a full rewrite that has
    /// no previous model.
    pub previous: BTreeMap<ServicePortName, ServicePortPlan>,
}

impl ChangeSet {
    /// A change set that rewrites everything in `model`.
    pub fn full(model: &NodeModel) -> ChangeSet {
        ChangeSet {
            full: true,
            added: model.services.keys().cloned().collect(),
            ..ChangeSet::default()
        }
    }

    /// The difference from `old` (what is applied) to `new`. Node-wide differences make
    /// it a full change set.
    pub fn between(old: &NodeModel, new: &NodeModel) -> ChangeSet {
        let mut cs = ChangeSet {
            full: old.globals_differ(new),
            ..ChangeSet::default()
        };
        for (name, plan) in &new.services {
            match old.services.get(name) {
                None => {
                    cs.added.insert(name.clone());
                }
                Some(o) if o != plan => {
                    cs.changed.insert(name.clone());
                    cs.previous.insert(name.clone(), o.clone());
                }
                Some(_) => {}
            }
        }
        for (name, o) in &old.services {
            if !new.services.contains_key(name) {
                cs.removed.insert(name.clone());
                cs.previous.insert(name.clone(), o.clone());
            }
        }
        cs
    }

    /// The same differences, asking the engine to rewrite everything.
    pub fn into_full(mut self) -> ChangeSet {
        self.full = true;
        self
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        !self.full && self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }

    /// Number of service ports this change touches.
    pub fn len(&self) -> usize {
        self.added.len() + self.changed.len() + self.removed.len()
    }

    /// Every service port named, added, changed or removed.
    pub fn touched(&self) -> impl Iterator<Item = &ServicePortName> {
        self.added.iter().chain(&self.changed).chain(&self.removed)
    }
}
