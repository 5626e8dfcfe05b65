//! Socket-level load balancing with real traffic: cgroup programs attached to the
//! sandbox's private cgroup translate ClusterIPs for the node's and the pods' clients.

mod support;

use std::collections::BTreeSet;

use support::*;
use switchyard_e2e::{Outcome, Proto};
use switchyard_ebpf::Protocol;

#[test]
fn cluster_ip_tcp_and_udp_from_pod_and_node_reach_every_backend() {
    if !root_or_skip("cluster_ip_tcp_and_udp_from_pod_and_node_reach_every_backend") {
        return;
    }
    let node = Node::new(&["10.0.1.1", "10.0.1.2", "10.0.1.3"], &[8080]);
    let mut dp = node.load();
    let sp = cluster_ip(
        1,
        "10.96.0.10",
        80,
        &[Protocol::Tcp, Protocol::Udp],
        &["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"],
    );
    dp.upsert_service(&sp).unwrap();
    let all: BTreeSet<String> = ["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"]
        .map(String::from)
        .into();
    for (role, src) in [("pod", "10.0.0.2"), ("node", "192.168.0.2")] {
        for proto in [Proto::Tcp, Proto::Udp] {
            let seen = node.reached(role, "10.96.0.10:80", proto, 30);
            assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), all, "{role} {proto}");
            for sources in seen.values() {
                assert_eq!(sources, &[src.parse().unwrap()].into(), "{role} {proto}: no masquerade");
            }
        }
    }
    // An address that is no VIP is left alone.
    assert!(matches!(
        node.probe("pod", "10.0.1.1:8080", Proto::Tcp),
        Outcome::Answered { .. }
    ));
}
