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
            assert_eq!(
                seen.keys().cloned().collect::<BTreeSet<_>>(),
                all,
                "{role} {proto}"
            );
            for sources in seen.values() {
                assert_eq!(
                    sources,
                    &[src.parse().unwrap()].into(),
                    "{role} {proto}: no masquerade"
                );
            }
        }
    }
    // An address that is no VIP is left alone.
    assert!(matches!(
        node.probe("pod", "10.0.1.1:8080", Proto::Tcp),
        Outcome::Answered { .. }
    ));
}

#[test]
fn unconnected_udp_replies_come_from_the_vip() {
    if !root_or_skip("unconnected_udp_replies_come_from_the_vip") {
        return;
    }
    let node = Node::new(&["10.0.1.1", "10.0.1.2"], &[5353]);
    let mut dp = node.load();
    let sp = cluster_ip(
        2,
        "10.96.0.53",
        53,
        &[Protocol::Udp],
        &["10.0.1.1:5353", "10.0.1.2:5353"],
    );
    dp.upsert_service(&sp).unwrap();
    let src = node.sb.source("pod").unwrap();
    let vip = "10.96.0.53:53".parse().unwrap();
    let mut backends = BTreeSet::new();
    for _ in 0..20 {
        let (outcome, from) = node
            .sb
            .cgroup_client()
            .unwrap()
            .udp_unconnected(&src, vip, TIMEOUT)
            .unwrap();
        match outcome {
            Outcome::Answered { backend, .. } => backends.insert(backend),
            other => panic!("unconnected UDP to the VIP: {other}"),
        };
        assert_eq!(
            from,
            Some(vip),
            "recvfrom must report the VIP (recvmsg4 reverse translation)"
        );
    }
    assert_eq!(backends.len(), 2);
}

#[test]
fn client_ip_affinity_sticks_to_one_backend() {
    if !root_or_skip("client_ip_affinity_sticks_to_one_backend") {
        return;
    }
    let node = Node::new(&["10.0.1.1", "10.0.1.2", "10.0.1.3"], &[8080]);
    let mut dp = node.load();
    let mut sp = cluster_ip(
        3,
        "10.96.0.11",
        80,
        &[Protocol::Tcp],
        &["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"],
    );
    for e in sp.entries.values_mut() {
        e.affinity_timeout = Some(10800);
    }
    dp.upsert_service(&sp).unwrap();
    let seen = node.reached("pod", "10.96.0.11:80", Proto::Tcp, 20);
    assert_eq!(seen.len(), 1, "affinity: one backend, got {seen:?}");
    // The chosen backend leaves: the next connection picks another and sticks to it.
    let chosen = seen.keys().next().unwrap().clone();
    let rest: Vec<&str> = ["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"]
        .into_iter()
        .filter(|b| *b != chosen)
        .collect();
    sp.sets
        .insert(switchyard_ebpf::TargetSet::Internal, backends(&rest));
    dp.upsert_service(&sp).unwrap();
    let after = node.reached("pod", "10.96.0.11:80", Proto::Tcp, 20);
    assert_eq!(after.len(), 1, "affinity after the change: {after:?}");
    assert!(!after.contains_key(&chosen));
}

#[test]
fn reject_refuses_and_drop_times_out() {
    if !root_or_skip("reject_refuses_and_drop_times_out") {
        return;
    }
    let node = Node::new(&[], &[]);
    let mut dp = node.load();
    for (id, vip, action) in [
        (4, "10.96.0.20", switchyard_ebpf::Action::Reject),
        (5, "10.96.0.21", switchyard_ebpf::Action::Drop),
    ] {
        let mut sp = switchyard_ebpf::ServicePort {
            id,
            ..Default::default()
        };
        for p in [Protocol::Tcp, Protocol::Udp] {
            let mut e = forward(id, switchyard_ebpf::TargetSet::Internal);
            e.action = action;
            sp.entries
                .insert(key(vip, 80, p, switchyard_ebpf::Scope::Node), e);
        }
        dp.upsert_service(&sp).unwrap();
    }
    for role in ["pod", "node"] {
        for proto in [Proto::Tcp, Proto::Udp] {
            match node.probe(role, "10.96.0.20:80", proto) {
                Outcome::Refused(why) => assert!(why.contains("refused"), "{role} {proto}: {why}"),
                other => panic!("{role} {proto} to a Reject entry: {other}"),
            }
            assert_eq!(
                node.probe(role, "10.96.0.21:80", proto),
                Outcome::Timeout,
                "{role} {proto} to a Drop entry"
            );
        }
    }
}
