//! Property test: whatever the names, ports and addresses, the kernel accepts the full
//! ruleset and a partial update (real restore on one backend, `--test` on the other),
//! the record matches what the kernel holds, and no name injects a rule.

mod support;

use proptest::prelude::*;
use support::netns::{have_root, Netns};
use switchyard_core::test_util::strategies::{
    any_endpoint, any_ip, any_name, any_net, any_protocol,
};
use switchyard_core::{
    ChangeSet, Drift, IpFamily, NodeModel, ProxyEngine, ServicePort, ServicePortName,
};
use switchyard_iptables::{render_full, Backend, IptablesEngine};

prop_compose! {
    fn any_service()(
        ns in any_name(), name in any_name(), port_name in any_name(),
        protocol in any_protocol(), port in 1u16..=65535,
        cluster_ips in prop::collection::vec(any_ip(), 1..3),
        node_port in prop::option::of(1u16..=65535),
        external_ips in prop::collection::vec(any_ip(), 0..3),
        load_balancer_ips in prop::collection::vec(any_ip(), 0..3),
        ranges in prop::collection::vec(any_net(), 0..3),
        ext_local in any::<bool>(), int_local in any::<bool>(),
        affinity in prop::option::of(1u32..=86400),
        hc in prop::option::of(1u16..=65535),
        endpoints in prop::collection::vec(any_endpoint(), 0..5),
    ) -> ServicePort {
        let mut endpoints = endpoints;
        endpoints.sort();
        endpoints.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
        let local = endpoints.iter().filter(|e| e.local).cloned().collect();
        let externally = node_port.is_some() || !external_ips.is_empty() || !load_balancer_ips.is_empty();
        ServicePort {
            name: ServicePortName { namespace: ns, name, port: port_name, protocol },
            protocol,
            port,
            cluster_ips,
            node_port,
            external_ips,
            load_balancer_ips,
            load_balancer_source_ranges: ranges,
            external_policy_local: ext_local && externally,
            internal_policy_local: int_local,
            affinity_timeout: affinity,
            health_check_node_port: hc.filter(|_| ext_local && externally),
            cluster_endpoints: endpoints,
            local_endpoints: local,
        }
    }
}

prop_compose! {
    fn any_model()(
        services in prop::collection::vec(any_service(), 0..6),
        node_ips in prop::collection::vec(any_ip(), 0..3),
        node_port_addresses in prop::collection::vec(any_net(), 0..3),
        cluster_cidrs in prop::collection::vec(any_net(), 0..3),
        masquerade_all in any::<bool>(),
    ) -> NodeModel {
        NodeModel {
            node_name: "n".into(),
            node_ips,
            node_port_addresses,
            cluster_cidrs,
            masquerade_all,
            services: services.into_iter().map(|s| (s.name.clone(), s)).collect(),
        }
    }
}

fn check(m1: &NodeModel, m2: &NodeModel, backend: Backend) {
    let ns = Netns::new();
    // The other backend: the tool parses and checks everything without committing.
    let other = if backend == Backend::Nft {
        "legacy"
    } else {
        "nft"
    };
    for (family, base) in [(IpFamily::V4, "iptables"), (IpFamily::V6, "ip6tables")] {
        for m in [m1, m2] {
            let text = render_full(m, family);
            for l in text.lines() {
                assert!(
                    l.starts_with(['*', ':', '-']) || l == "COMMIT",
                    "stray line {l:?}"
                );
                if l.starts_with("-I ") {
                    assert!(l.contains("switchyard"), "{l}");
                }
            }
            let (ok, out) = ns.run(&format!("{base}-{other}-restore"), &["--test"], &text);
            assert!(ok, "{base}-{other}-restore --test: {out}\n{text}");
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut engine = IptablesEngine::new(ns.options(backend));
        engine.sync(m1, &ChangeSet::full(m1)).await.unwrap();
        assert_eq!(engine.verify(m1).await.unwrap(), Drift::None);
        let changes = ChangeSet::between(m1, m2);
        let report = engine.sync(m2, &changes).await.unwrap();
        assert_eq!(report.full, changes.full);
        assert_eq!(
            engine.verify(m2).await.unwrap(),
            Drift::None,
            "{backend:?} after partial"
        );
        engine.cleanup().await.unwrap();
    });
    for tool in ["iptables", "ip6tables"] {
        let (ok, out) = ns.run(&format!("{tool}-{}-save", backend.as_str()), &[], "");
        assert!(ok, "{out}");
        assert!(!out.contains("SY-"), "{out}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn kernel_accepts_any_model(
        m1 in any_model(),
        m2_extra in any_model(),
        keep in prop::collection::vec(any::<bool>(), 6),
        legacy in any::<bool>(),
    ) {
        if !have_root("kernel_accepts_any_model") {
            return Ok(());
        }
        // m2: some of m1's services kept (some with endpoints changed), plus new ones,
        // with m1's node-wide settings so the change set is partial.
        let mut m2 = m1.clone();
        let names: Vec<_> = m1.services.keys().cloned().collect();
        for (i, name) in names.iter().enumerate() {
            match (keep[i % keep.len()], i % 2) {
                (false, _) => { m2.services.remove(name); }
                (true, 0) => {
                    let sp = m2.services.get_mut(name).unwrap();
                    sp.cluster_endpoints.pop();
                    sp.local_endpoints = sp.cluster_endpoints.iter().filter(|e| e.local).cloned().collect();
                }
                _ => {}
            }
        }
        for (k, v) in m2_extra.services {
            m2.services.entry(k).or_insert(v);
        }
        check(&m1, &m2, if legacy { Backend::Legacy } else { Backend::Nft });
    }
}
