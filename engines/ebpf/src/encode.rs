//! A service port's plan, one family at a time, as dataplane content ([`ServicePort`]):
//! which keys exist in which scope and where each leads. The plan decided everything;
//! this module only chooses the encoding:
//!
//! | destination | socket scope (processes on the node) | tc scope (from outside the node) |
//! |---|---|---|
//! | cluster IPs | `internal` | — (as Cilium: not reachable from outside) |
//! | external IPs, LB IPs | `short_circuit`, else `external` | `external`, masquerade and source ranges from the plan |
//! | NodePort on the node's addresses | `short_circuit`, else `external` | `external`, masquerade from the plan |
//!
//! The socket scope is every process on the node, host and pods alike, and it
//! translates at connect time: nothing is NATed, so the plan's masquerade does not apply
//! there (a backend sees the client's own address), and neither do source ranges
//! (Cilium's "LoadBalancer Source Ranges Checks": in-cluster clients are not filtered).
//!
//! Backend sets are shared: a target whose backends equal another's points at that set,
//! so a NodePort under `externalTrafficPolicy: Cluster` stores its backends once.
//!
//! Each family of a port may live at one of two ids, derived from the plan's stable id
//! (see [`crate::Dataplane::place`]).
//!
//! A service IP that is also a node address, on a port that is another service's
//! NodePort, makes the same key twice: the service IP wins, as upstream looks service
//! IPs up before NodePorts ([`Shadows`]).

use std::{collections::BTreeMap, net::IpAddr};

use switchyard_model::{
    Backends, FamilyPlan, IpFamily, Protocol, ServicePortPlan, Target, VipKind,
};

use crate::{
    dataplane::ServicePort,
    service::{Action, Backend, Scope, ServiceEntry, ServiceKey, TargetSet},
};

/// The second bank of ids (see [`crate::Dataplane::place`]).
const ALT_BANK: u32 = 1 << 30;

/// The two ids one family of the port with stable id `id` may live at.
pub fn candidates(id: u32, family: IpFamily) -> [u32; 2] {
    let base = (id << 1) | family.index() as u32;
    [base, base | ALT_BANK]
}

/// Where entries of one target lead.
#[derive(Clone, Copy)]
struct Lead {
    action: Action,
    target: TargetSet,
}

/// The port's backend sets as they are stored, and where each of its targets leads.
struct Sets<'a> {
    stored: Vec<(TargetSet, &'a Backends)>,
}

impl<'a> Sets<'a> {
    /// Where `target` leads; its backends are stored as `set` unless an equal set is.
    fn lead(&mut self, set: TargetSet, target: &'a Target) -> Lead {
        match target {
            Target::Endpoints(b) => Lead {
                action: Action::Forward,
                target: self.store(set, b),
            },
            Target::Drop => Lead {
                action: Action::Drop,
                target: set,
            },
            Target::Reject => Lead {
                action: Action::Reject,
                target: set,
            },
        }
    }

    /// Stores `backends` as `set` unless an equal set is stored already; the set used.
    fn store(&mut self, set: TargetSet, backends: &'a Backends) -> TargetSet {
        if let Some((existing, _)) = self.stored.iter().find(|(_, b)| *b == backends) {
            return *existing;
        }
        self.stored.push((set, backends));
        set
    }
}

/// Service IPs (address, port, protocol) on the node's NodePort addresses, counted:
/// a NodePort entry with one of these keys is left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shadows {
    count: BTreeMap<(IpAddr, u16, Protocol), usize>,
}

impl Shadows {
    /// The service-IP keys of `plan` that are node addresses.
    fn keys_of<'a>(
        plan: &'a ServicePortPlan,
        node_ports: &'a [IpAddr],
    ) -> impl Iterator<Item = (IpAddr, u16, Protocol)> + 'a {
        plan.families
            .iter()
            .flat_map(|f| f.vips())
            .filter(|v| node_ports.contains(&v.addr))
            .map(|v| (v.addr, plan.port, plan.protocol))
    }

    /// Counts `plan`'s keys in; returns the keys that appeared.
    pub fn add(&mut self, plan: &ServicePortPlan, node_ports: &[IpAddr]) -> Vec<(u16, Protocol)> {
        let mut appeared = Vec::new();
        for k in Shadows::keys_of(plan, node_ports) {
            let n = self.count.entry(k).or_default();
            *n += 1;
            if *n == 1 {
                appeared.push((k.1, k.2));
            }
        }
        appeared
    }

    /// Counts `plan`'s keys out; returns the keys that disappeared.
    pub fn remove(
        &mut self,
        plan: &ServicePortPlan,
        node_ports: &[IpAddr],
    ) -> Vec<(u16, Protocol)> {
        let mut gone = Vec::new();
        for k in Shadows::keys_of(plan, node_ports) {
            if let Some(n) = self.count.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.count.remove(&k);
                    gone.push((k.1, k.2));
                }
            }
        }
        gone
    }

    pub fn hides(&self, ip: IpAddr, port: u16, protocol: Protocol) -> bool {
        self.count.contains_key(&(ip, port, protocol))
    }
}

/// One family of a plan as dataplane content, at `id` (see [`renumber`]). `node_ports`
/// are the node's addresses serving NodePorts (any family; only this family's are used,
/// except where a service IP `shadows` them).
pub fn encode_family(
    plan: &ServicePortPlan,
    fam: &FamilyPlan,
    node_ports: &[IpAddr],
    shadows: &Shadows,
    id: u32,
) -> ServicePort {
    let mut sets = Sets { stored: Vec::new() };
    let internal = sets.lead(TargetSet::Internal, &fam.internal);
    let external = sets.lead(TargetSet::External, &fam.external);
    let from_node = match &fam.short_circuit {
        Some(b) => Lead {
            action: Action::Forward,
            target: sets.store(TargetSet::ShortCircuit, b),
        },
        None => external,
    };
    let mut sp = ServicePort {
        id,
        ..ServicePort::default()
    };
    let entry = |lead: Lead, masquerade: bool, source_ranges: bool| ServiceEntry {
        id,
        action: lead.action,
        target: lead.target,
        masquerade,
        source_ranges,
        affinity_timeout: fam.affinity,
    };
    let key = |vip: IpAddr, port: u16, scope: Scope| ServiceKey {
        vip,
        port,
        protocol: plan.protocol,
        scope,
    };
    for ip in &fam.cluster_ips {
        sp.entries.insert(
            key(*ip, plan.port, Scope::Node),
            entry(internal, false, false),
        );
    }
    let masquerade = fam.masquerade.external;
    for vip in fam.external_vips() {
        let ranges = vip.kind == VipKind::LoadBalancer && fam.firewall.is_some();
        sp.entries.insert(
            key(vip.addr, plan.port, Scope::Node),
            entry(from_node, false, false),
        );
        sp.entries.insert(
            key(vip.addr, plan.port, Scope::External),
            entry(external, masquerade, ranges),
        );
    }
    if let Some(node_port) = fam.node_port {
        let served = node_ports
            .iter()
            .filter(|ip| fam.family.has(ip) && !shadows.hides(**ip, node_port, plan.protocol));
        for ip in served {
            sp.entries.insert(
                key(*ip, node_port, Scope::Node),
                entry(from_node, false, false),
            );
            sp.entries.insert(
                key(*ip, node_port, Scope::External),
                entry(external, masquerade, false),
            );
        }
    }
    if let Some(fw) = &fam.firewall {
        sp.source_ranges = fw
            .allowed
            .iter()
            .map(|net| (net.network(), net.prefix_len()))
            .collect();
    }
    for (set, backends) in sets.stored {
        sp.sets.insert(
            set,
            backends
                .iter()
                .map(|b| Backend {
                    addr: (b.ip, b.port).into(),
                    local: b.local,
                })
                .collect(),
        );
    }
    sp
}

/// Moves content to another id (once placed, see [`crate::Dataplane::place`]).
pub fn renumber(sp: &mut ServicePort, id: u32) {
    sp.id = id;
    for entry in sp.entries.values_mut() {
        entry.id = id;
    }
}
