//! The dataplane's life: endpoint changes as map writes under a running connection loop,
//! a restart of the loader reusing the pinned maps and attachments without a failed
//! connection, and a cleanup that leaves nothing behind.

mod support;

use std::{thread, time::Duration};

use support::*;
use switchyard_e2e::netns::run_cmd;
use switchyard_ebpf::{Protocol, TargetSet};

const VIP: &str = "10.96.0.30:80";

fn loop_for(node: &Node, d: Duration) -> switchyard_e2e::cgroup::LoopStats {
    let src = node.sb.source("pod").unwrap();
    node.sb
        .cgroup_client()
        .unwrap()
        .connect_loop(&src, VIP.parse().unwrap(), d)
        .unwrap()
}

#[test]
fn endpoint_changes_and_a_loader_restart_lose_no_connection() {
    if !root_or_skip("endpoint_changes_and_a_loader_restart_lose_no_connection") {
        return;
    }
    let node = Node::new(&["10.0.1.1", "10.0.1.2", "10.0.1.3"], &[8080]);
    let mut dp = node.load();
    let mut sp = cluster_ip(
        20,
        "10.96.0.30",
        80,
        &[Protocol::Tcp],
        &["10.0.1.1:8080", "10.0.1.2:8080"],
    );
    dp.upsert_service(&sp).unwrap();

    // Endpoint changes (add, replace, remove) while connections run back to back.
    let stats = thread::scope(|s| {
        let looping = s.spawn(|| loop_for(&node, Duration::from_millis(2500)));
        for eps in [
            &["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"][..],
            &["10.0.1.1:8080", "10.0.1.3:8080"],
            &["10.0.1.3:8080"],
            &["10.0.1.2:8080", "10.0.1.3:8080"],
        ] {
            thread::sleep(Duration::from_millis(400));
            sp.sets.insert(TargetSet::Internal, backends(eps));
            let w = dp.upsert_service(&sp).unwrap();
            assert!(
                w.writes + w.deletes <= 3,
                "a one-endpoint change is a few writes: {w:?}"
            );
        }
        looping.join().unwrap()
    });
    assert!(stats.ok > 50, "{stats:?}");
    assert_eq!(
        stats.failed, 0,
        "connections failed during endpoint changes: {stats:?}"
    );
    assert!(dp.verify().unwrap().is_empty());

    // A restart: the old dataplane goes away (every fd closed, as at process exit) and a
    // new one loads over the pins, while the loop runs.
    let stats = thread::scope(|s| {
        let looping = s.spawn(|| loop_for(&node, Duration::from_millis(2000)));
        thread::sleep(Duration::from_millis(500));
        drop(dp);
        thread::sleep(Duration::from_millis(300));
        let dp2 = node.load();
        looping.join().unwrap();
        dp2
    });
    let dp2 = stats;
    let mut back = dp2.read_back().unwrap().remove(&20).unwrap();
    for set in back.sets.values_mut() {
        set.sort_by_key(|b| b.addr);
    }
    assert_eq!(back, sp, "the restarted dataplane reads back what was applied");
    assert!(dp2.verify().unwrap().is_empty());
    drop(dp2);
    let after = loop_for(&node, Duration::from_millis(500));
    assert_eq!(after.failed, 0, "after the restart: {after:?}");
}

#[test]
fn a_restart_keeps_traffic_flowing() {
    if !root_or_skip("a_restart_keeps_traffic_flowing") {
        return;
    }
    let node = Node::new(&["10.0.1.1"], &[8080]);
    let dp = {
        let mut dp = node.load();
        dp.upsert_service(&cluster_ip(
            21,
            "10.96.0.30",
            80,
            &[Protocol::Tcp],
            &["10.0.1.1:8080"],
        ))
        .unwrap();
        dp
    };
    let stats = thread::scope(|s| {
        let looping = s.spawn(|| loop_for(&node, Duration::from_millis(2000)));
        thread::sleep(Duration::from_millis(400));
        drop(dp);
        let reloaded = node.load();
        thread::sleep(Duration::from_millis(400));
        drop(reloaded);
        looping.join().unwrap()
    });
    assert!(stats.ok > 20, "{stats:?}");
    assert_eq!(
        stats.failed, 0,
        "connections failed across restarts: {stats:?}"
    );
}

fn qdiscs(node: &Node, dev: &str) -> String {
    let ns = node.sb.node_ns().name().to_string();
    run_cmd(
        std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "tc", "qdisc", "show", "dev", dev]),
    )
    .unwrap()
}

#[test]
fn cleanup_leaves_no_pins_links_or_qdiscs() {
    if !root_or_skip("cleanup_leaves_no_pins_links_or_qdiscs") {
        return;
    }
    let node = Node::new(&["10.0.1.1"], &[8080]);
    let qdiscs_before = (qdiscs(&node, "uplink"), qdiscs(&node, "cbr0"));
    let mut dp = node.load();
    dp.upsert_service(&cluster_ip(
        22,
        "10.96.0.30",
        80,
        &[Protocol::Tcp],
        &["10.0.1.1:8080"],
    ))
    .unwrap();
    assert!(node.cfg.pin_dir().join("sy_services").exists());
    let link_ids = pinned_link_ids(&node);
    assert_eq!(
        link_ids.len(),
        9 + 3,
        "8 sock_addr + 1 cgroup_skb + 3 tc links: {link_ids:?}"
    );
    assert!(link_ids.iter().all(|id| link_exists(*id)));
    drop(dp);
    switchyard_ebpf::cleanup(&node.cfg.pin_root).unwrap();
    assert!(!node.cfg.pin_root.exists(), "pin directory removed");
    let left: Vec<u64> = link_ids.into_iter().filter(|id| link_exists(*id)).collect();
    assert!(left.is_empty(), "links left attached: {left:?}");
    assert!(
        matches!(
            node.probe("pod", VIP, switchyard_e2e::Proto::Tcp),
            switchyard_e2e::Outcome::Timeout | switchyard_e2e::Outcome::Refused(_)
        ),
        "the VIP is no longer translated"
    );
    assert_eq!(
        (qdiscs(&node, "uplink"), qdiscs(&node, "cbr0")),
        qdiscs_before,
        "no qdisc added or left"
    );
}

/// The ids of the links pinned in the dataplane's links directory, as bpftool reads them.
fn pinned_link_ids(node: &Node) -> Vec<u64> {
    let dir = node.cfg.pin_dir().join("links");
    let mut ids = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let out = run_cmd(
            std::process::Command::new("bpftool")
                .args(["link", "show", "pinned"])
                .arg(&path)
                .arg("-j"),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        ids.push(v["id"].as_u64().unwrap());
    }
    ids
}

/// Whether the kernel still has a link with this id.
fn link_exists(id: u64) -> bool {
    std::process::Command::new("bpftool")
        .args(["link", "show", "id", &id.to_string()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
