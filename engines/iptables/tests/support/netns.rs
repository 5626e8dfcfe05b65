//! Private network namespaces for kernel tests (never the host's own rules): the e2e
//! crate's namespace guard and root check, plus what this engine's tests run inside.

use std::sync::atomic::{AtomicUsize, Ordering};

use switchyard_e2e::netns::{exec, NetNs};
use switchyard_iptables::{Backend, IptOptions};

#[allow(unused_imports)]
pub use switchyard_e2e::require_root as have_root;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace of its own (`sy-ipt-PID-N`), deleted on drop.
pub struct Netns(NetNs);

impl Netns {
    pub fn new() -> Netns {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("sy-ipt-{}-{n}", std::process::id());
        Netns(NetNs::create(&name).unwrap_or_else(|e| panic!("creating {name}: {e:#}")))
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// Runs `TOOL ARGS` in the namespace with `input` on stdin; returns (success, stdout+stderr).
    pub fn run(&self, tool: &str, args: &[&str], input: &str) -> (bool, String) {
        exec(self.name(), tool, args, input)
    }

    /// Engine options programming this namespace, both families.
    pub fn options(&self, backend: Backend) -> IptOptions {
        IptOptions {
            netns: Some(self.name().to_string()),
            backend,
            ipv6: true,
            ..IptOptions::default()
        }
    }
}

/// `iptables` tool name for a backend and family: e.g. `ip6tables-legacy-save`.
pub fn tool(backend: Backend, v6: bool, suffix: &str) -> String {
    let base = if v6 { "ip6tables" } else { "iptables" };
    let b = match backend {
        Backend::Legacy => "legacy",
        _ => "nft",
    };
    if suffix.is_empty() {
        format!("{base}-{b}")
    } else {
        format!("{base}-{b}-{suffix}")
    }
}
