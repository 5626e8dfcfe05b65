//! The engine with real plans and real traffic: socket-level load balancing for the
//! node's processes (host and pods, in the sandbox's private cgroup) and the tc programs
//! for traffic from outside, for every kind of target the model plans.

mod support;

use std::time::Duration;

use support::*;
use switchyard_e2e::{Outcome, Proto};
use switchyard_model::{ChangeSet, Endpoint, Protocol};

const POD: &str = "10.0.0.2";
const NODE: &str = "192.168.0.2";
const EXT: &str = "203.0.113.2";

/// The same service port over UDP (port name `udp`).
fn udp(s: &TestService) -> TestService {
    let mut u = s.clone();
    u.name.port = "udp".into();
    u.name.protocol = Protocol::Udp;
    u
}

#[test]
fn cluster_ip_tcp_and_udp_from_pod_and_node() {
    if !root_or_skip("cluster_ip_tcp_and_udp_from_pod_and_node") {
        return;
    }
    let node = Node::with_endpoints(&["10.0.1.1", "10.0.1.2"], &[8080]);
    let web = svc(
        "web",
        "10.96.0.10",
        80,
        &[("10.0.1.1", 8080, true), ("10.0.1.2", 8080, false)],
    );
    let m = model(vec![web.clone(), udp(&web)]);
    let _engine = node.engine_with(&m);
    let both = ["10.0.1.1:8080", "10.0.1.2:8080"];
    for proto in [Proto::Tcp, Proto::Udp] {
        node.expect("pod", "10.96.0.10:80", proto, &both, POD);
        node.expect("node", "10.96.0.10:80", proto, &both, NODE);
    }
    // Unconnected UDP: the reply is reported from the VIP (recvmsg reverse translation).
    let src = node.sb.source("pod").unwrap();
    let vip = "10.96.0.10:80".parse().unwrap();
    for _ in 0..6 {
        let (outcome, from) = node
            .sb
            .cgroup_client()
            .unwrap()
            .udp_unconnected(&src, vip, TIMEOUT)
            .unwrap();
        assert!(matches!(outcome, Outcome::Answered { .. }), "{outcome}");
        assert_eq!(from, Some(vip), "recvfrom reports the VIP");
    }
    // A port the service does not have is left alone (routed away, never translated).
    assert!(!matches!(
        node.probe("pod", "10.96.0.10:81", Proto::Tcp),
        Outcome::Answered { .. }
    ));
}

#[test]
fn node_port_lb_and_external_ip_from_outside_cluster_then_local_policy() {
    if !root_or_skip("node_port_lb_and_external_ip_from_outside_cluster_then_local_policy") {
        return;
    }
    let node = Node::with_endpoints(&["10.0.1.1", "10.0.1.2"], &[8080]);
    let mut np = svc(
        "np",
        "10.96.0.20",
        80,
        &[("10.0.1.1", 8080, true), ("10.0.1.2", 8080, false)],
    );
    np.node_port = Some(30080);
    np.external_ips = vec!["192.168.99.11".parse().unwrap()];
    np.load_balancer_ips = vec!["1.2.3.4".parse().unwrap()];
    let cluster = model(vec![np.clone(), udp(&np)]);
    let mut engine = node.engine_with(&cluster);
    let both = ["10.0.1.1:8080", "10.0.1.2:8080"];
    // externalTrafficPolicy Cluster: every endpoint, masqueraded to the node address.
    for dst in ["192.168.0.2:30080", "192.168.99.11:80", "1.2.3.4:80"] {
        for proto in [Proto::Tcp, Proto::Udp] {
            node.expect("ext", dst, proto, &both, NODE);
        }
    }
    // From the node's own processes: socket LB, nothing NATed.
    node.expect("pod", "192.168.0.2:30080", Proto::Tcp, &both, POD);
    node.expect("node", "1.2.3.4:80", Proto::Tcp, &both, NODE);

    // externalTrafficPolicy Local (a partial sync): only the local endpoint, the
    // client's address kept; the node's own processes short-circuit to every endpoint.
    np.external_policy_local = true;
    let local = model(vec![np.clone(), udp(&np)]);
    let report = node.sync(&mut engine, &local, &ChangeSet::between(&cluster, &local));
    assert!(!report.full);
    for dst in ["192.168.0.2:30080", "192.168.99.11:80", "1.2.3.4:80"] {
        for proto in [Proto::Tcp, Proto::Udp] {
            node.expect("ext", dst, proto, &["10.0.1.1:8080"], EXT);
        }
    }
    node.expect("pod", "1.2.3.4:80", Proto::Tcp, &both, POD);
    node.expect("node", "192.168.0.2:30080", Proto::Tcp, &both, NODE);
}

#[test]
fn load_balancer_source_ranges_filter_outside_clients_only() {
    if !root_or_skip("load_balancer_source_ranges_filter_outside_clients_only") {
        return;
    }
    let node = Node::with_endpoints(&["10.0.1.1"], &[8080]);
    let mut lb = svc("lb", "10.96.0.30", 80, &[("10.0.1.1", 8080, true)]);
    lb.node_port = Some(30081);
    lb.load_balancer_ips = vec!["1.2.3.5".parse().unwrap()];
    lb.load_balancer_source_ranges = vec!["203.0.113.0/25".parse().unwrap()];
    let m = model(vec![lb]);
    let _engine = node.engine_with(&m);
    node.expect("ext", "1.2.3.5:80", Proto::Tcp, &["10.0.1.1:8080"], NODE);
    assert_eq!(
        node.probe("extblocked", "1.2.3.5:80", Proto::Tcp),
        Outcome::Timeout,
        "a source outside the ranges is dropped"
    );
    // The NodePort is not filtered (upstream), nor are the node's own clients (Cilium:
    // source ranges apply to traffic from outside the cluster).
    node.expect(
        "extblocked",
        "192.168.0.2:30081",
        Proto::Tcp,
        &["10.0.1.1:8080"],
        NODE,
    );
    node.expect("pod", "1.2.3.5:80", Proto::Tcp, &["10.0.1.1:8080"], POD);
}

#[test]
fn reject_refuses_and_drop_times_out() {
    if !root_or_skip("reject_refuses_and_drop_times_out") {
        return;
    }
    let node = Node::with_endpoints(&["10.0.1.2"], &[8080]);
    // No endpoint anywhere: every destination rejects.
    let mut none = svc("none", "10.96.0.40", 80, &[]);
    none.node_port = Some(30082);
    // Endpoints only on another node, Local policies: dropped.
    let mut itp = svc("itp", "10.96.0.41", 80, &[("10.0.1.2", 8080, false)]);
    itp.internal_policy_local = true;
    let mut etp = svc("etp", "10.96.0.42", 80, &[("10.0.1.2", 8080, false)]);
    etp.node_port = Some(30083);
    etp.external_policy_local = true;
    let m = model(vec![none.clone(), udp(&none), itp.clone(), udp(&itp), etp]);
    let _engine = node.engine_with(&m);
    for role in ["pod", "node"] {
        for proto in [Proto::Tcp, Proto::Udp] {
            match node.probe(role, "10.96.0.40:80", proto) {
                Outcome::Refused(why) => assert!(why.contains("refused"), "{role} {proto}: {why}"),
                other => panic!("{role} {proto} to a rejecting ClusterIP: {other}"),
            }
            assert_eq!(
                node.probe(role, "10.96.0.41:80", proto),
                Outcome::Timeout,
                "{role} {proto}: iTP Local without a local endpoint drops"
            );
        }
    }
    for proto in [Proto::Tcp, Proto::Udp] {
        assert!(
            matches!(
                node.probe("ext", "192.168.0.2:30082", proto),
                Outcome::Refused(_)
            ),
            "{proto}: a rejecting NodePort answers with a TCP RST / ICMP port unreachable"
        );
    }
    assert_eq!(
        node.probe("ext", "192.168.0.2:30083", Proto::Tcp),
        Outcome::Timeout,
        "eTP Local without a local endpoint drops outside traffic"
    );
    node.expect(
        "pod",
        "192.168.0.2:30083",
        Proto::Tcp,
        &["10.0.1.2:8080"],
        POD,
    );
}

#[test]
fn internal_traffic_policy_local_and_terminating_fallback() {
    if !root_or_skip("internal_traffic_policy_local_and_terminating_fallback") {
        return;
    }
    let node = Node::with_endpoints(&["10.0.1.1", "10.0.1.2", "10.0.1.3"], &[8080]);
    let mut itp = svc(
        "itp",
        "10.96.0.50",
        80,
        &[("10.0.1.1", 8080, true), ("10.0.1.2", 8080, false)],
    );
    itp.internal_policy_local = true;
    itp.node_port = Some(30084);
    let terminating = |ip: &str, serving: bool| Endpoint {
        ready: false,
        serving,
        terminating: true,
        ..ep(ip, 8080, false)
    };
    // A ready endpoint wins over a serving terminating one...
    let mut mixed = svc("mixed", "10.96.0.51", 80, &[("10.0.1.1", 8080, false)]);
    mixed.endpoints.push(terminating("10.0.1.2", true));
    // ...which serves when no endpoint is ready; a non-serving one never does.
    let mut fallback = svc("fallback", "10.96.0.52", 80, &[]);
    fallback.endpoints.push(terminating("10.0.1.2", true));
    fallback.endpoints.push(terminating("10.0.1.3", false));
    let mut gone = svc("gone", "10.96.0.53", 80, &[]);
    gone.endpoints.push(terminating("10.0.1.3", false));
    let m = model(vec![itp, mixed, fallback, gone]);
    let _engine = node.engine_with(&m);
    node.expect("pod", "10.96.0.50:80", Proto::Tcp, &["10.0.1.1:8080"], POD);
    node.expect(
        "ext",
        "192.168.0.2:30084",
        Proto::Tcp,
        &["10.0.1.1:8080", "10.0.1.2:8080"],
        NODE,
    );
    node.expect("pod", "10.96.0.51:80", Proto::Tcp, &["10.0.1.1:8080"], POD);
    node.expect("pod", "10.96.0.52:80", Proto::Tcp, &["10.0.1.2:8080"], POD);
    assert!(matches!(
        node.probe("pod", "10.96.0.53:80", Proto::Tcp),
        Outcome::Refused(_)
    ));
}

#[test]
fn client_ip_affinity_sticks_and_moves_when_its_endpoint_goes() {
    if !root_or_skip("client_ip_affinity_sticks_and_moves_when_its_endpoint_goes") {
        return;
    }
    let all = ["10.0.1.1", "10.0.1.2", "10.0.1.3"];
    let node = Node::with_endpoints(&all, &[8080]);
    let sticky = |ips: &[&str]| {
        let eps: Vec<(&str, u16, bool)> = ips.iter().map(|ip| (*ip, 8080, true)).collect();
        let mut s = svc("sticky", "10.96.0.55", 80, &eps);
        s.affinity_timeout = Some(10800);
        s.node_port = Some(30085);
        s
    };
    let before = model(vec![sticky(&all)]);
    let mut engine = node.engine_with(&before);
    for (role, dst) in [
        ("pod", "10.96.0.55:80"),
        ("node", "10.96.0.55:80"),
        ("ext", "192.168.0.2:30085"),
    ] {
        let seen = node.reached(role, dst, Proto::Tcp, 12);
        assert_eq!(seen.len(), 1, "{role}: one backend, got {seen:?}");
    }
    let chosen = node.reached("pod", "10.96.0.55:80", Proto::Tcp, 1);
    let chosen = chosen
        .keys()
        .next()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string();
    let rest: Vec<&str> = all.into_iter().filter(|ip| *ip != chosen).collect();
    let after = model(vec![sticky(&rest)]);
    node.sync(&mut engine, &after, &ChangeSet::between(&before, &after));
    let seen = node.reached("pod", "10.96.0.55:80", Proto::Tcp, 12);
    assert_eq!(seen.len(), 1, "sticky again: {seen:?}");
    assert!(!seen.keys().any(|b| b.starts_with(&format!("{chosen}:"))));
}

#[test]
fn dual_stack_ipv6_from_pod_node_and_outside() {
    if !root_or_skip("dual_stack_ipv6_from_pod_node_and_outside") {
        return;
    }
    let node = Node::new(
        &[&["10.0.1.1", "fd00:10:1::1"], &["10.0.1.2", "fd00:10:1::2"]],
        &[8080],
    );
    let eps = [
        ("10.0.1.1", 8080, true),
        ("fd00:10:1::1", 8080, true),
        ("10.0.1.2", 8080, false),
        ("fd00:10:1::2", 8080, false),
    ];
    let mut ds = svc("ds", "10.96.0.60", 80, &eps);
    ds.cluster_ips.push("fd00:96::60".parse().unwrap());
    ds.node_port = Some(30090);
    let m = model(vec![ds.clone(), udp(&ds)]);
    let _engine = node.engine_with(&m);
    let v6 = ["[fd00:10:1::1]:8080", "[fd00:10:1::2]:8080"];
    for proto in [Proto::Tcp, Proto::Udp] {
        node.expect("pod6", "[fd00:96::60]:80", proto, &v6, "fd00:10::2");
        node.expect("node6", "[fd00:96::60]:80", proto, &v6, "2001:db8::1");
        node.expect("ext6", "[2001:db8::1]:30090", proto, &v6, "2001:db8::1");
        node.expect(
            "pod",
            "10.96.0.60:80",
            proto,
            &["10.0.1.1:8080", "10.0.1.2:8080"],
            POD,
        );
    }
    // A connection that ends: the next one to the same backend is fresh (no stale flow).
    std::thread::sleep(Duration::from_millis(50));
    node.expect(
        "ext6",
        "[2001:db8::1]:30090",
        Proto::Tcp,
        &v6,
        "2001:db8::1",
    );
}

#[test]
fn a_service_ip_on_a_node_address_wins_over_a_node_port_and_gives_it_back() {
    if !root_or_skip("a_service_ip_on_a_node_address_wins_over_a_node_port_and_gives_it_back") {
        return;
    }
    let node = Node::with_endpoints(&["10.0.1.1", "10.0.1.2"], &[8080]);
    let mut np = svc("np", "10.96.0.80", 80, &[("10.0.1.2", 8080, true)]);
    np.node_port = Some(30151);
    let mut on_node = svc("on-node", "10.96.0.81", 30151, &[("10.0.1.1", 8080, true)]);
    on_node.external_ips = vec!["192.168.0.2".parse().unwrap()];
    let alone = model(vec![np.clone()]);
    let mut engine = node.engine_with(&alone);
    node.expect(
        "ext",
        "192.168.0.2:30151",
        Proto::Tcp,
        &["10.0.1.2:8080"],
        NODE,
    );
    // The external IP's service arrives (a partial sync): it takes the address and port.
    let both = model(vec![np.clone(), on_node]);
    node.sync(&mut engine, &both, &ChangeSet::between(&alone, &both));
    for role in ["ext", "pod"] {
        let seen = node.reached(role, "192.168.0.2:30151", Proto::Tcp, 6);
        assert_eq!(seen.keys().collect::<Vec<_>>(), ["10.0.1.1:8080"], "{role}");
    }
    // It goes: the NodePort is served again.
    node.sync(&mut engine, &alone, &ChangeSet::between(&both, &alone));
    node.expect(
        "ext",
        "192.168.0.2:30151",
        Proto::Tcp,
        &["10.0.1.2:8080"],
        NODE,
    );
    assert_eq!(
        node.verify(&mut engine, &alone),
        switchyard_model::Drift::None
    );
}
