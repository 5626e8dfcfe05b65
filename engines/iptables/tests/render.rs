//! Renderer checks on small models (Services as facts, planned by the real planner):
//! specific lines are present.

mod support;

use support::*;
use switchyard_iptables::{chains::PortChain, render_full};
use switchyard_model::{IpFamily, ModelConfig, NodeModel, Protocol};

fn v4(m: &NodeModel) -> String {
    render_full(m, IpFamily::V4)
}

fn assert_has(text: &str, line: &str) {
    assert!(text.lines().any(|l| l == line), "missing {line:?}\n{text}");
}

#[test]
fn cluster_ip_service() {
    let sp = service(
        "web",
        &["172.16.0.10"],
        80,
        vec![ep("10.0.0.5", 8080, true), ep("10.0.1.5", 8080, false)],
    );
    let svc = port_chain(PortChain::Service, &sp.name);
    let text = v4(&model(vec![sp]));
    let has = |s: &str| assert_has(&text, s);
    has("*nat");
    has(":SY-SERVICES - [0:0]");
    has(":SY-CANARY - [0:0]");
    has(&format!("-A SY-SERVICES -m comment --comment \"default/web:http/tcp cluster IP\" -m tcp -p tcp -d 172.16.0.10 --dport 80 -j {svc}"));
    has(&format!("-A {svc} -m comment --comment \"default/web:http/tcp cluster IP\" -m tcp -p tcp -d 172.16.0.10 --dport 80 ! -s 10.0.0.0/8 -j SY-MARK-MASQ"));
    // The service chain picks and DNATs itself: no chain per endpoint.
    has(&format!("-A {svc} -m comment --comment \"default/web:http/tcp -> 10.0.0.5:8080\" -m statistic --mode random --probability 0.5000000000 -m tcp -p tcp -j DNAT --to-destination 10.0.0.5:8080"));
    has(&format!(
        "-A {svc} -m comment --comment \"default/web:http/tcp -> 10.0.1.5:8080\" -m tcp -p tcp -j DNAT --to-destination 10.0.1.5:8080"
    ));
    assert!(!text.contains("SY-SEP-"), "{text}");
    // Hairpin: one rule per family, ahead of the mark check.
    let postrouting: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("-A SY-POSTROUTING "))
        .collect();
    assert!(
        postrouting[0].ends_with("-m conntrack --ctstate DNAT -m bpf --bytecode \"6,32 0 0 12,7 0 0 0,32 0 0 16,29 0 1 0,6 0 0 1,6 0 0 0\" -j SY-MARK-MASQ"),
        "{text}"
    );
    has("-A SY-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN");
    has("-A SY-MARK-MASQ -j MARK --or-mark 0x4000");
    has("-A SY-FORWARD -m conntrack --ctstate INVALID -j DROP");
    has("-I PREROUTING 1 -m comment --comment \"switchyard service portals\" -j SY-SERVICES");
    has("-I FORWARD 1 -m conntrack --ctstate NEW -m comment --comment \"switchyard load balancer firewall\" -j SY-FIREWALL");
    // The NodePort jump is the last rule of SY-SERVICES; NodePorts only on the primary IP.
    let last = text
        .lines()
        .rev()
        .find(|x| x.starts_with("-A SY-SERVICES "))
        .unwrap();
    assert!(
        last.ends_with("-m addrtype --dst-type LOCAL -j SY-NODEPORT-ADDRESSES"),
        "{last}"
    );
    has("-A SY-NODEPORT-ADDRESSES -d 192.168.0.2/32 -j SY-NODEPORTS");
    has("-A SY-NODEPORT-ADDRESSES -d 192.168.0.2/32 -j SY-EXTERNAL-NODEPORTS");
    // IPv4-only: nothing in IPv6.
    let six = render_full(
        &model(vec![service("web", &["172.16.0.10"], 80, vec![])]),
        IpFamily::V6,
    );
    assert!(!six.contains("SY-SVC-"), "{six}");
    assert!(!six.contains("172.16"), "{six}");
}

#[test]
fn no_endpoints_rejects_tcp_with_a_reset_and_affinity() {
    let mut empty = service("empty", &["172.16.0.11"], 443, vec![]);
    empty.node_port = Some(30443);
    empty.external_ips = vec!["192.168.99.11".parse().unwrap()];
    let mut dns = service("dns", &["172.16.0.13"], 53, vec![]);
    dns.name.protocol = Protocol::Udp;
    let sticky = TestService {
        affinity_timeout: Some(300),
        ..service(
            "sticky",
            &["172.16.0.12"],
            80,
            vec![ep("10.0.0.7", 80, false)],
        )
    };
    let list = endpoint_chain(&sticky.name, "10.0.0.7", 80);
    let text = v4(&model(vec![empty, sticky, dns]));
    let has = |s: &str| assert_has(&text, s);
    has("-A SY-SERVICES -m comment --comment \"default/empty:http/tcp has no endpoints\" -m tcp -p tcp -d 172.16.0.11 --dport 443 -j REJECT --reject-with tcp-reset");
    has("-A SY-EXTERNAL-SERVICES -m comment --comment \"default/empty:http/tcp has no endpoints\" -m tcp -p tcp -d 192.168.99.11 --dport 443 -j REJECT --reject-with tcp-reset");
    has("-A SY-EXTERNAL-NODEPORTS -m comment --comment \"default/empty:http/tcp has no endpoints\" -m tcp -p tcp --dport 30443 -j REJECT --reject-with tcp-reset");
    // Other protocols: ICMP port unreachable.
    has("-A SY-SERVICES -m comment --comment \"default/dns:http/udp has no endpoints\" -m udp -p udp -d 172.16.0.13 --dport 53 -j REJECT");
    assert!(!text.contains(&port_chain(
        PortChain::Service,
        &spn("default", "empty", "http")
    )));
    // Affinity: the endpoint's list (named as upstream's endpoint chain) is checked, then
    // set by the rule that DNATs.
    assert!(text.contains(&format!(
        "-m recent --name {list} --rcheck --seconds 300 --reap -m recent --name {list} --set -m tcp -p tcp -j DNAT --to-destination 10.0.0.7:80"
    )));
    assert!(text.contains(&format!(
        "-m recent --name {list} --set -m tcp -p tcp -j DNAT --to-destination 10.0.0.7:80"
    )));
    assert!(!text.contains(&format!(":{list} ")), "{text}");
}

fn load_balancer() -> TestService {
    let ips = |v: &[&str]| v.iter().map(|s| s.parse().unwrap()).collect();
    let endpoints = vec![ep("10.0.1.1", 80, false), ep("fd00:10::7", 80, true)];
    TestService {
        node_port: Some(30080),
        external_ips: ips(&["192.168.99.11"]),
        load_balancer_ips: ips(&["192.168.1.100", "2001:db8:1::100"]),
        load_balancer_source_ranges: ["192.168.0.0/24", "203.0.113.0/25"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect(),
        external_policy_local: true,
        health_check_node_port: Some(32000),
        ..service("lb", &["172.16.0.20", "fd00:96::20"], 80, endpoints)
    }
}

#[test]
fn local_policies_external_and_firewall() {
    let sp = load_balancer();
    let ext = port_chain(PortChain::External, &sp.name);
    let svc = port_chain(PortChain::Service, &sp.name);
    let svl = port_chain(PortChain::Local, &sp.name);
    let fw = port_chain(PortChain::Firewall, &sp.name);
    let m = model(vec![sp]);
    let text = v4(&m);
    let has = |s: &str| assert_has(&text, s);
    // IPv4: no local endpoint → external traffic from outside is dropped in filter, but
    // pods and the node are short-circuited to the cluster-wide chain.
    has(&format!("-A SY-NODEPORTS -m comment --comment \"default/lb:http/tcp\" -m tcp -p tcp --dport 30080 -j {ext}"));
    has(&format!("-A {ext} -m comment --comment \"pod traffic for default/lb:http/tcp external destinations\" -s 10.0.0.0/8 -j {svc}"));
    has(&format!("-A {ext} -m comment --comment \"masquerade LOCAL traffic for default/lb:http/tcp external destinations\" -m addrtype --src-type LOCAL -j SY-MARK-MASQ"));
    has(&format!("-A {ext} -m comment --comment \"route LOCAL traffic for default/lb:http/tcp external destinations\" -m addrtype --src-type LOCAL -j {svc}"));
    assert!(!text.contains(&svl), "{text}");
    has("-A SY-EXTERNAL-NODEPORTS -m comment --comment \"default/lb:http/tcp has no local endpoints\" -m tcp -p tcp --dport 30080 -j DROP");
    has("-A SY-EXTERNAL-SERVICES -m comment --comment \"default/lb:http/tcp has no local endpoints\" -m tcp -p tcp -d 192.168.99.11 --dport 80 -j DROP");
    has(&format!("-A SY-SERVICES -m comment --comment \"default/lb:http/tcp loadbalancer IP\" -m tcp -p tcp -d 192.168.1.100 --dport 80 -j {fw}"));
    has(&format!("-A {fw} -m comment --comment \"default/lb:http/tcp loadbalancer IP\" -s 203.0.113.0/25 -j {ext}"));
    // The node IP is within a range: the LB IP is allowed as a source.
    has(&format!("-A {fw} -m comment --comment \"default/lb:http/tcp loadbalancer IP\" -s 192.168.1.100/32 -j {ext}"));
    has(&format!("-A SY-FIREWALL -m comment --comment \"default/lb:http/tcp traffic not accepted by {fw}\" -m tcp -p tcp -d 192.168.1.100 --dport 80 -j DROP"));
    has("-A SY-NODEPORTS -m comment --comment \"default/lb:http/tcp health check node port\" -m tcp -p tcp --dport 32000 -j ACCEPT");
    // IPv6: the local endpoint is also the only cluster-wide one: internal, external and
    // short-circuit traffic share one chain, with no masquerade for outside traffic.
    let six = render_full(&m, IpFamily::V6);
    assert_has(&six, &format!("-A {ext} -j {svc}"));
    assert!(!six.contains(&svl), "{six}");
    assert!(six.contains("--to-destination [fd00:10::7]:80"));
    assert!(!six.contains("10.0.1.1"));
    assert!(!six.contains("-A SY-EXTERNAL-SERVICES -m comment --comment \"default"));
    // IPv6 source ranges: none of the family, so nothing is accepted.
    assert!(!six.contains("-s 203.0.113.0/25"));
    assert!(!six.contains(&format!(
        "-A {fw} -m comment --comment \"default/lb:http/tcp loadbalancer IP\""
    )));
    assert!(six.contains(&format!(
        "-A SY-FIREWALL -m comment --comment \"default/lb:http/tcp traffic not accepted by {fw}\""
    )));
}

/// D4: the firewall applies without endpoints too: a filter chain returns the allowed
/// sources (then rejected) and drops the rest.
#[test]
fn firewall_without_endpoints_is_a_filter_chain() {
    let mut sp = load_balancer();
    sp.endpoints.clear();
    sp.external_policy_local = false;
    sp.health_check_node_port = None;
    let fw = port_chain(PortChain::Firewall, &sp.name);
    let text = v4(&model(vec![sp]));
    let has = |s: &str| assert_has(&text, s);
    let filter = &text[..text.find("*nat").unwrap()];
    assert!(filter.contains(&format!(":{fw} - [0:0]")), "{filter}");
    has(&format!("-A SY-FIREWALL -m comment --comment \"default/lb:http/tcp source ranges\" -m tcp -p tcp -d 192.168.1.100 --dport 80 -j {fw}"));
    has(&format!("-A {fw} -m comment --comment \"default/lb:http/tcp loadbalancer IP\" -s 203.0.113.0/25 -j RETURN"));
    has(&format!(
        "-A {fw} -m comment --comment \"other traffic to default/lb:http/tcp\" -j DROP"
    ));
    has("-A SY-EXTERNAL-SERVICES -m comment --comment \"default/lb:http/tcp has no endpoints\" -m tcp -p tcp -d 192.168.1.100 --dport 80 -j REJECT --reject-with tcp-reset");
    assert!(!text.contains("SY-EXT-"), "{text}");
}

/// One chain per distinct set of backends: internal Local with external Cluster needs
/// both (`SVC` cluster-wide, `SVL` local).
#[test]
fn internal_local_external_cluster_has_two_backend_chains() {
    let endpoints = [("10.0.0.5", true), ("10.0.1.5", false)]
        .map(|(ip, local)| ep(ip, 80, local))
        .to_vec();
    let sp = TestService {
        internal_policy_local: true,
        node_port: Some(30040),
        ..service("both", &["172.16.0.40"], 80, endpoints)
    };
    let (svc, svl, ext) = (
        port_chain(PortChain::Service, &sp.name),
        port_chain(PortChain::Local, &sp.name),
        port_chain(PortChain::External, &sp.name),
    );
    let text = v4(&model(vec![sp]));
    assert!(text.contains(&format!("--dport 80 -j {svl}")), "{text}");
    assert_has(&text, &format!("-A {ext} -j {svc}"));
    // The masquerade rule of cluster IP traffic is in the internal target's chain.
    assert!(text.contains(&format!(
        "-A {svl} -m comment --comment \"default/both:http/tcp cluster IP\""
    )));
    assert!(!text.contains(&format!(
        "-A {svc} -m comment --comment \"default/both:http/tcp cluster IP\""
    )));
}

#[test]
fn internal_local_without_local_endpoints_drops() {
    let mut sp = service("int", &["172.16.0.30"], 80, vec![ep("10.0.1.1", 80, false)]);
    sp.internal_policy_local = true;
    let text = v4(&model(vec![sp]));
    assert_has(&text, "-A SY-SERVICES -m comment --comment \"default/int:http/tcp has no local endpoints\" -m tcp -p tcp -d 172.16.0.30 --dport 80 -j DROP");
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
    let svc = port_chain(PortChain::Service, &sp.name);
    let with = |f: &dyn Fn(&mut ModelConfig)| {
        let mut c = config();
        f(&mut c);
        v4(&model_with(vec![sp.clone()], &c))
    };
    assert!(with(&|c| c.masquerade_all = true).contains(&format!("-A {svc} -m comment --comment \"default/web:http/tcp cluster IP\" -m tcp -p tcp -d 172.16.0.10 --dport 80 -j SY-MARK-MASQ")));
    assert!(!with(&|c| c.cluster_cidrs.clear()).contains(&format!(
        "-A {svc} -m comment --comment \"default/web:http/tcp cluster IP\""
    )));
    let t = with(&|c| {
        c.cluster_cidrs = vec![
            "10.0.0.0/16".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
        ]
    });
    assert!(t.contains("-A SY-MARK-NONLOCAL -s 10.1.0.0/16 -j RETURN"));
    assert!(t.contains("--dport 80 -j SY-MARK-NONLOCAL"));
}

/// D8/D9: NodePorts (and their refusals) only on nodePortAddresses, never on loopback,
/// also for CIDRs containing it.
#[test]
fn node_port_addresses_never_include_loopback() {
    let sp = service("web", &["172.16.0.10"], 80, vec![]);
    let with = |cidrs: &[&str]| {
        let mut c = config();
        c.node_port_cidrs = cidrs.iter().map(|s| s.parse().unwrap()).collect();
        v4(&model_with(vec![sp.clone()], &c))
    };
    let all = with(&["0.0.0.0/0"]);
    assert_has(&all, "-A SY-NODEPORT-ADDRESSES -m comment --comment \"switchyard no NodePorts on loopback\" -d 127.0.0.0/8 -j RETURN");
    assert_has(&all, "-A SY-NODEPORT-ADDRESSES -j SY-NODEPORTS");
    let half = with(&["0.0.0.0/1"]);
    assert!(half.contains("-d 127.0.0.0/8 -j RETURN"), "{half}");
    assert_has(
        &half,
        "-A SY-NODEPORT-ADDRESSES -d 0.0.0.0/1 -j SY-NODEPORTS",
    );
    let lo = with(&["127.0.0.0/8"]);
    assert!(!lo.contains("-A SY-NODEPORT-ADDRESSES"), "{lo}");
    assert!(!lo.contains("-j SY-NODEPORT-ADDRESSES"), "{lo}");
    let other = with(&["192.168.1.0/24"]);
    assert!(!other.contains("127.0.0.0/8"), "{other}");
    assert_has(
        &other,
        "-A SY-NODEPORT-ADDRESSES -d 192.168.1.0/24 -j SY-EXTERNAL-NODEPORTS",
    );
}

#[test]
fn hostile_names_stay_in_their_comment() {
    let mut sp = service("x", &["172.16.0.10"], 80, vec![ep("10.0.0.5", 8080, true)]);
    sp.name.name = "a\"\n-A INPUT -j DROP\n\\".into();
    let text = v4(&model(vec![sp]));
    assert!(!text.lines().any(|l| l.starts_with("-A INPUT")), "{text}");
}
