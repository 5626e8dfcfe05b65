//! `ChangeSet`: which service ports differ between the model an engine last applied and
//! the one it is asked to apply. A full resync is a ChangeSet that names everything.

use std::collections::BTreeSet;

use crate::model::{NodeModel, ServicePortName};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Rewrite everything (first sync, periodic resync, after a failure or drift, or
    /// node-wide settings changed).
    pub full: bool,
    /// Present in the new model only.
    pub added: BTreeSet<ServicePortName>,
    /// Present in both, different.
    pub changed: BTreeSet<ServicePortName>,
    /// Present in the old model only.
    pub removed: BTreeSet<ServicePortName>,
}

impl ChangeSet {
    /// A change set that rewrites everything in `model`.
    pub fn full(model: &NodeModel) -> ChangeSet {
        ChangeSet {
            full: true,
            added: model.services.keys().cloned().collect(),
            changed: BTreeSet::new(),
            removed: BTreeSet::new(),
        }
    }

    /// The difference from `old` (what is applied) to `new`. Node-wide differences make
    /// it a full change set.
    pub fn between(old: &NodeModel, new: &NodeModel) -> ChangeSet {
        if old.globals_differ(new) {
            return ChangeSet::full(new);
        }
        let mut cs = ChangeSet::default();
        for (name, sp) in &new.services {
            match old.services.get(name) {
                None => {
                    cs.added.insert(name.clone());
                }
                Some(o) if o != sp => {
                    cs.changed.insert(name.clone());
                }
                Some(_) => {}
            }
        }
        for name in old.services.keys() {
            if !new.services.contains_key(name) {
                cs.removed.insert(name.clone());
            }
        }
        cs
    }

    pub fn is_empty(&self) -> bool {
        !self.full && self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }

    /// Number of service ports this change touches.
    pub fn len(&self) -> usize {
        self.added.len() + self.changed.len() + self.removed.len()
    }
}
