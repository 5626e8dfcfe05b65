//! Property test: whatever the names, ports and addresses, the kernel accepts the full
//! ruleset and a partial update rendered against it (no injection through names), and
//! every way of reaching a model leaves the same kernel state, compared byte for byte in
//! the kernel's own dumps: a full sync as a netlink batch and as `nft -f` text (the
//! batch mirrors nft's bytecode), a partial sync after a full one, and a new process
//! adopting the tables an old one wrote for another model.

mod support;

use proptest::prelude::*;
use support::netns::{have_root, Netns};
use switchyard_model::test_util::strategies::{
    any_endpoint, any_ip, any_name, any_net, any_protocol,
};
use switchyard_model::test_util::{TestCatalog, TestService};
use switchyard_model::{ChangeSet, ModelConfig, NodeFacts, NodeModel, ServicePortName};
use switchyard_nftables::{
    adopt,
    full::{render_full_batch, render_full_with_record},
    netlink::NftSocket,
    render_partial,
    ruleset::{Family, TableNames, TABLES},
    verify::{compare, parse_listing},
};

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
        endpoints in prop::collection::vec(any_endpoint(), 0..5),
    ) -> TestService {
        TestService {
            name: ServicePortName::new(&namespace, &name, &port_name, protocol),
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
            endpoints,
        }
    }
}

/// Services with distinct (namespace, name): one port per Service.
fn distinct(services: Vec<TestService>) -> Vec<TestService> {
    let mut seen = std::collections::HashSet::new();
    services
        .into_iter()
        .filter(|s| seen.insert((s.name.namespace.clone(), s.name.name.clone())))
        .collect()
}

prop_compose! {
    fn any_models()(
        before in prop::collection::vec(any_service_port(), 0..4),
        after in prop::collection::vec(any_service_port(), 0..3),
        keep in prop::collection::vec(any::<bool>(), 4),
        new_endpoints in prop::collection::vec(prop::collection::vec(any_endpoint(), 0..4), 4),
        node_ips in prop::collection::vec(any_ip(), 0..3),
        node_port_cidrs in prop::collection::vec(any_net(), 0..3),
        cluster_cidrs in prop::collection::vec(any_net(), 0..3),
        masquerade_all in any::<bool>(),
    ) -> (NodeModel, NodeModel) {
        let node = NodeFacts { name: "test-node".into(), primary_ips: node_ips, zone: String::new() };
        let config = ModelConfig { cluster_cidrs, masquerade_all, node_port_cidrs, node_port_primary: false };
        let before = distinct(before);
        let build = |services: &[TestService]| NodeModel::build(&TestCatalog::new(services), &node, &config);
        let m1 = build(&before);
        // The second model keeps some ports, changes the endpoints of some, adds others.
        let mut second = Vec::new();
        for (i, mut s) in before.into_iter().enumerate() {
            if !keep[i] {
                continue;
            }
            if i % 2 == 1 {
                s.endpoints = new_endpoints[i].clone();
            }
            second.push(s);
        }
        second.extend(after);
        (m1, build(&distinct(second)))
    }
}

/// A namespace and a netlink socket in it.
struct Kernel {
    ns: Netns,
    socket: NftSocket,
}

impl Kernel {
    fn new() -> Kernel {
        let ns = Netns::new();
        let socket = NftSocket::open(Some(&ns.name)).expect("netlink socket in the netns");
        Kernel { ns, socket }
    }

    /// A full sync of `model` as the engine writes it: one netlink batch.
    fn full(&mut self, model: &NodeModel) -> Result<(), String> {
        let empty = self.socket.batch();
        let (batch, _) = render_full_batch(model, &TableNames::default(), true, empty);
        self.socket.commit(batch).map_err(|e| e.to_string())
    }

    fn state(&mut self, family: Family) -> std::collections::BTreeMap<String, Vec<Vec<u8>>> {
        support::kernel_state(&mut self.socket, family)
    }
}

#[test]
fn kernel_accepts_full_and_partial_rulesets() {
    if !have_root("kernel_accepts_full_and_partial_rulesets") {
        return;
    }
    let config = ProptestConfig {
        cases: std::env::var("SY_PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(32),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    // Partial syncs, nft text, the reference (a full sync of the second model), and an
    // adopting process.
    let kernel = std::cell::RefCell::new(Kernel::new());
    let text = Netns::new();
    let reference = std::cell::RefCell::new(Kernel::new());
    let adopting = std::cell::RefCell::new(Kernel::new());
    let counts = std::cell::RefCell::new(std::collections::BTreeMap::<&str, usize>::new());
    proptest!(config, |((m1, m2) in any_models())| {
        let mut kernel = kernel.borrow_mut();
        let (full_text, applied) = render_full_with_record(&m1);
        prop_assert!(kernel.full(&m1).is_ok(), "netlink full sync refused: {:?}\n{full_text}", kernel.full(&m1));
        // The same model written by nft from the text: the same kernel state.
        let (ok, out) = text.nft(&["-f", "-"], &full_text);
        prop_assert!(ok, "full ruleset refused by nft: {out}\n{full_text}");
        for family in Family::BOTH {
            let mut socket = NftSocket::open(Some(&text.name)).unwrap();
            let by_nft = support::kernel_state(&mut socket, family);
            let diff = support::state_diff(&kernel.state(family), &by_nft);
            prop_assert!(diff.is_empty(), "netlink and nft full syncs differ: {diff:#?}\n{full_text}");
        }
        let changes = ChangeSet::between(&m1, &m2);
        let partial = render_partial(&m2, &changes, &applied);
        let mut via = "nothing";
        let tables = TableNames::default();
        let partial_text = partial.text(&tables);
        if !partial.is_empty() {
            // The nft text of the same transaction is valid too (the engine's option).
            let (ok, out) = kernel.ns.nft(&["-c", "-f", "-"], &partial_text);
            prop_assert!(ok, "partial update refused: {out}\n{partial_text}\nagainst\n{full_text}");
            let mut batch = kernel.socket.batch();
            partial.encode(&mut batch, &tables);
            via = "netlink";
            let result = kernel.socket.commit(batch);
            prop_assert!(result.is_ok(), "netlink partial update failed: {result:?}\n{partial_text}");
        }
        *counts.borrow_mut().entry(via).or_default() += 1;
        // The record after the partial update matches the kernel.
        let mut applied = applied;
        partial.commit(&mut applied);
        for (family, t) in Family::BOTH.into_iter().flat_map(|f| (0..TABLES).map(move |t| (f, t))) {
            let table = tables.name(t).to_string();
            let (ok, listing) = kernel.ns.nft(&["-a", "list", "table", family.nft(), &table], "");
            prop_assert!(ok, "{listing}");
            let diff = compare(
                &tables,
                family,
                t,
                &parse_listing(&listing, family, &table).unwrap(),
                &applied.families[family.index()].tables[t],
            );
            prop_assert!(diff.is_empty(), "{table}: {diff:?}\nafter\n{partial_text}\nlisting\n{listing}");
        }
        // The kernel holds exactly what a full sync of the new model gives, and so does
        // a new process adopting the first model's tables for the second.
        let mut reference = reference.borrow_mut();
        prop_assert!(reference.full(&m2).is_ok());
        let mut adopting = adopting.borrow_mut();
        prop_assert!(adopting.full(&m1).is_ok());
        let adoption = adopt::plan(&mut adopting.socket, &tables, &m2, true);
        let adoption = match adoption {
            Ok(Some(a)) => a,
            other => return Err(TestCaseError::fail(format!("nothing adopted: {:?}", other.err()))),
        };
        if !adoption.repair.is_empty() {
            let mut batch = adopting.socket.batch();
            adoption.repair.encode(&mut batch, &tables);
            let result = adopting.socket.commit(batch);
            prop_assert!(result.is_ok(), "adoption repair failed: {result:?}\n{}", adoption.repair.text(&tables));
        }
        for family in Family::BOTH {
            let want = reference.state(family);
            let diff = support::state_diff(&kernel.state(family), &want);
            prop_assert!(diff.is_empty(), "partial ({via}) differs from full: {diff:#?}\npartial\n{partial_text}");
            let diff = support::state_diff(&adopting.state(family), &want);
            prop_assert!(diff.is_empty(), "adoption differs from full: {diff:#?}\nrepair\n{}", adoption.repair.text(&tables));
        }
    });
    let counts = counts.into_inner();
    eprintln!("partial updates applied: {counts:?}");
    assert!(
        counts.get("netlink").copied().unwrap_or(0) > 0,
        "no partial went through netlink"
    );
}
