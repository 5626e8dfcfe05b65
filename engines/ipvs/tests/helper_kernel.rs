//! The helper table against a real nf_tables kernel (the host has one), in a private
//! network namespace: the full table of a varied model is accepted by `nft` in both
//! families; its element counts read back over netlink match the record; a partial
//! change written as a netlink batch (element adds and deletes) and one written as
//! nft text (a new per-port chain) are accepted and read back. Needs root.

mod support;

use std::net::IpAddr;

use support::{need_root, varied_model, TestNetns};
use switchyard_ipvs::{
    helper::{self, text::NodeRules, SetKind},
    record::Record,
    wants::port_wants,
};
use switchyard_model::{
    test_util::{self, ep},
    IpFamily, NodeModel,
};
use switchyard_netlink::nftables::{NftSocket, TableFamily};
use switchyard_nftables::ruleset::collapse;

const TABLE: &str = "sy-ipvs-test";

fn node_addrs() -> Vec<IpAddr> {
    vec![
        "192.168.0.2".parse().unwrap(),
        "2001:db8::1".parse().unwrap(),
    ]
}

fn record(model: &NodeModel) -> Record {
    Record::of(
        model
            .services
            .iter()
            .map(|(n, p)| (n.clone(), port_wants(p, &node_addrs(), true))),
    )
}

fn rules(model: &NodeModel) -> Vec<NodeRules> {
    IpFamily::ALL
        .iter()
        .map(|&family| NodeRules {
            family,
            cluster_cidrs: collapse(model.cluster_cidrs(family)),
            masquerade: model.masquerade_sources(family),
        })
        .collect()
}

fn apply(ns: &TestNetns, text: &str) {
    let path = std::env::temp_dir().join(format!("{}.nft", ns.name));
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "nft refused:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn family(f: IpFamily) -> TableFamily {
    match f {
        IpFamily::V4 => TableFamily::Ip,
        IpFamily::V6 => TableFamily::Ip6,
    }
}

fn assert_counts(nft: &mut NftSocket, record: &Record) {
    let elements = record.elements();
    for f in IpFamily::ALL {
        for kind in SetKind::ALL {
            let want = elements
                .iter()
                .filter(|(ef, e)| *ef == f && e.set == kind)
                .count();
            let got = nft.element_count(family(f), TABLE, kind.name()).unwrap();
            assert_eq!(got, Some(want), "{f} {}", kind.name());
        }
    }
}

#[test]
fn full_table_and_partial_changes_are_accepted() {
    if !need_root("full_table_and_partial_changes_are_accepted") {
        return;
    }
    let ns = TestNetns::new("ipvs-helper");
    let model = varied_model();
    let mut record = record(&model);
    apply(&ns, &helper::text::tables(TABLE, &record, &rules(&model)));
    let listing = ns.exec("nft", &["list", "table", "ip", TABLE]);
    assert!(listing.contains("chain mark-for-masquerade"), "{listing}");
    assert!(
        listing.contains("meta mark set 0x8"),
        "short-circuit chain: {listing}"
    );
    let mut nft = NftSocket::open(Some(&ns.name)).unwrap();
    assert_counts(&mut nft, &record);

    // One endpoint more (element adds only): a netlink batch.
    let mut model2 = model.clone();
    let grown = test_util::model(vec![test_util::service(
        "web",
        &["10.96.0.10"],
        80,
        vec![
            ep("10.1.0.1", 8080, true),
            ep("10.1.0.2", 8080, false),
            ep("10.1.0.9", 8080, false),
        ],
    )]);
    let plan = grown.services.values().next().unwrap().clone();
    let name = plan.name.clone();
    model2.insert_plan(plan.clone());
    let delta = record.replace(vec![(name, Some(port_wants(&plan, &node_addrs(), true)))]);
    assert!(delta.helper[0].chains.is_empty());
    let mut batch = nft.batch();
    for (h, &f) in delta.helper.iter().zip(&IpFamily::ALL) {
        let adds: Vec<_> = h.adds.iter().collect();
        let deletes: Vec<_> = h.deletes.iter().chain(&h.replaced).collect();
        helper::batch::encode(&mut batch, TABLE, f, &deletes, &adds);
    }
    nft.commit(batch).unwrap();
    assert_counts(&mut nft, &record);

    // A port that goes away with its chains: element deletes, then chain deletes.
    let local = model
        .services
        .keys()
        .find(|n| n.name == "local")
        .unwrap()
        .clone();
    let delta = record.replace(vec![(local, None)]);
    let mut batch = nft.batch();
    for (h, &f) in delta.helper.iter().zip(&IpFamily::ALL) {
        let deletes: Vec<_> = h.deletes.iter().collect();
        helper::batch::encode(&mut batch, TABLE, f, &deletes, &[]);
    }
    nft.commit(batch).unwrap();
    let mut text = String::new();
    for (h, &f) in delta.helper.iter().zip(&IpFamily::ALL) {
        let names: Vec<&str> = h.stale_chains.iter().map(String::as_str).collect();
        assert!(!names.is_empty(), "{f}: the short circuit's chain goes");
        text.push_str(&helper::text::delete_chains(TABLE, f, &names));
    }
    apply(&ns, &text);
    assert_counts(&mut nft, &record);

    // And back, with its chains: through nft text.
    let plan = model
        .services
        .values()
        .find(|p| p.name.name == "local")
        .unwrap();
    let delta = record.replace(vec![(
        plan.name.clone(),
        Some(port_wants(plan, &node_addrs(), true)),
    )]);
    let mut text = String::new();
    for (h, &f) in delta.helper.iter().zip(&IpFamily::ALL) {
        assert!(!h.chains.is_empty());
        let chains: Vec<_> = h.chains.iter().collect();
        let adds: Vec<_> = h.adds.iter().collect();
        text.push_str(&helper::text::partial(TABLE, f, &chains, &[], &adds));
    }
    apply(&ns, &text);
    assert_counts(&mut nft, &record);
}
