//! Reachability verdicts of `switchyard explain --from`, on plans the real planner
//! makes: source classification, internal vs external targets, the Local policy's short
//! circuit, load-balancer source ranges, Drop and Reject.

use std::net::IpAddr;

use switchyard_model::{
    reach::{classify, destinations, no_endpoints, reach, Destination, Outcome, SourceClass},
    test_util::{ep, model, service, TestService},
    NodeModel, ServicePortPlan, VipKind,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn only(m: &NodeModel) -> &ServicePortPlan {
    m.services.values().next().unwrap()
}

/// A LoadBalancer service port: cluster IP 172.30.0.1, LB IP 192.168.99.11, NodePort
/// 30080, source ranges 203.0.113.0/25, one local and one remote endpoint.
fn lb(external_local: bool, endpoints: Vec<switchyard_model::Endpoint>) -> TestService {
    let mut s = service("web", &["172.30.0.1"], 80, endpoints);
    s.node_port = Some(30080);
    s.load_balancer_ips = vec![ip("192.168.99.11")];
    s.load_balancer_source_ranges = vec!["203.0.113.0/25".parse().unwrap()];
    s.external_policy_local = external_local;
    s
}

fn dest(m: &NodeModel, kind: Option<VipKind>) -> Destination {
    *destinations(m, only(m))
        .iter()
        .find(|d| d.kind == kind && d.addr.is_ipv4())
        .unwrap()
}

fn from(m: &NodeModel, source: &str, kind: Option<VipKind>) -> Outcome {
    let source = ip(source);
    let class = classify(m, &[], source);
    reach(only(m), class, source, &dest(m, kind))
}

#[test]
fn sources_are_classified_as_the_model_does() {
    let m = model(vec![service("a", &["172.30.0.1"], 80, vec![])]);
    assert_eq!(classify(&m, &[], ip("10.0.0.2")), SourceClass::Pod);
    assert_eq!(classify(&m, &[], ip("fd00:10::2")), SourceClass::Pod);
    assert_eq!(classify(&m, &[], ip("192.168.0.2")), SourceClass::Node);
    assert_eq!(classify(&m, &[], ip("127.0.0.1")), SourceClass::Node);
    assert_eq!(
        classify(&m, &[ip("192.168.1.2")], ip("192.168.1.2")),
        SourceClass::Node
    );
    assert_eq!(classify(&m, &[], ip("203.0.113.2")), SourceClass::Outside);
}

#[test]
fn destinations_are_vips_and_node_port_on_node_addresses() {
    let m = model(vec![lb(false, vec![ep("10.0.0.5", 8080, true)])]);
    let d = destinations(&m, only(&m));
    let text: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "172.30.0.1:80 (cluster IP)",
            "192.168.99.11:80 (load-balancer IP)",
            "192.168.0.2:30080 (NodePort)"
        ]
    );
}

#[test]
fn load_balancer_source_ranges_drop_other_sources_only_at_the_lb_ip() {
    let m = model(vec![lb(false, vec![ep("10.0.0.5", 8080, true)])]);
    let lb_ip = Some(VipKind::LoadBalancer);
    assert!(from(&m, "203.0.113.2", lb_ip).reaches());
    let blocked = from(&m, "203.0.113.130", lb_ip);
    assert!(
        matches!(&blocked, Outcome::Dropped(why) if why.contains("loadBalancerSourceRanges")),
        "{blocked}"
    );
    // The NodePort and the cluster IP are not filtered.
    assert!(from(&m, "203.0.113.130", None).reaches());
    assert!(from(&m, "203.0.113.130", Some(VipKind::ClusterIp)).reaches());
}

#[test]
fn local_external_policy_drops_outside_traffic_without_local_endpoints_but_short_circuits_pods() {
    let m = model(vec![lb(true, vec![ep("10.0.0.9", 8080, false)])]);
    let outside = from(&m, "203.0.113.2", None);
    assert!(
        matches!(&outside, Outcome::Dropped(why) if why.contains("externalTrafficPolicy")),
        "{outside}"
    );
    // Pods and the node go to the cluster-wide endpoints (short circuit).
    assert_eq!(
        from(&m, "10.0.0.2", None).to_string(),
        "reaches 10.0.0.9:8080"
    );
    assert!(from(&m, "192.168.0.2", None).reaches());
    // The node is outside the source ranges: its traffic to the LB IP is filtered.
    assert!(!from(&m, "192.168.0.2", Some(VipKind::LoadBalancer)).reaches());
    assert!(no_endpoints(only(&m)).is_none());
}

#[test]
fn no_endpoints_refuses_everywhere() {
    let m = model(vec![lb(false, vec![])]);
    let refused = from(&m, "10.0.0.2", Some(VipKind::ClusterIp));
    assert!(matches!(refused, Outcome::Refused(_)), "{refused}");
    assert!(no_endpoints(only(&m)).unwrap().contains("refused"));
}

#[test]
fn local_internal_policy_drops_cluster_ip_traffic_without_local_endpoints() {
    let mut s = service("a", &["172.30.0.1"], 80, vec![ep("10.0.0.9", 80, false)]);
    s.internal_policy_local = true;
    let m = model(vec![s]);
    let o = from(&m, "10.0.0.2", Some(VipKind::ClusterIp));
    assert!(
        matches!(&o, Outcome::Dropped(why) if why.contains("internalTrafficPolicy")),
        "{o}"
    );
    assert!(no_endpoints(only(&m)).unwrap().contains("dropped"));
}

#[test]
fn families_must_match() {
    let m = model(vec![service(
        "a",
        &["172.30.0.1"],
        80,
        vec![ep("10.0.0.5", 80, true)],
    )]);
    let o = from(&m, "fd00:10::2", Some(VipKind::ClusterIp));
    assert!(matches!(o, Outcome::Unreachable(_)), "{o}");
}
