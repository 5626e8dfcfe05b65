//! NodePort / LoadBalancer traffic from outside the node, through the tc programs on the
//! sandbox's uplink (and cbr0 for local backends' replies), with real traffic from the
//! external namespace.

mod support;

use std::collections::BTreeSet;

use support::*;
use switchyard_e2e::{Outcome, Proto};
use switchyard_ebpf::{Action, Protocol, Scope, ServicePort, TargetSet};

const EPS: [&str; 2] = ["10.0.1.1:8080", "10.0.1.2:8080"];

/// NodePort 30080 on 192.168.0.2 (tcp + udp) from outside, to `EPS`.
fn node_port(id: u32, masquerade: bool) -> ServicePort {
    let mut sp = ServicePort {
        id,
        ..ServicePort::default()
    };
    sp.sets.insert(TargetSet::External, backends(&EPS));
    for p in [Protocol::Tcp, Protocol::Udp] {
        let mut e = forward(id, TargetSet::External);
        e.masquerade = masquerade;
        sp.entries
            .insert(key("192.168.0.2", 30080, p, Scope::External), e);
    }
    sp
}

#[test]
fn node_port_from_outside_masquerades_under_cluster_and_keeps_the_client_under_local() {
    if !root_or_skip(
        "node_port_from_outside_masquerades_under_cluster_and_keeps_the_client_under_local",
    ) {
        return;
    }
    let node = Node::new(&EPS.map(|e| e.split(':').next().unwrap()), &[8080]);
    let mut dp = node.load();
    dp.set_masquerade_address("192.168.0.2".parse().unwrap())
        .unwrap();
    let all: BTreeSet<String> = EPS.map(String::from).into();

    dp.upsert_service(&node_port(10, true)).unwrap();
    for proto in [Proto::Tcp, Proto::Udp] {
        let seen = node.reached("ext", "192.168.0.2:30080", proto, 30);
        assert_eq!(
            seen.keys().cloned().collect::<BTreeSet<_>>(),
            all,
            "{proto}"
        );
        for s in seen.values() {
            assert_eq!(
                s,
                &["192.168.0.2".parse().unwrap()].into(),
                "{proto}: masqueraded to the node"
            );
        }
    }

    dp.upsert_service(&node_port(10, false)).unwrap();
    for proto in [Proto::Tcp, Proto::Udp] {
        let seen = node.reached("ext", "192.168.0.2:30080", proto, 30);
        assert_eq!(
            seen.keys().cloned().collect::<BTreeSet<_>>(),
            all,
            "{proto}"
        );
        for s in seen.values() {
            assert_eq!(
                s,
                &["203.0.113.2".parse().unwrap()].into(),
                "{proto}: client address kept"
            );
        }
    }
}

#[test]
fn load_balancer_source_ranges_allow_and_deny() {
    if !root_or_skip("load_balancer_source_ranges_allow_and_deny") {
        return;
    }
    let node = Node::new(&EPS.map(|e| e.split(':').next().unwrap()), &[8080]);
    let mut dp = node.load();
    dp.set_masquerade_address("192.168.0.2".parse().unwrap())
        .unwrap();
    let mut sp = ServicePort {
        id: 11,
        ..ServicePort::default()
    };
    sp.sets.insert(TargetSet::External, backends(&EPS));
    let mut e = forward(11, TargetSet::External);
    e.masquerade = true;
    e.source_ranges = true;
    sp.entries
        .insert(key("192.168.99.11", 80, Protocol::Tcp, Scope::External), e);
    sp.source_ranges
        .insert(("203.0.113.0".parse().unwrap(), 25));
    dp.upsert_service(&sp).unwrap();
    assert!(matches!(
        node.probe("ext", "192.168.99.11:80", Proto::Tcp),
        Outcome::Answered { .. }
    ));
    assert_eq!(
        node.probe("extblocked", "192.168.99.11:80", Proto::Tcp),
        Outcome::Timeout
    );
    // Read back: the range is there, as written.
    let back = dp.read_back().unwrap();
    assert_eq!(back[&11].source_ranges, sp.source_ranges);
    assert!(dp.verify().unwrap().is_empty());
}

#[test]
fn reject_from_outside_answers_with_rst_and_icmp() {
    if !root_or_skip("reject_from_outside_answers_with_rst_and_icmp") {
        return;
    }
    let node = Node::new(&[], &[]);
    let mut dp = node.load();
    let mut sp = ServicePort {
        id: 12,
        ..ServicePort::default()
    };
    for p in [Protocol::Tcp, Protocol::Udp] {
        let mut e = forward(12, TargetSet::External);
        e.action = Action::Reject;
        sp.entries
            .insert(key("192.168.0.2", 30081, p, Scope::External), e);
    }
    dp.upsert_service(&sp).unwrap();
    for proto in [Proto::Tcp, Proto::Udp] {
        match node.probe("ext", "192.168.0.2:30081", proto) {
            Outcome::Refused(_) => {}
            other => panic!("{proto} to a tc Reject entry: {other}"),
        }
    }
}
