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
