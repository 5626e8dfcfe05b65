//! Property test: whatever the names, ports and addresses, the kernel accepts the full
//! ruleset and a partial update rendered against it (no injection through names).

mod support;

use proptest::prelude::*;
use support::netns::{have_root, Netns};
use switchyard_model::test_util::strategies::{
    any_endpoint, any_ip, any_name, any_net, any_protocol,
};
use switchyard_model::test_util::{TestCatalog, TestService};
use switchyard_model::{ChangeSet, ModelConfig, NodeFacts, NodeModel, ServicePortName};
use switchyard_nftables::{
    netlink::NftSocket,
    render::render_full_with_record,
    render_full, render_partial,
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
            name: ServicePortName { namespace, name, port: port_name, protocol },
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
    // The reference: what a full sync of the second model gives.
    let reference = Netns::new();
    let socket = std::cell::RefCell::new(
        NftSocket::open(Some(&ns.name)).expect("netlink socket in the netns"),
    );
    let counts = std::cell::RefCell::new(std::collections::BTreeMap::<&str, usize>::new());
    proptest!(config, |((m1, m2) in any_models())| {
        let (full, applied) = render_full_with_record(&m1);
        let (ok, out) = ns.nft(&["-f", "-"], &full);
        prop_assert!(ok, "full ruleset refused: {out}\n{full}");
        let changes = ChangeSet::between(&m1, &m2);
        let partial = render_partial(&m2, &changes, &applied);
        let mut via = "nothing";
        let tables = TableNames::default();
        let text = partial.text(&tables);
        if !partial.is_empty() {
            // The nft text of the same transaction is valid too (the engine's fallback).
            let (ok, out) = ns.nft(&["-c", "-f", "-"], &text);
            prop_assert!(ok, "partial update refused: {out}\n{text}\nagainst\n{full}");
            // Through netlink, as the engine does.
            let mut socket = socket.borrow_mut();
            let mut batch = socket.batch();
            partial.encode(&mut batch, &tables);
            via = "netlink";
            let result = socket.commit(batch);
            prop_assert!(result.is_ok(), "netlink partial update failed: {result:?}\n{text}");
        }
        *counts.borrow_mut().entry(via).or_default() += 1;
        // The record after the partial update matches the kernel.
        let mut applied = applied;
        partial.commit(&mut applied);
        let (ok, out) = reference.nft(&["-f", "-"], &render_full(&m2));
        prop_assert!(ok, "{out}");
        for (family, t) in Family::BOTH.into_iter().flat_map(|f| (0..TABLES).map(move |t| (f, t))) {
            let table = tables.name(t).to_string();
            let (ok, listing) = ns.nft(&["-a", "list", "table", family.nft(), &table], "");
            prop_assert!(ok, "{listing}");
            let diff = compare(
                &tables,
                family,
                t,
                &parse_listing(&listing, family, &table).unwrap(),
                &applied.families[family.index()].tables[t],
            );
            prop_assert!(diff.is_empty(), "{table}: {diff:?}\nafter\n{text}\nlisting\n{listing}");
            // And the kernel holds exactly what a full sync of the new model gives.
            let (_, got) = ns.nft(&["list", "table", family.nft(), &table], "");
            let (_, want) = reference.nft(&["list", "table", family.nft(), &table], "");
            let (got_n, want_n) = (normalized(&got), normalized(&want));
            if got_n != want_n {
                let missing: Vec<_> = want_n.iter().filter(|b| !got_n.contains(b)).collect();
                let extra: Vec<_> = got_n.iter().filter(|b| !want_n.contains(b)).collect();
                prop_assert!(false, "partial ({via}) differs from full:\nmissing {missing:#?}\nextra {extra:#?}\npartial\n{text}");
            }
        }
    });
    let counts = counts.into_inner();
    eprintln!("partial updates applied: {counts:?}");
    assert!(
        counts.get("netlink").copied().unwrap_or(0) > 0,
        "no partial went through netlink"
    );
}

/// A table listing as a sorted list of blocks (chain, set, map), each with its lines in
/// order and its elements sorted: partial and full syncs create objects in different
/// orders.
fn normalized(listing: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    let mut elements: Option<String> = None;
    for line in listing.lines().map(str::trim) {
        if let Some(acc) = &mut elements {
            acc.push_str(line);
            acc.push(' ');
            if line.ends_with('}') {
                let body = acc
                    .trim()
                    .trim_start_matches("elements = {")
                    .trim_end_matches('}');
                let mut items: Vec<&str> = body
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                items.sort();
                if let Some(block) = &mut current {
                    block.push_str(&format!("\n  elements {items:?}"));
                }
                elements = None;
            }
            continue;
        }
        if line.starts_with("elements = {") {
            elements = Some(String::new());
            let acc = elements.as_mut().unwrap();
            acc.push_str(line);
            acc.push(' ');
            if line.ends_with('}') {
                let body = acc
                    .trim()
                    .trim_start_matches("elements = {")
                    .trim_end_matches('}');
                let mut items: Vec<&str> = body
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                items.sort();
                if let Some(block) = &mut current {
                    block.push_str(&format!("\n  elements {items:?}"));
                }
                elements = None;
            }
            continue;
        }
        if line.starts_with("chain ") || line.starts_with("set ") || line.starts_with("map ") {
            if let Some(b) = current.take() {
                blocks.push(b);
            }
            current = Some(line.to_string());
        } else if let Some(block) = &mut current {
            if !line.is_empty() && line != "}" {
                block.push_str("\n  ");
                block.push_str(line);
            }
        }
    }
    if let Some(b) = current.take() {
        blocks.push(b);
    }
    blocks.sort();
    blocks
}
