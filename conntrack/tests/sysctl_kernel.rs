//! Kernel tests of the conntrack settings, in a private network namespace: the per-
//! namespace timeouts are really written and read back; the global `nf_conntrack_max`
//! is really refused there (the kernel makes it read-only outside the node's initial
//! namespace) and reported as such; `nf_conntrack_count` counts that namespace's real
//! entries. The host's own values are never written: the hash size file is a stand-in
//! (it is global, and changing it from a test would resize the host's table). Needs root.

use std::{
    fs::File,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{setns, CloneFlags};
use switchyard_conntrack::{sysctl::Outcome, Setting, Sysctls};
use switchyard_crd::ConntrackConfig;

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

/// Whether the test may run; panics under CI when it cannot.
fn need_root() -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("conntrack sysctl kernel tests need root (CI=true, refusing to skip)");
    }
    eprintln!("\n*** SKIPPED: needs root (conntrack sysctl kernel test) ***\n");
    false
}

struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sy-cts-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        Netns(name)
    }

    /// Runs `f` on a thread inside the namespace (`/proc/sys/net` is the namespace's).
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            setns(
                File::open(&path).expect("open netns"),
                CloneFlags::CLONE_NEWNET,
            )
            .expect("setns");
            f()
        })
        .join()
        .expect("netns thread panicked")
    }

    fn conntrack(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.0, "conntrack"];
        all.extend_from_slice(args);
        run("ip", &all);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The real per-namespace sysctls, with a stand-in for the global hash size parameter.
fn sysctls(hashsize: PathBuf) -> Sysctls {
    Sysctls::under("/proc/sys/net/netfilter", hashsize)
}

fn host(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}")).unwrap_or_default()
}

#[test]
fn timeouts_are_written_per_namespace_and_the_global_max_is_refused_there() {
    if !need_root() {
        return;
    }
    // nf_conntrack must be loaded for its sysctls to exist.
    let _ = Command::new("modprobe").arg("nf_conntrack").status();
    let host_before = (
        host("nf_conntrack_max"),
        host("nf_conntrack_tcp_timeout_established"),
        host("nf_conntrack_udp_timeout"),
    );
    let dir = tempfile::tempdir().unwrap();
    let hashsize = dir.path().join("hashsize");
    std::fs::write(&hashsize, "1024\n").unwrap();
    let settings = ConntrackConfig {
        tcp_established_timeout: Some("1h2m3s".into()),
        udp_timeout: Some("47s".into()),
        // Below the host's maximum, so that a kernel accepting it would show.
        min: Some(1000),
        max_per_core: Some(1),
        ..Default::default()
    }
    .settings()
    .unwrap();
    let ns = Netns::new();
    let s = sysctls(hashsize.clone());
    let (tuning, readback) = ns.enter(move || {
        let tuning = s.apply(&settings, 2);
        let readback = (
            s.read(Setting::TcpEstablishedTimeout).unwrap(),
            s.read(Setting::UdpTimeout).unwrap(),
            s.read(Setting::Max).unwrap(),
        );
        (tuning, readback)
    });
    assert_eq!(
        readback.0, 3723,
        "established timeout written in the namespace"
    );
    assert_eq!(readback.1, 47, "UDP timeout written in the namespace");
    let max = tuning
        .applied
        .iter()
        .find(|a| a.setting == Setting::Max)
        .unwrap();
    assert_eq!(max.wanted, 1000);
    match &max.outcome {
        Outcome::Refused(e) => {
            let text = e.to_string();
            assert!(
                text.contains("Permission denied") && text.contains("initial network namespace"),
                "{text}"
            );
            assert_ne!(readback.2, 1000);
            let refusals = tuning.refusals();
            assert_eq!(refusals.len(), 1, "{refusals:?}");
            assert!(!refusals[0].retry);
        }
        // A kernel whose maximum belongs to each namespace: then it is that one's.
        other => {
            eprintln!("this kernel let a namespace set nf_conntrack_max: {other:?}");
            assert_eq!(readback.2, 1000);
        }
    }
    // A quarter of 1000 is below the stand-in's 1024: raise-only leaves it.
    assert_eq!(std::fs::read_to_string(&hashsize).unwrap(), "1024\n");
    let host_after = (
        host("nf_conntrack_max"),
        host("nf_conntrack_tcp_timeout_established"),
        host("nf_conntrack_udp_timeout"),
    );
    assert_eq!(host_before, host_after, "the host's values are untouched");
}

#[test]
fn usage_counts_the_namespace_entries() {
    if !need_root() {
        return;
    }
    let _ = Command::new("modprobe").arg("nf_conntrack").status();
    let ns = Netns::new();
    let s = sysctls(PathBuf::from("/nonexistent"));
    let before = ns.enter({
        let s = s.clone();
        move || s.usage().unwrap()
    });
    assert_eq!(before.entries, 0, "a new namespace has an empty table");
    assert!(before.limit > 0);
    for sport in 0..25u16 {
        let sport = (40000 + sport).to_string();
        ns.conntrack(&[
            "-I",
            "-p",
            "udp",
            "-s",
            "10.0.0.2",
            "-d",
            "172.30.0.10",
            "--sport",
            &sport,
            "--dport",
            "53",
            "--timeout",
            "120",
        ]);
    }
    let after = ns.enter(move || s.usage().unwrap());
    assert_eq!(after.entries, 25);
    assert_eq!(after.limit, before.limit);
}
