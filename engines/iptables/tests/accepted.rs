//! Property test: whatever the Services (names, ports, addresses, policies, endpoints in
//! any condition) and node settings, planned by the real planner, the kernel accepts
//! the full ruleset and a partial update (real restore on one backend, `--test` on the
//! other), the record matches what the kernel holds, and no name injects a rule.

mod support;

use proptest::prelude::*;
use support::{netns::Netns, TestCatalog, TestService};
use switchyard_e2e::require_root as have_root;
use switchyard_iptables::{render_full, Backend, IptablesEngine};
use switchyard_model::{
    test_util::strategies::{any_endpoint, any_ip, any_name, any_net, any_protocol},
    ChangeSet, Drift, IpFamily, ModelConfig, NodeFacts, NodeModel, ProxyEngine, ServicePortName,
};

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
    ) -> TestService {
        TestService {
            name: ServicePortName::new(&ns, &name, &port_name, protocol),
            port,
            cluster_ips,
            node_port,
            external_ips,
            load_balancer_ips,
            load_balancer_source_ranges: ranges,
            external_policy_local: ext_local,
            internal_policy_local: int_local,
            affinity_timeout: affinity,
            health_check_node_port: hc,
            endpoints,
        }
    }
}

/// Node-wide facts and settings.
#[derive(Clone, Debug)]
struct Node {
    facts: NodeFacts,
    config: ModelConfig,
}

prop_compose! {
    fn any_node()(
        node_ips in prop::collection::vec(any_ip(), 0..3),
        node_port_cidrs in prop::collection::vec(any_net(), 0..3),
        node_port_primary in any::<bool>(),
        cluster_cidrs in prop::collection::vec(any_net(), 0..3),
        masquerade_all in any::<bool>(),
    ) -> Node {
        Node {
            facts: NodeFacts { name: support::NODE_NAME.into(), primary_ips: node_ips, zone: "zone-a".into() },
            config: ModelConfig { cluster_cidrs, masquerade_all, node_port_cidrs, node_port_primary },
        }
    }
}

fn build(services: &[TestService], node: &Node) -> NodeModel {
    NodeModel::build(&TestCatalog::new(services), &node.facts, &node.config)
}

fn check_text(m: &NodeModel, ns: &Netns, other: &str) {
    for (family, base) in [(IpFamily::V4, "iptables"), (IpFamily::V6, "ip6tables")] {
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

fn check(m1: &NodeModel, m2: &NodeModel, backend: Backend) {
    let ns = Netns::new();
    // The other backend: the tool parses and checks everything without committing.
    let other = if backend == Backend::Nft {
        "legacy"
    } else {
        "nft"
    };
    check_text(m1, &ns, other);
    check_text(m2, &ns, other);
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
        s1 in prop::collection::vec(any_service(), 0..6),
        extra in prop::collection::vec(any_service(), 0..6),
        node in any_node(),
        keep in prop::collection::vec(any::<bool>(), 6),
        legacy in any::<bool>(),
    ) {
        if !have_root("kernel_accepts_any_model") {
            return Ok(());
        }
        // s2: some of s1's services kept (some losing an endpoint), plus new ones, on
        // the same node with the same settings, so the change set is partial.
        let mut s2 = Vec::new();
        for (i, s) in s1.iter().enumerate() {
            match (keep[i % keep.len()], i % 2) {
                (false, _) => {}
                (true, 0) => {
                    let mut s = s.clone();
                    s.endpoints.pop();
                    s2.push(s);
                }
                _ => s2.push(s.clone()),
            }
        }
        s2.extend(extra);
        let m1 = build(&s1, &node);
        let m2 = build(&s2, &node);
        check(&m1, &m2, if legacy { Backend::Legacy } else { Backend::Nft });
    }
}
