//! `ClusterState`: the store of the Kubernetes objects this node cares about. Sources
//! (the API watchers, the manifests directory) are its only writers.
//!
//! Objects arrive whole (k8s-openapi types, validated by their source) but are kept only
//! as much as the proxy reads them: a Service as a [`ServiceEntry`], an EndpointSlice as
//! a [`SliceEntry`] (addresses parsed, node names shared), a Node without its images,
//! conditions and managed fields. At 50,000 Services the whole objects cost ten times
//! the memory of what the model needs from them. An edit to a field the proxy does not
//! read is therefore not a change.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
    sync::Arc,
    time::SystemTime,
};

use compact_str::CompactString;
use ipnet::IpNet;
use k8s_openapi::api::{
    core::v1::{Node, NodeStatus, Service},
    discovery::v1::EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use switchyard_crd::ProxyConfig;

pub use switchyard_model::ServiceKey;
use switchyard_model::{
    Catalog, EndpointHints, ModelConfig, NodeFacts, Protocol, ServiceEntry, ServiceEntryPort,
    SliceEndpoint, SliceEntry, SlicePort,
};

/// The label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The Node label naming its zone, matched against EndpointSlice zone hints.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The EndpointSlice annotation dating the change that caused its last update
/// (RFC 3339 with nanoseconds), set by the EndpointSlice controller.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Service,
    EndpointSlice,
    Node,
    ProxyConfig,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Node => "Node",
            ObjectKind::ProxyConfig => "ProxyConfig",
        }
    }
}

/// Kind plus `namespace/name` (namespace empty for cluster-scoped objects).
///
/// The names are [`CompactString`]s: up to 24 bytes (every name a manifest generator or
/// a controller usually makes) live inline, with no allocation of their own. A 50k
/// cluster holds a key per object in the state, the slice index and the manifests
/// source: ≈ 400k names that were each a heap allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: ObjectKind,
    pub namespace: CompactString,
    pub name: CompactString,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.as_str(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

/// One object of a kind the proxy consumes.
#[derive(Clone, Debug)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Node(Box<Node>),
    ProxyConfig(Box<ProxyConfig>),
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        let (kind, meta) = match self {
            Object::Service(o) => (ObjectKind::Service, &o.metadata),
            Object::EndpointSlice(o) => (ObjectKind::EndpointSlice, &o.metadata),
            Object::Node(o) => (ObjectKind::Node, &o.metadata),
            Object::ProxyConfig(o) => (ObjectKind::ProxyConfig, &o.metadata),
        };
        ObjectKey {
            kind,
            namespace: meta.namespace.as_deref().unwrap_or_default().into(),
            name: meta.name.as_deref().unwrap_or_default().into(),
        }
    }
}

fn parse_ips<'a>(items: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = items
        .into_iter()
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// What the proxy reads of `svc`.
pub fn service_entry(svc: &Service) -> ServiceEntry {
    if !is_proxied(svc) {
        return ServiceEntry::default();
    }
    let spec = svc.spec.as_ref().expect("checked by is_proxied");
    let cluster_ips = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => parse_ips(ips),
        _ => parse_ips(spec.cluster_ip.iter()),
    };
    let external_ips = parse_ips(spec.external_ips.iter().flatten());
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    let load_balancer_ips = if type_ == "LoadBalancer" {
        parse_ips(
            svc.status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                // Upstream's IsVIPMode: no ipMode, or VIP.
                .filter(|ing| matches!(ing.ip_mode.as_deref(), None | Some("VIP")))
                .filter_map(|ing| ing.ip.as_ref()),
        )
    } else {
        Vec::new()
    };
    let mut load_balancer_source_ranges: Vec<IpNet> = if load_balancer_ips.is_empty() {
        Vec::new()
    } else {
        spec.load_balancer_source_ranges
            .iter()
            .flatten()
            .filter_map(|r| r.trim().parse::<IpNet>().ok().map(|n| n.trunc()))
            .collect()
    };
    load_balancer_source_ranges.sort();
    load_balancer_source_ranges.dedup();
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(10800)
    });
    let node_ports_allowed = matches!(type_, "NodePort" | "LoadBalancer");
    let mut ports: Vec<ServiceEntryPort> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|port| {
            let protocol = Protocol::parse(port.protocol.as_deref().unwrap_or("TCP"))?;
            let number = u16::try_from(port.port).ok()?;
            Some(ServiceEntryPort {
                name: port.name.clone().unwrap_or_default(),
                protocol,
                port: number,
                node_port: port
                    .node_port
                    .filter(|_| node_ports_allowed)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0),
            })
        })
        .collect();
    ports.shrink_to_fit();
    ServiceEntry {
        proxied: true,
        cluster_ips: cluster_ips.into(),
        external_ips: external_ips.into(),
        load_balancer_ips: load_balancer_ips.into(),
        load_balancer_source_ranges: load_balancer_source_ranges.into(),
        external_policy_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        internal_policy_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        affinity_timeout,
        // Upstream's NeedsHealthCheck: type LoadBalancer, externalTrafficPolicy Local.
        health_check_node_port: spec
            .health_check_node_port
            .filter(|_| {
                type_ == "LoadBalancer" && spec.external_traffic_policy.as_deref() == Some("Local")
            })
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0),
        ports,
    }
}

/// Node names shared by the endpoints that name them (a cluster has few nodes and
/// hundreds of thousands of endpoints). Names no endpoint uses any more are dropped
/// from time to time.
#[derive(Clone, Debug, Default)]
struct NodeNames {
    names: HashSet<Arc<str>>,
    /// Sweep unused names when there are more than this many.
    sweep_above: usize,
}

impl NodeNames {
    const MIN_SWEEP: usize = 1024;

    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.names.get(name) {
            return n.clone();
        }
        if self.names.len() >= self.sweep_above.max(Self::MIN_SWEEP) {
            self.names.retain(|n| Arc::strong_count(n) > 1);
            self.sweep_above = self.names.len() * 2;
        }
        let n: Arc<str> = Arc::from(name);
        self.names.insert(n.clone());
        n
    }
}

/// What the proxy reads of `slice`, node names taken from `node_names`.
fn slice_entry(slice: &EndpointSlice, node_names: &mut NodeNames) -> SliceEntry {
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(|s| CompactString::from(s.as_str()));
    if slice.address_type == "FQDN" {
        return SliceEntry {
            service,
            ..SliceEntry::default()
        };
    }
    let mut ports: Vec<SlicePort> = slice
        .ports
        .iter()
        .flatten()
        .map(|p| SlicePort {
            name: p.name.as_deref().unwrap_or_default().into(),
            protocol: Protocol::parse(p.protocol.as_deref().unwrap_or("TCP")),
            port: p
                .port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0),
        })
        .collect();
    // Exact capacity (a collect through an `Option` starts at 4): held for every slice
    // for the agent's life.
    ports.shrink_to_fit();
    let mut endpoints: Vec<SliceEndpoint> = slice
        .endpoints
        .iter()
        .flatten()
        .filter_map(|ep| {
            let ip = ep
                .addresses
                .first()
                .and_then(|a| a.trim().parse::<IpAddr>().ok())?;
            let cond = ep.conditions.as_ref();
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let hints = ep.hints.as_ref();
            let mut zones: Vec<String> = hints
                .and_then(|h| h.for_zones.as_ref())
                .into_iter()
                .flatten()
                .map(|z| z.name.clone())
                .collect();
            zones.sort();
            let mut nodes: Vec<String> = hints
                .and_then(|h| h.for_nodes.as_ref())
                .into_iter()
                .flatten()
                .map(|n| n.name.clone())
                .collect();
            nodes.sort();
            Some(SliceEndpoint {
                ip,
                ready,
                // As upstream: a missing `serving` means serving.
                serving: cond.and_then(|c| c.serving).unwrap_or(true),
                terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
                node_name: ep.node_name.as_deref().map(|n| node_names.get(n)),
                hints: (!zones.is_empty() || !nodes.is_empty())
                    .then(|| Box::new(EndpointHints { zones, nodes })),
            })
        })
        .collect();
    endpoints.shrink_to_fit();
    SliceEntry {
        service,
        ports,
        endpoints,
    }
}

/// A Node as the proxy reads it: name, labels (zone, ProxyConfig selection) and
/// addresses.
fn node_entry(node: Node) -> Node {
    Node {
        metadata: ObjectMeta {
            name: node.metadata.name,
            labels: node.metadata.labels,
            ..ObjectMeta::default()
        },
        spec: None,
        status: node.status.map(|s| NodeStatus {
            addresses: s.addresses,
            ..NodeStatus::default()
        }),
    }
}

/// What changed since the last `take_changes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateChanges {
    /// Services whose Service object or EndpointSlices changed.
    pub services: BTreeSet<ServiceKey>,
    /// A Node or ProxyConfig changed: everything must be recomputed.
    pub global: bool,
    /// When the endpoint changes among these happened, per Service (see
    /// `programming_latency`): the slices' trigger-time annotations, or when they were
    /// seen here.
    pub trigger_times: BTreeMap<ServiceKey, Vec<SystemTime>>,
}

/// When the change behind an EndpointSlice update happened: its trigger-time annotation
/// when it parses, else `seen`; `None` for a change from before `started` (a
/// predecessor's to program, as upstream ignores it).
fn trigger_time(meta: &ObjectMeta, seen: SystemTime, started: SystemTime) -> Option<SystemTime> {
    let annotated = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(LAST_CHANGE_TRIGGER_TIME))
        .and_then(|v| v.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(SystemTime::from);
    match annotated {
        Some(t) if t > started => Some(t),
        Some(_) => None,
        None => Some(seen),
    }
}

#[derive(Clone, Debug)]
pub struct ClusterState {
    services: BTreeMap<ObjectKey, ServiceEntry>,
    endpoint_slices: BTreeMap<ObjectKey, SliceEntry>,
    nodes: BTreeMap<String, Node>,
    proxy_configs: BTreeMap<String, ProxyConfig>,
    /// `(namespace, service, slice name)` of every EndpointSlice that names a Service.
    slices_by_service: BTreeSet<(CompactString, CompactString, CompactString)>,
    node_names: NodeNames,
    changes: StateChanges,
    /// Bumped on every change, so readers can tell whether anything moved.
    generation: u64,
    /// When this store was made: older trigger times are not this process's to time.
    started: SystemTime,
}

impl Default for ClusterState {
    fn default() -> Self {
        ClusterState {
            services: BTreeMap::new(),
            endpoint_slices: BTreeMap::new(),
            nodes: BTreeMap::new(),
            proxy_configs: BTreeMap::new(),
            slices_by_service: BTreeSet::new(),
            node_names: NodeNames::default(),
            changes: StateChanges {
                services: BTreeSet::new(),
                global: true,
                trigger_times: BTreeMap::new(),
            },
            generation: 0,
            started: SystemTime::now(),
        }
    }
}

impl ClusterState {
    /// Inserts or replaces an object. Returns whether the state changed (an edit to a
    /// field the proxy does not read is no change).
    pub fn upsert(&mut self, object: Object) -> bool {
        let key = object.key();
        let changed = match object {
            Object::Service(o) => {
                let svc = (key.namespace.to_string(), key.name.to_string());
                let changed = replace(&mut self.services, key, service_entry(&o));
                if changed {
                    self.changes.services.insert(svc);
                }
                changed
            }
            Object::EndpointSlice(o) => {
                let entry = slice_entry(&o, &mut self.node_names);
                let old_owner = self
                    .endpoint_slices
                    .get(&key)
                    .and_then(|e| e.service.clone());
                let new_owner = entry.service.clone();
                let changed = replace(&mut self.endpoint_slices, key.clone(), entry);
                if changed {
                    let seen = SystemTime::now();
                    if let (Some(svc), Some(t)) =
                        (&new_owner, trigger_time(&o.metadata, seen, self.started))
                    {
                        self.changes
                            .trigger_times
                            .entry((key.namespace.to_string(), svc.to_string()))
                            .or_default()
                            .push(t);
                    }
                    self.reindex_slice(&key, old_owner, new_owner);
                }
                changed
            }
            Object::Node(o) => {
                let changed = replace(&mut self.nodes, key.name.to_string(), node_entry(*o));
                self.changes.global |= changed;
                changed
            }
            Object::ProxyConfig(o) => {
                let same = self
                    .proxy_configs
                    .get(key.name.as_str())
                    .is_some_and(|old| old.metadata == o.metadata && old.spec == o.spec);
                if !same {
                    self.proxy_configs.insert(key.name.to_string(), *o);
                    self.changes.global = true;
                }
                !same
            }
        };
        if changed {
            self.generation += 1;
        }
        changed
    }

    /// Removes an object. Returns whether it was there.
    pub fn remove(&mut self, key: &ObjectKey) -> bool {
        let removed = match key.kind {
            ObjectKind::Service => {
                let removed = self.services.remove(key).is_some();
                if removed {
                    self.changes
                        .services
                        .insert((key.namespace.to_string(), key.name.to_string()));
                }
                removed
            }
            ObjectKind::EndpointSlice => match self.endpoint_slices.remove(key) {
                Some(old) => {
                    if let Some(svc) = &old.service {
                        self.changes
                            .trigger_times
                            .remove(&(key.namespace.to_string(), svc.to_string()));
                    }
                    self.reindex_slice(key, old.service, None);
                    true
                }
                None => false,
            },
            ObjectKind::Node | ObjectKind::ProxyConfig => {
                let removed = if key.kind == ObjectKind::Node {
                    self.nodes.remove(key.name.as_str()).is_some()
                } else {
                    self.proxy_configs.remove(key.name.as_str()).is_some()
                };
                self.changes.global |= removed;
                removed
            }
        };
        if removed {
            self.generation += 1;
        }
        removed
    }

    /// Moves slice `key` from Service `old` to Service `new` (same namespace) in the
    /// index, marking both changed.
    fn reindex_slice(
        &mut self,
        key: &ObjectKey,
        old: Option<CompactString>,
        new: Option<CompactString>,
    ) {
        if let Some(svc) = old {
            self.changes
                .services
                .insert((key.namespace.to_string(), svc.to_string()));
            self.slices_by_service
                .remove(&(key.namespace.clone(), svc, key.name.clone()));
        }
        if let Some(svc) = new {
            self.changes
                .services
                .insert((key.namespace.to_string(), svc.to_string()));
            self.slices_by_service
                .insert((key.namespace.clone(), svc, key.name.clone()));
        }
    }

    /// Takes what changed since the last call (everything is "global" at first).
    pub fn take_changes(&mut self) -> StateChanges {
        std::mem::take(&mut self.changes)
    }

    /// Marks everything changed (the next reader recomputes all).
    pub fn mark_all_changed(&mut self) {
        self.changes.global = true;
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&ServiceEntry> {
        self.services.get(&ObjectKey {
            kind: ObjectKind::Service,
            namespace: namespace.into(),
            name: name.into(),
        })
    }

    /// The EndpointSlices labelled with Service `namespace/name`, by slice name.
    pub fn slices_of<'a>(
        &'a self,
        namespace: &str,
        name: &str,
    ) -> impl Iterator<Item = &'a SliceEntry> + 'a {
        let (namespace, name) = (CompactString::from(namespace), CompactString::from(name));
        let first = (namespace.clone(), name.clone(), CompactString::default());
        self.slices_by_service
            .range(first..)
            .take_while(move |(ns, svc, _)| *ns == namespace && *svc == name)
            .filter_map(|(ns, _, slice)| {
                self.endpoint_slices.get(&ObjectKey {
                    kind: ObjectKind::EndpointSlice,
                    namespace: ns.clone(),
                    name: slice.clone(),
                })
            })
    }

    /// Every key of one kind (for a source that relisted and must drop what is gone).
    pub fn keys(&self, kind: ObjectKind) -> Vec<ObjectKey> {
        match kind {
            ObjectKind::Service => self.services.keys().cloned().collect(),
            ObjectKind::EndpointSlice => self.endpoint_slices.keys().cloned().collect(),
            ObjectKind::Node => self
                .nodes
                .keys()
                .map(|name| ObjectKey {
                    kind,
                    namespace: CompactString::default(),
                    name: name.into(),
                })
                .collect(),
            ObjectKind::ProxyConfig => self
                .proxy_configs
                .keys()
                .map(|name| ObjectKey {
                    kind,
                    namespace: CompactString::default(),
                    name: name.into(),
                })
                .collect(),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every Service with its `(namespace, name)`, in key order.
    pub fn services(&self) -> impl Iterator<Item = (&str, &str, &ServiceEntry)> {
        self.services
            .iter()
            .map(|(k, s)| (k.namespace.as_str(), k.name.as_str(), s))
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    pub fn proxy_configs(&self) -> impl Iterator<Item = &ProxyConfig> {
        self.proxy_configs.values()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }
}

impl Catalog for ClusterState {
    fn service(&self, namespace: &str, name: &str) -> Option<&ServiceEntry> {
        ClusterState::service(self, namespace, name)
    }

    fn services(&self) -> Box<dyn Iterator<Item = (&str, &str, &ServiceEntry)> + '_> {
        Box::new(ClusterState::services(self))
    }

    fn slices_of<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> Box<dyn Iterator<Item = &'a SliceEntry> + 'a> {
        Box::new(ClusterState::slices_of(self, namespace, name))
    }
}

impl ClusterState {
    /// What the model knows of node `name`: its primary InternalIPs (the first of each
    /// family, in the order the Node lists them) and its zone label. A node without a
    /// Node object has neither.
    pub fn node_facts(&self, name: &str) -> NodeFacts {
        let node = self.node(name);
        let mut primary_ips: Vec<IpAddr> = Vec::new();
        let addresses = node
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.addresses.as_ref())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for a in addresses.iter().filter(|a| a.type_ == "InternalIP") {
            if let Ok(ip) = a.address.parse::<IpAddr>() {
                if !primary_ips.iter().any(|i| i.is_ipv4() == ip.is_ipv4()) {
                    primary_ips.push(ip);
                }
            }
        }
        let zone = node
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get(ZONE_LABEL))
            .cloned()
            .unwrap_or_default();
        NodeFacts {
            name: name.to_string(),
            primary_ips,
            zone,
        }
    }
}

/// The part of a ProxyConfig the model reads.
pub fn model_config(config: &switchyard_crd::EffectiveConfig) -> ModelConfig {
    ModelConfig {
        cluster_cidrs: config.cluster_cidrs.clone(),
        masquerade_all: config.masquerade_all,
        node_port_cidrs: config.node_port_cidrs.clone(),
        node_port_primary: config.node_port_primary,
    }
}

fn replace<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, key: K, value: V) -> bool {
    match map.get(&key) {
        Some(old) if *old == value => false,
        _ => {
            map.insert(key, value);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(yaml: &str) -> Object {
        let v: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        match v["kind"].as_str().unwrap() {
            "Service" => Object::Service(Box::new(serde_json::from_value(v).unwrap())),
            "EndpointSlice" => Object::EndpointSlice(Box::new(serde_json::from_value(v).unwrap())),
            "Node" => Object::Node(Box::new(serde_json::from_value(v).unwrap())),
            k => panic!("{k}"),
        }
    }

    const SVC: &str = "kind: Service\nmetadata: {name: s, namespace: ns, annotations: {a: b}}\nspec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 80, targetPort: 8080}]}\n";
    const SLICE: &str = "kind: EndpointSlice\nmetadata: {name: s-1, namespace: ns, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nendpoints:\n- {addresses: [10.1.0.1], nodeName: n1, targetRef: {kind: Pod, name: p1}}\n- {addresses: [10.1.0.2], nodeName: n1, hints: {forZones: [{name: zb}, {name: za}]}}\nports: [{name: http, port: 8080}]\n";

    #[test]
    fn edits_to_unread_fields_are_no_change() {
        let mut st = ClusterState::default();
        assert!(st.upsert(object(SVC)));
        assert!(st.upsert(object(SLICE)));
        st.take_changes();
        assert!(!st.upsert(object(&SVC.replace("{a: b}", "{a: c}"))));
        assert!(!st.upsert(object(&SVC.replace("targetPort: 8080", "targetPort: 9090"))));
        assert!(!st.upsert(object(&SLICE.replace("name: p1", "name: p2"))));
        assert_eq!(st.take_changes(), StateChanges::default());
        assert!(st.upsert(object(&SVC.replace("port: 80,", "port: 81,"))));
        assert!(st.upsert(object(&SLICE.replace("10.1.0.2", "10.1.0.3"))));
        assert_eq!(
            st.take_changes().services,
            BTreeSet::from([("ns".to_string(), "s".to_string())])
        );
    }

    #[test]
    fn slices_keep_what_the_model_reads_and_share_node_names() {
        let mut st = ClusterState::default();
        st.upsert(object(SLICE));
        let slices: Vec<&SliceEntry> = st.slices_of("ns", "s").collect();
        assert_eq!(slices.len(), 1);
        let eps = &slices[0].endpoints;
        assert_eq!(eps[0].ip, "10.1.0.1".parse::<IpAddr>().unwrap());
        assert!(eps[0].ready && eps[0].serving && !eps[0].terminating);
        assert!(eps[0].zone_hints().is_empty());
        assert_eq!(eps[1].zone_hints(), ["za", "zb"]);
        let (a, b) = (eps[0].node_name.clone(), eps[1].node_name.clone());
        assert!(Arc::ptr_eq(&a.unwrap(), &b.unwrap()));
        assert_eq!(st.slices_of("ns", "other").count(), 0);

        // Relabelled to another Service: both Services change.
        st.take_changes();
        st.upsert(object(
            &SLICE.replace("service-name: s}", "service-name: t}"),
        ));
        assert_eq!(st.slices_of("ns", "s").count(), 0);
        assert_eq!(st.slices_of("ns", "t").count(), 1);
        assert_eq!(st.take_changes().services.len(), 2);
    }

    #[test]
    fn slice_changes_carry_their_trigger_times() {
        let mut st = ClusterState::default();
        let key = ("ns".to_string(), "s".to_string());
        // No annotation: timed from when it was seen.
        let before = SystemTime::now();
        st.upsert(object(SLICE));
        let times = st.take_changes().trigger_times.remove(&key).unwrap();
        assert!(times.len() == 1 && times[0] >= before, "{times:?}");
        // An annotation after the start wins; one from before the start is ignored.
        let annotated = |t: &str| {
            SLICE.replace(
                "labels:",
                &format!("annotations: {{endpoints.kubernetes.io/last-change-trigger-time: '{t}'}}, labels:"),
            )
        };
        let later = k8s_openapi::jiff::Timestamp::try_from(st.started).unwrap()
            + k8s_openapi::jiff::SignedDuration::from_millis(1500);
        st.upsert(object(
            &annotated(&later.to_string()).replace("10.1.0.2", "10.1.0.9"),
        ));
        let times = st.take_changes().trigger_times.remove(&key).unwrap();
        assert_eq!(times, [SystemTime::from(later)]);
        st.upsert(object(
            &annotated("2020-01-01T00:00:00.123456789Z").replace("10.1.0.2", "10.1.0.8"),
        ));
        let changes = st.take_changes();
        assert!(changes.services.contains(&key));
        assert!(changes.trigger_times.is_empty(), "{changes:?}");
        // A change then the slice's removal: nothing left to time.
        st.upsert(object(SLICE));
        st.remove(&object(SLICE).key());
        assert!(st.take_changes().trigger_times.is_empty());
    }

    #[test]
    fn unused_node_names_are_swept() {
        let mut names = NodeNames::default();
        let kept = names.get("kept");
        for i in 0..5 * NodeNames::MIN_SWEEP {
            names.get(&format!("gone-{i}"));
        }
        assert!(names.names.len() <= NodeNames::MIN_SWEEP + 1);
        assert!(Arc::ptr_eq(&kept, &names.get("kept")));
    }

    #[test]
    fn nodes_keep_labels_and_addresses_only() {
        let mut st = ClusterState::default();
        st.upsert(object("kind: Node\nmetadata: {name: n1, labels: {l: v}, annotations: {a: b}}\nspec: {podCIDR: 10.0.0.0/24}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.2}], images: [{names: [big]}]}\n"));
        let node = st.node("n1").unwrap();
        assert_eq!(node.metadata.labels.as_ref().unwrap()["l"], "v");
        assert!(node.metadata.annotations.is_none() && node.spec.is_none());
        let status = node.status.as_ref().unwrap();
        assert_eq!(status.addresses.as_ref().unwrap()[0].address, "192.168.0.2");
        assert!(status.images.is_none());
    }
}
