//! Timings at scale (ignored by default; run in release):
//! `cargo test --release -p switchyard-iptables --test scale -- --ignored --nocapture`.
//! `SY_SCALE=1000,10000,50000x5` picks the sizes (services, or services x endpoints).

mod support;

use std::time::Instant;

use support::{netns::*, *};
use switchyard_iptables::{render_full, Backend, IptablesEngine};
use switchyard_model::{ChangeSet, Drift, IpFamily, ProxyEngine};

fn sizes() -> Vec<(usize, usize)> {
    std::env::var("SY_SCALE")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .map(|s| match s.split_once('x') {
            Some((n, e)) => (n.parse().unwrap(), e.parse().unwrap()),
            None => (s.parse().unwrap(), 2),
        })
        .collect()
}

fn backends() -> Vec<Backend> {
    match std::env::var("SY_BACKEND").as_deref() {
        Ok("nft") => vec![Backend::Nft],
        Ok("legacy") => vec![Backend::Legacy],
        _ => vec![Backend::Nft, Backend::Legacy],
    }
}

#[tokio::test]
#[ignore]
async fn timings() {
    if !have_root("timings") {
        return;
    }
    for (count, endpoints) in sizes() {
        let services = big_services(count, endpoints);
        let m1 = model(services.clone());
        // One endpoint of one service replaced.
        let mut changed = services;
        changed[count / 2].endpoints.pop();
        let m2 = model(changed);
        let start = Instant::now();
        let text = render_full(&m1, IpFamily::V4);
        eprintln!(
            "{count} services x {endpoints} endpoints: render {:?}, {} bytes, {} rules",
            start.elapsed(),
            text.len(),
            text.lines().filter(|l| l.starts_with('-')).count()
        );
        for backend in backends() {
            let ns = Netns::new();
            let mut engine = IptablesEngine::new(ns.options(backend));
            let start = Instant::now();
            let r = engine.sync(&m1, &ChangeSet::full(&m1)).await.unwrap();
            let full = start.elapsed();
            let changes = ChangeSet::between(&m1, &m2);
            let start = Instant::now();
            let p = engine.sync(&m2, &changes).await.unwrap();
            let partial = start.elapsed();
            assert!(!p.full);
            let start = Instant::now();
            assert_eq!(engine.verify(&m2).await.unwrap(), Drift::None);
            let verify = start.elapsed();
            let start = Instant::now();
            engine.sync(&m2, &ChangeSet::full(&m2)).await.unwrap();
            let resync = start.elapsed();
            eprintln!(
                "  {backend:?}: full {full:?} ({} rules), one-endpoint partial {partial:?}, verify {verify:?}, full resync {resync:?}",
                r.rules
            );
        }
    }
}
