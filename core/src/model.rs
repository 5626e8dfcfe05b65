//! `NodeModel`: for every service port, what it means on this node — its VIPs, its
//! NodePort, which endpoints serve it — derived purely from `ClusterState`, the node's
//! identity and the effective config. Engines render this and never re-derive it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use switchyard_crd::EffectiveConfig;

use crate::{
    changes::ChangeSet,
    state::{ClusterState, ServiceEntry, ServiceKey, SliceEntry},
};

/// The label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The Node label naming its zone, matched against EndpointSlice zone hints.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Lower-case name as the kernel tools spell it (`tcp`, `udp`, `sctp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> IpFamily {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    pub fn of_net(net: &IpNet) -> IpFamily {
        IpFamily::of(&net.addr())
    }
}

/// `namespace/name:port/protocol` — the identity of one service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// The port's `name` (empty for a single unnamed port).
    pub port: String,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}:{}/{}",
            self.namespace, self.name, self.port, self.protocol
        )
    }
}

/// One backend of a service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// The endpoint runs on this node.
    pub local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Topology hints from the EndpointSlice (`hints.forZones`, `hints.forNodes`).
    pub zone_hints: Vec<String>,
    pub node_hints: Vec<String>,
}

impl Endpoint {
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.ip)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

/// What one service port means on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: ServicePortName,
    pub protocol: Protocol,
    pub port: u16,
    pub cluster_ips: Vec<IpAddr>,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `externalTrafficPolicy: Local` (only meaningful for externally reachable ports).
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
    pub health_check_node_port: Option<u16>,
    /// Endpoints for traffic handled with Cluster semantics, sorted.
    pub cluster_endpoints: Vec<Endpoint>,
    /// Endpoints on this node, for Local traffic policies, sorted.
    pub local_endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// Whether traffic from outside the cluster can reach this port by a NodePort, an
    /// external IP or a load-balancer IP.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// Endpoints for traffic to the cluster IPs (internal traffic policy applied).
    pub fn internal_endpoints(&self) -> &[Endpoint] {
        if self.internal_policy_local {
            &self.local_endpoints
        } else {
            &self.cluster_endpoints
        }
    }

    /// Endpoints for traffic to NodePorts, external IPs and LB IPs.
    pub fn external_endpoints(&self) -> &[Endpoint] {
        if self.external_policy_local {
            &self.local_endpoints
        } else {
            &self.cluster_endpoints
        }
    }

    /// All VIPs (cluster, external, load balancer) of one family.
    pub fn vips(&self, family: IpFamily) -> impl Iterator<Item = &IpAddr> {
        self.cluster_ips
            .iter()
            .chain(&self.external_ips)
            .chain(&self.load_balancer_ips)
            .filter(move |ip| IpFamily::of(ip) == family)
    }

    /// Whether the service has any address in this family.
    pub fn has_family(&self, family: IpFamily) -> bool {
        self.cluster_ips.iter().any(|ip| IpFamily::of(ip) == family)
    }
}

/// Everything an engine needs to program this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeModel {
    pub node_name: String,
    /// The node's primary InternalIPs (one per family), from its Node object.
    pub node_ips: Vec<IpAddr>,
    /// Destination addresses that accept NodePort traffic (CIDRs; a primary node IP
    /// is a host-length prefix). Engines also require the address to be local.
    pub node_port_addresses: Vec<IpNet>,
    /// Pod CIDRs; traffic from outside them to a cluster IP is masqueraded. Empty: no
    /// local-traffic detector.
    pub cluster_cidrs: Vec<IpNet>,
    pub masquerade_all: bool,
    pub services: BTreeMap<ServicePortName, ServicePort>,
}

impl NodeModel {
    /// Builds the model for `node_name` from the state and config. Objects in `state`
    /// have been validated by their source; anything still unusable is left out.
    pub fn build(state: &ClusterState, node_name: &str, config: &EffectiveConfig) -> NodeModel {
        let node = state.node(node_name);
        let node_ips = node.map(primary_node_ips).unwrap_or_default();
        let zone = node_zone(state, node_name);
        let mut node_port_addresses: Vec<IpNet> = config.node_port_cidrs.clone();
        if config.node_port_primary || config.node_port_cidrs.is_empty() {
            node_port_addresses.extend(node_ips.iter().map(|ip| IpNet::from(*ip)));
        }
        node_port_addresses.sort();
        node_port_addresses.dedup();

        // Collected at once, the map is built with full nodes (inserting one by one in
        // order leaves them half empty).
        let services: BTreeMap<ServicePortName, ServicePort> = state
            .services()
            .flat_map(|(ns, name, svc)| {
                let slices: Vec<&SliceEntry> = state.slices_of(ns, name).collect();
                service_ports(ns, name, svc, &slices, node_name, zone)
            })
            .map(|sp| (sp.name.clone(), sp))
            .collect();

        NodeModel {
            node_name: node_name.to_string(),
            node_ips,
            node_port_addresses,
            cluster_cidrs: config.cluster_cidrs.clone(),
            masquerade_all: config.masquerade_all,
            services,
        }
    }

    /// Recomputes only `services` (namespace, name) from `state`, in place, and returns
    /// what changed — the cheap path for the common case of a few Services or
    /// EndpointSlices changing. Node-wide changes need [`NodeModel::build`].
    pub fn update_services(
        &mut self,
        state: &ClusterState,
        services: &BTreeSet<ServiceKey>,
    ) -> ChangeSet {
        let zone = node_zone(state, &self.node_name);
        let mut changes = ChangeSet::default();
        for (ns, name) in services {
            let first = ServicePortName {
                namespace: ns.clone(),
                name: name.clone(),
                port: String::new(),
                protocol: Protocol::Tcp,
            };
            let old_names: Vec<ServicePortName> = self
                .services
                .range(first..)
                .take_while(|(k, _)| &k.namespace == ns && &k.name == name)
                .map(|(k, _)| k.clone())
                .collect();
            let mut old: BTreeMap<ServicePortName, ServicePort> = old_names
                .into_iter()
                .filter_map(|k| self.services.remove_entry(&k))
                .collect();
            if let Some(svc) = state.service(ns, name) {
                let slices: Vec<&SliceEntry> = state.slices_of(ns, name).collect();
                for sp in service_ports(ns, name, svc, &slices, &self.node_name, zone) {
                    match old.remove(&sp.name) {
                        None => {
                            changes.added.insert(sp.name.clone());
                        }
                        Some(prev) if prev != sp => {
                            changes.changed.insert(sp.name.clone());
                            changes.previous.insert(prev.name.clone(), prev);
                        }
                        Some(_) => {}
                    }
                    self.services.insert(sp.name.clone(), sp);
                }
            }
            for (k, prev) in old {
                changes.removed.insert(k.clone());
                changes.previous.insert(k, prev);
            }
        }
        changes
    }

    /// Node-wide settings (everything but the services) differ.
    pub fn globals_differ(&self, other: &NodeModel) -> bool {
        self.node_name != other.node_name
            || self.node_ips != other.node_ips
            || self.node_port_addresses != other.node_port_addresses
            || self.cluster_cidrs != other.cluster_cidrs
            || self.masquerade_all != other.masquerade_all
    }

    pub fn endpoint_count(&self) -> usize {
        self.services
            .values()
            .map(|s| s.cluster_endpoints.len())
            .sum()
    }
}

/// The node's zone label, matched against EndpointSlice zone hints.
fn node_zone<'a>(state: &'a ClusterState, node_name: &str) -> &'a str {
    state
        .node(node_name)
        .and_then(|n| n.metadata.labels.as_ref())
        .and_then(|l| l.get(ZONE_LABEL))
        .map(String::as_str)
        .unwrap_or("")
}

/// The first InternalIP of each family, in the order the Node lists them.
fn primary_node_ips(node: &Node) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for a in addresses.iter().filter(|a| a.type_ == "InternalIP") {
        if let Ok(ip) = a.address.parse::<IpAddr>() {
            if !ips.iter().any(|i| IpFamily::of(i) == IpFamily::of(&ip)) {
                ips.push(ip);
            }
        }
    }
    ips
}

/// Whether kube-proxy programs this Service at all: not headless, not ExternalName.
pub fn is_proxied(svc: &Service) -> bool {
    let Some(spec) = &svc.spec else { return false };
    if spec.type_.as_deref() == Some("ExternalName") {
        return false;
    }
    match spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => false,
        Some(_) => true,
    }
}

/// The service ports of one Service with their endpoints on this node.
fn service_ports(
    ns: &str,
    name: &str,
    svc: &ServiceEntry,
    slices: &[&SliceEntry],
    node_name: &str,
    zone: &str,
) -> Vec<ServicePort> {
    if !svc.proxied {
        return Vec::new();
    }
    let mut out = Vec::new();
    for port in &svc.ports {
        let mut sp = ServicePort {
            name: ServicePortName {
                namespace: ns.to_string(),
                name: name.to_string(),
                port: port.name.clone(),
                protocol: port.protocol,
            },
            protocol: port.protocol,
            port: port.port,
            cluster_ips: svc.cluster_ips.clone(),
            node_port: port.node_port,
            external_ips: svc.external_ips.clone(),
            load_balancer_ips: svc.load_balancer_ips.clone(),
            load_balancer_source_ranges: svc.load_balancer_source_ranges.clone(),
            external_policy_local: false,
            internal_policy_local: svc.internal_policy_local,
            affinity_timeout: svc.affinity_timeout,
            health_check_node_port: None,
            cluster_endpoints: Vec::new(),
            local_endpoints: Vec::new(),
        };
        sp.external_policy_local = svc.external_policy_local && sp.externally_accessible();
        if sp.external_policy_local {
            sp.health_check_node_port = svc.health_check_node_port;
        }
        let all = slice_endpoints(slices, &port.name, port.protocol, node_name);
        let (cluster, local) = categorize(
            &all,
            sp.internal_policy_local || sp.external_policy_local,
            node_name,
            zone,
        );
        sp.cluster_endpoints = cluster;
        sp.cluster_endpoints.shrink_to_fit();
        sp.local_endpoints = local;
        sp.local_endpoints.shrink_to_fit();
        out.push(sp);
    }
    out
}

/// Every endpoint of the slices whose port named `port_name` has `protocol`, with
/// duplicates (the same address in two slices) removed.
fn slice_endpoints(
    slices: &[&SliceEntry],
    port_name: &str,
    protocol: Protocol,
    node_name: &str,
) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    for slice in slices {
        let Some(port) = slice
            .ports
            .iter()
            .find(|p| p.name == port_name && p.protocol == Some(protocol))
        else {
            continue;
        };
        let Some(port_number) = port.port else {
            continue;
        };
        for ep in &slice.endpoints {
            let e = Endpoint {
                ip: ep.ip,
                port: port_number,
                local: ep.node_name.as_deref() == Some(node_name),
                ready: ep.ready,
                serving: ep.serving,
                terminating: ep.terminating,
                zone_hints: ep.zone_hints().to_vec(),
                node_hints: ep.node_hints().to_vec(),
            };
            if !out.iter().any(|o| o.ip == e.ip && o.port == e.port) {
                out.push(e);
            }
        }
    }
    out.sort();
    out
}

/// Topology routing chosen from the endpoints' hints, as upstream's
/// `topologyModeFromHints`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// Every ready endpoint is usable.
    Any,
    /// Only endpoints hinted for this node.
    SameNode,
    /// Only endpoints hinted for this node's zone.
    SameZone,
}

/// Hints are used only when every ready endpoint carries them and at least one names
/// this node (node hints, preferred) or its zone.
fn topology(endpoints: &[Endpoint], node_name: &str, zone: &str) -> Topology {
    let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return Topology::Any;
    }
    let all_node_hints = ready.iter().all(|e| !e.node_hints.is_empty());
    if all_node_hints
        && ready
            .iter()
            .any(|e| e.node_hints.iter().any(|n| n == node_name))
    {
        return Topology::SameNode;
    }
    let all_zone_hints = ready.iter().all(|e| !e.zone_hints.is_empty());
    if all_zone_hints
        && !zone.is_empty()
        && ready.iter().any(|e| e.zone_hints.iter().any(|z| z == zone))
    {
        return Topology::SameZone;
    }
    Topology::Any
}

/// Splits a service port's endpoints into the cluster set (ready, topology-filtered;
/// serving+terminating when none is ready) and, when a Local policy applies, the local
/// set (local ready; local serving+terminating when none is ready) — upstream's
/// `CategorizeEndpoints`. The cluster set is always computed: an empty one means the
/// service has no usable endpoint anywhere.
fn categorize(
    endpoints: &[Endpoint],
    uses_local: bool,
    node_name: &str,
    zone: &str,
) -> (Vec<Endpoint>, Vec<Endpoint>) {
    let topo = topology(endpoints, node_name, zone);
    let usable_here = |e: &Endpoint| match topo {
        Topology::Any => true,
        Topology::SameNode => e.node_hints.iter().any(|n| n == node_name),
        Topology::SameZone => e.zone_hints.iter().any(|z| z == zone),
    };
    let mut cluster: Vec<Endpoint> = endpoints
        .iter()
        .filter(|e| e.ready && usable_here(e))
        .cloned()
        .collect();
    if cluster.is_empty() {
        cluster = endpoints
            .iter()
            .filter(|e| e.serving && e.terminating)
            .cloned()
            .collect();
    }
    if !uses_local {
        return (cluster, Vec::new());
    }
    let mut local: Vec<Endpoint> = endpoints
        .iter()
        .filter(|e| e.local && e.ready)
        .cloned()
        .collect();
    if local.is_empty() {
        local = endpoints
            .iter()
            .filter(|e| e.local && e.serving && e.terminating)
            .cloned()
            .collect();
    }
    (cluster, local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Object;
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    fn state(yaml: &str) -> ClusterState {
        let mut st = ClusterState::default();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            let o = match v["kind"].as_str().unwrap() {
                "Service" => Object::Service(Box::new(serde_json::from_value(v).unwrap())),
                "EndpointSlice" => {
                    Object::EndpointSlice(Box::new(serde_json::from_value(v).unwrap()))
                }
                "Node" => Object::Node(Box::new(serde_json::from_value(v).unwrap())),
                k => panic!("{k}"),
            };
            st.upsert(o);
        }
        st
    }

    const NODE: &str = "kind: Node\nmetadata: {name: n1, labels: {topology.kubernetes.io/zone: za}}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.2}, {type: InternalIP, address: 192.168.0.3}, {type: InternalIP, address: '2001:db8::1'}]}\n";

    fn build(yaml: &str) -> NodeModel {
        NodeModel::build(
            &state(&format!("{NODE}---\n{yaml}")),
            "n1",
            &EffectiveConfig::default(),
        )
    }

    fn eps(list: &[Endpoint]) -> Vec<String> {
        list.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn cluster_ip_ports_and_endpoints() {
        let m = build(
            "kind: Service\nmetadata: {name: s, namespace: ns}\nspec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 80, targetPort: web}, {name: dns, port: 53, protocol: UDP, targetPort: 5353}]}\n---\nkind: EndpointSlice\nmetadata: {name: s-1, namespace: ns, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nendpoints:\n- {addresses: [10.1.0.1], conditions: {ready: true}, nodeName: n1}\n- {addresses: [10.1.0.2], conditions: {ready: false}}\n- {addresses: [10.1.0.3]}\nports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]\n",
        );
        assert_eq!(
            m.node_ips,
            vec![
                "192.168.0.2".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        assert_eq!(m.services.len(), 2);
        let http = m.services.values().find(|s| s.port == 80).unwrap();
        assert_eq!(http.protocol, Protocol::Tcp);
        assert_eq!(
            eps(&http.cluster_endpoints),
            ["10.1.0.1:8080", "10.1.0.3:8080"]
        );
        assert!(http.cluster_endpoints[0].local);
        let dns = m.services.values().find(|s| s.port == 53).unwrap();
        assert_eq!(dns.protocol, Protocol::Udp);
        assert_eq!(
            eps(&dns.cluster_endpoints),
            ["10.1.0.1:5353", "10.1.0.3:5353"]
        );
        // Default nodePortAddresses: the primary node IPs.
        assert_eq!(m.node_port_addresses.len(), 2);
    }

    #[test]
    fn headless_and_external_name_are_ignored() {
        let m = build(
            "kind: Service\nmetadata: {name: h, namespace: ns}\nspec: {clusterIP: None, ports: [{port: 80}]}\n---\nkind: Service\nmetadata: {name: e, namespace: ns}\nspec: {type: ExternalName, externalName: example.com, ports: [{port: 80}]}\n",
        );
        assert!(m.services.is_empty());
    }

    #[test]
    fn node_ports_only_for_node_port_and_lb_types() {
        let m = build(
            "kind: Service\nmetadata: {name: a, namespace: ns}\nspec: {type: NodePort, clusterIP: 10.96.0.1, ports: [{port: 80, nodePort: 30080}]}\n---\nkind: Service\nmetadata: {name: b, namespace: ns}\nspec: {type: ClusterIP, clusterIP: 10.96.0.2, ports: [{port: 80, nodePort: 30081}]}\n",
        );
        let ports: Vec<Option<u16>> = m.services.values().map(|s| s.node_port).collect();
        assert_eq!(ports, vec![Some(30080), None]);
    }

    const TERMINATING: &str = "kind: Service\nmetadata: {name: s, namespace: ns}\nspec: {type: NodePort, clusterIP: 10.96.0.1, externalTrafficPolicy: Local, ports: [{port: 80, nodePort: 30080}]}\n---\nkind: EndpointSlice\nmetadata: {name: s-1, namespace: ns, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nendpoints:\n- {addresses: [10.1.0.1], conditions: {ready: false, serving: true, terminating: true}, nodeName: n1}\n- {addresses: [10.1.0.2], conditions: {ready: true}, nodeName: n2}\n- {addresses: [10.1.0.3], conditions: {ready: false, serving: false, terminating: true}, nodeName: n1}\nports: [{port: 80}]\n";

    #[test]
    fn terminating_fallback_is_separate_for_cluster_and_local() {
        let m = build(TERMINATING);
        let sp = m.services.values().next().unwrap();
        assert!(sp.external_policy_local);
        assert_eq!(eps(&sp.cluster_endpoints), ["10.1.0.2:80"]);
        assert_eq!(
            eps(&sp.local_endpoints),
            ["10.1.0.1:80"],
            "local ready none: serving+terminating"
        );
        assert_eq!(eps(sp.external_endpoints()), ["10.1.0.1:80"]);
        assert_eq!(eps(sp.internal_endpoints()), ["10.1.0.2:80"]);

        let all_terminating = TERMINATING.replace(
            "conditions: {ready: true}, nodeName: n2",
            "conditions: {ready: false, serving: false}, nodeName: n2",
        );
        let m = build(&all_terminating);
        let sp = m.services.values().next().unwrap();
        assert_eq!(eps(&sp.cluster_endpoints), ["10.1.0.1:80"]);
    }

    const HINTED: &str = "kind: Service\nmetadata: {name: s, namespace: ns}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n---\nkind: EndpointSlice\nmetadata: {name: s-1, namespace: ns, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nendpoints:\n- {addresses: [10.1.0.1], hints: {forZones: [{name: za}]}}\n- {addresses: [10.1.0.2], hints: {forZones: [{name: zb}]}}\n- {addresses: [10.1.0.3], hints: {forZones: [{name: za}]}}\nports: [{port: 80}]\n";

    #[test]
    fn zone_hints_used_only_when_complete_and_matching() {
        let sp = build(HINTED).services.into_values().next().unwrap();
        assert_eq!(eps(&sp.cluster_endpoints), ["10.1.0.1:80", "10.1.0.3:80"]);
        // One endpoint without hints: topology off.
        let partial = HINTED.replace(", hints: {forZones: [{name: zb}]}", "");
        let sp = build(&partial).services.into_values().next().unwrap();
        assert_eq!(sp.cluster_endpoints.len(), 3);
        // No endpoint for this zone: topology off.
        let other = HINTED.replace("name: za", "name: zc");
        let sp = build(&other).services.into_values().next().unwrap();
        assert_eq!(sp.cluster_endpoints.len(), 3);
        // Node hints win when every endpoint has them and one names this node.
        let nodes = HINTED
            .replace(
                "forZones: [{name: za}]}",
                "forZones: [{name: za}], forNodes: [{name: n2}]}",
            )
            .replace(
                "forZones: [{name: zb}]}",
                "forZones: [{name: zb}], forNodes: [{name: n1}]}",
            );
        let sp = build(&nodes).services.into_values().next().unwrap();
        assert_eq!(eps(&sp.cluster_endpoints), ["10.1.0.2:80"]);
    }

    #[test]
    fn load_balancer_ips_skip_proxy_mode_and_session_affinity_defaults() {
        let m = build(
            "kind: Service\nmetadata: {name: s, namespace: ns}\nspec: {type: LoadBalancer, clusterIP: 10.96.0.1, sessionAffinity: ClientIP, loadBalancerSourceRanges: [' 203.0.113.0/25 '], ports: [{port: 80, nodePort: 30080}]}\nstatus: {loadBalancer: {ingress: [{ip: 1.2.3.4}, {ip: 5.6.7.8, ipMode: Proxy}]}}\n",
        );
        let sp = m.services.values().next().unwrap();
        assert_eq!(
            sp.load_balancer_ips,
            vec!["1.2.3.4".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            sp.load_balancer_source_ranges,
            vec!["203.0.113.0/25".parse::<IpNet>().unwrap()]
        );
        assert_eq!(sp.affinity_timeout, Some(10800));
    }

    #[test]
    fn incremental_update_equals_full_build() {
        let mut st = state(&format!("{NODE}---\n{TERMINATING}---\n{HINTED}").replace("name: s, namespace: ns}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}", "name: h, namespace: ns}\nspec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}").replace("name: s-1, namespace: ns, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nendpoints:\n- {addresses: [10.1.0.1], hints", "name: h-1, namespace: ns, labels: {kubernetes.io/service-name: h}}\naddressType: IPv4\nendpoints:\n- {addresses: [10.1.0.1], hints"));
        let config = EffectiveConfig::default();
        st.take_changes();
        let mut model = NodeModel::build(&st, "n1", &config);
        assert_eq!(model.services.len(), 2);
        // Move the hinted slice to Service s, delete Service h, add a port-less change.
        let moved = HINTED
            .split("---\n")
            .nth(1)
            .unwrap()
            .replace("name: s-1", "name: h-1");
        let slice: EndpointSlice = serde_yaml::from_str(&moved).unwrap();
        st.upsert(Object::EndpointSlice(Box::new(slice)));
        st.remove(&crate::state::ObjectKey {
            kind: crate::state::ObjectKind::Service,
            namespace: "ns".into(),
            name: "h".into(),
        });
        let changes = st.take_changes();
        assert!(!changes.global);
        let diff = model.update_services(&st, &changes.services);
        assert_eq!(model, NodeModel::build(&st, "n1", &config));
        assert_eq!(
            (diff.added.len(), diff.changed.len(), diff.removed.len()),
            (0, 1, 1)
        );
        assert_eq!(diff.previous.len(), 2);
    }
}
