//! Renderer checks on small models: specific lines are present.

mod support;

use support::*;
use switchyard_nftables::render_full;

fn lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).collect()
}

#[test]
fn cluster_ip_service() {
    let m = model(vec![service(
        "web",
        &["172.16.0.10"],
        80,
        vec![ep("10.0.0.5", 8080, true), ep("10.0.1.5", 8080, false)],
    )]);
    let text = render_full(&m);
    println!("{text}");
    let l = lines(&text);
    assert!(l.contains(&"add table ip switchyard"));
    assert!(l.contains(&"delete table ip6 switchyard"));
    assert!(l.contains(&"type nat hook prerouting priority -100; policy accept;"));
    assert!(l.contains(&"ip daddr . meta l4proto . th dport vmap @service-ips"));
    assert!(l.contains(&"meta mark set meta mark or 0x4000"));
    assert!(l.contains(&"masquerade fully-random"));
    assert!(text.contains("elements = { 172.16.0.10 . tcp . 80 : goto svc-"));
    assert!(
        l.contains(&"ip daddr @cluster-ips ip saddr != @cluster-cidrs jump mark-for-masquerade")
    );
    // No per-endpoint chains: one rule picks among the port's keys of a backend map.
    assert!(
        l.iter().any(
            |l| l.starts_with("meta l4proto tcp dnat ip to numgen random mod 2 offset ")
                && l.contains(" map @backends-")
        ),
        "{text}"
    );
    assert!(text.contains(" : 10.0.0.5 . 8080"), "{text}");
    assert!(text.contains(" : 10.0.1.5 . 8080"), "{text}");
    assert!(text.contains("typeof numgen random mod 2 : ip daddr . th dport"));
    assert!(!text.contains("ep-"));
    // Hairpin: one set of endpoint pairs, checked in nat-postrouting.
    assert!(l.contains(&"ct status dnat ip saddr . ip daddr @hairpin jump mark-for-masquerade"));
    assert!(text.contains("10.0.0.5 . 10.0.0.5"));
    // The IPv4-only service is absent from the ip6 table.
    let ip6 = &text[text.find("table ip6 switchyard {").unwrap()..];
    assert!(!ip6.contains("svc-"));
}

#[test]
fn no_endpoints_rejects() {
    let mut sp = service("empty", &["172.16.0.11"], 443, vec![]);
    sp.node_port = Some(30443);
    let text = render_full(&model(vec![sp]));
    assert!(text.contains("elements = { 172.16.0.11 . tcp . 443 : goto reject-chain }"));
    assert!(text.contains("elements = { tcp . 30443 : goto reject-chain }"));
    assert!(!text.contains("chain svc-"));
}

#[test]
fn dual_stack_and_externals() {
    let mut sp = service(
        "dual",
        &["172.16.0.12", "fd00:96::12"],
        80,
        vec![ep("10.0.0.7", 80, true), ep("fd00:10::7", 80, true)],
    );
    sp.node_port = Some(30080);
    sp.external_ips = vec!["192.168.99.11".parse().unwrap()];
    sp.load_balancer_ips = vec![
        "192.168.1.100".parse().unwrap(),
        "2001:db8:1::100".parse().unwrap(),
    ];
    sp.load_balancer_source_ranges = vec![
        "203.0.113.0/25".parse().unwrap(),
        "192.168.0.0/24".parse().unwrap(),
    ];
    let text = render_full(&model(vec![sp]));
    println!("{text}");
    let (v4, v6) = text.split_at(text.find("table ip6 switchyard {").unwrap());
    assert!(v6.contains("meta l4proto tcp dnat to [fd00:10::7]:80"));
    assert!(!v6.contains("10.0.0.7"));
    assert!(v4.contains("192.168.99.11 . tcp . 80 : goto ext-"));
    assert!(v4.contains("tcp . 30080 : goto ext-"));
    assert!(v6.contains("tcp . 30080 : goto ext-"));
    // Node IP 192.168.0.2 is inside a range: the LB IP itself is allowed as a source.
    for source in ["192.168.0.0/24", "192.168.1.100/32", "203.0.113.0/25"] {
        assert!(
            v4.contains(&format!("ip saddr {source} return")),
            "{source}"
        );
    }
    // No IPv6 range: IPv6 LB traffic is dropped entirely.
    assert!(v6.contains("2001:db8:1::100 . tcp . 80 : goto fw-"));
    assert!(lines(v6).contains(&"drop"));
    assert!(v4.contains("elements = { 192.168.0.2/32 }"));
}

#[test]
fn external_policy_local_and_affinity() {
    let mut sp = service(
        "local",
        &["172.16.0.13"],
        80,
        vec![ep("10.0.0.8", 80, true), ep("10.0.1.8", 80, false)],
    );
    sp.node_port = Some(30081);
    sp.external_policy_local = true;
    sp.affinity_timeout = Some(600);
    let text = render_full(&model(vec![sp]));
    println!("{text}");
    assert!(text.contains("ip saddr @cluster-cidrs goto svc-"));
    assert!(text.contains("fib saddr type local jump mark-for-masquerade"));
    assert!(text.contains("fib saddr type local goto svc-"));
    assert!(text.contains("goto local-"));
    assert!(text.contains("flags dynamic,timeout"));
    assert!(text.contains("timeout 600s"));
    assert!(text.contains("update @aff-"));
}

#[test]
fn external_policy_local_without_local_endpoints_drops() {
    let mut sp = service(
        "remote",
        &["172.16.0.14"],
        80,
        vec![ep("10.0.1.9", 80, false)],
    );
    sp.node_port = Some(30082);
    sp.external_policy_local = true;
    let mut sp2 = service(
        "itp",
        &["172.16.0.15"],
        80,
        vec![ep("10.0.1.10", 80, false)],
    );
    sp2.internal_policy_local = true;
    let text = render_full(&model(vec![sp, sp2]));
    assert!(text.contains("tcp . 30082 : drop"));
    assert!(text.contains("172.16.0.15 . tcp . 80 : drop"));
}

/// Render cost at scale (`cargo test --release -- --ignored render_scale`).
#[test]
#[ignore]
fn render_scale() {
    let m = big_model(50_000, 5);
    let start = std::time::Instant::now();
    let (text, _) = switchyard_nftables::full::render_full_with_record(&m);
    eprintln!(
        "render 50k x 5: {:?}, {} bytes",
        start.elapsed(),
        text.len()
    );
    if let Ok(dir) = std::env::var("SY_NFT_DUMP") {
        std::fs::write(format!("{dir}/full50k.nft"), text).unwrap();
    }
}
