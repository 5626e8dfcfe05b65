//! One service port's plan, in one family, encoded as nftables objects: its chains with
//! their rules, its affinity sets and its map elements, as data. Nothing here decides
//! Service semantics: the plan's targets, masquerade, firewall and affinity say what to
//! encode (upstream kube-proxy's nftables layout, minus per-endpoint chains):
//!
//! - one backend chain per distinct set of backends the plan's targets use (`svc-H` for
//!   internal traffic's, `local-H` for a second set — the node's own endpoints under an
//!   external Local policy): affinity checks, then the random choice and its DNAT;
//! - `ext-H`: entry for NodePort, external IP and LB IP traffic: masquerade marking
//!   and the Local policy's short circuit, then the external target;
//! - `fw-H` (main table): the LB source ranges;
//! - map elements: `service-ips` / `service-nodeports` to the chains,
//!   `no-endpoint-services` / `no-endpoint-nodeports` for Drop and Reject targets,
//!   `firewall-ips`, `cluster-ips`, a `hairpin` pair per backend, and the port's
//!   `port-digests` element (the digest of all of the above, see `digest`);
//! - `aff-E-T`: one dynamic set per backend (ClientIP affinity only).
//!
//! The random choice is one rule, `meta l4proto P dnat to numgen random mod N offset O
//! map @backends-C`: the chain's endpoints are the keys `O .. O + N` of one of the
//! shard's backend maps (`ruleset::BACKEND_MAPS`; the slot `O` and the map `C` come from
//! the chain name's digest). Not upstream's `numgen random mod N vmap { ... }` with a
//! chain per endpoint: the kernel creates anonymous maps, and binds rules to a shared
//! named map, in quadratic time (8000 anonymous maps: 12 s), and each rule expression
//! costs a lookup of its type by name. A chain falls back to a cascade, rule `i` of `N`
//! being `numgen random mod (N - i) == 0 meta l4proto P dnat to EP-i` (uniform, like
//! iptables' `statistic`), under ClientIP affinity (each endpoint's rule also updates its
//! affinity set), above [`MAPPED_BACKENDS_MAX`] endpoints, or when another chain holds
//! its slot (a 30-bit hash collision; the [`SlotBook`] says). One endpoint is one DNAT.

use std::{collections::HashMap, net::IpAddr};

use ipnet::IpNet;
use switchyard_model::{Backend, Backends, FamilyPlan, ServicePortName, ServicePortPlan, Target};

use crate::{
    digest,
    element::{Element, ElementKey, ObjectRef, Verdict},
    record::{FamilyRecord, MappedRange, PortObjects},
    rule::{Action, Match, Rule},
    ruleset::{
        backend_map_name, collapse, BackendSlot, Family, MapKind, PortChains, CLUSTER_CIDRS_SET,
        MAPPED_BACKENDS_MAX,
    },
};

/// Who holds the backend-map slots, asked before a chain takes one: the record of what
/// the kernel holds (if known), minus the ports a transaction rewrites, plus what this
/// transaction's ports took already.
pub struct SlotBook<'a> {
    record: Option<&'a FamilyRecord>,
    released: &'a dyn Fn(&ServicePortName) -> bool,
    taken: HashMap<(usize, BackendSlot), [u8; 8]>,
}

impl<'a> SlotBook<'a> {
    /// Slots as `record` holds them (a port keeps its own).
    pub fn new(record: Option<&'a FamilyRecord>) -> SlotBook<'a> {
        SlotBook::releasing(record, &|_| false)
    }

    /// Slots as `record` holds them, but those of the ports `released` names.
    pub fn releasing(
        record: Option<&'a FamilyRecord>,
        released: &'a dyn Fn(&ServicePortName) -> bool,
    ) -> SlotBook<'a> {
        SlotBook {
            record,
            released,
            taken: HashMap::new(),
        }
    }

    /// Takes `slot` of `table` for the port `name` (whose id is `id`), unless someone
    /// else holds it.
    fn claim(
        &mut self,
        table: usize,
        slot: BackendSlot,
        name: &ServicePortName,
        id: [u8; 8],
    ) -> bool {
        if self.taken.contains_key(&(table, slot)) {
            return false;
        }
        let held = self
            .record
            .and_then(|r| r.slot_holder(table, slot))
            .is_some_and(|holder| holder != name && !(self.released)(holder));
        if held {
            return false;
        }
        self.taken.insert((table, slot), id);
        true
    }
}

/// The address of a backend-map value (`addr . port`, as [`Mapped::elements`] writes it).
pub fn mapped_address(family: Family, value: &[u8]) -> Option<IpAddr> {
    match family {
        Family::Ip => <[u8; 4]>::try_from(value.get(..4)?).ok().map(IpAddr::from),
        Family::Ip6 => <[u8; 16]>::try_from(value.get(..16)?)
            .ok()
            .map(IpAddr::from),
    }
}

/// The endpoints of a backend chain in a backend map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub range: MappedRange,
    /// Address and port per key, from the range's offset on.
    pub targets: Vec<(IpAddr, u16)>,
}

impl Mapped {
    /// The elements as the map holds them: key and value bytes.
    pub fn elements(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.range
            .keys()
            .zip(&self.targets)
            .map(|(key, (ip, port))| {
                let mut value = crate::rule::ip_bytes(ip);
                let [a, b] = port.to_be_bytes();
                value.extend_from_slice(&[a, b, 0, 0]);
                (key, value)
            })
            .collect()
    }

    /// The elements as nft text (`KEY : ADDR . PORT`).
    pub fn texts(&self) -> impl Iterator<Item = String> + '_ {
        (self.range.offset..)
            .zip(&self.targets)
            .map(|(key, (ip, port))| format!("{key} : {ip} . {port}"))
    }
}

/// The node-wide facts of one family the per-port encoding needs.
#[derive(Clone, Copy, Debug)]
pub struct FamilyCtx {
    pub family: Family,
    /// The family has cluster CIDRs (the `cluster-cidrs` set is not empty): pod traffic
    /// can be told apart.
    pub pod_detector: bool,
}

/// Everything one service port owns in one family, as data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRules {
    pub chains: Vec<(ObjectRef, Vec<Rule>)>,
    /// Affinity sets with their timeouts.
    pub sets: Vec<(ObjectRef, u32)>,
    pub elements: Vec<Element>,
    /// Backend chains' endpoints in backend maps.
    pub mapped: Vec<Mapped>,
}

impl PortRules {
    /// What the record keeps of it.
    pub fn objects(&self) -> PortObjects {
        PortObjects {
            chains: self
                .chains
                .iter()
                .map(|(c, rules)| (c.clone(), rules.len()))
                .collect(),
            sets: self.sets.iter().map(|(s, _)| s.clone()).collect(),
            elements: self.elements.clone(),
            mapped: self.mapped.iter().map(|m| m.range).collect(),
        }
    }

    fn element(&mut self, kind: MapKind, key: ElementKey, value: Verdict) {
        // An address can be both an external and an LB IP: one element per key.
        if !self.elements.iter().any(|e| e.kind == kind && e.key == key) {
            self.elements.push(Element { kind, key, value });
        }
    }
}

/// The chains load-balancing over each distinct set of backends the targets use.
struct BackendChains {
    sets: Vec<(Backends, ObjectRef)>,
}

impl BackendChains {
    fn new(names: &PortChains, f: &FamilyPlan) -> BackendChains {
        let wanted = [
            f.internal.backends(),
            f.short_circuit.as_ref(),
            f.external.backends(),
        ];
        let mut sets: Vec<(Backends, ObjectRef)> = Vec::new();
        for backends in wanted.into_iter().flatten() {
            if !sets.iter().any(|(b, _)| b == backends) {
                let chain = match sets.len() {
                    0 => names.service(),
                    1 => names.local(),
                    _ => names.alternate(),
                };
                sets.push((backends.clone(), chain));
            }
        }
        BackendChains { sets }
    }

    fn chain(&self, backends: &Backends) -> &ObjectRef {
        &self
            .sets
            .iter()
            .find(|(b, _)| b == backends)
            .expect("every target's backends have a chain")
            .1
    }

    /// Where a target sends packets: its backend chain, or the no-endpoint verdict.
    fn verdict(&self, target: &Target) -> Verdict {
        match target {
            Target::Endpoints(b) => Verdict::Goto(self.chain(b).clone()),
            Target::Drop => Verdict::Drop,
            Target::Reject => Verdict::reject(),
        }
    }
}

/// Encodes `plan` for `ctx.family`; empty when the port has no plan in this family.
pub fn encode_port(ctx: &FamilyCtx, plan: &ServicePortPlan, slots: &mut SlotBook) -> PortRules {
    let mut out = PortRules::default();
    let Some(f) = plan.family(ctx.family.ip_family()) else {
        return out;
    };
    let names = PortChains::new(&plan.name);
    let chains = BackendChains::new(&names, f);
    cluster_ip_elements(plan, f, &chains, &mut out);
    let entry = external_entry(ctx, &names, f, &chains, &mut out);
    external_elements(plan, f, &chains, entry.as_ref(), &mut out);
    if let Some(fw) = &f.firewall {
        firewall(ctx, plan, f, &names, &fw.allowed, &mut out);
    }
    backend_chains(plan, f, &names, &chains, slots, &mut out);
    let digest = digest::port(ctx.family, &out);
    out.elements
        .push(digest::element(names.id(), digest, Some(names.base())));
    out
}

/// Cluster IPs: the internal target in `service-ips` (or a no-endpoint verdict), and
/// each address in `cluster-ips` (traffic to its other ports is rejected).
fn cluster_ip_elements(
    plan: &ServicePortPlan,
    f: &FamilyPlan,
    chains: &BackendChains,
    out: &mut PortRules,
) {
    let verdict = chains.verdict(&f.internal);
    let map = match f.internal {
        Target::Endpoints(_) => MapKind::ServiceIps,
        Target::Drop | Target::Reject => MapKind::NoEndpointServices,
    };
    for ip in &f.cluster_ips {
        out.element(MapKind::ClusterIps, ElementKey::Addr(*ip), Verdict::None);
        let key = ElementKey::Vip(*ip, plan.protocol, plan.port);
        out.element(map, key, verdict.clone());
    }
}

/// External IPs, LB IPs and the NodePort: to the entry chain when there is one, and a
/// no-endpoint verdict when outside traffic has no backend.
fn external_elements(
    plan: &ServicePortPlan,
    f: &FamilyPlan,
    chains: &BackendChains,
    entry: Option<&ObjectRef>,
    out: &mut PortRules,
) {
    let no_backend = match f.external {
        Target::Endpoints(_) => None,
        Target::Drop | Target::Reject => Some(chains.verdict(&f.external)),
    };
    for vip in f.external_vips() {
        let key = ElementKey::Vip(vip.addr, plan.protocol, plan.port);
        if let Some(entry) = entry {
            out.element(MapKind::ServiceIps, key, Verdict::Goto(entry.clone()));
        }
        if let Some(v) = &no_backend {
            out.element(MapKind::NoEndpointServices, key, v.clone());
        }
    }
    if let Some(node_port) = f.node_port {
        let key = ElementKey::NodePort(plan.protocol, node_port);
        if let Some(entry) = entry {
            out.element(MapKind::ServiceNodePorts, key, Verdict::Goto(entry.clone()));
        }
        if let Some(v) = no_backend {
            out.element(MapKind::NoEndpointNodePorts, key, v);
        }
    }
}

/// The `ext-H` chain, when outside traffic is handled at all (the port is reachable
/// from outside and has endpoints somewhere): masquerade marking, the short circuit,
/// then the external target. Without backends for outside traffic it falls through
/// to the no-endpoint check (Drop).
fn external_entry(
    ctx: &FamilyCtx,
    names: &PortChains,
    f: &FamilyPlan,
    chains: &BackendChains,
    out: &mut PortRules,
) -> Option<ObjectRef> {
    if !f.externally_accessible() || f.rejects() {
        return None;
    }
    let entry = names.external();
    let mut rules = Vec::new();
    if f.masquerade.external {
        rules.push(Rule::mark(vec![]));
    } else {
        if let (Some(sc), true) = (&f.short_circuit, ctx.pod_detector) {
            // Pod traffic to an external address goes to the cluster-wide backends.
            rules.push(Rule::new(
                vec![Match::SaddrIn {
                    set: CLUSTER_CIDRS_SET.to_string(),
                    negate: false,
                }],
                Action::Goto(chains.chain(sc).name.to_string()),
            ));
        }
        // The node's own traffic: its source is a local address, so masquerade it, and
        // send it to the cluster-wide backends.
        rules.push(Rule::mark(vec![Match::FibSaddrLocal]));
        if let Some(sc) = &f.short_circuit {
            rules.push(Rule::new(
                vec![Match::FibSaddrLocal],
                Action::Goto(chains.chain(sc).name.to_string()),
            ));
        }
    }
    if let Target::Endpoints(b) = &f.external {
        rules.push(Rule::new(
            vec![],
            Action::Goto(chains.chain(b).name.to_string()),
        ));
    }
    out.chains.push((entry.clone(), rules));
    Some(entry)
}

/// `fw-H`: traffic to the LB IPs from the allowed sources returns (and goes on to the
/// nat chains), the rest is dropped. One rule per source rather than an anonymous set:
/// the kernel creates anonymous sets in quadratic time.
fn firewall(
    ctx: &FamilyCtx,
    plan: &ServicePortPlan,
    f: &FamilyPlan,
    names: &PortChains,
    allowed: &[IpNet],
    out: &mut PortRules,
) {
    let chain = names.firewall();
    for ip in &f.load_balancer_ips {
        let key = ElementKey::Vip(*ip, plan.protocol, plan.port);
        out.element(MapKind::FirewallIps, key, Verdict::Goto(chain.clone()));
    }
    let mut rules: Vec<Rule> = collapse(allowed.iter().copied().filter(|n| ctx.family.has_net(n)))
        .into_iter()
        .map(|net| Rule::new(vec![Match::SaddrNet(net)], Action::Return))
        .collect();
    rules.push(Rule::new(vec![], Action::Drop));
    out.chains.push((chain, rules));
}

/// The backend chains, their hairpin elements and affinity sets.
fn backend_chains(
    plan: &ServicePortPlan,
    f: &FamilyPlan,
    names: &PortChains,
    chains: &BackendChains,
    slots: &mut SlotBook,
    out: &mut PortRules,
) {
    for b in f.backends() {
        out.element(
            MapKind::Hairpin,
            ElementKey::Pair(b.ip, b.ip),
            Verdict::None,
        );
    }
    let affinity_set = |b: &Backend| {
        f.affinity.map(|timeout| {
            // A changed timeout is a new set: nft cannot change a set's timeout.
            let set = names.affinity(b);
            let name = format!("{}-{timeout}", set.name);
            (ObjectRef::new(set.table, name), timeout)
        })
    };
    if f.affinity.is_some() {
        for b in f.backends() {
            if let Some(set) = affinity_set(&b) {
                out.sets.push(set);
            }
        }
    }
    for (index, (backends, chain)) in chains.sets.iter().enumerate() {
        let dnat = |b: &Backend| Action::Dnat {
            affinity: affinity_set(b).map(|(s, _)| s.name.to_string()),
            protocol: plan.protocol,
            ip: b.ip,
            port: b.port,
        };
        let mut rules = Vec::new();
        for b in backends {
            if let Some((set, _)) = affinity_set(b) {
                rules.push(Rule::new(
                    vec![Match::SaddrIn {
                        set: set.name.to_string(),
                        negate: false,
                    }],
                    dnat(b),
                ));
            }
        }
        let n = backends.len();
        let table = names.table();
        let slot = names.backend_slot(index);
        if f.affinity.is_none()
            && (2..=MAPPED_BACKENDS_MAX).contains(&n)
            && slots.claim(table, slot, &plan.name, names.id())
        {
            rules.push(Rule::new(
                vec![],
                Action::DnatMapped {
                    protocol: plan.protocol,
                    map: backend_map_name(slot.chunk),
                    modulus: n as u32,
                    offset: slot.offset,
                },
            ));
            out.mapped.push(Mapped {
                range: MappedRange {
                    table: table as u8,
                    chunk: slot.chunk,
                    offset: slot.offset,
                    count: n as u32,
                },
                targets: backends.iter().map(|b| (b.ip, b.port)).collect(),
            });
            out.chains.push((chain.clone(), rules));
            continue;
        }
        for (i, b) in backends.iter().enumerate() {
            let matches = if i + 1 < n {
                vec![Match::Random((n - i) as u32)]
            } else {
                vec![]
            };
            rules.push(Rule::new(matches, dnat(b)));
        }
        out.chains.push((chain.clone(), rules));
    }
}

#[cfg(test)]
mod tests {
    use switchyard_model::test_util::{ep, model, service};

    use super::*;
    use crate::ruleset::backend_map_name;

    fn plan(affinity: Option<u32>) -> ServicePortPlan {
        let mut s = service(
            "web",
            &["172.16.0.10"],
            80,
            vec![
                ep("10.0.0.1", 8080, true),
                ep("10.0.0.2", 8080, false),
                ep("10.0.0.3", 8080, false),
            ],
        );
        s.affinity_timeout = affinity;
        let m = model(vec![s]);
        m.services.values().next().expect("one port").clone()
    }

    const CTX: FamilyCtx = FamilyCtx {
        family: Family::Ip,
        pod_detector: true,
    };

    fn backend_rules(rules: &PortRules) -> &[Rule] {
        &rules
            .chains
            .iter()
            .find(|(c, _)| c.name.starts_with("svc-"))
            .expect("a service chain")
            .1
    }

    #[test]
    fn a_chain_picks_among_its_keys_of_a_backend_map() {
        let plan = plan(None);
        let rules = encode_port(&CTX, &plan, &mut SlotBook::new(None));
        let slot = PortChains::new(&plan.name).backend_slot(0);
        assert_eq!(
            backend_rules(&rules),
            &[Rule::new(
                vec![],
                Action::DnatMapped {
                    protocol: plan.protocol,
                    map: backend_map_name(slot.chunk),
                    modulus: 3,
                    offset: slot.offset,
                }
            )]
        );
        let [m] = &rules.mapped[..] else {
            panic!("one mapped chain: {:?}", rules.mapped)
        };
        assert_eq!((m.range.offset, m.range.count), (slot.offset, 3));
        let keys: Vec<Vec<u8>> = m.elements().into_iter().map(|(k, _)| k).collect();
        let want: Vec<Vec<u8>> = (0..3)
            .map(|i| (slot.offset + i).to_ne_bytes().to_vec())
            .collect();
        assert_eq!(keys, want);
        let (_, value) = &m.elements()[0];
        assert_eq!(mapped_address(Family::Ip, value), Some(m.targets[0].0));
        assert_eq!(value[4..], [0x1f, 0x90, 0, 0], "port 8080, padded");
    }

    #[test]
    fn a_slot_another_port_holds_falls_back_to_the_cascade() {
        let plan = plan(None);
        let names = PortChains::new(&plan.name);
        let slot = names.backend_slot(0);
        let mut record = FamilyRecord::default();
        let other = switchyard_model::test_util::spn("default", "other", "http");
        record.insert_port(
            &other,
            PortObjects {
                mapped: vec![MappedRange {
                    table: names.table() as u8,
                    chunk: slot.chunk,
                    offset: slot.offset,
                    count: 2,
                }],
                ..PortObjects::default()
            },
        );
        let held = encode_port(&CTX, &plan, &mut SlotBook::new(Some(&record)));
        assert!(held.mapped.is_empty());
        let rules = backend_rules(&held);
        assert_eq!(rules.len(), 3);
        assert!(rules
            .iter()
            .all(|r| matches!(r.action, Action::Dnat { .. })));
        // The holder is rewritten in the same transaction: the slot is free.
        let released = |n: &ServicePortName| *n == other;
        let freed = encode_port(
            &CTX,
            &plan,
            &mut SlotBook::releasing(Some(&record), &released),
        );
        assert_eq!(freed.mapped.len(), 1);
        // The port's own slot in the record is its own.
        let mut own = FamilyRecord::default();
        own.insert_port(&plan.name, freed.objects());
        let again = encode_port(&CTX, &plan, &mut SlotBook::new(Some(&own)));
        assert_eq!(again, freed);
    }

    #[test]
    fn affinity_keeps_a_rule_per_endpoint() {
        let rules = encode_port(&CTX, &plan(Some(300)), &mut SlotBook::new(None));
        assert!(rules.mapped.is_empty());
        // Three affinity checks, then the three-rule cascade.
        assert_eq!(backend_rules(&rules).len(), 6);
    }
}
