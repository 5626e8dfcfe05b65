//! The IPVS engine against a real IPVS kernel, in a private network namespace (the host
//! kernel has no IPVS: the VM lane runs these, `e2e/tests/vm_lane.rs`; elsewhere they
//! skip loudly). Checks read the kernel back (IPVS dumps, `ipvsadm`, addresses,
//! sysctls, the helper table), never strings the engine generated. Traffic through
//! these servers is the scenario files' job (`e2e/tests/scenarios.rs`, ipvs mode).
//! Needs root.

mod support;

use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use support::{need_ipvs, need_root, varied_model, TestNetns};
use switchyard_ipvs::{IpvsEngine, IpvsOptions};
use switchyard_model::{
    test_util::{self, ep},
    ChangeSet, Drift, NodeModel, ProxyEngine, ServicePortPlan,
};
use switchyard_netlink::{
    ipvs::{Ipvs, Service, ServiceId},
    Netns,
};

/// A namespace that looks like a node: `eth0` with the node's addresses.
fn node_ns(prefix: &str) -> TestNetns {
    let ns = TestNetns::new(prefix);
    ns.exec("ip", &["link", "add", "eth0", "type", "dummy"]);
    ns.exec("ip", &["addr", "add", "192.168.0.2/24", "dev", "eth0"]);
    ns.exec(
        "ip",
        &["addr", "add", "2001:db8::1/64", "dev", "eth0", "nodad"],
    );
    ns.exec("ip", &["link", "set", "eth0", "up"]);
    ns
}

fn engine(ns: &TestNetns) -> IpvsEngine {
    IpvsEngine::new(IpvsOptions {
        netns: Some(ns.name.clone()),
        ..IpvsOptions::default()
    })
}

fn ipvs(ns: &TestNetns) -> Ipvs {
    Ipvs::open(&Netns::Named(ns.name.clone())).expect("IPVS in the namespace")
}

fn services(ns: &TestNetns) -> BTreeSet<ServiceId> {
    ipvs(ns)
        .services()
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn plan_of(model: &NodeModel, name: &str) -> ServicePortPlan {
    model
        .services
        .values()
        .find(|p| p.name.name == name)
        .unwrap()
        .clone()
}

/// `model` with service port `name` replaced by `plan`, and the change set.
fn changed(model: &NodeModel, plan: ServicePortPlan) -> (NodeModel, ChangeSet) {
    let mut new = model.clone();
    new.insert_plan(plan);
    let changes = ChangeSet::between(model, &new);
    (new, changes)
}

fn web(eps: &[&str]) -> ServicePortPlan {
    let m = test_util::model(vec![test_util::service(
        "web",
        &["10.96.0.10"],
        80,
        eps.iter().map(|e| ep(e, 8080, false)).collect(),
    )]);
    m.services.values().next().unwrap().clone()
}

#[tokio::test(flavor = "current_thread")]
async fn full_sync_verifies_adopts_without_rewriting_and_cleans_up_only_its_own() {
    let test = "full_sync_verifies_adopts_without_rewriting_and_cleans_up_only_its_own";
    if !need_root(test) || !need_ipvs(test) {
        return;
    }
    let ns = node_ns("ipvs-full");
    // Someone else's virtual server, which must survive everything below.
    let foreign = Service::new(
        ServiceId::new(switchyard_model::Protocol::Tcp, ip("192.168.0.2"), 22),
        "rr",
    );
    ipvs(&ns).add_service(&foreign).unwrap();
    let model = varied_model();
    let mut e = engine(&ns);
    e.prepare().await.unwrap();
    e.sync(&model, &ChangeSet::full(&model)).await.unwrap();
    assert_eq!(e.verify(&model).await.unwrap(), Drift::None);
    let ours = services(&ns);
    assert!(ours.contains(&ServiceId::new(
        switchyard_model::Protocol::Tcp,
        ip("10.96.0.10"),
        80
    )));
    assert!(ours.contains(&ServiceId::new(
        switchyard_model::Protocol::Tcp,
        ip("192.168.0.2"),
        30080
    )));
    assert!(ours.contains(&ServiceId::new(
        switchyard_model::Protocol::Udp,
        ip("fd00::12"),
        53
    )));
    assert!(
        ours.iter().any(|s| matches!(s, ServiceId::Fwmark { .. })),
        "{ours:?}"
    );
    let vips = ns.exec("ip", &["-o", "addr", "show", "dev", "switchyard-ipvs"]);
    for vip in [
        "10.96.0.10/32",
        "fd00::14/128",
        "203.0.113.50/32",
        "192.0.2.15/32",
    ] {
        assert!(vips.contains(vip), "{vip} not on the dummy:\n{vips}");
    }
    for (path, value) in [
        ("net/ipv4/vs/conntrack", "1"),
        ("net/ipv4/vs/expire_nodest_conn", "1"),
    ] {
        assert_eq!(
            ns.exec("cat", &[&format!("/proc/sys/{path}")]).trim(),
            value,
            "{path}"
        );
    }

    // A restarted agent: a new engine adopts what is there, writing nothing.
    let mut again = engine(&ns);
    again.prepare().await.unwrap();
    again.sync(&model, &ChangeSet::full(&model)).await.unwrap();
    assert_eq!(again.last_operations(), 0, "adoption rewrote IPVS state");
    assert_eq!(services(&ns), ours);
    assert_eq!(again.verify(&model).await.unwrap(), Drift::None);

    // Drift: a real server deleted behind the engine's back is found.
    let id = ServiceId::new(switchyard_model::Protocol::Tcp, ip("10.96.0.10"), 80);
    ipvs(&ns)
        .delete_destination(&id, &ip("10.1.0.2"), 8080)
        .unwrap();
    for _ in 0..4 {
        if let Drift::Found(what) = again.verify(&model).await.unwrap() {
            assert!(what.contains("10.1.0.2"), "{what}");
            break;
        }
    }

    again.cleanup().await.unwrap();
    let left = services(&ns);
    assert_eq!(
        left,
        BTreeSet::from([foreign.id]),
        "only the foreign server stays"
    );
    let links = ns.exec("ip", &["-o", "link"]);
    assert!(!links.contains("switchyard-ipvs"), "{links}");
    let tables = ns.exec("nft", &["list", "tables"]);
    assert!(!tables.contains("switchyard-ipvs"), "{tables}");
}

#[tokio::test(flavor = "current_thread")]
async fn one_endpoint_change_is_one_ipvs_operation() {
    let test = "one_endpoint_change_is_one_ipvs_operation";
    if !need_root(test) || !need_ipvs(test) {
        return;
    }
    let ns = node_ns("ipvs-one");
    let model = varied_model();
    let mut e = engine(&ns);
    e.prepare().await.unwrap();
    e.sync(&model, &ChangeSet::full(&model)).await.unwrap();
    let id = ServiceId::new(switchyard_model::Protocol::Tcp, ip("10.96.0.10"), 80);
    let mut timings = Vec::new();
    // An endpoint goes (drains: weight 0), then comes back (weight 1 again): each is
    // one operation.
    let (m1, c1) = changed(&model, web(&["10.1.0.1"]));
    let t = Instant::now();
    e.sync(&m1, &c1).await.unwrap();
    timings.push(t.elapsed());
    assert_eq!(e.last_operations(), 1);
    let weights: Vec<(IpAddr, u32)> = ipvs(&ns)
        .destinations(&id)
        .unwrap()
        .iter()
        .map(|d| (d.destination.addr, d.destination.weight))
        .collect();
    assert!(
        weights.contains(&(ip("10.1.0.2"), 0)),
        "draining: {weights:?}"
    );
    let (m2, c2) = changed(&m1, web(&["10.1.0.1", "10.1.0.2"]));
    let t = Instant::now();
    e.sync(&m2, &c2).await.unwrap();
    timings.push(t.elapsed());
    assert_eq!(e.last_operations(), 1);
    assert_eq!(e.verify(&m2).await.unwrap(), Drift::None);
    eprintln!("one-endpoint syncs (engine, agent side): {timings:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn drained_tcp_servers_go_when_idle_and_udp_ones_at_once() {
    let test = "drained_tcp_servers_go_when_idle_and_udp_ones_at_once";
    if !need_root(test) || !need_ipvs(test) {
        return;
    }
    let ns = node_ns("ipvs-drain");
    let model = varied_model();
    let mut e = IpvsEngine::new(IpvsOptions {
        netns: Some(ns.name.clone()),
        drain_limit: Duration::from_secs(3600),
        ..IpvsOptions::default()
    });
    e.prepare().await.unwrap();
    e.sync(&model, &ChangeSet::full(&model)).await.unwrap();
    // UDP: dns loses an endpoint; its real server is deleted in the same sync.
    let mut dns = plan_of(&model, "dns");
    for f in &mut dns.families {
        if let switchyard_model::Target::Endpoints(_) = f.internal {
            f.internal = switchyard_model::Target::Reject;
            f.external = switchyard_model::Target::Reject;
        }
    }
    let (m1, c1) = changed(&model, dns);
    e.sync(&m1, &c1).await.unwrap();
    let udp = ServiceId::new(switchyard_model::Protocol::Udp, ip("10.96.0.12"), 53);
    assert!(ipvs(&ns).destinations(&udp).unwrap().is_empty());
    // TCP: drains, then (no connection through it) goes at the next check.
    let (m2, c2) = changed(&m1, web(&["10.1.0.1"]));
    e.sync(&m2, &c2).await.unwrap();
    let tcp = ServiceId::new(switchyard_model::Protocol::Tcp, ip("10.96.0.10"), 80);
    assert_eq!(e.verify(&m2).await.unwrap(), Drift::None);
    let left: Vec<IpAddr> = ipvs(&ns)
        .destinations(&tcp)
        .unwrap()
        .iter()
        .map(|d| d.destination.addr)
        .collect();
    assert_eq!(
        left,
        [ip("10.1.0.1")],
        "idle drained server removed by verify"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn ipvsadm_reads_as_an_operator_expects() {
    let test = "ipvsadm_reads_as_an_operator_expects";
    if !need_root(test) || !need_ipvs(test) {
        return;
    }
    let ns = node_ns("ipvs-adm");
    let model = varied_model();
    let mut e = engine(&ns);
    e.prepare().await.unwrap();
    e.sync(&model, &ChangeSet::full(&model)).await.unwrap();
    let out = ns.exec("ipvsadm", &["-Ln"]);
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let has = |want: &[&str]| lines.iter().any(|l| l.as_slice() == want);
    assert!(has(&["TCP", "10.96.0.10:80", "rr"]), "{out}");
    assert!(
        has(&["->", "10.1.0.1:8080", "Masq", "1", "0", "0"]),
        "{out}"
    );
    assert!(has(&["UDP", "10.96.0.12:53", "rr"]), "{out}");
    assert!(has(&["UDP", "[fd00::12]:53", "rr"]), "{out}");
    assert!(
        has(&["->", "[fd00:10::3]:5353", "Masq", "1", "0", "0"]),
        "{out}"
    );
    assert!(has(&["TCP", "192.168.0.2:30080", "rr"]), "NodePort: {out}");
    assert!(
        has(&["TCP", "10.96.0.15:80", "rr", "persistent", "10800"]),
        "affinity: {out}"
    );
    assert!(
        has(&["TCP", "10.96.0.11:80", "rr"]),
        "no endpoints, still listed: {out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.first() == Some(&"FWM") && l.contains(&"rr")),
        "short circuit: {out}"
    );
    e.cleanup().await.unwrap();
}
