//! Kernel tests: the engine programs a private network namespace, on both backends.
//! Need root.

mod support;

use support::{netns::*, *};
use switchyard_iptables::{
    chains::PortChain, detect_backend, Backend, ChainPrefix, IptOptions, IptablesEngine,
};
use switchyard_model::{ChangeSet, Drift, ProxyEngine};

macro_rules! need_root {
    ($name:expr) => {
        if !have_root($name) {
            return;
        }
    };
}

const BACKENDS: [Backend; 2] = [Backend::Nft, Backend::Legacy];

fn two_services() -> Vec<TestService> {
    // web: dual-stack NodePort with affinity, one remote endpoint; empty: none at all;
    // other: one remote endpoint.
    let web_endpoints = [
        ("10.0.0.5", true),
        ("10.0.1.5", false),
        ("fd00:10::5", true),
    ]
    .map(|(ip, local)| ep(ip, 8080, local))
    .to_vec();
    let web = TestService {
        node_port: Some(30080),
        affinity_timeout: Some(300),
        ..service("web", &["172.16.0.10", "fd00:96::10"], 80, web_endpoints)
    };
    vec![
        web,
        service("empty", &["172.16.0.11"], 443, vec![]),
        service(
            "other",
            &["172.16.0.12"],
            80,
            vec![ep("10.0.2.5", 80, false)],
        ),
    ]
}

/// `services` without the endpoint at `ip`.
fn without_endpoint(mut services: Vec<TestService>, ip: &str) -> Vec<TestService> {
    for s in &mut services {
        s.endpoints.retain(|e| e.ip.to_string() != ip);
    }
    services
}

fn save(ns: &Netns, backend: Backend, v6: bool) -> String {
    let (ok, out) = ns.run(&tool(backend, v6, "save"), &[], "");
    assert!(ok, "{out}");
    out
}

/// Lines of `saved` in chain `chain` (its rules).
fn chain_rules(saved: &str, chain: &str) -> Vec<String> {
    let prefix = format!("-A {chain} ");
    saved
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn sync_partial_and_removal() {
    need_root!("sync_partial_and_removal");
    for backend in BACKENDS {
        let ns = Netns::new();
        let mut engine = IptablesEngine::new(ns.options(backend));
        let m1 = model(two_services());
        let report = engine.sync(&m1, &ChangeSet::full(&m1)).await.unwrap();
        assert!(report.full);
        let counts = &report.rules_by_table;
        assert_eq!(report.rules, counts.iter().map(|(_, n)| n).sum::<usize>());
        assert_eq!(
            counts.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
            ["filter", "nat"]
        );
        assert!(counts.iter().all(|(_, n)| *n > 0), "{counts:?}");
        let v4 = save(&ns, backend, false);
        let web = spn("default", "web", "http");
        let svc = port_chain(PortChain::Service, &web);
        // The service chain DNATs itself (no chain per endpoint).
        let gone = endpoint_chain(&web, "10.0.1.5", 8080);
        assert!(!v4.contains(&format!(":{gone} ")), "{backend:?}\n{v4}");
        assert!(
            chain_rules(&v4, &svc)
                .iter()
                .any(|l| l.ends_with("-j DNAT --to-destination 10.0.1.5:8080")),
            "{backend:?}\n{v4}"
        );
        assert!(
            v4.contains(
                "-A PREROUTING -m comment --comment \"switchyard service portals\" -j SY-SERVICES"
            ),
            "{v4}"
        );
        assert!(
            v4.lines()
                .any(|l| l.starts_with("-A SY-SERVICES -d 172.16.0.11/32")
                    && l.contains("--dport 443 -j REJECT --reject-with tcp-reset")),
            "{v4}"
        );
        assert!(v4.contains("--dport 30080 -j SY-EXT-"), "{v4}");
        let v6 = save(&ns, backend, true);
        assert!(v6.contains("--to-destination [fd00:10::5]:8080"), "{v6}");
        assert!(!v6.contains("172.16.0.11"));
        assert_eq!(
            engine.verify(&m1).await.unwrap(),
            Drift::None,
            "{backend:?}"
        );
        let other = port_chain(PortChain::Service, &spn("default", "other", "http"));
        let other_before = chain_rules(&v4, &other);
        assert_eq!(other_before.len(), 2, "{v4}");

        // Remove one endpoint: a partial sync rewrites its service's chain, leaves others
        // alone.
        let s2 = without_endpoint(two_services(), "10.0.1.5");
        let m2 = model(s2.clone());
        let changes = ChangeSet::between(&m1, &m2);
        assert!(!changes.full);
        let report = engine.sync(&m2, &changes).await.unwrap();
        assert!(!report.full);
        let v4 = save(&ns, backend, false);
        assert!(!v4.contains(&gone), "{v4}");
        assert!(!v4.contains("10.0.1.5"), "{v4}");
        assert_eq!(
            chain_rules(&v4, &svc)
                .iter()
                .filter(|l| l.contains("-j DNAT"))
                .count(),
            2,
            "{v4}"
        );
        assert_eq!(chain_rules(&v4, &other), other_before);
        assert_eq!(
            engine.verify(&m2).await.unwrap(),
            Drift::None,
            "{backend:?}"
        );

        // Endpoints of the empty service appear; then a service goes away.
        let mut s3 = s2.clone();
        s3[1].endpoints = vec![ep("10.0.3.1", 8443, false)];
        let m3 = model(s3.clone());
        assert!(
            !engine
                .sync(&m3, &ChangeSet::between(&m2, &m3))
                .await
                .unwrap()
                .full
        );
        let v4 = save(&ns, backend, false);
        assert!(!v4.contains("-j REJECT"), "{v4}");
        assert!(v4.contains("--to-destination 10.0.3.1:8443"), "{v4}");
        // The NodePort jump is still the last rule of SY-SERVICES.
        let services = chain_rules(&v4, "SY-SERVICES");
        assert!(
            services
                .last()
                .unwrap()
                .contains("-j SY-NODEPORT-ADDRESSES"),
            "{services:?}"
        );
        assert_eq!(
            engine.verify(&m3).await.unwrap(),
            Drift::None,
            "{backend:?}"
        );
        let m4 = model(s3[1..].to_vec());
        engine
            .sync(&m4, &ChangeSet::between(&m3, &m4))
            .await
            .unwrap();
        let v4 = save(&ns, backend, false);
        assert!(!v4.contains("172.16.0.10"), "{v4}");
        assert!(!v4.contains(&svc), "{v4}");
        assert!(!v4.contains("SY-EXT-"), "{v4}");
        assert!(!v4.contains("--dport 30080"), "{v4}");
        let v6 = save(&ns, backend, true);
        assert!(!v6.contains("SY-SVC-"), "{v6}");
        assert_eq!(
            engine.verify(&m4).await.unwrap(),
            Drift::None,
            "{backend:?}"
        );

        // A full sync of the same model changes nothing visible.
        engine.sync(&m4, &ChangeSet::full(&m4)).await.unwrap();
        assert_eq!(
            save(&ns, backend, false)
                .lines()
                .filter(|l| l.starts_with('-'))
                .count(),
            v4.lines().filter(|l| l.starts_with('-')).count()
        );
        assert_eq!(engine.verify(&m4).await.unwrap(), Drift::None);
    }
}

#[tokio::test]
async fn verify_finds_drift_and_full_sync_restores() {
    need_root!("verify_finds_drift_and_full_sync_restores");
    for backend in BACKENDS {
        let ns = Netns::new();
        let mut engine = IptablesEngine::new(ns.options(backend));
        let m = model(two_services());
        engine.sync(&m, &ChangeSet::full(&m)).await.unwrap();
        assert_eq!(engine.verify(&m).await.unwrap(), Drift::None);
        let ipt = tool(backend, false, "");
        let ip6t = tool(backend, true, "");
        let cases: [(&str, &[&str]); 5] = [
            (&ipt, &["-t", "nat", "-F"]),
            (&ipt, &["-t", "filter", "-X", "SY-CANARY"]),
            (
                &ip6t,
                &[
                    "-t",
                    "nat",
                    "-D",
                    "POSTROUTING",
                    "-m",
                    "comment",
                    "--comment",
                    "switchyard postrouting rules",
                    "-j",
                    "SY-POSTROUTING",
                ],
            ),
            (&ipt, &["-t", "nat", "-F", "SY-SERVICES"]),
            (&ipt, &["-t", "nat", "-X", "SY-CANARY"]),
        ];
        for (tool, args) in cases {
            let (ok, out) = ns.run(tool, args, "");
            assert!(ok, "{tool} {args:?}: {out}");
            let Drift::Found(what) = engine.verify(&m).await.unwrap() else {
                panic!("{backend:?}: no drift after {tool} {args:?}")
            };
            eprintln!("{backend:?} {args:?}: {what}");
            engine.sync(&m, &ChangeSet::full(&m)).await.unwrap();
            assert_eq!(
                engine.verify(&m).await.unwrap(),
                Drift::None,
                "{backend:?} after {args:?}"
            );
        }
        // A whole-table flush of the nat table including chains.
        let (ok, out) = ns.run(&ipt, &["-t", "nat", "-F"], "");
        assert!(ok, "{out}");
        let (ok, out) = ns.run(&ipt, &["-t", "nat", "-X"], "");
        assert!(ok, "{out}");
        assert!(matches!(engine.verify(&m).await.unwrap(), Drift::Found(_)));
        engine.sync(&m, &ChangeSet::full(&m)).await.unwrap();
        assert_eq!(engine.verify(&m).await.unwrap(), Drift::None);
    }
}

#[tokio::test]
async fn cleanup_leaves_foreign_rules() {
    need_root!("cleanup_leaves_foreign_rules");
    for backend in BACKENDS {
        let ns = Netns::new();
        let foreign = "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d 172.16.9.9/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.9.9.9:80\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n*filter\n-A INPUT -s 198.51.100.1/32 -j DROP\nCOMMIT\n";
        let (ok, out) = ns.run(&tool(backend, false, "restore"), &["--noflush"], foreign);
        assert!(ok, "{out}");
        let mut engine = IptablesEngine::new(ns.options(backend));
        let m = model(two_services());
        engine.sync(&m, &ChangeSet::full(&m)).await.unwrap();
        assert!(save(&ns, backend, false).contains("SY-SERVICES"));
        engine.cleanup().await.unwrap();
        for v6 in [false, true] {
            let saved = save(&ns, backend, v6);
            assert!(!saved.contains("SY-"), "{backend:?} v6={v6}\n{saved}");
            assert!(!saved.contains("switchyard"), "{saved}");
            if !v6 {
                assert!(
                    saved.contains("-A KUBE-SERVICES -d 172.16.9.9/32"),
                    "{saved}"
                );
                assert!(saved.contains("-A PREROUTING -j KUBE-SERVICES"), "{saved}");
                assert!(
                    saved.contains("-A INPUT -s 198.51.100.1/32 -j DROP"),
                    "{saved}"
                );
            }
        }
        assert!(matches!(engine.verify(&m).await.unwrap(), Drift::Found(_)));
        // Cleaning twice is fine; syncing again works.
        engine.cleanup().await.unwrap();
        engine.sync(&m, &ChangeSet::default()).await.unwrap();
        assert_eq!(engine.verify(&m).await.unwrap(), Drift::None);
    }
}

#[tokio::test]
async fn failed_restore_keeps_rules_and_next_sync_is_full() {
    need_root!("failed_restore_keeps_rules_and_next_sync_is_full");
    for backend in BACKENDS {
        let ns = Netns::new();
        let mut engine = IptablesEngine::new(ns.options(backend));
        let m1 = model(two_services());
        engine.sync(&m1, &ChangeSet::full(&m1)).await.unwrap();
        // A foreign rule referencing the service chain of `other`: deleting it (the
        // service goes; a change of nat alone) must fail.
        let other = spn("default", "other", "http");
        let gone = port_chain(PortChain::Service, &other);
        let pin = format!("*nat\n:PIN - [0:0]\n-A PIN -j {gone}\nCOMMIT\n");
        let (ok, out) = ns.run(&tool(backend, false, "restore"), &["--noflush"], &pin);
        assert!(ok, "{out}");
        let before = save(&ns, backend, false);
        let mut without_other = two_services();
        without_other.retain(|s| s.name != other);
        let m2 = model(without_other);
        let err = engine
            .sync(&m2, &ChangeSet::between(&m1, &m2))
            .await
            .unwrap_err();
        eprintln!("{backend:?}: {err}");
        let after = save(&ns, backend, false);
        let rules = |s: &str| {
            s.lines()
                .filter(|l| l.starts_with('-'))
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rules(&before),
            rules(&after),
            "{backend:?}: a failed restore changed rules"
        );
        assert!(engine.next_sync_is_full());
        // Unpin: the next (full, whatever it is asked) sync succeeds and removes the chain.
        let (ok, out) = ns.run(&tool(backend, false, ""), &["-t", "nat", "-F", "PIN"], "");
        assert!(ok, "{out}");
        let report = engine
            .sync(&m2, &ChangeSet::between(&m1, &m2))
            .await
            .unwrap();
        assert!(report.full);
        assert!(!save(&ns, backend, false).contains(&gone));
        assert_eq!(engine.verify(&m2).await.unwrap(), Drift::None);
    }
}

/// A cluster CIDR that covers a whole family (`0.0.0.0/0`, `::/0`) means no traffic is
/// from outside the cluster: no masquerade rule, and nothing the kernel refuses
/// (iptables-nft cannot load `! -s 0.0.0.0/0`; CI's property test found it).
#[tokio::test]
async fn catch_all_cluster_cidr_programs_on_both_backends() {
    need_root!("catch_all_cluster_cidr_programs_on_both_backends");
    for backend in BACKENDS {
        for cidrs in [
            vec!["0.0.0.0/0", "::/0"],
            vec!["0.0.0.0/0", "10.0.0.0/8", "fd00::/8", "::/0"],
        ] {
            let ns = Netns::new();
            let mut engine = IptablesEngine::new(ns.options(backend));
            let mut c = config();
            c.cluster_cidrs = cidrs.iter().map(|c| c.parse().unwrap()).collect();
            let m = model_with(two_services(), &c);
            engine.sync(&m, &ChangeSet::full(&m)).await.unwrap();
            assert_eq!(engine.verify(&m).await.unwrap(), Drift::None);
            let web = spn("default", "web", "http");
            for v6 in [false, true] {
                let saved = save(&ns, backend, v6);
                let svc = chain_rules(&saved, &port_chain(PortChain::Service, &web));
                assert!(!svc.is_empty(), "{backend:?} {cidrs:?}: {saved}");
                assert!(
                    !svc.iter().any(|r| r.contains("SY-MARK-")),
                    "{backend:?} {cidrs:?}: masquerade rule with a catch-all cluster CIDR: {svc:?}"
                );
            }
            engine.cleanup().await.unwrap();
        }
    }
}

#[tokio::test]
async fn detects_the_backend_with_more_rules() {
    need_root!("detects_the_backend_with_more_rules");
    let ns = Netns::new();
    assert_eq!(detect_backend(Some(ns.name())), Backend::Nft, "empty: nft");
    let rules = "*filter\n-A INPUT -s 198.51.100.1/32 -j DROP\n-A INPUT -s 198.51.100.2/32 -j DROP\nCOMMIT\n";
    let (ok, out) = ns.run("iptables-legacy-restore", &["--noflush"], rules);
    assert!(ok, "{out}");
    assert_eq!(detect_backend(Some(ns.name())), Backend::Legacy);
    let mut engine = IptablesEngine::new(ns.options(Backend::Detect));
    assert_eq!(engine.owner(), "iptables", "not resolved yet");
    engine.prepare().await.unwrap();
    assert_eq!(
        engine.backend(),
        Some(Backend::Legacy),
        "resolved by prepare"
    );
    assert_eq!(engine.owner(), "iptables-legacy");
    let m = model(two_services());
    engine.sync(&m, &ChangeSet::full(&m)).await.unwrap();
    assert_eq!(engine.backend(), Some(Backend::Legacy));
    assert_eq!(
        engine.binaries().unwrap().iptables_restore,
        "iptables-legacy-restore"
    );
    assert!(save(&ns, Backend::Legacy, false).contains("SY-SERVICES"));
    assert!(!save(&ns, Backend::Nft, false).contains("SY-SERVICES"));
    engine.cleanup().await.unwrap();
    assert!(!save(&ns, Backend::Legacy, false).contains("SY-"));

    let ns = Netns::new();
    let (ok, out) = ns.run("iptables-nft-restore", &["--noflush"], rules);
    assert!(ok, "{out}");
    assert_eq!(detect_backend(Some(ns.name())), Backend::Nft);
}

/// The nft backend's full sync lists the nat table (`-S`) to keep iptables-nft-restore
/// fast; a nat table holding a rule iptables-nft cannot represent (made with `nft`)
/// makes the listing fail, and the engine then loads the same input without it.
#[tokio::test]
async fn nft_full_sync_over_a_nat_table_iptables_cannot_list() {
    need_root!("nft_full_sync_over_a_nat_table_iptables_cannot_list");
    let ns = Netns::new();
    let (ok, out) = ns.run("iptables-nft", &["-t", "nat", "-N", "FOREIGN"], "");
    assert!(ok, "{out}");
    // `log` without a group: no iptables equivalent.
    let (ok, out) = ns.run(
        "nft",
        &[
            "add", "rule", "ip", "nat", "FOREIGN", "log", "prefix", "\"x\"",
        ],
        "",
    );
    assert!(ok, "{out}");
    let mut engine = IptablesEngine::new(ns.options(Backend::Nft));
    let m = model(two_services());
    engine.sync(&m, &ChangeSet::full(&m)).await.unwrap();
    assert_eq!(engine.verify(&m).await.unwrap(), Drift::None);
    // Again, from a state where the chains exist.
    engine.sync(&m, &ChangeSet::full(&m)).await.unwrap();
    assert_eq!(engine.verify(&m).await.unwrap(), Drift::None);
    // (`cleanup` reads the tables with iptables-nft-save, which prints nothing of such
    // a table: it removes nothing there, as before.)
    let (ok, out) = ns.run("nft", &["list", "chain", "ip", "nat", "FOREIGN"], "");
    assert!(ok && out.contains("log prefix"), "{out}");
}

/// On a kernel without IPv6 (`ipv6.disable=1`, where every `ip6tables-restore` fails)
/// the engine programs IPv4 alone: no `ip6tables` chain, and partial syncs, `verify` and
/// cleanup never need one.
#[tokio::test]
async fn ipv4_only_kernel_programs_no_ip6tables_rules() {
    need_root!("ipv4_only_kernel_programs_no_ip6tables_rules");
    for backend in BACKENDS {
        let ns = Netns::new();
        let mut engine = IptablesEngine::new(IptOptions {
            ipv6: false,
            ..ns.options(backend)
        });
        let m1 = model(two_services());
        engine.sync(&m1, &ChangeSet::full(&m1)).await.unwrap();
        assert!(save(&ns, backend, false).contains("SY-SERVICES"));
        assert!(!save(&ns, backend, true).contains("SY-"), "{backend:?}");
        assert_eq!(engine.verify(&m1).await.unwrap(), Drift::None);

        let m2 = model(without_endpoint(two_services(), "10.0.1.5"));
        let report = engine
            .sync(&m2, &ChangeSet::between(&m1, &m2))
            .await
            .unwrap();
        assert!(!report.full);
        assert!(!save(&ns, backend, true).contains("SY-"), "{backend:?}");
        assert_eq!(engine.verify(&m2).await.unwrap(), Drift::None);

        engine.cleanup().await.unwrap();
        assert!(!save(&ns, backend, false).contains("SY-"), "{backend:?}");
    }
}

/// Lines of `saved` (both families' saves together) that are rules of `table` in the
/// engine's chains or jumps into them.
fn our_rules(saved: &[String], table: &str, prefix: &str) -> usize {
    let mut n = 0;
    for s in saved {
        let mut current = "";
        for l in s.lines() {
            if let Some(t) = l.strip_prefix('*') {
                current = if t == table { "yes" } else { "" };
            } else if !current.is_empty()
                && l.starts_with("-A ")
                && (l.starts_with(&format!("-A {prefix}")) || l.contains(&format!("-j {prefix}")))
            {
                n += 1;
            }
        }
    }
    n
}

/// The per-table counts a sync reports (`kubeproxy_sync_proxy_rules_iptables_total`)
/// are what the kernel holds, after full and partial syncs.
#[tokio::test]
async fn reported_rule_counts_match_the_kernel() {
    need_root!("reported_rule_counts_match_the_kernel");
    for backend in BACKENDS {
        let ns = Netns::new();
        let mut engine = IptablesEngine::new(ns.options(backend));
        let m1 = model(two_services());
        let m2 = model(without_endpoint(two_services(), "10.0.1.5"));
        for (m, changes) in [
            (&m1, ChangeSet::full(&m1)),
            (&m2, ChangeSet::between(&m1, &m2)),
        ] {
            let report = engine.sync(m, &changes).await.unwrap();
            let saved = [save(&ns, backend, false), save(&ns, backend, true)];
            for (table, n) in &report.rules_by_table {
                assert_eq!(
                    *n,
                    our_rules(&saved, table, "SY-"),
                    "{backend:?} {table} full={}",
                    report.full
                );
            }
        }
    }
}

/// Two engines with different chain prefixes in one namespace (a make-before-break
/// switch between two configurations): neither's full sync, verify or cleanup touches
/// the other's chains.
#[tokio::test]
async fn two_prefixes_never_touch_each_other() {
    need_root!("two_prefixes_never_touch_each_other");
    for backend in BACKENDS {
        let ns = Netns::new();
        let mut a = IptablesEngine::new(ns.options(backend));
        let mut b = IptablesEngine::new(IptOptions {
            chain_prefix: ChainPrefix::new("SY-B-").unwrap(),
            ..ns.options(backend)
        });
        assert_eq!(a.owner(), format!("iptables-{}", backend.as_str()));
        assert_eq!(b.owner(), format!("iptables-{} (SY-B-)", backend.as_str()));
        let ma = model(two_services());
        let mb = model(without_endpoint(two_services(), "10.0.1.5"));
        a.sync(&ma, &ChangeSet::full(&ma)).await.unwrap();
        b.sync(&mb, &ChangeSet::full(&mb)).await.unwrap();
        // Full syncs again: each sees the other's chains and leaves them alone.
        a.sync(&ma, &ChangeSet::full(&ma)).await.unwrap();
        b.sync(&mb, &ChangeSet::full(&mb)).await.unwrap();
        assert_eq!(a.verify(&ma).await.unwrap(), Drift::None, "{backend:?} a");
        assert_eq!(b.verify(&mb).await.unwrap(), Drift::None, "{backend:?} b");
        let v4 = save(&ns, backend, false);
        assert!(v4.contains(":SY-B-SERVICES"), "{v4}");
        assert!(v4.contains("-j SY-B-SVC-"), "{v4}");
        // Cleaning up one leaves the other in place and in sync.
        a.cleanup().await.unwrap();
        assert_eq!(b.verify(&mb).await.unwrap(), Drift::None, "{backend:?}");
        let v4 = save(&ns, backend, false);
        assert!(
            !v4.lines()
                .any(|l| l.contains("SY-") && !l.contains("SY-B-")),
            "{backend:?}: a's chains remain\n{v4}"
        );
        b.cleanup().await.unwrap();
        for v6 in [false, true] {
            let saved = save(&ns, backend, v6);
            assert!(!saved.contains("SY-"), "{backend:?}\n{saved}");
        }
    }
}

/// D20: INVALID packets are dropped unless `nf_conntrack_tcp_be_liberal` is set in the
/// engine's network namespace, read by `prepare` (a change makes the next sync full).
#[tokio::test]
async fn tcp_be_liberal_skips_the_invalid_drop() {
    need_root!("tcp_be_liberal_skips_the_invalid_drop");
    const INVALID: &str = "-A SY-FORWARD -m conntrack --ctstate INVALID -j DROP";
    for backend in BACKENDS {
        let ns = Netns::new();
        let m = model(two_services());
        let mut engine = IptablesEngine::new(ns.options(backend));
        engine.prepare().await.unwrap();
        engine.sync(&m, &ChangeSet::full(&m)).await.unwrap();
        assert!(save(&ns, backend, false).contains(INVALID), "{backend:?}");
        // The conntrack sysctls exist now (the rules loaded nf_conntrack).
        let (ok, out) = ns.run(
            "sysctl",
            &["-w", "net.netfilter.nf_conntrack_tcp_be_liberal=1"],
            "",
        );
        assert!(ok, "{out}");
        engine.prepare().await.unwrap();
        assert_eq!(engine.drops_invalid(), Some(false));
        let report = engine.sync(&m, &ChangeSet::default()).await.unwrap();
        assert!(report.full, "a changed sysctl needs a full sync");
        for v6 in [false, true] {
            let saved = save(&ns, backend, v6);
            assert!(!saved.contains("INVALID"), "{backend:?}\n{saved}");
        }
        assert_eq!(engine.verify(&m).await.unwrap(), Drift::None);
        // Another namespace, not liberal: a fresh engine there drops INVALID.
        let other = Netns::new();
        let mut engine = IptablesEngine::new(other.options(backend));
        engine.sync(&m, &ChangeSet::full(&m)).await.unwrap();
        assert_eq!(engine.drops_invalid(), Some(true));
        assert!(save(&other, backend, false).contains(INVALID));
    }
}

/// An earlier version made a chain per endpoint (`SEP-`, upstream's layout): the first
/// sync of this one removes them, and the service is served by its own chain.
#[tokio::test]
async fn endpoint_chains_an_earlier_version_left_are_removed() {
    need_root!("endpoint_chains_an_earlier_version_left_are_removed");
    for backend in BACKENDS {
        let ns = Netns::new();
        let web = spn("default", "web", "http");
        let svc = port_chain(PortChain::Service, &web);
        let old = endpoint_chain(&web, "10.0.1.5", 8080);
        let left = format!(
            "*nat\n:{svc} - [0:0]\n:{old} - [0:0]\n-A {svc} -j {old}\n\
             -A {old} -s 10.0.1.5/32 -j MARK --set-xmark 0x4000/0x4000\n\
             -A {old} -p tcp -j DNAT --to-destination 10.0.1.5:8080\nCOMMIT\n"
        );
        let (ok, out) = ns.run(&tool(backend, false, "restore"), &["--noflush"], &left);
        assert!(ok, "{out}");
        let mut engine = IptablesEngine::new(ns.options(backend));
        let m = model(two_services());
        engine.sync(&m, &ChangeSet::full(&m)).await.unwrap();
        let v4 = save(&ns, backend, false);
        assert!(!v4.contains(&format!(":{old} ")), "{backend:?}\n{v4}");
        assert!(!v4.contains("-j SY-SEP-"), "{backend:?}\n{v4}");
        assert!(
            chain_rules(&v4, &svc)
                .iter()
                .any(|l| l.ends_with("-j DNAT --to-destination 10.0.1.5:8080")),
            "{backend:?}\n{v4}"
        );
        assert_eq!(engine.verify(&m).await.unwrap(), Drift::None, "{backend:?}");
    }
}
