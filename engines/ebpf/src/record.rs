//! The record of what the maps hold for one service id ([`Applied`]), and turning a typed
//! [`ServicePort`] into that content: checks, slot arrangement, the count every entry
//! carries.
//!
//! The record is kept compact (sorted vectors, no trees): one is held per service port
//! family for the life of the agent, and two per port during a full sync.
//!
//! Slots are arranged against the previous content so that a one-endpoint change is one
//! slot write: backends that stay keep their slot, a new backend takes a freed slot or is
//! appended, and a removed backend's slot is filled by the last one (then the count
//! shrinks). Slot order is therefore not the order of the plan.

use std::collections::HashSet;

use crate::{
    dataplane::ServicePort,
    error::EbpfError,
    layout::{BackendValue, SvcKey, SvcValue},
    service::{source_range_key, Action, TargetSet},
};

/// What the maps hold for one service id, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Backend slots per set, sorted by set.
    pub(crate) sets: Vec<(TargetSet, Vec<BackendValue>)>,
    /// Service entries, sorted by key.
    pub(crate) entries: Vec<(SvcKey, SvcValue)>,
    /// Source-range LPM keys (prefix length, data), sorted.
    pub(crate) ranges: Vec<(u32, [u8; 20])>,
}

impl Applied {
    pub(crate) fn set(&self, target: TargetSet) -> &[BackendValue] {
        self.sets
            .binary_search_by_key(&target, |(t, _)| *t)
            .map_or(&[], |i| &self.sets[i].1)
    }

    pub(crate) fn entry(&self, key: &SvcKey) -> Option<&SvcValue> {
        self.entries
            .binary_search_by_key(key, |(k, _)| *k)
            .ok()
            .map(|i| &self.entries[i].1)
    }

    pub(crate) fn has_range(&self, range: &(u32, [u8; 20])) -> bool {
        self.ranges.binary_search(range).is_ok()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.entries.is_empty() && self.ranges.is_empty()
    }

    /// Map entries this content takes (service entries plus backend slots).
    pub(crate) fn objects(&self) -> usize {
        self.entries.len() + self.sets.iter().map(|(_, s)| s.len()).sum::<usize>()
    }
}

/// The slots of a set: `old` rearranged as little as possible to hold exactly `new`.
pub(crate) fn arrange(old: &[BackendValue], new: &[BackendValue]) -> Vec<BackendValue> {
    let wanted: HashSet<BackendValue> = new.iter().copied().collect();
    let kept: HashSet<BackendValue> = old.iter().filter(|v| wanted.contains(v)).copied().collect();
    let mut incoming = new.iter().filter(|v| !kept.contains(v)).copied();
    let mut seen = HashSet::new();
    let mut slots: Vec<Option<BackendValue>> = old
        .iter()
        .map(|v| (wanted.contains(v) && seen.insert(*v)).then_some(*v))
        .collect();
    for slot in slots.iter_mut().filter(|s| s.is_none()) {
        *slot = incoming.next();
    }
    slots.extend(incoming.map(Some));
    // Holes left (more removed than added): the last backends move into them.
    let mut i = 0;
    while i < slots.len() {
        if slots[i].is_none() {
            let last = slots.pop().flatten();
            if i < slots.len() {
                slots[i] = last;
            }
            continue;
        }
        i += 1;
    }
    let mut arranged: Vec<BackendValue> = slots.into_iter().flatten().collect();
    arranged.shrink_to_fit();
    arranged
}

/// Checks a service port and turns it into map content, its slots arranged against `old`.
pub(crate) fn encode(sp: &ServicePort, old: &Applied) -> Result<Applied, EbpfError> {
    let mut out = Applied::default();
    for (target, backends) in &sp.sets {
        if backends.len() > usize::from(u16::MAX) {
            return Err(EbpfError::BadService {
                key: format!("id {} set {target:?}", sp.id),
                reason: format!("{} backends, at most {}", backends.len(), u16::MAX),
            });
        }
        if !backends.is_empty() {
            let values: Vec<BackendValue> = backends.iter().map(|b| b.to_raw()).collect();
            out.sets.push((*target, arrange(old.set(*target), &values)));
        }
    }
    for (key, entry) in &sp.entries {
        let bad = |reason: String| EbpfError::BadService {
            key: format!("{}:{} {} {:?}", key.vip, key.port, key.protocol, key.scope),
            reason,
        };
        if entry.id != sp.id {
            return Err(bad(format!(
                "entry id {} in service port {}",
                entry.id, sp.id
            )));
        }
        let count = match (entry.action, sp.sets.get(&entry.target)) {
            (Action::Forward, None) => {
                return Err(bad(format!(
                    "forwards to set {:?}, not given",
                    entry.target
                )))
            }
            (Action::Forward, Some(set)) => {
                if let Some(b) = set.iter().find(|b| b.addr.is_ipv4() != key.vip.is_ipv4()) {
                    return Err(bad(format!("backend {} of another family", b.addr)));
                }
                set.len() as u16
            }
            _ => 0,
        };
        out.entries.push((key.to_raw(), entry.to_raw(count)));
    }
    out.entries.sort_by_key(|(k, _)| *k);
    for (net, prefix) in &sp.source_ranges {
        let (len, data) = source_range_key(sp.id, *net, *prefix);
        out.ranges.push((len, data.data));
    }
    out.ranges.sort();
    out.ranges.dedup();
    // Exact capacities: one record per service port lives as long as the agent, and
    // vectors grown by `push` keep up to twice their length (≈ 10 MiB at 50k).
    out.sets.shrink_to_fit();
    out.entries.shrink_to_fit();
    out.ranges.shrink_to_fit();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(n: u8) -> BackendValue {
        BackendValue {
            addr: [n; 16],
            port_be: 80,
            flags: 0,
            pad: 0,
        }
    }

    fn writes(old: &[BackendValue], new: &[BackendValue]) -> usize {
        arrange(old, new)
            .iter()
            .enumerate()
            .filter(|(i, v)| old.get(*i) != Some(v))
            .count()
    }

    #[test]
    fn one_endpoint_changes_are_one_slot_write() {
        let old = [b(1), b(2), b(3), b(4), b(5)];
        // Removing the first: the last moves into its slot.
        assert_eq!(
            arrange(&old, &[b(2), b(3), b(4), b(5)]),
            [b(5), b(2), b(3), b(4)]
        );
        assert_eq!(writes(&old, &[b(2), b(3), b(4), b(5)]), 1);
        // Adding one: appended.
        assert_eq!(writes(&old, &[b(0), b(1), b(2), b(3), b(4), b(5)]), 1);
        // Replacing one: takes the freed slot.
        assert_eq!(
            arrange(&old, &[b(1), b(2), b(9), b(4), b(5)]),
            [b(1), b(2), b(9), b(4), b(5)]
        );
        // Removing the last: nothing moves.
        assert_eq!(writes(&old, &[b(1), b(2), b(3), b(4)]), 0);
    }

    #[test]
    fn arranged_slots_hold_exactly_the_new_set() {
        let old = [b(1), b(2), b(3), b(4), b(5), b(6)];
        for new in [
            vec![],
            vec![b(6)],
            vec![b(1), b(6)],
            vec![b(2), b(4), b(7), b(8)],
            vec![b(9), b(8), b(7), b(1), b(2), b(3), b(4), b(5), b(6)],
        ] {
            let mut got = arrange(&old, &new);
            got.sort_by_key(|v| v.addr);
            let mut want = new.clone();
            want.sort_by_key(|v| v.addr);
            assert_eq!(got, want);
        }
        assert_eq!(arrange(&[], &[b(3), b(1)]), [b(3), b(1)]);
        assert_eq!(arrange(&[b(1), b(1)], &[b(1)]), [b(1)]);
    }
}
