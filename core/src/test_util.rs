//! Builders of small and large `NodeModel`s for engine tests and benchmarks (feature
//! `test-util`): a node `test-node` at 192.168.0.2 / 2001:db8::1 with cluster CIDRs
//! 10.0.0.0/8 and fd00:10::/32, ClusterIP service ports, ready endpoints.

use std::net::IpAddr;

use crate::{Endpoint, NodeModel, Protocol, ServicePort, ServicePortName};

pub fn spn(ns: &str, name: &str, port: &str) -> ServicePortName {
    ServicePortName {
        namespace: ns.into(),
        name: name.into(),
        port: port.into(),
        protocol: Protocol::Tcp,
    }
}

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

/// A ClusterIP service port with the given endpoints.
pub fn service(
    name: &str,
    cluster_ips: &[&str],
    port: u16,
    endpoints: Vec<Endpoint>,
) -> ServicePort {
    let local = endpoints.iter().filter(|e| e.local).cloned().collect();
    ServicePort {
        name: spn("default", name, "http"),
        protocol: Protocol::Tcp,
        port,
        cluster_ips: cluster_ips
            .iter()
            .map(|s| s.parse::<IpAddr>().unwrap())
            .collect(),
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        external_policy_local: false,
        internal_policy_local: false,
        affinity_timeout: None,
        health_check_node_port: None,
        cluster_endpoints: endpoints,
        local_endpoints: local,
    }
}

pub fn model(services: Vec<ServicePort>) -> NodeModel {
    NodeModel {
        node_name: "test-node".into(),
        node_ips: vec![
            "192.168.0.2".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ],
        node_port_addresses: vec![
            "192.168.0.2/32".parse().unwrap(),
            "2001:db8::1/128".parse().unwrap(),
        ],
        cluster_cidrs: vec![
            "10.0.0.0/8".parse().unwrap(),
            "fd00:10::/32".parse().unwrap(),
        ],
        masquerade_all: false,
        services: services.into_iter().map(|s| (s.name.clone(), s)).collect(),
    }
}

/// `count` services with `endpoints` endpoints each, for scale checks.
pub fn big_model(count: usize, endpoints: usize) -> NodeModel {
    let services = (0..count)
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
            let mut sp = service(&format!("svc-{i}"), &[&cip], 80, eps);
            if i % 4 == 0 {
                sp.node_port = Some(30000 + (i % 2768) as u16);
            }
            sp
        })
        .collect();
    model(services)
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

    pub fn any_endpoint() -> impl Strategy<Value = Endpoint> {
        (any_ip(), 1u16..=65535, any::<bool>()).prop_map(|(ip, port, local)| Endpoint {
            ip,
            port,
            local,
            ready: true,
            serving: true,
            terminating: false,
            zone_hints: vec![],
            node_hints: vec![],
        })
    }
}
