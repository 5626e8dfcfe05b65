//! Service semantics, decided once: every plan decision against upstream kube-proxy's
//! rules (`CategorizeEndpoints`, `syncProxyRules` of the iptables and nftables
//! proxiers), per IP family.

use std::net::IpAddr;

use switchyard_model::{
    test_util::{self, ep, model, model_with, service, TestService},
    FamilyPlan, IpFamily, MasqueradeSources, ModelConfig, NodeModel, ServicePortPlan, Target,
};

fn only(m: &NodeModel) -> &ServicePortPlan {
    assert_eq!(m.services.len(), 1);
    m.services.values().next().unwrap()
}

fn fam(m: &NodeModel, f: IpFamily) -> FamilyPlan {
    only(m).family(f).cloned().unwrap()
}

fn shown(t: &Target) -> String {
    t.to_string()
}

fn terminating(mut e: switchyard_model::Endpoint) -> switchyard_model::Endpoint {
    e.ready = false;
    e.serving = true;
    e.terminating = true;
    e
}

fn external(mut s: TestService) -> TestService {
    s.node_port = Some(30080);
    s
}

#[test]
fn no_endpoints_rejects_everything() {
    let m = model(vec![external(service("s", &["10.96.0.1"], 80, vec![]))]);
    let f = fam(&m, IpFamily::V4);
    assert_eq!(
        (f.internal.clone(), f.external.clone()),
        (Target::Reject, Target::Reject)
    );
    assert!(f.short_circuit.is_none() && f.rejects());
}

#[test]
fn internal_local_without_local_endpoints_drops_cluster_ip_traffic_only() {
    let mut s = external(service(
        "s",
        &["10.96.0.1"],
        80,
        vec![ep("10.1.0.1", 80, false)],
    ));
    s.internal_policy_local = true;
    let f = fam(&model(vec![s]), IpFamily::V4);
    assert_eq!(f.internal, Target::Drop);
    assert_eq!(shown(&f.external), "10.1.0.1:80");
}

#[test]
fn external_local_keeps_client_address_and_short_circuits_inside_traffic() {
    let eps = vec![ep("10.1.0.1", 80, true), ep("10.1.0.2", 80, false)];
    let mut s = external(service("s", &["10.96.0.1"], 80, eps));
    s.external_policy_local = true;
    let f = fam(&model(vec![s.clone()]), IpFamily::V4);
    assert_eq!(shown(&f.internal), "10.1.0.1:80, 10.1.0.2:80");
    assert_eq!(shown(&f.external), "10.1.0.1:80");
    assert_eq!(f.short_circuit.unwrap().len(), 2);
    assert!(!f.masquerade.external);
    // Without local endpoints: outside traffic drops, inside traffic still flows.
    s.endpoints = vec![ep("10.1.0.2", 80, false)];
    let f = fam(&model(vec![s.clone()]), IpFamily::V4);
    assert_eq!(f.external, Target::Drop);
    assert_eq!(f.short_circuit.unwrap().len(), 1);
    // Not reachable from outside in this family: no Local external policy at all.
    s.node_port = None;
    let f = fam(&model(vec![s]), IpFamily::V4);
    assert!(f.short_circuit.is_none() && f.masquerade.external);
}

#[test]
fn cluster_external_policy_masquerades_external_traffic() {
    let s = external(service(
        "s",
        &["10.96.0.1"],
        80,
        vec![ep("10.1.0.1", 80, false)],
    ));
    let f = fam(&model(vec![s]), IpFamily::V4);
    assert!(f.masquerade.external && f.short_circuit.is_none());
    assert_eq!(f.internal, f.external);
}

#[test]
fn categorization_is_per_family() {
    // IPv4 has a ready endpoint, IPv6 only a terminating one: each family decides alone
    // (upstream runs one proxier per family).
    let eps = vec![
        ep("10.1.0.1", 80, false),
        terminating(ep("fd00:10::1", 80, false)),
    ];
    let m = model(vec![service("s", &["10.96.0.1", "fd00:96::1"], 80, eps)]);
    assert_eq!(shown(&fam(&m, IpFamily::V4).internal), "10.1.0.1:80");
    assert_eq!(shown(&fam(&m, IpFamily::V6).internal), "[fd00:10::1]:80");
}

#[test]
fn topology_is_judged_per_family() {
    let mut a = ep("10.1.0.1", 80, false);
    a.zone_hints = vec!["zone-a".into()];
    let mut b = ep("10.1.0.2", 80, false);
    b.zone_hints = vec!["zone-b".into()];
    // IPv6 endpoints carry no hints: topology off for IPv6 only.
    let c = ep("fd00:10::1", 80, false);
    let m = model(vec![service(
        "s",
        &["10.96.0.1", "fd00:96::1"],
        80,
        vec![a, b, c],
    )]);
    assert_eq!(shown(&fam(&m, IpFamily::V4).internal), "10.1.0.1:80");
    assert_eq!(shown(&fam(&m, IpFamily::V6).internal), "[fd00:10::1]:80");
}

#[test]
fn a_family_plan_needs_a_cluster_ip_of_that_family() {
    let m = model(vec![service(
        "s",
        &["10.96.0.1"],
        80,
        vec![ep("fd00:10::1", 80, false)],
    )]);
    assert_eq!(only(&m).families.len(), 1);
    // The IPv4 family has no endpoint of its own.
    assert_eq!(fam(&m, IpFamily::V4).internal, Target::Reject);
}

#[test]
fn masquerade_sources_follow_the_detector() {
    let s = || service("s", &["10.96.0.1", "fd00:96::1"], 80, vec![]);
    let sources = |config: &ModelConfig, f| {
        fam(&model_with(vec![s()], config), f)
            .masquerade
            .cluster_ips
    };
    let base = test_util::config();
    assert_eq!(
        sources(&base, IpFamily::V4),
        MasqueradeSources::OutsideClusterCidrs
    );
    let v4_only = ModelConfig {
        cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        ..base.clone()
    };
    assert_eq!(sources(&v4_only, IpFamily::V6), MasqueradeSources::None);
    let catch_all = ModelConfig {
        cluster_cidrs: vec!["0.0.0.0/0".parse().unwrap()],
        ..base.clone()
    };
    assert_eq!(sources(&catch_all, IpFamily::V4), MasqueradeSources::None);
    let all = ModelConfig {
        masquerade_all: true,
        ..base
    };
    assert_eq!(sources(&all, IpFamily::V4), MasqueradeSources::All);
}

#[test]
fn firewall_ranges_per_family_and_node_in_range() {
    let mut s = service("s", &["10.96.0.1", "fd00:96::1"], 80, vec![]);
    s.load_balancer_ips = vec!["1.2.3.4".parse().unwrap(), "2001:db8:9::4".parse().unwrap()];
    s.load_balancer_source_ranges = vec!["192.168.0.0/24".parse().unwrap()];
    let m = model(vec![s]);
    // Independent of endpoints (none here), as upstream nftables.
    let v4 = fam(&m, IpFamily::V4).firewall.unwrap();
    // The node (192.168.0.2) is in range: its traffic to the LB IP, sourced from that
    // IP, is allowed too.
    assert_eq!(
        v4.allowed,
        vec![
            "1.2.3.4/32".parse().unwrap(),
            "192.168.0.0/24".parse().unwrap()
        ]
    );
    assert!(v4.allows(&"192.168.0.77".parse::<IpAddr>().unwrap()));
    assert!(!v4.allows(&"203.0.113.2".parse::<IpAddr>().unwrap()));
    // Only IPv4 ranges: IPv6 allows nothing (fail closed; upstream leaves it open).
    assert!(fam(&m, IpFamily::V6).firewall.unwrap().allowed.is_empty());
}

#[test]
fn health_check_counts_local_ready_addresses() {
    let mut s = external(service(
        "s",
        &["10.96.0.1"],
        80,
        vec![
            ep("10.1.0.1", 80, true),
            terminating(ep("10.1.0.2", 80, true)),
            ep("10.1.0.3", 80, false),
        ],
    ));
    s.external_policy_local = true;
    s.health_check_node_port = Some(32000);
    let hc = only(&model(vec![s])).health_check.clone().unwrap();
    assert_eq!(hc.node_port, 32000);
    assert_eq!(
        hc.local_ready_ips,
        vec!["10.1.0.1".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn duplicate_endpoints_prefer_the_running_one() {
    let mut s = service("s", &["10.96.0.1"], 80, vec![]);
    s.endpoints = vec![
        terminating(ep("10.1.0.1", 80, false)),
        ep("10.1.0.1", 80, false),
    ];
    // The same address twice, terminating first: the running one wins (upstream).
    let f = fam(&model(vec![s]), IpFamily::V4);
    assert_eq!(shown(&f.internal), "10.1.0.1:80");
}

#[test]
fn ids_are_stable_across_incremental_updates() {
    let services: Vec<TestService> = (0..50)
        .map(|i| service(&format!("s{i}"), &[&format!("10.96.0.{i}")], 80, vec![]))
        .collect();
    let full = model(services.clone());
    let mut fewer = services.clone();
    fewer.remove(10);
    let m = model(fewer);
    for (name, plan) in &m.services {
        assert_eq!(plan.id, full.services[name].id);
    }
    let unique: std::collections::HashSet<u32> = full.services.values().map(|p| p.id).collect();
    assert_eq!(unique.len(), 50);
}

#[test]
fn incremental_update_equals_a_full_build() {
    use switchyard_model::test_util::TestCatalog;
    let mut services: Vec<TestService> = (0..5)
        .map(|i| {
            service(
                &format!("s{i}"),
                &[&format!("10.96.0.{i}")],
                80,
                vec![ep("10.1.0.1", 80, true)],
            )
        })
        .collect();
    let node = test_util::node();
    let config = test_util::config();
    let mut m = NodeModel::build(&TestCatalog::new(&services), &node, &config);
    services[1].endpoints.clear();
    services.remove(3);
    services.push(service("s9", &["10.96.0.9"], 80, vec![]));
    let catalog = TestCatalog::new(&services);
    let keys = ["s1", "s3", "s9"]
        .iter()
        .map(|n| ("default".to_string(), n.to_string()))
        .collect();
    let diff = m.update_services(&catalog, &keys);
    assert_eq!(
        (diff.added.len(), diff.changed.len(), diff.removed.len()),
        (1, 1, 1)
    );
    assert_eq!(diff.previous.len(), 2);
    assert_eq!(m, NodeModel::build(&catalog, &node, &config));
}

#[test]
fn explanations_read_the_plan() {
    use switchyard_model::explain::{explain_port, Left, Role};
    use switchyard_model::test_util::TestCatalog;
    let mut remote = ep("10.1.0.2", 80, false);
    remote.zone_hints = vec!["zone-b".into()];
    let mut local = ep("10.1.0.1", 80, true);
    local.zone_hints = vec!["zone-a".into()];
    let mut gone = ep("10.1.0.3", 80, true);
    gone.ready = false;
    gone.serving = false;
    let mut s = external(service("s", &["10.96.0.1"], 80, vec![local, remote, gone]));
    s.external_policy_local = true;
    let catalog = TestCatalog::new(&[s.clone()]);
    let e = explain_port(&catalog, &test_util::node(), &test_util::config(), &s.name).unwrap();
    let role = |ip: &str| {
        e.endpoints
            .iter()
            .find(|r| r.endpoint.ip.to_string() == ip)
            .map(|r| (r.internal.clone(), r.external.clone()))
            .unwrap()
    };
    assert_eq!(role("10.1.0.1"), (Role::Serves, Role::Serves));
    assert!(matches!(
        role("10.1.0.2").0,
        Role::Left(Left::Topology { .. })
    ));
    assert_eq!(role("10.1.0.2").1, Role::Left(Left::NotLocal));
    assert_eq!(role("10.1.0.3").0, Role::Left(Left::NotReady));
}
