//! The plan of one service port: everything an engine encodes, decided once, here, with
//! upstream kube-proxy as the reference. Engines turn plans into kernel objects and
//! decide nothing themselves.
//!
//! Per service port there is one [`FamilyPlan`] per IP family the Service has a cluster
//! IP in (upstream runs one proxier per family, each seeing only that family's
//! addresses and endpoints). A family plan says:
//! - where clients send: cluster IPs, external IPs, load-balancer IPs, the NodePort;
//! - where traffic goes: [`Target`]s for internal traffic (to the cluster IPs,
//!   `internalTrafficPolicy` applied) and external traffic (to everything else from
//!   outside the node, `externalTrafficPolicy` applied), plus the cluster-wide backends
//!   that traffic to external destinations from this node's pods and from the node
//!   itself short-circuits to under `externalTrafficPolicy: Local`;
//! - which traffic is masqueraded, which sources the load-balancer IPs accept, and
//!   ClientIP affinity.

use std::{fmt, net::IpAddr, sync::Arc};

use ipnet::IpNet;

use crate::{
    endpoints::{categorize, write_endpoint, Categorized, Endpoint, Uses},
    facts::{ServiceEntry, ServiceEntryPort},
    family::{IpFamily, Protocol},
    name::ServicePortName,
};

/// One backend traffic can be sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
    /// The endpoint runs on this node.
    pub local: bool,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_endpoint(f, self.ip, self.port)
    }
}

/// A non-empty set of backends, sorted by address and port. Shared: the targets of a
/// port that use the same endpoints hold one copy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backends(Arc<[Backend]>);

impl Backends {
    /// `None` for an empty set.
    pub fn new(mut backends: Vec<Backend>) -> Option<Backends> {
        if backends.is_empty() {
            return None;
        }
        backends.sort();
        backends.dedup_by_key(|b| (b.ip, b.port));
        Some(Backends(backends.into()))
    }

    fn of(endpoints: &[&Endpoint]) -> Option<Backends> {
        Backends::new(
            endpoints
                .iter()
                .map(|e| Backend {
                    ip: e.ip,
                    port: e.port,
                    local: e.local,
                })
                .collect(),
        )
    }

    pub fn as_slice(&self) -> &[Backend] {
        &self.0
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Backend> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true (a `Backends` is not empty); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a Backends {
    type Item = &'a Backend;
    type IntoIter = std::slice::Iter<'a, Backend>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Where one class of traffic goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// One of these backends, chosen at random (or by affinity).
    Endpoints(Backends),
    /// Dropped: the service has endpoints, but none this traffic policy may use (a
    /// Local policy without endpoints on this node). The client times out.
    Drop,
    /// Refused (TCP reset, ICMP port unreachable): the service has no usable endpoint
    /// anywhere.
    Reject,
}

impl Target {
    pub fn backends(&self) -> Option<&Backends> {
        match self {
            Target::Endpoints(b) => Some(b),
            Target::Drop | Target::Reject => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Endpoints(b) => {
                for (i, backend) in b.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{backend}")?;
                }
                Ok(())
            }
            Target::Drop => f.write_str("DROP"),
            Target::Reject => f.write_str("REJECT"),
        }
    }
}

/// Which sources of traffic to the cluster IPs are masqueraded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MasqueradeSources {
    /// `masqueradeAll`: every source.
    All,
    /// Sources outside the node's cluster CIDRs (of this family): traffic that does not
    /// come from a pod must reply through this node.
    OutsideClusterCidrs,
    /// None: no cluster CIDR of this family is known (no local-traffic detector), or
    /// one covers every address.
    None,
}

/// Which traffic of the port is masqueraded. Besides these, an endpoint reaching itself
/// through the service (hairpin) is always masqueraded, and under Local external policy
/// traffic from the node itself to an external destination too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Masquerade {
    pub cluster_ips: MasqueradeSources,
    /// Traffic to the external destinations (NodePort, external IPs, LB IPs), from
    /// anywhere: `externalTrafficPolicy: Cluster`. Under Local the client's address is
    /// kept (but see above for the node's own traffic).
    pub external: bool,
}

/// `loadBalancerSourceRanges`: traffic to the load-balancer IPs from other sources is
/// dropped. Traffic to the other destinations of the port is not filtered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Firewall {
    /// This family's source ranges, plus the LB IPs themselves when a range holds a node
    /// IP (upstream: traffic from the node to its own LB IP arrives with the LB IP as
    /// source). Empty when every range is of the other family: nothing is allowed.
    pub allowed: Vec<IpNet>,
}

impl Firewall {
    pub fn allows(&self, source: &IpAddr) -> bool {
        self.allowed.iter().any(|n| n.contains(source))
    }
}

/// The kind of address a client sends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VipKind {
    ClusterIp,
    ExternalIp,
    LoadBalancer,
}

/// A service address and its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vip {
    pub addr: IpAddr,
    pub kind: VipKind,
}

/// What one service port means in one IP family on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyPlan {
    pub family: IpFamily,
    /// Cluster IPs of this family (at least one). The address lists are boxed slices:
    /// a plan per port family lives as long as the model, and a slice is a third
    /// smaller than a `Vec` (no capacity).
    pub cluster_ips: Box<[IpAddr]>,
    pub external_ips: Box<[IpAddr]>,
    pub load_balancer_ips: Box<[IpAddr]>,
    /// The NodePort, on the node's addresses within `nodePortAddresses` (node-wide:
    /// [`crate::NodeModel::node_port_addresses`]), never on loopback.
    pub node_port: Option<u16>,
    /// Traffic to the cluster IPs, from anywhere.
    pub internal: Target,
    /// Traffic to the external destinations from outside the node (and from pods when
    /// no short circuit applies).
    pub external: Target,
    /// `externalTrafficPolicy: Local` with endpoints somewhere: traffic to the external
    /// destinations from this node's pods (sources in the cluster CIDRs, when known)
    /// and from the node itself goes to these cluster-wide backends instead of
    /// `external`, the node's own traffic masqueraded (upstream's short circuit).
    pub short_circuit: Option<Backends>,
    pub masquerade: Masquerade,
    /// Only when the port has load-balancer IPs of this family and the Service source
    /// ranges (rare: boxed, one pointer in every other plan).
    pub firewall: Option<Box<Firewall>>,
    /// `sessionAffinity: ClientIP`: the timeout in seconds.
    pub affinity: Option<u32>,
}

impl FamilyPlan {
    /// Every address clients send to (not the NodePort), with its kind.
    pub fn vips(&self) -> impl Iterator<Item = Vip> + '_ {
        fn of(ips: &[IpAddr], kind: VipKind) -> impl Iterator<Item = Vip> + '_ {
            ips.iter().map(move |&addr| Vip { addr, kind })
        }
        of(&self.cluster_ips, VipKind::ClusterIp)
            .chain(of(&self.external_ips, VipKind::ExternalIp))
            .chain(of(&self.load_balancer_ips, VipKind::LoadBalancer))
    }

    /// External IPs and LB IPs.
    pub fn external_vips(&self) -> impl Iterator<Item = Vip> + '_ {
        self.vips().filter(|v| v.kind != VipKind::ClusterIp)
    }

    /// Reachable from outside the cluster: a NodePort, an external or an LB IP.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// Every backend some traffic of this port can reach, sorted, each once.
    pub fn backends(&self) -> Vec<Backend> {
        let mut all: Vec<Backend> = [&self.internal, &self.external]
            .into_iter()
            .filter_map(Target::backends)
            .chain(&self.short_circuit)
            .flat_map(|b| b.iter().copied())
            .collect();
        all.sort();
        all.dedup_by_key(|b| (b.ip, b.port));
        all
    }

    /// The port has no usable endpoint at all: every destination rejects.
    pub fn rejects(&self) -> bool {
        self.internal == Target::Reject
    }
}

/// The health check node port of a `type: LoadBalancer`, `externalTrafficPolicy:
/// Local` Service (upstream's `NeedsHealthCheck`), answered by the agent for load
/// balancers: healthy while this node has a ready endpoint of the Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub node_port: u16,
    /// Addresses of this port's ready endpoints on this node (both families), sorted.
    /// The server counts distinct addresses over the Service's ports, as upstream.
    pub local_ready_ips: Vec<IpAddr>,
}

/// Everything an engine encodes for one service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortPlan {
    pub name: ServicePortName,
    /// Stable while the port exists (see [`crate::name::PortIds`]).
    pub id: u32,
    pub protocol: Protocol,
    pub port: u16,
    /// One plan per family the Service has a cluster IP in, IPv4 first.
    pub families: Vec<FamilyPlan>,
    pub health_check: Option<HealthCheck>,
}

impl ServicePortPlan {
    pub fn family(&self, family: IpFamily) -> Option<&FamilyPlan> {
        self.families.iter().find(|f| f.family == family)
    }

    /// Backends in every family.
    pub fn endpoint_count(&self) -> usize {
        self.families.iter().map(|f| f.backends().len()).sum()
    }
}

/// The node-wide facts a plan depends on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeContext<'a> {
    pub node_name: &'a str,
    pub zone: &'a str,
    pub node_ips: &'a [IpAddr],
    pub cluster_cidrs: &'a [IpNet],
    pub masquerade_all: bool,
}

impl NodeContext<'_> {
    pub(crate) fn masquerade_sources(&self, family: IpFamily) -> MasqueradeSources {
        let mut cidrs = self.cluster_cidrs.iter().filter(|n| family.has_net(n));
        if self.masquerade_all {
            MasqueradeSources::All
        } else if cidrs.clone().next().is_none() || cidrs.any(|n| n.prefix_len() == 0) {
            MasqueradeSources::None
        } else {
            MasqueradeSources::OutsideClusterCidrs
        }
    }
}

/// One port of one Service, with its endpoints (every family).
pub(crate) struct PortFacts<'a> {
    pub name: ServicePortName,
    pub service: &'a ServiceEntry,
    pub port: &'a ServiceEntryPort,
    pub endpoints: &'a [Endpoint],
}

/// The plan of one service port.
pub(crate) fn plan_port(node: &NodeContext<'_>, facts: &PortFacts<'_>, id: u32) -> ServicePortPlan {
    let mut families: Vec<FamilyPlan> = IpFamily::ALL
        .into_iter()
        .filter_map(|family| plan_family(node, facts, family))
        .collect();
    // A filtered collect starts at capacity 4: three unused family plans (≈ 500 bytes)
    // per port, 26 MiB of a 50k-service model, held for the agent's life.
    families.shrink_to_fit();
    let health_check = health_check(facts);
    ServicePortPlan {
        name: facts.name.clone(),
        id,
        protocol: facts.port.protocol,
        port: facts.port.port,
        families,
        health_check,
    }
}

/// Sources set `healthCheckNodePort` only for what needs one (see [`HealthCheck`]).
fn health_check(facts: &PortFacts<'_>) -> Option<HealthCheck> {
    let node_port = facts.service.health_check_node_port?;
    let mut local_ready_ips: Vec<IpAddr> = facts
        .endpoints
        .iter()
        .filter(|e| e.local && e.ready)
        .map(|e| e.ip)
        .collect();
    local_ready_ips.sort();
    local_ready_ips.dedup();
    Some(HealthCheck {
        node_port,
        local_ready_ips,
    })
}

fn plan_family(
    node: &NodeContext<'_>,
    facts: &PortFacts<'_>,
    family: IpFamily,
) -> Option<FamilyPlan> {
    let svc = facts.service;
    let cluster_ips = family.filter(&svc.cluster_ips);
    if cluster_ips.is_empty() {
        return None;
    }
    let external_ips = family.filter(&svc.external_ips);
    let load_balancer_ips = family.filter(&svc.load_balancer_ips);
    let node_port = facts.port.node_port;
    let externally =
        node_port.is_some() || !external_ips.is_empty() || !load_balancer_ips.is_empty();
    let internal_local = svc.internal_policy_local;
    let external_local = svc.external_policy_local && externally;
    let uses = Uses {
        cluster: !internal_local || externally,
        local: internal_local || external_local,
    };
    let endpoints: Vec<&Endpoint> = facts
        .endpoints
        .iter()
        .filter(|e| family.has(&e.ip))
        .collect();
    let sets = categorize(&endpoints, uses, node.node_name, node.zone);
    let (internal, external, short_circuit) = targets(&sets, internal_local, external_local);
    let firewall = firewall(node, svc, family, &load_balancer_ips);
    Some(FamilyPlan {
        family,
        cluster_ips: cluster_ips.into(),
        external_ips: external_ips.into(),
        load_balancer_ips: load_balancer_ips.into(),
        node_port,
        internal,
        external,
        short_circuit,
        masquerade: Masquerade {
            cluster_ips: node.masquerade_sources(family),
            external: !external_local,
        },
        firewall,
        affinity: svc.affinity_timeout,
    })
}

/// Upstream's `hasEndpoints`, `hasInternalEndpoints` and `hasExternalEndpoints` as
/// targets: no endpoint anywhere rejects; a Local policy without endpoints here drops.
fn targets(
    sets: &Categorized<'_>,
    internal_local: bool,
    external_local: bool,
) -> (Target, Target, Option<Backends>) {
    if !sets.any {
        return (Target::Reject, Target::Reject, None);
    }
    let cluster = Backends::of(&sets.cluster);
    let local = Backends::of(&sets.local);
    let pick = |is_local: bool| {
        let chosen = if is_local { &local } else { &cluster };
        chosen.clone().map_or(Target::Drop, Target::Endpoints)
    };
    let short_circuit = if external_local {
        cluster.clone()
    } else {
        None
    };
    (pick(internal_local), pick(external_local), short_circuit)
}

fn firewall(
    node: &NodeContext<'_>,
    svc: &ServiceEntry,
    family: IpFamily,
    load_balancer_ips: &[IpAddr],
) -> Option<Box<Firewall>> {
    if load_balancer_ips.is_empty() || svc.load_balancer_source_ranges.is_empty() {
        return None;
    }
    let ranges = family.filter_nets(&svc.load_balancer_source_ranges);
    let node_in_range = ranges
        .iter()
        .any(|r| node.node_ips.iter().any(|ip| r.contains(ip)));
    let mut allowed = ranges;
    if node_in_range {
        allowed.extend(load_balancer_ips.iter().map(|ip| IpNet::from(*ip)));
    }
    allowed.sort();
    allowed.dedup();
    Some(Box::new(Firewall { allowed }))
}
