//! [`Record`]: what the engine applied — every port's wants, the claims on virtual
//! servers and shared objects they make, and the IPVS state as last written (with the
//! real servers draining) — and [`Delta`], what a change of some ports' wants changes
//! in the kernel. Pure bookkeeping: nothing here talks to the kernel.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    time::Instant,
};

use switchyard_model::{IpFamily, ServicePortName};
use switchyard_netlink::ipvs::{Service, ServiceId};

use crate::{
    claims::Claims,
    helper::{Chain, Element, Key, Verdict},
    wants::{Frontend, PortWants, Shared},
};

/// A real server as the kernel holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelDest {
    pub weight: u32,
    /// Set while it drains (weight 0, removed once idle or past the bound).
    pub draining_since: Option<Instant>,
}

/// A virtual server of ours as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelServer {
    pub service: Service,
    pub dests: BTreeMap<(IpAddr, u16), KernelDest>,
}

/// What the engine applied.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub servers: Claims<ServiceId, Frontend>,
    pub shared: Claims<Shared, ()>,
    pub chains: BTreeMap<(IpFamily, String), Chain>,
    pub ports: HashMap<ServicePortName, PortWants>,
    /// Our virtual servers as last written.
    pub kernel: BTreeMap<ServiceId, KernelServer>,
}

/// The helper table changes of one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HelperDelta {
    /// Chains created or whose rules changed.
    pub chains: Vec<Chain>,
    /// Elements added, or whose value changed (the old value is in `replaced`).
    pub adds: Vec<Element>,
    pub replaced: Vec<Element>,
    /// Elements removed.
    pub deletes: Vec<Element>,
    /// Chains no port has any more.
    pub stale_chains: Vec<String>,
}

impl HelperDelta {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
            && self.adds.is_empty()
            && self.replaced.is_empty()
            && self.deletes.is_empty()
            && self.stale_chains.is_empty()
    }
}

/// What a change of some ports' wants changes in the kernel.
#[derive(Clone, Debug, Default)]
pub struct Delta {
    /// Virtual servers whose winning claim changed: the new one (`None`: delete).
    pub servers: Vec<(ServiceId, Option<Frontend>)>,
    pub addresses_added: Vec<IpAddr>,
    pub addresses_removed: Vec<IpAddr>,
    /// Per family (index 0: IPv4).
    pub helper: [HelperDelta; 2],
}

/// The helper elements a virtual server's winning claim puts in the sets.
pub fn frontend_elements(id: &ServiceId, frontend: &Frontend) -> Vec<Element> {
    let ServiceId::Addr { addr, port, .. } = *id else {
        return Vec::new();
    };
    frontend
        .sets
        .iter()
        .map(|(set, value)| Element {
            set: *set,
            key: Key::Frontend(addr, frontend.protocol, port),
            value: value.clone(),
        })
        .collect()
}

fn shared_element(s: &Shared) -> Option<(IpFamily, Element)> {
    match s {
        Shared::Element(family, set, key) => Some((
            *family,
            Element {
                set: *set,
                key: *key,
                value: Verdict::None,
            },
        )),
        Shared::Address(_) => None,
    }
}

impl Record {
    /// A record of `ports`' wants (nothing applied yet: `kernel` is empty).
    pub fn of(ports: impl IntoIterator<Item = (ServicePortName, PortWants)>) -> Record {
        let mut r = Record::default();
        for (name, wants) in ports {
            r.claim(&name, &wants);
            r.ports.insert(name, wants);
        }
        r
    }

    fn claim(&mut self, name: &ServicePortName, wants: &PortWants) {
        for (id, rank, frontend) in &wants.servers {
            self.servers
                .claim(*id, (*rank, name.clone()), frontend.clone());
        }
        for s in &wants.shared {
            self.shared.claim(s.clone(), (0, name.clone()), ());
        }
        for c in &wants.chains {
            self.chains.insert((c.family, c.name.clone()), c.clone());
        }
    }

    fn release(&mut self, name: &ServicePortName, wants: &PortWants) {
        for (id, rank, _) in &wants.servers {
            self.servers.release(id, &(*rank, name.clone()));
        }
        for s in &wants.shared {
            self.shared.release(s, &(0, name.clone()));
        }
        for c in &wants.chains {
            self.chains.remove(&(c.family, c.name.clone()));
        }
    }

    /// Every helper element the winning claims put in the sets, with its family.
    pub fn elements(&self) -> Vec<(IpFamily, Element)> {
        let mut out: Vec<(IpFamily, Element)> = self
            .servers
            .winners()
            .flat_map(|(id, f)| {
                let family = id.family();
                frontend_elements(id, f)
                    .into_iter()
                    .map(move |e| (family, e))
            })
            .collect();
        out.extend(
            self.shared
                .winners()
                .filter_map(|(s, ())| shared_element(s)),
        );
        out
    }

    /// The VIPs the dummy interface holds.
    pub fn addresses(&self) -> BTreeSet<IpAddr> {
        self.shared
            .winners()
            .filter_map(|(s, ())| match s {
                Shared::Address(ip) => Some(*ip),
                Shared::Element(..) => None,
            })
            .collect()
    }

    /// Replaces the wants of `ports` (`None`: the port is gone) and returns what that
    /// changes in the kernel.
    pub fn replace(&mut self, ports: Vec<(ServicePortName, Option<PortWants>)>) -> Delta {
        let mut server_keys: BTreeSet<ServiceId> = BTreeSet::new();
        let mut shared_keys: BTreeSet<Shared> = BTreeSet::new();
        let mut old_chains: BTreeMap<(IpFamily, String), Chain> = BTreeMap::new();
        let mut new_chains: BTreeMap<(IpFamily, String), Chain> = BTreeMap::new();
        for (name, new) in &ports {
            for c in new.iter().flat_map(|w| &w.chains) {
                new_chains.insert((c.family, c.name.clone()), c.clone());
            }
            for w in self.ports.get(name).into_iter().chain(new) {
                server_keys.extend(w.servers.iter().map(|(id, _, _)| *id));
                shared_keys.extend(w.shared.iter().cloned());
            }
            if let Some(old) = self.ports.get(name) {
                old_chains.extend(
                    old.chains
                        .iter()
                        .map(|c| ((c.family, c.name.clone()), c.clone())),
                );
            }
        }
        let before_servers: Vec<Option<Frontend>> = server_keys
            .iter()
            .map(|k| self.servers.winner(k).cloned())
            .collect();
        let before_shared: Vec<bool> = shared_keys
            .iter()
            .map(|k| self.shared.contains(k))
            .collect();
        for (name, new) in ports {
            if let Some(old) = self.ports.remove(&name) {
                self.release(&name, &old);
            }
            if let Some(new) = new {
                self.claim(&name, &new);
                self.ports.insert(name, new);
            }
        }
        let mut delta = Delta::default();
        for (id, before) in server_keys.iter().zip(before_servers) {
            let after = self.servers.winner(id).cloned();
            if before != after {
                helper_changes(&mut delta, id, before.as_ref(), after.as_ref());
                delta.servers.push((*id, after));
            }
        }
        for (s, before) in shared_keys.iter().zip(before_shared) {
            let after = self.shared.contains(s);
            if before != after {
                shared_change(&mut delta, s, after);
            }
        }
        chain_changes(&mut delta, old_chains, new_chains);
        delta
    }
}

/// Chains of touched ports created or changed (`new`), and those gone (`old` only).
fn chain_changes(
    delta: &mut Delta,
    old: BTreeMap<(IpFamily, String), Chain>,
    new: BTreeMap<(IpFamily, String), Chain>,
) {
    for (key, chain) in &old {
        if !new.contains_key(key) {
            delta.helper[key.0.index()]
                .stale_chains
                .push(chain.name.clone());
        }
    }
    for (key, chain) in new {
        if old.get(&key) != Some(&chain) {
            delta.helper[key.0.index()].chains.push(chain);
        }
    }
}

/// The helper element changes of one virtual server whose winning claim changed.
fn helper_changes(
    delta: &mut Delta,
    id: &ServiceId,
    before: Option<&Frontend>,
    after: Option<&Frontend>,
) {
    let old: Vec<Element> = before.map(|f| frontend_elements(id, f)).unwrap_or_default();
    let new: Vec<Element> = after.map(|f| frontend_elements(id, f)).unwrap_or_default();
    let h = &mut delta.helper[id.family().index()];
    for e in &old {
        match new.iter().find(|n| n.set == e.set) {
            None => h.deletes.push(e.clone()),
            Some(n) if n != e => h.replaced.push(e.clone()),
            Some(_) => {}
        }
    }
    for n in &new {
        if !old.contains(n) {
            h.adds.push(n.clone());
        }
    }
}

fn shared_change(delta: &mut Delta, s: &Shared, present: bool) {
    match (s, present) {
        (Shared::Address(ip), true) => delta.addresses_added.push(*ip),
        (Shared::Address(ip), false) => delta.addresses_removed.push(*ip),
        (Shared::Element(..), _) => {
            let (family, e) = shared_element(s).expect("an element");
            let h = &mut delta.helper[family.index()];
            if present {
                h.adds.push(e);
            } else {
                h.deletes.push(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{helper::SetKind, wants::port_wants};
    use switchyard_model::{
        test_util::{self, ep},
        Protocol,
    };

    fn wants(name: &str, vip: &str, eps: &[&str]) -> (ServicePortName, PortWants) {
        let m = test_util::model(vec![test_util::service(
            name,
            &[vip],
            80,
            eps.iter().map(|e| ep(e, 8080, false)).collect(),
        )]);
        let plan = m.services.values().next().unwrap();
        (plan.name.clone(), port_wants(plan, &[], true))
    }

    #[test]
    fn one_endpoint_more_changes_one_server_and_one_hairpin_pair() {
        let (name, w) = wants("a", "10.96.0.1", &["10.1.0.1"]);
        let mut r = Record::of([(name.clone(), w)]);
        let (_, w2) = wants("a", "10.96.0.1", &["10.1.0.1", "10.1.0.2"]);
        let d = r.replace(vec![(name.clone(), Some(w2))]);
        assert_eq!(d.servers.len(), 1);
        assert!(d.addresses_added.is_empty() && d.addresses_removed.is_empty());
        let h = &d.helper[0];
        assert_eq!(h.adds.len(), 1, "{h:?}");
        assert_eq!(h.adds[0].set, SetKind::Hairpin);
        assert!(h.deletes.is_empty() && h.chains.is_empty());

        let d = r.replace(vec![(name, None)]);
        assert_eq!(
            d.servers,
            [(
                ServiceId::new(Protocol::Tcp, "10.96.0.1".parse().unwrap(), 80),
                None
            )]
        );
        assert_eq!(d.addresses_removed.len(), 1);
        assert_eq!(d.helper[0].deletes.len(), 4, "{:?}", d.helper[0]);
        assert!(r.servers.is_empty() && r.shared.is_empty());
    }

    #[test]
    fn a_shared_address_stays_while_a_port_uses_it() {
        let (a, wa) = wants("a", "10.96.0.1", &["10.1.0.1"]);
        let (b, wb) = wants("b", "10.96.0.1", &["10.1.0.1"]);
        let mut r = Record::of([(a.clone(), wa)]);
        let d = r.replace(vec![(b.clone(), Some(wb))]);
        assert!(d.addresses_added.is_empty(), "{d:?}");
        assert!(d.servers.is_empty(), "same VIP and port: a still wins");
        let d = r.replace(vec![(a, None)]);
        assert!(d.addresses_removed.is_empty());
        assert_eq!(d.servers.len(), 0, "b's claim is the same server");
        assert_eq!(r.addresses().len(), 1);
    }
}
