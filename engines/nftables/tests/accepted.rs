//! Property test: whatever the names, ports and addresses, the kernel accepts the full
//! ruleset and a partial update rendered against it (no injection through names).

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;
use support::netns::{have_root, Netns};
use switchyard_core::{ChangeSet, Endpoint, NodeModel, Protocol, ServicePort, ServicePortName};
use switchyard_nftables::{
    render::render_full_with_record,
    render_partial,
    ruleset::Family,
    verify::{compare, parse_listing},
};

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
        Just("::".parse().unwrap()),
        Just("::ffff:10.0.0.1".parse().unwrap()),
        Just("10.0.0.5".parse().unwrap()),
    ]
}

fn any_net() -> impl Strategy<Value = IpNet> {
    (any_ip(), 0u8..=128).prop_map(|(ip, len)| {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        IpNet::new(ip, len % (max + 1)).unwrap().trunc()
    })
}

fn any_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "(.|\n){0,40}",
        "[a-z0-9\"';{}\\\\\n é€😀$@#-]{0,60}",
        Just("x".repeat(253)),
        Just("é".repeat(253)),
        Just("\"; flush ruleset; \"".to_string()),
    ]
}

fn any_protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Sctp)
    ]
}

fn any_endpoint() -> impl Strategy<Value = Endpoint> {
    (any_ip(), 1u16..=65535, any::<bool>()).prop_map(|(ip, port, local)| Endpoint {
        ip,
        port,
        local,
        ready: true,
        serving: true,
        terminating: false,
        zone_hints: vec![],
        node_hints: vec![],
    })
}

prop_compose! {
    fn any_service_port()(
        namespace in any_name(),
        name in any_name(),
        port_name in any_name(),
        protocol in any_protocol(),
        port in 1u16..=65535,
        cluster_ips in prop::collection::vec(any_ip(), 1..3),
        node_port in prop::option::of(1u16..=65535),
        external_ips in prop::collection::vec(any_ip(), 0..3),
        load_balancer_ips in prop::collection::vec(any_ip(), 0..3),
        load_balancer_source_ranges in prop::collection::vec(any_net(), 0..3),
        external_policy_local in any::<bool>(),
        internal_policy_local in any::<bool>(),
        affinity_timeout in prop::option::of(1u32..=86400),
        mut endpoints in prop::collection::vec(any_endpoint(), 0..5),
    ) -> ServicePort {
        endpoints.sort();
        endpoints.dedup_by_key(|e| (e.ip, e.port));
        let local_endpoints = endpoints.iter().filter(|e| e.local).cloned().collect();
        ServicePort {
            name: ServicePortName { namespace, name, port: port_name, protocol },
            protocol,
            port,
            cluster_ips,
            node_port,
            external_ips,
            load_balancer_ips,
            load_balancer_source_ranges,
            external_policy_local,
            internal_policy_local,
            affinity_timeout,
            health_check_node_port: None,
            cluster_endpoints: endpoints,
            local_endpoints,
        }
    }
}

prop_compose! {
    fn any_models()(
        before in prop::collection::vec(any_service_port(), 0..4),
        after in prop::collection::vec(any_service_port(), 0..3),
        keep in prop::collection::vec(any::<bool>(), 4),
        new_endpoints in prop::collection::vec(prop::collection::vec(any_endpoint(), 0..4), 4),
        node_ips in prop::collection::vec(any_ip(), 0..3),
        node_port_addresses in prop::collection::vec(any_net(), 0..3),
        cluster_cidrs in prop::collection::vec(any_net(), 0..3),
        masquerade_all in any::<bool>(),
    ) -> (NodeModel, NodeModel) {
        let m1 = NodeModel {
            node_name: "test-node".into(),
            node_ips,
            node_port_addresses,
            cluster_cidrs,
            masquerade_all,
            services: before.iter().map(|s| (s.name.clone(), s.clone())).collect(),
        };
        // The second model keeps some ports, changes the endpoints of some, adds others.
        let mut m2 = m1.clone();
        m2.services.clear();
        for (i, sp) in before.into_iter().enumerate() {
            if !keep[i] {
                continue;
            }
            let mut sp = sp;
            if i % 2 == 1 {
                let mut eps = new_endpoints[i].clone();
                eps.sort();
                eps.dedup_by_key(|e| (e.ip, e.port));
                sp.local_endpoints = eps.iter().filter(|e| e.local).cloned().collect();
                sp.cluster_endpoints = eps;
            }
            m2.services.insert(sp.name.clone(), sp);
        }
        for sp in after {
            m2.services.insert(sp.name.clone(), sp);
        }
        (m1, m2)
    }
}

#[test]
fn kernel_accepts_full_and_partial_rulesets() {
    if !have_root("kernel_accepts_full_and_partial_rulesets") {
        return;
    }
    let ns = Netns::new();
    let config = ProptestConfig {
        cases: std::env::var("SY_PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(32),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |((m1, m2) in any_models())| {
        let (full, applied) = render_full_with_record(&m1);
        let (ok, out) = ns.nft(&["-f", "-"], &full);
        prop_assert!(ok, "full ruleset refused: {out}\n{full}");
        let changes = ChangeSet::between(&m1, &m2);
        let partial = render_partial(&m2, &changes, &applied);
        if !partial.text.is_empty() {
            let (ok, out) = ns.nft(&["-c", "-f", "-"], &partial.text);
            prop_assert!(ok, "partial update refused: {out}\n{}\nagainst\n{full}", partial.text);
            let (ok, out) = ns.nft(&["-f", "-"], &partial.text);
            prop_assert!(ok, "partial update failed: {out}");
        }
        // The record after the partial update matches the kernel.
        let mut applied = applied;
        let text = partial.text.clone();
        partial.commit(&mut applied);
        for family in Family::BOTH {
            let (ok, listing) = ns.nft(&["-a", "list", "table", family.nft(), "switchyard"], "");
            prop_assert!(ok, "{listing}");
            let diff = compare(
                family,
                &parse_listing(&listing, family).unwrap(),
                &applied.families[family.index()],
            );
            prop_assert!(diff.is_empty(), "{diff:?}\nafter\n{text}\nlisting\n{listing}");
        }
    });
}
