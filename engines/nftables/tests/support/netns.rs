//! Private network namespaces for kernel tests (never the host's own rules): the e2e
//! crate's namespace guard and root check, plus what this engine's tests run inside.

use std::sync::atomic::{AtomicUsize, Ordering};

use switchyard_e2e::netns::{exec, NetNs};

#[allow(unused_imports)]
pub use switchyard_e2e::require_root as have_root;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace deleted on drop.
pub struct Netns {
    pub name: String,
    _guard: NetNs,
}

impl Netns {
    pub fn new() -> Netns {
        let name = format!(
            "sy-nft-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let guard = NetNs::create(&name).unwrap_or_else(|e| panic!("creating {name}: {e:#}"));
        Netns {
            name,
            _guard: guard,
        }
    }

    /// Runs `nft ARGS` in the namespace with `input` on stdin; returns (success, stdout+stderr).
    pub fn nft(&self, args: &[&str], input: &str) -> (bool, String) {
        exec(&self.name, "nft", args, input)
    }

    pub fn options(&self) -> switchyard_nftables::NftOptions {
        switchyard_nftables::NftOptions {
            netns: Some(self.name.clone()),
            ..Default::default()
        }
    }
}
