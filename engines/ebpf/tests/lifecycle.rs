//! The engine's life with traffic running: endpoint changes as a few map writes under a
//! connection loop, a restart (the engine dropped, a new one loading over the pins) with
//! no failed connection, drift found and repaired, a cleanup that leaves nothing, and no
//! netfilter state at any point.

mod support;

use std::{thread, time::Duration};

use support::*;
use switchyard_e2e::{netns::run_cmd, Outcome, Proto};
use switchyard_model::{ChangeSet, Drift, NodeModel};

const VIP: &str = "10.96.0.70:80";

fn web(ips: &[&str]) -> TestService {
    let eps: Vec<(&str, u16, bool)> = ips.iter().map(|ip| (*ip, 8080, true)).collect();
    let mut s = svc("web", "10.96.0.70", 80, &eps);
    s.node_port = Some(30070);
    s
}

/// Takes a pod off the network (its address stops answering), as a deleted pod.
fn unplug(node: &Node, ip: &str) {
    let netns = node.sb.source(ip).unwrap().netns;
    let name = netns.file_name().unwrap().to_string_lossy().into_owned();
    run_cmd(
        std::process::Command::new("ip")
            .args(["netns", "exec", &name, "ip", "link", "set", "eth0", "down"]),
    )
    .unwrap();
}

#[test]
fn endpoint_changes_under_a_connection_loop_are_a_few_writes_and_lose_nothing() {
    if !root_or_skip("endpoint_changes_under_a_connection_loop_are_a_few_writes_and_lose_nothing") {
        return;
    }
    let node = Node::with_endpoints(&["10.0.1.1", "10.0.1.2", "10.0.1.3"], &[8080]);
    let mut current = model(vec![web(&["10.0.1.1", "10.0.1.2"])]);
    let mut engine = node.engine_with(&current);
    // Add one; remove one and unplug it; again; each a partial sync while connections
    // run back to back: no connection may go to a removed (unplugged) endpoint.
    let steps: [(&[&str], Option<&str>); 3] = [
        (&["10.0.1.1", "10.0.1.2", "10.0.1.3"], None),
        (&["10.0.1.2", "10.0.1.3"], Some("10.0.1.1")),
        (&["10.0.1.3"], Some("10.0.1.2")),
    ];
    let stats = thread::scope(|s| {
        let looping = s.spawn(|| node.connect_loop("pod", VIP, Duration::from_millis(3000)));
        for (eps, unplugged) in steps {
            thread::sleep(Duration::from_millis(500));
            let next = model(vec![web(eps)]);
            let report = node.sync(&mut engine, &next, &ChangeSet::between(&current, &next));
            assert!(!report.full);
            let w = engine.last_writes();
            // One slot written or moved, the count of each key (cluster IP + NodePort,
            // socket and tc scope: 3 keys), one slot deleted.
            assert!(w.writes + w.deletes <= 5, "a one-endpoint change: {w:?}");
            if let Some(ip) = unplugged {
                // Connections made before the sync finish first (a few ms each), as a
                // terminating pod finishes its requests.
                thread::sleep(Duration::from_millis(200));
                unplug(&node, ip);
            }
            current = next;
        }
        looping.join().unwrap()
    });
    assert!(stats.ok > 50, "{stats:?}");
    assert_eq!(
        (stats.failed, stats.slow),
        (0, 0),
        "connections failed during endpoint changes: {stats:?}"
    );
    assert_eq!(node.verify(&mut engine, &current), Drift::None);
    node.expect(
        "ext",
        "192.168.0.2:30070",
        Proto::Tcp,
        &["10.0.1.3:8080"],
        "192.168.0.2",
    );
}

#[test]
fn a_restart_under_a_connection_loop_loses_nothing_and_rewrites_nothing() {
    if !root_or_skip("a_restart_under_a_connection_loop_loses_nothing_and_rewrites_nothing") {
        return;
    }
    let node = Node::with_endpoints(&["10.0.1.1", "10.0.1.2"], &[8080]);
    let m = model(vec![web(&["10.0.1.1", "10.0.1.2"])]);
    let engine = node.engine_with(&m);
    let (stats, mut restarted) = thread::scope(|s| {
        let looping = s.spawn(|| node.connect_loop("pod", VIP, Duration::from_millis(2500)));
        thread::sleep(Duration::from_millis(600));
        // The old engine goes away (every descriptor closed, as at process exit)...
        drop(engine);
        thread::sleep(Duration::from_millis(400));
        // ...and a new one prepares over the pins and syncs a freshly built model.
        let mut e = node.engine();
        let fresh = model(vec![web(&["10.0.1.1", "10.0.1.2"])]);
        let report = node.full_sync(&mut e, &fresh);
        assert!(report.full);
        assert_eq!(
            e.last_writes().writes,
            0,
            "adopted, nothing rewritten: {:?}",
            e.last_writes()
        );
        assert_eq!(e.last_writes().deletes, 0);
        (looping.join().unwrap(), e)
    });
    assert!(stats.ok > 50, "{stats:?}");
    assert_eq!(
        (stats.failed, stats.slow),
        (0, 0),
        "connections failed across the restart: {stats:?}"
    );
    assert_eq!(node.verify(&mut restarted, &m), Drift::None);
    node.expect(
        "ext",
        "192.168.0.2:30070",
        Proto::Tcp,
        &["10.0.1.1:8080", "10.0.1.2:8080"],
        "192.168.0.2",
    );
}

#[test]
fn a_new_map_layout_is_built_beside_the_old_one_then_swapped_in() {
    if !root_or_skip("a_new_map_layout_is_built_beside_the_old_one_then_swapped_in") {
        return;
    }
    let node = Node::with_endpoints(&["10.0.1.1", "10.0.1.2"], &[8080]);
    let m = model(vec![web(&["10.0.1.1", "10.0.1.2"])]);
    drop(node.engine_with(&m));
    // What is pinned now plays an older layout: a new version finds it beside its own
    // (empty) directory.
    let old = node.options.pin_root.join("v0");
    std::fs::rename(node.pin_dir(), &old).unwrap();
    let (stats, mut engine) = thread::scope(|s| {
        let looping = s.spawn(|| node.connect_loop("pod", VIP, Duration::from_millis(2000)));
        thread::sleep(Duration::from_millis(500));
        // Loaded beside the old layout: its programs attach after the old ones, which
        // keep translating until the new maps are full.
        let mut e = node.engine();
        thread::sleep(Duration::from_millis(300));
        node.full_sync(&mut e, &m);
        (looping.join().unwrap(), e)
    });
    assert_eq!(
        (stats.failed, stats.slow),
        (0, 0),
        "connections failed across the layout swap: {stats:?}"
    );
    assert!(stats.ok > 50, "{stats:?}");
    assert!(
        !old.exists(),
        "the old layout's pins are removed after the full sync"
    );
    assert_eq!(bpftool_link_ids(&node).len(), 12);
    assert_eq!(node.verify(&mut engine, &m), Drift::None);
    node.expect(
        "ext",
        "192.168.0.2:30070",
        Proto::Tcp,
        &["10.0.1.1:8080", "10.0.1.2:8080"],
        "192.168.0.2",
    );
}

#[test]
fn new_map_sizes_are_built_beside_the_old_maps_then_swapped_in() {
    if !root_or_skip("new_map_sizes_are_built_beside_the_old_maps_then_swapped_in") {
        return;
    }
    let mut node = Node::with_endpoints(&["10.0.1.1", "10.0.1.2"], &[8080]);
    let m = model(vec![web(&["10.0.1.1", "10.0.1.2"])]);
    let engine = node.engine_with(&m);
    let old = node.pin_dir();
    // The ProxyConfig's ebpf block asks for a larger service map: the runner rebuilds
    // the engine (same owner: no cleanup in between).
    node.options.sizes.services *= 2;
    let new = node.pin_dir();
    let (stats, mut engine) = thread::scope(|s| {
        let looping = s.spawn(|| node.connect_loop("pod", VIP, Duration::from_millis(2000)));
        thread::sleep(Duration::from_millis(500));
        let mut e = node.engine();
        node.full_sync(&mut e, &m);
        drop(engine);
        (looping.join().unwrap(), e)
    });
    assert_eq!(
        (stats.failed, stats.slow),
        (0, 0),
        "connections failed across the resize: {stats:?}"
    );
    assert!(!old.exists() && new.exists(), "{old:?} replaced by {new:?}");
    let show = run_cmd(
        std::process::Command::new("bpftool")
            .args(["map", "show", "pinned"])
            .arg(new.join("sy_services"))
            .arg("-j"),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(
        v["max_entries"].as_u64(),
        Some(u64::from(node.options.sizes.services))
    );
    assert_eq!(node.verify(&mut engine, &m), Drift::None);
}

/// Two services with the plan ids of `m` swapped (a restarted agent may number ports
/// in another order).
fn swap_ids(m: &NodeModel) -> NodeModel {
    let mut plans: Vec<_> = m.services.values().cloned().collect();
    let (a, b) = (plans[0].id, plans[1].id);
    plans[0].id = b;
    plans[1].id = a;
    let mut out = m.clone();
    for p in plans {
        out.insert_plan(p);
    }
    out
}

#[test]
fn a_restart_that_renumbers_ports_writes_beside_the_old_ids() {
    if !root_or_skip("a_restart_that_renumbers_ports_writes_beside_the_old_ids") {
        return;
    }
    let node = Node::with_endpoints(&["10.0.1.1", "10.0.1.2"], &[8080]);
    let services = vec![
        svc("a", "10.96.0.71", 80, &[("10.0.1.1", 8080, true)]),
        svc("b", "10.96.0.72", 80, &[("10.0.1.2", 8080, true)]),
    ];
    let m = model(services);
    let engine = node.engine_with(&m);
    let stats = thread::scope(|s| {
        let looping =
            s.spawn(|| node.connect_loop("pod", "10.96.0.71:80", Duration::from_millis(1500)));
        thread::sleep(Duration::from_millis(400));
        drop(engine);
        let mut e = node.engine();
        let renumbered = swap_ids(&m);
        node.full_sync(&mut e, &renumbered);
        assert_eq!(node.verify(&mut e, &renumbered), Drift::None);
        looping.join().unwrap()
    });
    assert_eq!((stats.failed, stats.slow), (0, 0), "{stats:?}");
    // Each VIP still reaches its own backend, never the other's.
    node.expect(
        "pod",
        "10.96.0.71:80",
        Proto::Tcp,
        &["10.0.1.1:8080"],
        "10.0.0.2",
    );
    node.expect(
        "pod",
        "10.96.0.72:80",
        Proto::Tcp,
        &["10.0.1.2:8080"],
        "10.0.0.2",
    );
}

/// The `sy_services` key of a node-scope TCP entry, as bpftool takes it (hex bytes).
fn node_scope_key(vip: [u8; 4], port: u16) -> Vec<String> {
    let mut bytes = vec![0u8; 10];
    bytes.extend([0xff, 0xff]);
    bytes.extend(vip);
    bytes.extend(port.to_be_bytes());
    bytes.extend([6, 0]);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn verify_finds_a_deleted_entry_and_a_full_sync_repairs_it() {
    if !root_or_skip("verify_finds_a_deleted_entry_and_a_full_sync_repairs_it") {
        return;
    }
    let node = Node::with_endpoints(&["10.0.1.1"], &[8080]);
    let m = model(vec![web(&["10.0.1.1"])]);
    let mut engine = node.engine_with(&m);
    assert_eq!(node.verify(&mut engine, &m), Drift::None);
    let map = node.pin_dir().join("sy_services");
    let mut cmd = std::process::Command::new("bpftool");
    cmd.args(["map", "delete", "pinned"])
        .arg(&map)
        .arg("key")
        .arg("hex");
    cmd.args(node_scope_key([10, 96, 0, 70], 80));
    run_cmd(&mut cmd).unwrap();
    assert!(!matches!(
        node.probe("pod", VIP, Proto::Tcp),
        Outcome::Answered { .. }
    ));
    match node.verify(&mut engine, &m) {
        Drift::Found(what) => assert!(what.contains("differ"), "{what}"),
        Drift::None => panic!("a deleted service entry is drift"),
    }
    let report = node.full_sync(&mut engine, &m);
    assert!(report.full);
    assert_eq!(
        engine.last_writes().writes,
        1,
        "only the missing entry is written back"
    );
    assert_eq!(node.verify(&mut engine, &m), Drift::None);
    node.expect("pod", VIP, Proto::Tcp, &["10.0.1.1:8080"], "10.0.0.2");
}

#[test]
fn no_netfilter_state_while_active_and_nothing_left_after_cleanup() {
    if !root_or_skip("no_netfilter_state_while_active_and_nothing_left_after_cleanup") {
        return;
    }
    let node = Node::with_endpoints(&["10.0.1.1"], &[8080]);
    let qdiscs = || (node.in_node(&["tc", "qdisc", "show"]),);
    let before = qdiscs();
    let m = model(vec![web(&["10.0.1.1"])]);
    let mut engine = node.engine_with(&m);
    node.expect("pod", VIP, Proto::Tcp, &["10.0.1.1:8080"], "10.0.0.2");
    node.expect(
        "ext",
        "192.168.0.2:30070",
        Proto::Tcp,
        &["10.0.1.1:8080"],
        "192.168.0.2",
    );
    // Issue 11 item 4: service traffic flows with no nft table and no iptables chain of
    // ours (nor anyone's) in the node's namespace.
    let ruleset = node.in_node(&["nft", "list", "ruleset"]);
    assert!(
        ruleset.trim().is_empty(),
        "nft ruleset while ebpf is active:\n{ruleset}"
    );
    for save in ["iptables-save", "ip6tables-save"] {
        let rules = node.in_node(&[save]);
        assert!(
            !rules.contains("SY-") && !rules.contains("KUBE-"),
            "{save} while ebpf is active:\n{rules}"
        );
    }
    let links = bpftool_link_ids(&node);
    assert_eq!(
        links.len(),
        9 + 3,
        "8 sock_addr + 1 cgroup_skb + 3 tc links: {links:?}"
    );
    node.cleanup(&mut engine);
    assert!(!node.options.pin_root.exists(), "pin directory removed");
    let left: Vec<u64> = links.into_iter().filter(|id| link_exists(*id)).collect();
    assert!(left.is_empty(), "links left attached: {left:?}");
    assert!(!matches!(
        node.probe("pod", VIP, Proto::Tcp),
        Outcome::Answered { .. }
    ));
    assert_eq!(qdiscs(), before, "no qdisc added or left");
    // A second cleanup (nothing left) succeeds.
    node.cleanup(&mut engine);
}

/// The ids of the links pinned in the engine's links directory.
fn bpftool_link_ids(node: &Node) -> Vec<u64> {
    let dir = node.pin_dir().join("links");
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

fn link_exists(id: u64) -> bool {
    std::process::Command::new("bpftool")
        .args(["link", "show", "id", &id.to_string()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
