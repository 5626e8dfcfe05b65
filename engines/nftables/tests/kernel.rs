//! Kernel tests: the engine programs a private network namespace. Need root.

mod support;

use std::time::Instant;

use support::{netns::*, *};
use switchyard_model::{ChangeSet, Drift, ProxyEngine};
use switchyard_nftables::{render_full, ruleset::TableNames, NftOptions, NftablesEngine};

macro_rules! need_root {
    ($name:expr) => {
        if !have_root($name) {
            return;
        }
    };
}

fn two_services() -> Vec<TestService> {
    let mut web = service(
        "web",
        &["172.16.0.10", "fd00:96::10"],
        80,
        vec![
            ep("10.0.0.5", 8080, true),
            ep("10.0.1.5", 8080, false),
            ep("fd00:10::5", 8080, true),
        ],
    );
    web.node_port = Some(30080);
    web.affinity_timeout = Some(300);
    let empty = service("empty", &["172.16.0.11"], 443, vec![]);
    vec![web, empty]
}

/// `services` with the one named `name` changed by `f`.
fn edited(
    services: &[TestService],
    name: &str,
    f: impl FnOnce(&mut TestService),
) -> Vec<TestService> {
    let mut out = services.to_vec();
    f(out.iter_mut().find(|s| s.name.name == name).unwrap());
    out
}

/// The name of the table holding `chain` (from `nft list chains`).
fn table_of_chain(ns: &Netns, chain: &str) -> String {
    let (_, listing) = ns.nft(&["list", "chains", "ip"], "");
    let mut table = String::new();
    for line in listing.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix("table ip ") {
            table = t.trim_end_matches(" {").to_string();
        } else if line.starts_with(&format!("chain {chain} ")) {
            return table;
        }
    }
    panic!("no chain {chain}: {listing}")
}

/// Tampers with the kernel behind the engine's back: deletes the `service-ips` element
/// of web's cluster IP, which a partial sync emptying web must delete (and so fails).
fn delete_web_cluster_ip_element(ns: &Netns) {
    let web_table = TableNames::default()
        .name(switchyard_nftables::ruleset::PortChains::new(&spn("default", "web", "http")).table())
        .to_string();
    let (ok, out) = ns.nft(
        &[
            "delete",
            "element",
            "ip",
            &web_table,
            "service-ips",
            "{ 172.16.0.10 . tcp . 80 }",
        ],
        "",
    );
    assert!(ok, "{out}");
}

#[tokio::test]
async fn sync_programs_maps_and_partial_removes_endpoint_chain() {
    need_root!("sync_programs_maps_and_partial_removes_endpoint_chain");
    let ns = Netns::new();
    let mut engine = NftablesEngine::new(ns.options());
    let s1 = two_services();
    let m1 = model(s1.clone());
    let report = engine.sync(&m1, &ChangeSet::full(&m1)).await.unwrap();
    assert!(report.full);
    assert!(report.rules > 0);
    let (ok, v4) = ns.nft(&["list", "ruleset", "ip"], "");
    assert!(ok, "{v4}");
    assert!(v4.contains("172.16.0.10 . tcp . 80 : goto svc-"), "{v4}");
    assert!(
        v4.contains("172.16.0.11 . tcp . 443 : goto reject-chain"),
        "{v4}"
    );
    assert!(v4.contains("tcp . 30080 : goto ext-"), "{v4}");
    // ClientIP affinity: a rule per endpoint (each updates the endpoint's set).
    assert!(v4.contains("dnat to 10.0.1.5:8080"), "{v4}");
    let (ok, v6) = ns.nft(&["list", "ruleset", "ip6"], "");
    assert!(ok, "{v6}");
    assert!(v6.contains("dnat to [fd00:10::5]:8080"), "{v6}");
    assert!(!v6.contains("172.16.0.11"));
    assert_eq!(engine.verify(&m1).await.unwrap(), Drift::None);

    // Remove one endpoint: a partial sync deletes its chain.
    let s2 = edited(&s1, "web", |web| {
        web.endpoints.retain(|e| e.ip.to_string() != "10.0.1.5")
    });
    let m2 = model(s2.clone());
    let changes = ChangeSet::between(&m1, &m2);
    assert!(!changes.full);
    let start = Instant::now();
    let report = engine.sync(&m2, &changes).await.unwrap();
    eprintln!("partial sync: {:?}", start.elapsed());
    assert!(!report.full);
    let (_, v4) = ns.nft(&["list", "ruleset", "ip"], "");
    assert!(!v4.contains("10.0.1.5"), "{v4}");
    assert!(!v4.contains("numgen"), "{v4}");
    assert_eq!(engine.verify(&m2).await.unwrap(), Drift::None);

    // Endpoints of the empty service appear; then the service goes away.
    let s3 = edited(&s2, "empty", |empty| {
        empty.endpoints = vec![ep("10.0.2.1", 8443, false)]
    });
    let m3 = model(s3.clone());
    engine
        .sync(&m3, &ChangeSet::between(&m2, &m3))
        .await
        .unwrap();
    let (_, v4) = ns.nft(&["list", "ruleset", "ip"], "");
    assert!(v4.contains("172.16.0.11 . tcp . 443 : goto svc-"), "{v4}");
    assert!(
        !v4.contains("reject-chain,") && !v4.contains(": goto reject-chain }"),
        "{v4}"
    );
    assert_eq!(engine.verify(&m3).await.unwrap(), Drift::None);
    let m4 = model(s3.into_iter().filter(|s| s.name.name != "web").collect());
    engine
        .sync(&m4, &ChangeSet::between(&m3, &m4))
        .await
        .unwrap();
    let (_, v4) = ns.nft(&["list", "ruleset", "ip"], "");
    assert!(!v4.contains("172.16.0.10"), "{v4}");
    assert!(!v4.contains("aff-"), "{v4}");
    assert_eq!(engine.verify(&m4).await.unwrap(), Drift::None);
    let (_, v6) = ns.nft(&["list", "ruleset", "ip6"], "");
    assert!(!v6.contains("chain svc-"), "{v6}");
}

#[tokio::test]
async fn verify_finds_drift_and_sync_restores() {
    need_root!("verify_finds_drift_and_sync_restores");
    let ns = Netns::new();
    let mut engine = NftablesEngine::new(ns.options());
    let m = model(two_services());
    engine.sync(&m, &ChangeSet::full(&m)).await.unwrap();
    assert_eq!(engine.verify(&m).await.unwrap(), Drift::None);

    // Deleted table.
    assert!(ns.nft(&["delete", "table", "ip", "switchyard"], "").0);
    let Drift::Found(what) = engine.verify(&m).await.unwrap() else {
        panic!("no drift after deleting the table")
    };
    assert!(what.contains("table ip switchyard"), "{what}");
    engine.sync(&m, &ChangeSet::full(&m)).await.unwrap();
    assert_eq!(engine.verify(&m).await.unwrap(), Drift::None);

    // Flushed chain.
    let (_, listing) = ns.nft(&["list", "ruleset", "ip"], "");
    let svc = listing
        .lines()
        .find_map(|l| l.trim().strip_prefix("chain svc-"))
        .map(|rest| format!("svc-{}", rest.trim_end_matches(" {")))
        .unwrap();
    let table = table_of_chain(&ns, &svc);
    assert!(ns.nft(&["flush", "chain", "ip", &table, &svc], "").0);
    let Drift::Found(what) = engine.verify(&m).await.unwrap() else {
        panic!("no drift after flushing {svc}")
    };
    assert!(what.contains(&svc), "{what}");
    engine.sync(&m, &ChangeSet::full(&m)).await.unwrap();
    assert_eq!(engine.verify(&m).await.unwrap(), Drift::None);

    // Removed map element.
    assert!(
        ns.nft(
            &[
                "delete",
                "element",
                "ip",
                "switchyard",
                "no-endpoint-services",
                "{ 172.16.0.11 . tcp . 443 }"
            ],
            ""
        )
        .0
    );
    let Drift::Found(what) = engine.verify(&m).await.unwrap() else {
        panic!("no drift after deleting an element")
    };
    assert!(what.contains("no-endpoint-services"), "{what}");
    engine.sync(&m, &ChangeSet::full(&m)).await.unwrap();
    assert_eq!(engine.verify(&m).await.unwrap(), Drift::None);

    // Deleted chain (an endpoint chain needs its referrers gone first: delete the IPv6
    // table's whole content instead, via the table).
    assert!(ns.nft(&["delete", "table", "ip6", "switchyard"], "").0);
    assert!(matches!(engine.verify(&m).await.unwrap(), Drift::Found(_)));

    // Cleanup leaves no switchyard table, whether or not they exist.
    engine.cleanup().await.unwrap();
    engine.cleanup().await.unwrap();
    let (_, all) = ns.nft(&["list", "ruleset"], "");
    assert!(!all.contains("switchyard"), "{all}");
}

#[tokio::test]
async fn failed_sync_keeps_rules_and_next_sync_is_full() {
    need_root!("failed_sync_keeps_rules_and_next_sync_is_full");
    let ns = Netns::new();
    let mut engine = NftablesEngine::new(ns.options());
    let s1 = two_services();
    let m1 = model(s1.clone());
    engine.sync(&m1, &ChangeSet::full(&m1)).await.unwrap();
    let (_, before) = ns.nft(&["list", "ruleset"], "");

    // A fake nft that fails.
    let fake = std::env::temp_dir().join(format!("sy-fake-nft-{}", std::process::id()));
    std::fs::write(
        &fake,
        "#!/bin/sh\ncat >/dev/null\necho 'Error: injected' >&2\nexit 1\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&fake)
        .status()
        .unwrap();
    let mut failing = NftablesEngine::new(NftOptions {
        netns: Some(ns.name.clone()),
        nft_path: fake.to_string_lossy().into_owned(),
        netlink: false,
        adopt: false,
        ipv6: true,
        tables: TableNames::default(),
    });
    assert!(failing.sync(&m1, &ChangeSet::full(&m1)).await.is_err());
    assert!(failing.next_sync_is_full());

    // A change the kernel refuses, through the real engine: a partial sync fails...
    let m2 = model(edited(&s1, "web", |web| web.endpoints.clear()));
    // ...because someone deleted the element it needs to delete.
    delete_web_cluster_ip_element(&ns);
    let (_, tampered) = ns.nft(&["list", "ruleset"], "");
    let err = engine.sync(&m2, &ChangeSet::between(&m1, &m2)).await;
    assert!(err.is_err(), "partial sync should fail");
    let (_, after) = ns.nft(&["list", "ruleset"], "");
    assert_eq!(tampered, after, "a failed sync changed the kernel");
    assert_ne!(before, after);
    assert!(engine.next_sync_is_full());
    // The next sync is full even when asked for a partial one, and repairs everything.
    let report = engine
        .sync(&m2, &ChangeSet::between(&m1, &m2))
        .await
        .unwrap();
    assert!(report.full);
    assert_eq!(engine.verify(&m2).await.unwrap(), Drift::None);
    let _ = std::fs::remove_file(fake);
}

#[tokio::test]
async fn scale_timings() {
    need_root!("scale_timings");
    let ns = Netns::new();
    let count: usize = std::env::var("SY_NFT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let services = big_services(count, 5);
    let m1 = model(services.clone());
    let start = Instant::now();
    let text = render_full(&m1);
    let render = start.elapsed();
    let mut engine = NftablesEngine::new(ns.options());
    let start = Instant::now();
    engine.sync(&m1, &ChangeSet::full(&m1)).await.unwrap();
    let full = start.elapsed();
    let mut s2 = services.clone();
    s2[count / 2].endpoints.pop();
    let m2 = model(s2.clone());
    let changes = ChangeSet::between(&m1, &m2);
    let start = Instant::now();
    let report = engine.sync(&m2, &changes).await.unwrap();
    let partial = start.elapsed();
    assert!(!report.full);
    if let Ok(dir) = std::env::var("SY_NFT_DUMP") {
        std::fs::write(format!("{dir}/applied.nft"), &text).unwrap();
        let applied = switchyard_nftables::render_full(&m1);
        std::fs::write(format!("{dir}/full.nft"), applied).unwrap();
        let mut s3 = s2.clone();
        s3[count / 3].endpoints.pop();
        let m3 = model(s3);
        let (_, rec) = switchyard_nftables::full::render_full_with_record(&m2);
        let p = switchyard_nftables::render_partial(&m3, &ChangeSet::between(&m2, &m3), &rec);
        std::fs::write(format!("{dir}/full2.nft"), render_full(&m2)).unwrap();
        std::fs::write(format!("{dir}/partial.nft"), p.text(&TableNames::default())).unwrap();
    }
    let start = Instant::now();
    assert_eq!(engine.verify(&m2).await.unwrap(), Drift::None);
    let verify = start.elapsed();
    eprintln!(
        "scale {count} x 5: render {render:?} ({} bytes), full sync {full:?}, partial sync {partial:?}, verify {verify:?}",
        text.len()
    );
}

/// Writes the full ruleset of a small model to SY_NFT_DUMP (for manual traffic checks).
#[test]
#[ignore]
fn dump_small_model() {
    let m = model(two_services());
    let dir = std::env::var("SY_NFT_DUMP").unwrap();
    std::fs::write(format!("{dir}/small.nft"), render_full(&m)).unwrap();
}

#[tokio::test]
async fn shared_external_ip_moves_to_the_remaining_service() {
    need_root!("shared_external_ip_moves_to_the_remaining_service");
    let ns = Netns::new();
    let mut engine = NftablesEngine::new(ns.options());
    let mut a = service("a", &["172.16.0.20"], 80, vec![ep("10.0.0.20", 80, false)]);
    a.external_ips = vec!["192.168.99.11".parse().unwrap()];
    let mut b = service("b", &["172.16.0.21"], 80, vec![ep("10.0.0.21", 80, false)]);
    b.external_ips = vec!["192.168.99.11".parse().unwrap()];
    let m1 = model(vec![a, b.clone()]);
    engine.sync(&m1, &ChangeSet::full(&m1)).await.unwrap();
    let (_, v4) = ns.nft(&["list", "ruleset", "ip"], "");
    assert!(v4.contains("192.168.99.11 . tcp . 80 : goto ext-"), "{v4}");
    let a_ext = v4.split("192.168.99.11 . tcp . 80 : goto ").nth(1).unwrap();
    assert!(a_ext.contains("-default-a-http-tcp"), "{v4}");

    let m2 = model(vec![b]);
    let report = engine
        .sync(&m2, &ChangeSet::between(&m1, &m2))
        .await
        .unwrap();
    assert!(!report.full);
    let (_, v4) = ns.nft(&["list", "ruleset", "ip"], "");
    let owner = v4.split("192.168.99.11 . tcp . 80 : goto ").nth(1).unwrap();
    assert!(
        owner.starts_with("ext-") && owner.contains("-default-b-http-tcp"),
        "{v4}"
    );
    assert_eq!(engine.verify(&m2).await.unwrap(), Drift::None);
}

/// Where a netlink partial sync's time goes at scale (SY_NFT_SCALE services).
#[tokio::test]
#[ignore]
async fn partial_phases() {
    need_root!("partial_phases");
    use switchyard_nftables::{full::render_full_with_record, netlink::NftSocket};
    let ns = Netns::new();
    let count: usize = std::env::var("SY_NFT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let services = big_services(count, 5);
    let m1 = model(services.clone());
    let mut engine = NftablesEngine::new(ns.options());
    let start = Instant::now();
    engine.sync(&m1, &ChangeSet::full(&m1)).await.unwrap();
    eprintln!("full sync {:?}", start.elapsed());
    let (_, applied) = render_full_with_record(&m1);
    let mut s2 = services;
    s2[count / 2].endpoints.pop();
    let m2 = model(s2);
    let t = Instant::now();
    let changes = ChangeSet::between(&m1, &m2);
    eprintln!("changeset {:?}", t.elapsed());
    let t = Instant::now();
    let partial = switchyard_nftables::render_partial(&m2, &changes, &applied);
    eprintln!("render_partial {:?}", t.elapsed());
    let t = Instant::now();
    let mut socket = NftSocket::open(Some(&ns.name)).unwrap();
    eprintln!("open {:?}", t.elapsed());
    let t = Instant::now();
    let mut batch = socket.batch();
    partial.encode(&mut batch, &TableNames::default());
    eprintln!("encode {:?} ({} messages)", t.elapsed(), batch.len());
    let t = Instant::now();
    socket.commit(batch).unwrap();
    eprintln!("commit {:?}", t.elapsed());
    // A batch that needs no validation: one cluster-ips element.
    let mut batch = socket.batch();
    batch.add_elements(
        switchyard_nftables::ruleset::Family::Ip,
        "switchyard",
        "cluster-ips",
        &[switchyard_nftables::netlink::ElementBytes {
            key: vec![1, 2, 3, 4],
            verdict: None,
            comment: None,
        }],
    );
    let t = Instant::now();
    socket.commit(batch).unwrap();
    eprintln!("commit of one set element {:?}", t.elapsed());
    let t = Instant::now();
    let mut applied = applied;
    partial.commit(&mut applied);
    eprintln!("record commit {:?}", t.elapsed());
    use switchyard_nftables::ruleset::Family;
    let t = Instant::now();
    let tables = TableNames::default();
    let per_table = socket.chains(Family::Ip, &tables).unwrap();
    eprintln!(
        "chain dump {:?} ({} chains)",
        t.elapsed(),
        per_table.iter().map(Vec::len).sum::<usize>()
    );
    let t = Instant::now();
    let sets = socket.sets(Family::Ip, "switchyard").unwrap().unwrap();
    eprintln!("set dump {:?}", t.elapsed());
    for set in sets {
        let t = Instant::now();
        let n = socket
            .element_count(Family::Ip, "switchyard", &set)
            .unwrap();
        eprintln!("elements of {set}: {n:?} in {:?}", t.elapsed());
    }
    let t = Instant::now();
    let sampled = per_table
        .iter()
        .enumerate()
        .flat_map(|(t, chains)| chains.iter().map(move |c| (t, c)))
        .take(64);
    for (t, c) in sampled {
        socket
            .rule_counts(Family::Ip, tables.name(t), Some(c))
            .unwrap();
    }
    eprintln!("64 rule dumps {:?}", t.elapsed());
    let t = Instant::now();
    let mut cursor = 0;
    let drift =
        switchyard_nftables::verify::verify_netlink(&mut socket, &tables, &applied, &mut cursor);
    eprintln!("verify_netlink {:?}: {drift:?}", t.elapsed());
    let t = Instant::now();
    let drift = engine.verify(&m2).await;
    eprintln!("engine verify {:?}: {drift:?}", t.elapsed());
    if std::env::var("SY_NFT_PHASES_NO_OUTPUT").is_ok() {
        // How much of the commit is the kernel validating the table from each base
        // chain: drop nat-output's jump and commit the reverse change.
        let (_, l) = ns.nft(
            &["-a", "list", "chain", "ip", "switchyard", "nat-output"],
            "",
        );
        let handle = l
            .lines()
            .find(|l| l.contains("jump services"))
            .and_then(|l| l.rsplit("handle ").next())
            .unwrap()
            .trim()
            .to_string();
        assert!(
            ns.nft(
                &[
                    "delete",
                    "rule",
                    "ip",
                    "switchyard",
                    "nat-output",
                    "handle",
                    &handle
                ],
                ""
            )
            .0
        );
        let back =
            switchyard_nftables::render_partial(&m1, &ChangeSet::between(&m2, &m1), &applied);
        let mut batch = socket.batch();
        back.encode(&mut batch, &tables);
        let t = Instant::now();
        socket.commit(batch).unwrap();
        eprintln!("commit without nat-output's jump {:?}", t.elapsed());
    }
}

#[tokio::test]
async fn failed_netlink_partial_changes_nothing_and_next_sync_is_full() {
    need_root!("failed_netlink_partial_changes_nothing_and_next_sync_is_full");
    let ns = Netns::new();
    let mut engine = NftablesEngine::new(ns.options());
    let s1 = edited(&two_services(), "web", |web| web.affinity_timeout = None);
    let m1 = model(s1.clone());
    engine.sync(&m1, &ChangeSet::full(&m1)).await.unwrap();
    let m2 = model(edited(&s1, "web", |web| web.endpoints.clear()));
    // Someone deleted the element the partial sync must delete: the batch fails as a
    // whole.
    delete_web_cluster_ip_element(&ns);
    let (_, tampered) = ns.nft(&["list", "ruleset"], "");
    let err = engine.sync(&m2, &ChangeSet::between(&m1, &m2)).await;
    let err = err.expect_err("partial sync should fail");
    assert!(err.to_string().contains("netlink"), "{err}");
    assert!(
        err.os_error().is_some(),
        "the kernel's errno is kept: {err:?}"
    );
    let (_, after) = ns.nft(&["list", "ruleset"], "");
    assert_eq!(tampered, after, "a failed netlink batch changed the kernel");
    assert!(engine.next_sync_is_full());
    let report = engine
        .sync(&m2, &ChangeSet::between(&m1, &m2))
        .await
        .unwrap();
    assert!(report.full);
    assert_eq!(engine.verify(&m2).await.unwrap(), Drift::None);
    // A later partial goes through netlink again.
    let m3 = m1.clone();
    let report = engine
        .sync(&m3, &ChangeSet::between(&m2, &m3))
        .await
        .unwrap();
    assert!(!report.full);
    assert_eq!(engine.verify(&m3).await.unwrap(), Drift::None);
    let (_, v4) = ns.nft(&["list", "ruleset", "ip"], "");
    assert!(v4.contains(": 10.0.1.5 . 8080"), "{v4}");
}

/// On a kernel without IPv6 (`ipv6.disable=1`: no IPv6 nat hooks, so an `ip6` nat chain
/// would fail the whole transaction) the engine programs the `ip` tables alone, and
/// partial syncs, `verify` and cleanup leave `ip6` alone too.
#[tokio::test]
async fn ipv4_only_kernel_programs_no_ip6_tables() {
    need_root!("ipv4_only_kernel_programs_no_ip6_tables");
    let ns = Netns::new();
    let mut engine = NftablesEngine::new(NftOptions {
        ipv6: false,
        ..ns.options()
    });
    let tables = |ns: &Netns| {
        let (ok, out) = ns.nft(&["list", "tables"], "");
        assert!(ok, "{out}");
        out
    };
    let s1 = two_services();
    let m1 = model(s1.clone());
    engine.sync(&m1, &ChangeSet::full(&m1)).await.unwrap();
    let listed = tables(&ns);
    assert!(listed.contains("table ip switchyard\n"), "{listed}");
    assert!(!listed.contains("ip6"), "{listed}");
    assert_eq!(engine.verify(&m1).await.unwrap(), Drift::None);

    // A partial sync touching a dual-stack service: still nothing in ip6.
    let m2 = model(edited(&s1, "web", |web| {
        web.endpoints.retain(|e| e.ip.to_string() != "10.0.1.5")
    }));
    let report = engine
        .sync(&m2, &ChangeSet::between(&m1, &m2))
        .await
        .unwrap();
    assert!(!report.full);
    assert!(!tables(&ns).contains("ip6"));
    assert_eq!(engine.verify(&m2).await.unwrap(), Drift::None);

    engine.cleanup().await.unwrap();
    assert!(!tables(&ns).contains("switchyard"));
}

/// The ruleset with handles, so a rewrite shows (every re-created object gets a new one).
fn ruleset_with_handles(ns: &Netns) -> String {
    let (ok, out) = ns.nft(&["-a", "list", "ruleset"], "");
    assert!(ok, "{out}");
    out
}

/// A new engine (a restarted process) on a kernel holding its tables for the same model
/// writes nothing: every object keeps its handle; verify and partial syncs go on.
#[tokio::test]
async fn restart_adopts_unchanged_tables_without_writing() {
    need_root!("restart_adopts_unchanged_tables_without_writing");
    let ns = Netns::new();
    let s1 = two_services();
    let m1 = model(s1.clone());
    let mut old = NftablesEngine::new(ns.options());
    old.sync(&m1, &ChangeSet::full(&m1)).await.unwrap();
    drop(old);
    let before = ruleset_with_handles(&ns);
    let mut new = NftablesEngine::new(ns.options());
    let report = new.sync(&m1, &ChangeSet::full(&m1)).await.unwrap();
    assert_eq!(report.service_ports_written, 0, "{report:?}");
    assert_eq!(
        before,
        ruleset_with_handles(&ns),
        "an adopting engine rewrote"
    );
    assert!(!new.next_sync_is_full());
    assert_eq!(new.verify(&m1).await.unwrap(), Drift::None);
    let m2 = model(edited(&s1, "web", |web| {
        web.endpoints.retain(|e| e.ip.to_string() != "10.0.1.5")
    }));
    let report = new.sync(&m2, &ChangeSet::between(&m1, &m2)).await.unwrap();
    assert!(!report.full);
    assert_eq!(new.verify(&m2).await.unwrap(), Drift::None);
}

/// A restarted engine whose model changed while it was down rewrites the changed ports
/// only, and the kernel then holds exactly what a full sync writes.
#[tokio::test]
async fn restart_repairs_only_the_ports_that_changed() {
    need_root!("restart_repairs_only_the_ports_that_changed");
    let (ns, reference) = (Netns::new(), Netns::new());
    let mut services = two_services();
    services.push(service(
        "other",
        &["172.16.0.12"],
        53,
        vec![ep("10.0.3.1", 53, false)],
    ));
    let m1 = model(services.clone());
    let mut old = NftablesEngine::new(ns.options());
    old.sync(&m1, &ChangeSet::full(&m1)).await.unwrap();
    drop(old);
    let other_chain = |ns: &Netns| {
        ruleset_with_handles(ns)
            .lines()
            .find(|l| l.contains("chain svc-") && l.contains("-default-other-"))
            .map(str::to_string)
    };
    let untouched = other_chain(&ns).expect("other's chain");
    // While down: web loses an endpoint (and its affinity), empty is removed.
    let changed: Vec<TestService> = edited(&services, "web", |web| {
        web.endpoints.retain(|e| e.ip.to_string() != "10.0.1.5");
        web.affinity_timeout = None;
    })
    .into_iter()
    .filter(|s| s.name.name != "empty")
    .collect();
    let m2 = model(changed);
    let mut new = NftablesEngine::new(ns.options());
    let report = new.sync(&m2, &ChangeSet::full(&m2)).await.unwrap();
    // web and empty in ip, web in ip6.
    assert_eq!(report.service_ports_written, 3, "{report:?}");
    assert_eq!(
        other_chain(&ns),
        Some(untouched),
        "an unchanged port was rewritten"
    );
    assert_eq!(new.verify(&m2).await.unwrap(), Drift::None);
    let mut full = NftablesEngine::new(NftOptions {
        adopt: false,
        ..reference.options()
    });
    full.sync(&m2, &ChangeSet::full(&m2)).await.unwrap();
    for family in switchyard_nftables::ruleset::Family::BOTH {
        let mut a = switchyard_nftables::netlink::NftSocket::open(Some(&ns.name)).unwrap();
        let mut b = switchyard_nftables::netlink::NftSocket::open(Some(&reference.name)).unwrap();
        let diff = state_diff(&kernel_state(&mut a, family), &kernel_state(&mut b, family));
        assert!(
            diff.is_empty(),
            "adopted and repaired differs from full: {diff:#?}"
        );
    }
}

/// Other node-wide settings (here masqueradeAll) change the fixed part's digest: nothing
/// is adopted, every table is written again.
#[tokio::test]
async fn restart_with_other_node_settings_writes_every_table() {
    need_root!("restart_with_other_node_settings_writes_every_table");
    let ns = Netns::new();
    let services = two_services();
    let m1 = model(services.clone());
    let mut old = NftablesEngine::new(ns.options());
    old.sync(&m1, &ChangeSet::full(&m1)).await.unwrap();
    drop(old);
    let before = ruleset_with_handles(&ns);
    let mut config = config();
    config.masquerade_all = true;
    let m2 = model_with(services, &config);
    let mut new = NftablesEngine::new(ns.options());
    let report = new.sync(&m2, &ChangeSet::full(&m2)).await.unwrap();
    assert_eq!(report.service_ports_written, m2.services.len());
    let after = ruleset_with_handles(&ns);
    assert_ne!(before, after);
    assert!(
        after.contains("ip daddr @cluster-ips jump mark-for-masquerade"),
        "{after}"
    );
    assert_eq!(new.verify(&m2).await.unwrap(), Drift::None);
}
