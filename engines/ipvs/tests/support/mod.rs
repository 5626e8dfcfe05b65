//! Kernel test support: root checks that skip loudly (and fail under `CI=true`), IPVS
//! checks that skip loudly on a kernel without it (the host) and fail where the VM
//! lane requires it, private network namespaces deleted on drop, and test models.

#![allow(dead_code)]

use std::{
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use switchyard_model::{
    test_util::{self, ep, TestService},
    NodeModel,
};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// Whether a kernel test may run; panics under `CI=true` when it cannot.
pub fn need_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root (CI=true, refusing to skip)");
    }
    eprintln!("\n*** SKIPPED {test}: needs root ***\n");
    false
}

/// Whether this kernel has IPVS (loading `ip_vs` if it can); skips loudly without it,
/// and panics where the VM lane requires it (`SWITCHYARD_REQUIRE_VM_FEATURES=1`).
pub fn need_ipvs(test: &str) -> bool {
    let present = || std::path::Path::new("/proc/sys/net/ipv4/vs").exists();
    if !present() {
        let _ = Command::new("modprobe")
            .arg("ip_vs")
            .stderr(Stdio::null())
            .status();
    }
    if present() {
        return true;
    }
    if std::env::var("SWITCHYARD_REQUIRE_VM_FEATURES").as_deref() == Ok("1") {
        panic!("{test}: IPVS is required here (SWITCHYARD_REQUIRE_VM_FEATURES=1)");
    }
    eprintln!("\n*** SKIPPED {test}: this kernel has no IPVS; the VM lane runs it ***\n");
    false
}

/// Runs a command; panics with its output when it fails. Returns stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A private network namespace (`ip netns add`) with `lo` up, deleted on drop.
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn new(prefix: &str) -> TestNetns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sy-{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = TestNetns { name };
        ns.exec("ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `PROGRAM ARGS` inside the namespace; returns stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A model with one of each kind of service port: ClusterIP with endpoints, without,
/// UDP, dual-stack, NodePort under Cluster and Local policy, LB with source ranges,
/// ClientIP affinity.
pub fn varied_model() -> NodeModel {
    let mut services: Vec<TestService> = Vec::new();
    services.push(test_util::service(
        "web",
        &["10.96.0.10"],
        80,
        vec![ep("10.1.0.1", 8080, true), ep("10.1.0.2", 8080, false)],
    ));
    services.push(test_util::service("empty", &["10.96.0.11"], 80, vec![]));
    let mut dns = test_util::service(
        "dns",
        &["10.96.0.12", "fd00::12"],
        53,
        vec![ep("10.1.0.3", 5353, false), ep("fd00:10::3", 5353, false)],
    );
    dns.name.protocol = switchyard_model::Protocol::Udp;
    services.push(dns);
    let mut np = test_util::service("np", &["10.96.0.13"], 80, vec![ep("10.1.0.4", 8080, true)]);
    np.node_port = Some(30080);
    services.push(np);
    let mut local = test_util::service(
        "local",
        &["10.96.0.14", "fd00::14"],
        80,
        vec![ep("10.1.0.5", 8080, false), ep("fd00:10::5", 8080, false)],
    );
    local.node_port = Some(30081);
    local.external_policy_local = true;
    local.load_balancer_ips = vec!["203.0.113.50".parse().unwrap()];
    local.load_balancer_source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
    services.push(local);
    let mut sticky = test_util::service(
        "sticky",
        &["10.96.0.15"],
        80,
        vec![ep("10.1.0.6", 8080, false)],
    );
    sticky.affinity_timeout = Some(10800);
    sticky.external_ips = vec!["192.0.2.15".parse().unwrap()];
    services.push(sticky);
    test_util::model(services)
}
