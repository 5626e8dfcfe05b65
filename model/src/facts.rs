//! What the model reads: Services, EndpointSlices and the node, reduced to the facts the
//! proxy uses (parsed addresses, conditions, hints), and the node-wide settings. Sources
//! and the cluster state (in core) produce these; nothing here knows Kubernetes' API
//! types, so an engine's tests can build a model without them.

use std::{net::IpAddr, sync::Arc};

use compact_str::CompactString;
use ipnet::IpNet;

use crate::family::Protocol;

/// `(namespace, name)` of a Service.
pub type ServiceKey = (String, String);

/// A Service as the proxy reads it. Everything here is a fact about the Service alone;
/// what it means on one node is the model's job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Not headless and not ExternalName: kube-proxy programs it. When false, every
    /// other field is empty.
    pub proxied: bool,
    /// `clusterIPs` (or `clusterIP`), parsed, sorted, deduplicated. The lists are boxed
    /// slices: an entry per Service lives as long as the agent, and a slice is a third
    /// smaller than a `Vec` (no capacity).
    pub cluster_ips: Box<[IpAddr]>,
    pub external_ips: Box<[IpAddr]>,
    /// Load-balancer ingress IPs (not `ipMode: Proxy`), for `type: LoadBalancer` only.
    pub load_balancer_ips: Box<[IpAddr]>,
    /// `loadBalancerSourceRanges`, truncated to their prefix; empty without LB IPs.
    pub load_balancer_source_ranges: Box<[IpNet]>,
    /// `externalTrafficPolicy: Local`.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `healthCheckNodePort`, when set and not zero and the Service needs one
    /// (`type: LoadBalancer` with `externalTrafficPolicy: Local`, upstream's
    /// `NeedsHealthCheck`).
    pub health_check_node_port: Option<u16>,
    /// The ports, in the Service's order, without those of an unknown protocol or an
    /// out-of-range number.
    pub ports: Vec<ServiceEntryPort>,
}

/// One port of a [`ServiceEntry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntryPort {
    /// The port's `name` (empty for a single unnamed port).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// Only for `type: NodePort` and `LoadBalancer`, and never zero.
    pub node_port: Option<u16>,
}

/// An EndpointSlice as the proxy reads it. An FQDN slice has no ports and no endpoints
/// (the proxy never uses it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceEntry {
    /// The Service its `kubernetes.io/service-name` label names (same namespace).
    pub service: Option<CompactString>,
    /// The ports, in the slice's order.
    pub ports: Vec<SlicePort>,
    /// The endpoints whose first address parses, in the slice's order.
    pub endpoints: Vec<SliceEndpoint>,
}

/// One port of a [`SliceEntry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    /// The port's `name` (empty when unnamed).
    pub name: CompactString,
    /// `None`: a protocol the proxy does not know.
    pub protocol: Option<Protocol>,
    /// `None`: no port number, or one out of range or zero.
    pub port: Option<u16>,
}

/// One endpoint of a [`SliceEntry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// The endpoint's first address.
    pub ip: IpAddr,
    /// As upstream: a missing `ready` means ready.
    pub ready: bool,
    /// A missing `serving` follows `ready`.
    pub serving: bool,
    pub terminating: bool,
    /// `nodeName`, shared by every endpoint on that node.
    pub node_name: Option<Arc<str>>,
    /// Topology hints; `None` when there are none (the common case).
    pub hints: Option<Box<EndpointHints>>,
}

impl SliceEndpoint {
    pub fn zone_hints(&self) -> &[String] {
        self.hints.as_deref().map_or(&[], |h| &h.zones)
    }

    pub fn node_hints(&self) -> &[String] {
        self.hints.as_deref().map_or(&[], |h| &h.nodes)
    }
}

/// `hints.forZones` and `hints.forNodes` names, each sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointHints {
    pub zones: Vec<String>,
    pub nodes: Vec<String>,
}

/// The Services and EndpointSlices the model is built from (core's cluster state).
pub trait Catalog {
    fn service(&self, namespace: &str, name: &str) -> Option<&ServiceEntry>;
    /// Every Service, as `(namespace, name, entry)`.
    fn services(&self) -> Box<dyn Iterator<Item = (&str, &str, &ServiceEntry)> + '_>;
    /// The EndpointSlices labelled with this Service's name.
    fn slices_of<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> Box<dyn Iterator<Item = &'a SliceEntry> + 'a>;
}

/// What the model knows of the node it runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    /// The first InternalIP of each family, from the Node object.
    pub primary_ips: Vec<IpAddr>,
    /// The `topology.kubernetes.io/zone` label (empty when unset).
    pub zone: String,
}

/// The node-wide settings of the ProxyConfig in force that shape Service semantics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelConfig {
    /// Pod CIDRs: the local-traffic detector. Empty: no detector.
    pub cluster_cidrs: Vec<IpNet>,
    pub masquerade_all: bool,
    /// `nodePortAddresses` CIDRs.
    pub node_port_cidrs: Vec<IpNet>,
    /// `nodePortAddresses` lists `primary` (the node's primary IPs).
    pub node_port_primary: bool,
}
