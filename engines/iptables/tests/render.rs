//! Renderer checks on small models: specific lines are present.

mod support;

use support::*;
use switchyard_core::IpFamily;
use switchyard_iptables::{
    chains::{endpoint_chain, PortChain},
    render_full,
};

fn v4(m: &switchyard_core::NodeModel) -> String {
    render_full(m, IpFamily::V4)
}

#[test]
fn cluster_ip_service() {
    let sp = service(
        "web",
        &["172.16.0.10"],
        80,
        vec![ep("10.0.0.5", 8080, true), ep("10.0.1.5", 8080, false)],
    );
    let svc = PortChain::Cluster.name(&sp.name);
    let sep0 = endpoint_chain(&sp.name, &sp.cluster_endpoints[0]);
    let sep1 = endpoint_chain(&sp.name, &sp.cluster_endpoints[1]);
    let text = v4(&model(vec![sp]));
    println!("{text}");
    let l: Vec<&str> = text.lines().collect();
    let has = |s: &str| assert!(l.contains(&s), "missing {s:?}\n{text}");
    has("*nat");
    has(":SY-SERVICES - [0:0]");
    has(":SY-CANARY - [0:0]");
    has(&format!("-A SY-SERVICES -m comment --comment \"default/web:http/tcp cluster IP\" -m tcp -p tcp -d 172.16.0.10 --dport 80 -j {svc}"));
    has(&format!("-A {svc} -m comment --comment \"default/web:http/tcp cluster IP\" -m tcp -p tcp -d 172.16.0.10 --dport 80 ! -s 10.0.0.0/8 -j SY-MARK-MASQ"));
    has(&format!("-A {svc} -m comment --comment \"default/web:http/tcp -> 10.0.0.5:8080\" -m statistic --mode random --probability 0.5000000000 -j {sep0}"));
    has(&format!(
        "-A {svc} -m comment --comment \"default/web:http/tcp -> 10.0.1.5:8080\" -j {sep1}"
    ));
    has(&format!(
        "-A {sep0} -m comment --comment \"default/web:http/tcp\" -s 10.0.0.5 -j SY-MARK-MASQ"
    ));
    has(&format!("-A {sep0} -m comment --comment \"default/web:http/tcp\" -m tcp -p tcp -j DNAT --to-destination 10.0.0.5:8080"));
    has("-A SY-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN");
    has("-A SY-MARK-MASQ -j MARK --or-mark 0x4000");
    has("-I PREROUTING 1 -m comment --comment \"switchyard service portals\" -j SY-SERVICES");
    has("-I FORWARD 1 -m conntrack --ctstate NEW -m comment --comment \"switchyard load balancer firewall\" -j SY-FIREWALL");
    // The NodePort jump is the last rule of SY-SERVICES.
    let last = l
        .iter()
        .rev()
        .find(|x| x.starts_with("-A SY-SERVICES "))
        .unwrap();
    assert!(
        last.contains("-d 192.168.0.2/32 -m addrtype --dst-type LOCAL -j SY-NODEPORTS"),
        "{last}"
    );
    // IPv4-only: nothing in IPv6.
    let six = render_full(
        &model(vec![service("web", &["172.16.0.10"], 80, vec![])]),
        IpFamily::V6,
    );
    assert!(!six.contains("SY-SVC-"), "{six}");
    assert!(!six.contains("172.16"), "{six}");
}

#[test]
fn no_endpoints_rejects_and_affinity() {
    let mut empty = service("empty", &["172.16.0.11"], 443, vec![]);
    empty.node_port = Some(30443);
    empty.external_ips = vec!["192.168.99.11".parse().unwrap()];
    let mut sticky = service(
        "sticky",
        &["172.16.0.12"],
        80,
        vec![ep("10.0.0.7", 80, false)],
    );
    sticky.affinity_timeout = Some(300);
    let sep = endpoint_chain(&sticky.name, &sticky.cluster_endpoints[0]);
    let text = v4(&model(vec![empty, sticky]));
    println!("{text}");
    assert!(text.contains("-A SY-SERVICES -m comment --comment \"default/empty:http/tcp has no endpoints\" -m tcp -p tcp -d 172.16.0.11 --dport 443 -j REJECT"));
    assert!(text.contains("-A SY-EXTERNAL-SERVICES -m comment --comment \"default/empty:http/tcp has no endpoints\" -m tcp -p tcp -d 192.168.99.11 --dport 443 -j REJECT"));
    assert!(text.contains("-A SY-EXTERNAL-SERVICES -m comment --comment \"default/empty:http/tcp has no endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30443 -j REJECT"));
    assert!(!text.contains(&PortChain::Cluster.name(&spn("default", "empty", "http"))));
    assert!(text.contains(&format!(
        "-m recent --name {sep} --rcheck --seconds 300 --reap -j {sep}"
    )));
    assert!(text.contains(&format!(
        "-m recent --name {sep} --set -m tcp -p tcp -j DNAT --to-destination 10.0.0.7:80"
    )));
}

#[test]
fn local_policies_external_and_firewall() {
    let mut sp = service(
        "lb",
        &["172.16.0.20", "fd00:96::20"],
        80,
        vec![ep("10.0.1.1", 80, false), ep("fd00:10::7", 80, true)],
    );
    sp.node_port = Some(30080);
    sp.external_ips = vec!["192.168.99.11".parse().unwrap()];
    sp.load_balancer_ips = vec![
        "192.168.1.100".parse().unwrap(),
        "2001:db8:1::100".parse().unwrap(),
    ];
    sp.load_balancer_source_ranges = vec![
        "192.168.0.0/24".parse().unwrap(),
        "203.0.113.0/25".parse().unwrap(),
    ];
    sp.external_policy_local = true;
    sp.health_check_node_port = Some(32000);
    let ext = PortChain::External.name(&sp.name);
    let svc = PortChain::Cluster.name(&sp.name);
    let svl = PortChain::Local.name(&sp.name);
    let fw = PortChain::Firewall.name(&sp.name);
    let m = model(vec![sp]);
    let text = v4(&m);
    println!("{text}");
    let has = |s: &str| assert!(text.lines().any(|l| l == s), "missing {s:?}");
    // IPv4: no local endpoint → external traffic from outside is dropped in filter, but
    // pods and the node are short-circuited to the cluster chain.
    has(&format!("-A SY-NODEPORTS -m comment --comment \"default/lb:http/tcp\" -m tcp -p tcp --dport 30080 -j {ext}"));
    has(&format!("-A {ext} -m comment --comment \"pod traffic for default/lb:http/tcp external destinations\" -s 10.0.0.0/8 -j {svc}"));
    has(&format!("-A {ext} -m comment --comment \"masquerade LOCAL traffic for default/lb:http/tcp external destinations\" -m addrtype --src-type LOCAL -j SY-MARK-MASQ"));
    has(&format!("-A {ext} -m comment --comment \"route LOCAL traffic for default/lb:http/tcp external destinations\" -m addrtype --src-type LOCAL -j {svc}"));
    assert!(!text.contains(&format!("-j {svl}")));
    has("-A SY-EXTERNAL-SERVICES -m comment --comment \"default/lb:http/tcp has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j DROP");
    has("-A SY-EXTERNAL-SERVICES -m comment --comment \"default/lb:http/tcp has no local endpoints\" -m tcp -p tcp -d 192.168.99.11 --dport 80 -j DROP");
    has(&format!("-A SY-SERVICES -m comment --comment \"default/lb:http/tcp loadbalancer IP\" -m tcp -p tcp -d 192.168.1.100 --dport 80 -j {fw}"));
    has(&format!("-A {fw} -m comment --comment \"default/lb:http/tcp loadbalancer IP\" -s 203.0.113.0/25 -j {ext}"));
    // The node IP is within a range: the LB IP is allowed as a source.
    has(&format!("-A {fw} -m comment --comment \"default/lb:http/tcp loadbalancer IP\" -s 192.168.1.100 -j {ext}"));
    has(&format!("-A SY-FIREWALL -m comment --comment \"default/lb:http/tcp traffic not accepted by {fw}\" -m tcp -p tcp -d 192.168.1.100 --dport 80 -j DROP"));
    has("-A SY-NODEPORTS -m comment --comment \"default/lb:http/tcp health check node port\" -m tcp -p tcp --dport 32000 -j ACCEPT");
    // IPv6: a local endpoint → the external chain ends in the local chain, no masquerade.
    let six = render_full(&m, IpFamily::V6);
    println!("{six}");
    assert!(
        six.lines().any(|l| l == format!("-A {ext} -j {svl}")),
        "{six}"
    );
    assert!(six.contains("--to-destination [fd00:10::7]:80"));
    assert!(!six.contains("10.0.1.1"));
    assert!(!six.contains("SY-EXTERNAL-SERVICES -m"));
    // IPv6 source ranges: none of the family, so nothing is accepted but the node.
    assert!(!six.contains("-s 203.0.113.0/25"));
    assert!(six.contains(&format!(
        "-A SY-FIREWALL -m comment --comment \"default/lb:http/tcp traffic not accepted by {fw}\""
    )));
}

#[test]
fn internal_local_without_local_endpoints_drops() {
    let mut sp = service("int", &["172.16.0.30"], 80, vec![ep("10.0.1.1", 80, false)]);
    sp.internal_policy_local = true;
    sp.local_endpoints = vec![];
    let text = v4(&model(vec![sp]));
    assert!(text.contains("-A SY-SERVICES -m comment --comment \"default/int:http/tcp has no local endpoints\" -m tcp -p tcp -d 172.16.0.30 --dport 80 -j DROP"), "{text}");
    assert!(!text.contains("SY-SEP-"), "{text}");
}

#[test]
fn masquerade_all_and_no_detector() {
    let sp = service(
        "web",
        &["172.16.0.10"],
        80,
        vec![ep("10.0.0.5", 8080, true)],
    );
    let mut m = model(vec![sp.clone()]);
    m.masquerade_all = true;
    let svc = PortChain::Cluster.name(&sp.name);
    assert!(v4(&m).contains(&format!("-A {svc} -m comment --comment \"default/web:http/tcp cluster IP\" -m tcp -p tcp -d 172.16.0.10 --dport 80 -j SY-MARK-MASQ")));
    m.masquerade_all = false;
    m.cluster_cidrs.clear();
    assert!(!v4(&m).contains(&format!(
        "-A {svc} -m comment --comment \"default/web:http/tcp cluster IP\""
    )));
    m.cluster_cidrs = vec![
        "10.0.0.0/16".parse().unwrap(),
        "10.1.0.0/16".parse().unwrap(),
    ];
    let t = v4(&m);
    assert!(t.contains("-A SY-MARK-NONLOCAL -s 10.1.0.0/16 -j RETURN"));
    assert!(t.contains("--dport 80 -j SY-MARK-NONLOCAL"));
}

#[test]
fn hostile_names_stay_in_their_comment() {
    let mut sp = service("x", &["172.16.0.10"], 80, vec![ep("10.0.0.5", 8080, true)]);
    sp.name.name = "a\"\n-A INPUT -j DROP\n\\".into();
    let text = v4(&model(vec![sp]));
    assert!(!text.lines().any(|l| l.starts_with("-A INPUT")), "{text}");
}
