//! Figures for the report (printed; run with `--nocapture`): a one-endpoint change, a full
//! write of 50k services x 5 backends, and connect() rates through a ClusterIP vs straight
//! to the pod in the same run. Assertions are loose sanity bounds, not goals.

mod support;

use std::time::{Duration, Instant};

use support::*;
use switchyard_ebpf::{MapSizes, Protocol, ServicePort, TargetSet};

#[test]
fn map_write_costs_and_connect_rates() {
    if !root_or_skip("map_write_costs_and_connect_rates") {
        return;
    }
    let mut node = Node::new(&["10.0.1.1"], &[8080]);
    node.cfg.sizes = MapSizes {
        services: 65536,
        backends: 262144 + 16384,
        ..MapSizes::default()
    };
    let mut dp = node.load();

    // 50k service ports x 5 backends, one ClusterIP entry each, written in one sync.
    let all: Vec<ServicePort> = (0..50_000u32)
        .map(|i| {
            let vip = format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256);
            let eps: Vec<String> = (0..5)
                .map(|b| format!("10.1.{}.{}:8080", i % 250, b + 1))
                .collect();
            let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
            cluster_ip(1000 + i, &vip, 80, &[Protocol::Tcp], &eps)
        })
        .collect();
    let t = Instant::now();
    let w = dp.sync_all(&all).unwrap();
    let full = t.elapsed();
    println!(
        "full write 50k services x 5 backends: {full:?} ({} writes)",
        w.writes
    );
    assert_eq!(w.writes, 50_000 * 6);

    // One-endpoint change on one of them, averaged.
    let mut sp = all[123].clone();
    let n = 1000;
    let t = Instant::now();
    for k in 0..n {
        let set = sp.sets.get_mut(&TargetSet::Internal).unwrap();
        set[2].addr = format!("10.2.{}.{}:8080", k % 200, 1 + k % 250)
            .parse()
            .unwrap();
        dp.upsert_service(&sp).unwrap();
    }
    let one = t.elapsed() / n;
    println!("one-endpoint change (1 slot write): {one:?} per change");
    assert!(one < Duration::from_millis(5));

    // connect() rate: the ClusterIP vs the pod directly, same client, same run.
    dp.upsert_service(&cluster_ip(
        7,
        "10.96.0.40",
        80,
        &[Protocol::Tcp],
        &["10.0.1.1:8080"],
    ))
    .unwrap();
    let src = node.sb.source("pod").unwrap();
    let mut client = node.sb.cgroup_client().unwrap();
    let d = Duration::from_secs(2);
    let mut rates = Vec::new();
    for _ in 0..2 {
        let direct = client
            .connect_loop(&src, "10.0.1.1:8080".parse().unwrap(), d)
            .unwrap();
        let vip = client
            .connect_loop(&src, "10.96.0.40:80".parse().unwrap(), d)
            .unwrap();
        assert_eq!((direct.failed, vip.failed), (0, 0));
        rates.push((direct.per_second(), vip.per_second()));
    }
    for (direct, vip) in &rates {
        println!(
            "connect+echo+close rate with 50k services loaded: pod {direct:.0}/s, ClusterIP {vip:.0}/s ({:.3}x)",
            vip / direct
        );
    }
}
