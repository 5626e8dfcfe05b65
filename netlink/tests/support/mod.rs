//! Kernel test support: root checks that skip loudly (and fail under `CI=true`), and
//! private network namespaces deleted on drop.

#![allow(dead_code)]

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
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

/// A private network namespace (`ip netns add`), deleted on drop.
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
        TestNetns { name }
    }

    /// Runs `PROGRAM ARGS` inside the namespace; returns stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    pub fn netns(&self) -> switchyard_netlink::Netns {
        switchyard_netlink::Netns::Named(self.name.clone())
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Set by the VM lane for the jobs it runs: a kernel feature the host lacks (IPVS, the
/// dummy link type) must then be there, and its absence fails the test.
pub const REQUIRE_ENV: &str = "SWITCHYARD_REQUIRE_VM_FEATURES";

/// Whether a test whose kernel feature is missing here may skip: it skips loudly on a
/// kernel without it (the host; the VM lane runs it), and fails where the lane requires
/// it.
pub fn may_skip_missing(test: &str, feature: &str, why: &dyn std::fmt::Display) -> bool {
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("{test}: {feature} is required here ({REQUIRE_ENV}=1): {why}");
    }
    eprintln!(
        "\n*** SKIPPED {test}: this kernel has no {feature} ({why}); the VM lane runs it ***\n"
    );
    true
}
