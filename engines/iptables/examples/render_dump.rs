//! Writes the full IPv4 restore input for N synthetic services to stdout (for profiling
//! the iptables tools): `cargo run --release -p switchyard-iptables --example render_dump -- 10000 2 [nft]`
//! (`nft`: the shape the engine sends to iptables-nft-restore).

use std::{collections::BTreeMap, io::Write, net::IpAddr};

use switchyard_core::{Endpoint, IpFamily, NodeModel, Protocol, ServicePort, ServicePortName};

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let per: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let shape = match args.next().as_deref() {
        Some("nft") => switchyard_iptables::Shape::NftListFirst,
        _ => switchyard_iptables::Shape::Plain,
    };
    let mut services = BTreeMap::new();
    for i in 0..count {
        let cip: IpAddr = format!("172.{}.{}.{}", 16 + (i >> 16) % 16, (i >> 8) & 255, i & 255)
            .parse()
            .unwrap();
        let eps: Vec<Endpoint> = (0..per)
            .map(|j| {
                let n = i * per + j;
                Endpoint {
                    ip: format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
                        .parse()
                        .unwrap(),
                    port: 8080,
                    local: j == 0,
                    ready: true,
                    serving: true,
                    terminating: false,
                    zone_hints: vec![],
                    node_hints: vec![],
                }
            })
            .collect();
        let name = ServicePortName {
            namespace: "default".into(),
            name: format!("svc-{i}"),
            port: "http".into(),
            protocol: Protocol::Tcp,
        };
        services.insert(
            name.clone(),
            ServicePort {
                name,
                protocol: Protocol::Tcp,
                port: 80,
                cluster_ips: vec![cip],
                node_port: (i % 4 == 0).then_some(30000 + (i % 2768) as u16),
                external_ips: vec![],
                load_balancer_ips: vec![],
                load_balancer_source_ranges: vec![],
                external_policy_local: false,
                internal_policy_local: false,
                affinity_timeout: None,
                health_check_node_port: None,
                cluster_endpoints: eps,
                local_endpoints: vec![],
            },
        );
    }
    let model = NodeModel {
        node_name: "n".into(),
        node_ips: vec!["192.168.0.2".parse().unwrap()],
        node_port_addresses: vec!["192.168.0.2/32".parse().unwrap()],
        cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        masquerade_all: false,
        services,
    };
    let text = switchyard_iptables::render_full_shaped(&model, IpFamily::V4, shape);
    std::io::stdout().write_all(text.as_bytes()).unwrap();
}
