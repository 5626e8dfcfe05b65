//! Kubernetes objects through the cluster state into the model: what the sources'
//! parsing (conditions, ipMode, types, ranges) and the planner make of real manifests.

use std::net::IpAddr;

use switchyard_core::{
    state::{model_config, Object},
    ClusterState, NodeModel, Protocol,
};
use switchyard_crd::EffectiveConfig;
use switchyard_model::{FamilyPlan, ServicePortPlan, Target};

fn state(yaml: &str) -> ClusterState {
    let mut st = ClusterState::default();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        let o = match v["kind"].as_str().unwrap() {
            "Service" => Object::Service(Box::new(serde_json::from_value(v).unwrap())),
            "EndpointSlice" => Object::EndpointSlice(Box::new(serde_json::from_value(v).unwrap())),
            "Node" => Object::Node(Box::new(serde_json::from_value(v).unwrap())),
            k => panic!("{k}"),
        };
        st.upsert(o);
    }
    st
}

const NODE: &str = "kind: Node\nmetadata: {name: n1, labels: {topology.kubernetes.io/zone: za}}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.2}, {type: InternalIP, address: 192.168.0.3}, {type: InternalIP, address: '2001:db8::1'}]}\n";

fn build(yaml: &str) -> NodeModel {
    let st = state(&format!("{NODE}---\n{yaml}"));
    NodeModel::build(
        &st,
        &st.node_facts("n1"),
        &model_config(&EffectiveConfig::default()),
    )
}

fn v4(plan: &ServicePortPlan) -> &FamilyPlan {
    &plan.families[0]
}

fn shown(t: &Target) -> String {
    t.to_string()
}

#[test]
fn cluster_ip_ports_and_endpoints() {
    let m = build(
        "kind: Service\nmetadata: {name: s, namespace: ns}\nspec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 80, targetPort: web}, {name: dns, port: 53, protocol: UDP, targetPort: 5353}]}\n---\nkind: EndpointSlice\nmetadata: {name: s-1, namespace: ns, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nendpoints:\n- {addresses: [10.1.0.1], conditions: {ready: true}, nodeName: n1}\n- {addresses: [10.1.0.2], conditions: {ready: false}}\n- {addresses: [10.1.0.3]}\nports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]\n",
    );
    assert_eq!(
        m.node_ips,
        vec![
            "192.168.0.2".parse::<IpAddr>().unwrap(),
            "2001:db8::1".parse().unwrap()
        ]
    );
    assert_eq!(m.services.len(), 2);
    let http = m.services.values().find(|s| s.port == 80).unwrap();
    assert_eq!(http.protocol, Protocol::Tcp);
    assert_eq!(shown(&v4(http).internal), "10.1.0.1:8080, 10.1.0.3:8080");
    assert!(v4(http).backends()[0].local);
    let dns = m.services.values().find(|s| s.port == 53).unwrap();
    assert_eq!(dns.protocol, Protocol::Udp);
    assert_eq!(shown(&v4(dns).internal), "10.1.0.1:5353, 10.1.0.3:5353");
    // Default nodePortAddresses: the primary node IPs.
    assert_eq!(m.node_port_addresses.len(), 2);
    // No IPv6 cluster IP: no IPv6 plan.
    assert_eq!(http.families.len(), 1);
}

#[test]
fn headless_and_external_name_are_ignored() {
    let m = build(
        "kind: Service\nmetadata: {name: h, namespace: ns}\nspec: {clusterIP: None, ports: [{port: 80}]}\n---\nkind: Service\nmetadata: {name: e, namespace: ns}\nspec: {type: ExternalName, externalName: example.com, ports: [{port: 80}]}\n",
    );
    assert!(m.services.is_empty());
}

#[test]
fn node_ports_only_for_node_port_and_lb_types() {
    let m = build(
        "kind: Service\nmetadata: {name: a, namespace: ns}\nspec: {type: NodePort, clusterIP: 10.96.0.1, ports: [{port: 80, nodePort: 30080}]}\n---\nkind: Service\nmetadata: {name: b, namespace: ns}\nspec: {type: ClusterIP, clusterIP: 10.96.0.2, ports: [{port: 80, nodePort: 30081}]}\n",
    );
    let ports: Vec<Option<u16>> = m.services.values().map(|s| v4(s).node_port).collect();
    assert_eq!(ports, vec![Some(30080), None]);
}

const TERMINATING: &str = "kind: Service\nmetadata: {name: s, namespace: ns}\nspec: {type: NodePort, clusterIP: 10.96.0.1, externalTrafficPolicy: Local, ports: [{port: 80, nodePort: 30080}]}\n---\nkind: EndpointSlice\nmetadata: {name: s-1, namespace: ns, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nendpoints:\n- {addresses: [10.1.0.1], conditions: {ready: false, serving: true, terminating: true}, nodeName: n1}\n- {addresses: [10.1.0.2], conditions: {ready: true}, nodeName: n2}\n- {addresses: [10.1.0.3], conditions: {ready: false, serving: false, terminating: true}, nodeName: n1}\nports: [{port: 80}]\n";

#[test]
fn terminating_fallback_is_separate_for_cluster_and_local() {
    let m = build(TERMINATING);
    let f = v4(m.services.values().next().unwrap());
    assert_eq!(shown(&f.internal), "10.1.0.2:80");
    assert_eq!(
        shown(&f.external),
        "10.1.0.1:80",
        "local ready none: serving+terminating"
    );
    assert!(
        !f.masquerade.external,
        "Local policy keeps the client address"
    );
    let all_terminating = TERMINATING.replace(
        "conditions: {ready: true}, nodeName: n2",
        "conditions: {ready: false, serving: false}, nodeName: n2",
    );
    let m = build(&all_terminating);
    assert_eq!(
        shown(&v4(m.services.values().next().unwrap()).internal),
        "10.1.0.1:80"
    );
}

#[test]
fn missing_serving_condition_means_serving() {
    // Upstream: `serving` nil is true, whatever `ready` says.
    let m = build(&TERMINATING.replace(
        "conditions: {ready: false, serving: false, terminating: true}",
        "conditions: {ready: false, terminating: true}",
    ));
    let f = v4(m.services.values().next().unwrap());
    assert_eq!(shown(&f.external), "10.1.0.1:80, 10.1.0.3:80");
}

const HINTED: &str = "kind: Service\nmetadata: {name: s, namespace: ns}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n---\nkind: EndpointSlice\nmetadata: {name: s-1, namespace: ns, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nendpoints:\n- {addresses: [10.1.0.1], hints: {forZones: [{name: za}]}}\n- {addresses: [10.1.0.2], hints: {forZones: [{name: zb}]}}\n- {addresses: [10.1.0.3], hints: {forZones: [{name: za}]}}\nports: [{port: 80}]\n";

#[test]
fn zone_hints_used_only_when_complete_and_matching() {
    let internal = |yaml: &str| shown(&v4(build(yaml).services.values().next().unwrap()).internal);
    assert_eq!(internal(HINTED), "10.1.0.1:80, 10.1.0.3:80");
    let partial = HINTED.replace(", hints: {forZones: [{name: zb}]}", "");
    assert_eq!(internal(&partial).matches(", ").count(), 2);
    let other = HINTED.replace("name: za", "name: zc");
    assert_eq!(internal(&other).matches(", ").count(), 2);
    let nodes = HINTED
        .replace(
            "forZones: [{name: za}]}",
            "forZones: [{name: za}], forNodes: [{name: n2}]}",
        )
        .replace(
            "forZones: [{name: zb}]}",
            "forZones: [{name: zb}], forNodes: [{name: n1}]}",
        );
    assert_eq!(internal(&nodes), "10.1.0.2:80");
}

#[test]
fn load_balancer_inputs_as_upstream() {
    let m = build(
        "kind: Service\nmetadata: {name: s, namespace: ns}\nspec: {type: LoadBalancer, clusterIP: 10.96.0.1, sessionAffinity: ClientIP, externalTrafficPolicy: Local, healthCheckNodePort: 32000, loadBalancerSourceRanges: [' 203.0.113.0/25 '], ports: [{port: 80, nodePort: 30080}]}\nstatus: {loadBalancer: {ingress: [{ip: 1.2.3.4}, {ip: 5.6.7.8, ipMode: Proxy}, {ip: 5.6.7.9, ipMode: VIP}]}}\n",
    );
    let plan = m.services.values().next().unwrap();
    let f = v4(plan);
    assert_eq!(
        f.load_balancer_ips.to_vec(),
        vec![
            "1.2.3.4".parse::<IpAddr>().unwrap(),
            "5.6.7.9".parse().unwrap()
        ]
    );
    let fw = f.firewall.as_ref().unwrap();
    assert_eq!(fw.allowed, vec!["203.0.113.0/25".parse().unwrap()]);
    assert_eq!(f.affinity, Some(10800));
    assert_eq!(plan.health_check.as_ref().unwrap().node_port, 32000);
    // A NodePort Service with Local policy needs no health check (upstream).
    let np = build(
        "kind: Service\nmetadata: {name: s, namespace: ns}\nspec: {type: NodePort, clusterIP: 10.96.0.1, externalTrafficPolicy: Local, healthCheckNodePort: 32000, ports: [{port: 80, nodePort: 30080}]}\n",
    );
    assert!(np.services.values().next().unwrap().health_check.is_none());
}
