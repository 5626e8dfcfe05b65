//! Builders of small and large models for engine tests and benchmarks (feature
//! `test-util`): a node `test-node` at 192.168.0.2 / 2001:db8::1 with cluster CIDRs
//! 10.0.0.0/8 and fd00:10::/32. Tests describe Services as facts ([`TestService`]) and
//! the model plans them with the real planner, so engine tests exercise the plans the
//! agent would produce.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use ipnet::IpNet;

use crate::{
    Catalog, Endpoint, ModelConfig, NodeFacts, NodeModel, Protocol, ServiceEntry, ServiceEntryPort,
    ServicePortName, SliceEndpoint, SliceEntry, SlicePort,
};

pub const NODE_NAME: &str = "test-node";

pub fn spn(ns: &str, name: &str, port: &str) -> ServicePortName {
    ServicePortName::new(ns, name, port, Protocol::Tcp)
}

/// A ready endpoint; `local`: on this node.
pub fn ep(ip: &str, port: u16, local: bool) -> Endpoint {
    Endpoint {
        ip: ip.parse().unwrap(),
        port,
        local,
        ready: true,
        serving: true,
        terminating: false,
        zone_hints: vec![],
        node_hints: vec![],
    }
}

/// One port of one Service with its endpoints, as facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestService {
    pub name: ServicePortName,
    pub port: u16,
    pub cluster_ips: Vec<IpAddr>,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    pub external_policy_local: bool,
    pub internal_policy_local: bool,
    pub affinity_timeout: Option<u32>,
    pub health_check_node_port: Option<u16>,
    /// Every endpoint with its conditions (`local`: on `test-node`).
    pub endpoints: Vec<Endpoint>,
}

/// A ClusterIP service port `default/NAME:http` with the given endpoints.
pub fn service(
    name: &str,
    cluster_ips: &[&str],
    port: u16,
    endpoints: Vec<Endpoint>,
) -> TestService {
    TestService {
        name: spn("default", name, "http"),
        port,
        cluster_ips: cluster_ips.iter().map(|s| s.parse().unwrap()).collect(),
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        external_policy_local: false,
        internal_policy_local: false,
        affinity_timeout: None,
        health_check_node_port: None,
        endpoints,
    }
}

/// The Services of a test, as a catalog.
#[derive(Clone, Debug, Default)]
pub struct TestCatalog {
    services: BTreeMap<(String, String), (ServiceEntry, Vec<SliceEntry>)>,
}

impl TestCatalog {
    pub fn new(services: &[TestService]) -> TestCatalog {
        let mut catalog = TestCatalog::default();
        let node: Arc<str> = Arc::from(NODE_NAME);
        let other: Arc<str> = Arc::from("other-node");
        for s in services {
            let key = (s.name.namespace.to_string(), s.name.name.to_string());
            let (entry, slices) = catalog.services.entry(key).or_insert_with(|| {
                let mut entry = ServiceEntry {
                    proxied: true,
                    cluster_ips: s.cluster_ips.clone().into(),
                    external_ips: s.external_ips.clone().into(),
                    load_balancer_ips: s.load_balancer_ips.clone().into(),
                    load_balancer_source_ranges: s.load_balancer_source_ranges.clone().into(),
                    external_policy_local: s.external_policy_local,
                    internal_policy_local: s.internal_policy_local,
                    affinity_timeout: s.affinity_timeout,
                    health_check_node_port: s.health_check_node_port,
                    ports: vec![],
                };
                entry.cluster_ips.sort();
                (entry, vec![])
            });
            entry.ports.push(ServiceEntryPort {
                name: s.name.port.to_string(),
                protocol: s.name.protocol,
                port: s.port,
                node_port: s.node_port,
            });
            // One slice per (port, endpoint port): endpoints of a port may differ in
            // their target port.
            let mut by_target: BTreeMap<u16, Vec<SliceEndpoint>> = BTreeMap::new();
            for e in &s.endpoints {
                by_target.entry(e.port).or_default().push(SliceEndpoint {
                    ip: e.ip,
                    ready: e.ready,
                    serving: e.serving,
                    terminating: e.terminating,
                    node_name: Some(if e.local { node.clone() } else { other.clone() }),
                    hints: (!e.zone_hints.is_empty() || !e.node_hints.is_empty()).then(|| {
                        Box::new(crate::EndpointHints {
                            zones: e.zone_hints.clone(),
                            nodes: e.node_hints.clone(),
                        })
                    }),
                });
            }
            for (target, endpoints) in by_target {
                slices.push(SliceEntry {
                    service: Some(s.name.name.clone()),
                    ports: vec![SlicePort {
                        name: s.name.port.clone(),
                        protocol: Some(s.name.protocol),
                        port: Some(target),
                    }],
                    endpoints,
                });
            }
        }
        catalog
    }
}

impl Catalog for TestCatalog {
    fn service(&self, namespace: &str, name: &str) -> Option<&ServiceEntry> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
            .map(|(e, _)| e)
    }

    fn services(&self) -> Box<dyn Iterator<Item = (&str, &str, &ServiceEntry)> + '_> {
        Box::new(
            self.services
                .iter()
                .map(|((ns, n), (e, _))| (ns.as_str(), n.as_str(), e)),
        )
    }

    fn slices_of<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> Box<dyn Iterator<Item = &'a SliceEntry> + 'a> {
        Box::new(
            self.services
                .get(&(namespace.to_string(), name.to_string()))
                .into_iter()
                .flat_map(|(_, s)| s.iter()),
        )
    }
}

/// `test-node`: 192.168.0.2 and 2001:db8::1.
pub fn node() -> NodeFacts {
    NodeFacts {
        name: NODE_NAME.into(),
        primary_ips: vec![
            "192.168.0.2".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ],
        zone: "zone-a".into(),
    }
}

/// Cluster CIDRs 10.0.0.0/8 and fd00:10::/32; NodePorts on the primary IPs.
pub fn config() -> ModelConfig {
    ModelConfig {
        cluster_cidrs: vec![
            "10.0.0.0/8".parse().unwrap(),
            "fd00:10::/32".parse().unwrap(),
        ],
        masquerade_all: false,
        node_port_cidrs: vec![],
        node_port_primary: false,
    }
}

/// The model of `services` on `test-node` with [`config`].
pub fn model(services: Vec<TestService>) -> NodeModel {
    model_with(services, &config())
}

/// The model of `services` on `test-node` with another config.
pub fn model_with(services: Vec<TestService>, config: &ModelConfig) -> NodeModel {
    NodeModel::build(&TestCatalog::new(&services), &node(), config)
}

/// `count` services with `endpoints` endpoints each (the first one local), every
/// fourth with a NodePort, for scale checks.
pub fn big_services(count: usize, endpoints: usize) -> Vec<TestService> {
    (0..count)
        .map(|i| {
            let cip = format!("172.{}.{}.{}", 16 + (i >> 16) % 16, (i >> 8) & 255, i & 255);
            let eps = (0..endpoints)
                .map(|j| {
                    let n = i * endpoints + j;
                    ep(
                        &format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255),
                        8080,
                        j == 0,
                    )
                })
                .collect();
            let mut s = service(&format!("svc-{i}"), &[&cip], 80, eps);
            if i % 4 == 0 {
                s.node_port = Some(30000 + (i % 2768) as u16);
            }
            s
        })
        .collect()
}

/// The model of [`big_services`].
pub fn big_model(count: usize, endpoints: usize) -> NodeModel {
    model(big_services(count, endpoints))
}

/// proptest strategies for renderer property tests: any address, prefix, protocol,
/// endpoint, and names made to break a ruleset (quotes, newlines, rule and command
/// syntax of both nft and iptables-restore, 253 characters).
pub mod strategies {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use ipnet::IpNet;
    use proptest::prelude::*;

    use crate::{Endpoint, Protocol};

    pub fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
            any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
            Just("::".parse().unwrap()),
            Just("::ffff:10.0.0.1".parse().unwrap()),
            Just("0.0.0.0".parse().unwrap()),
            Just("10.0.0.5".parse().unwrap()),
        ]
    }

    pub fn any_net() -> impl Strategy<Value = IpNet> {
        (any_ip(), 0u8..=128).prop_map(|(ip, len)| {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            IpNet::new(ip, len % (max + 1)).unwrap().trunc()
        })
    }

    pub fn any_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "(.|\n){0,40}",
            "[a-z0-9\"';{}\\\\\n é€😀$@#-]{0,60}",
            Just("x".repeat(253)),
            Just("é".repeat(253)),
            Just("\"; flush ruleset; \"".to_string()),
            Just("\"\n-A INPUT -j DROP\nCOMMIT\n*filter\n".to_string()),
            Just("a b; -F".to_string()),
        ]
    }

    pub fn any_protocol() -> impl Strategy<Value = Protocol> {
        prop_oneof![
            Just(Protocol::Tcp),
            Just(Protocol::Udp),
            Just(Protocol::Sctp)
        ]
    }

    /// Any endpoint, in any condition (ready, serving and terminating, or neither).
    pub fn any_endpoint() -> impl Strategy<Value = Endpoint> {
        (any_ip(), 1u16..=65535, any::<bool>(), 0u8..3).prop_map(|(ip, port, local, state)| {
            Endpoint {
                ip,
                port,
                local,
                ready: state == 0,
                serving: state < 2,
                terminating: state == 1,
                zone_hints: vec![],
                node_hints: vec![],
            }
        })
    }
}
