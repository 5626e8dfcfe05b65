//! Switchyard's kernel capability probe: for each dataplane engine (iptables, nftables,
//! IPVS, eBPF), can this node run it, and if not, what exactly is missing (`ip_vs`,
//! `ip_vs_rr`, `nft >= 1.0.1`, `kernel >= 5.13`, `xt_statistic`, …).
//!
//! Reads `/proc`, `/sys` and `/lib/modules` (see [`ProbeRoots`]), asks the userspace tools
//! (`nft`, `iptables-*`, `ipset`, `bpftool`) with a time bound on each, and resolves the
//! `IPVS` generic-netlink family. Anything that must *create* state to be tested — an
//! iptables chain, an nftables table, an ipset — is created in a throwaway network
//! namespace (or one the caller names) and removed again: the probe never changes the
//! host's network state. It does not choose an engine; selection and fallback live in
//! `switchyard-core`. `auto` is not probed.
//!
//! - [`probe`], [`Probe`]: run the checks ([`iptables`], [`nftables`], [`ipvs`], [`ebpf`]
//!   say what each engine's checks are).
//! - [`ProbeReport`], [`ModeReport`], [`Check`]: the findings, serializable for
//!   `switchyard probe --output json` and the `ProxyNode` status.
//! - [`fix`]: the fix for each missing feature (`modprobe` line, package, kernel option,
//!   mount), in [`ModeReport::fixes`] and the table `switchyard probe` prints.
//! - [`ProbeReport::warnings`]: node problems no mode owns ([`bridge`]: a pod bridge
//!   without `br_netfilter`).
//! - [`ipvs::load_modules`], [`Probe::load_ipvs_modules`]: the one way the probe changes
//!   the kernel, loading the IPVS modules, and only when asked.
//! - building blocks: [`kernel_module`], [`version`], [`genl`], [`netns`], [`command`].

pub mod bridge;
pub mod command;
mod context;
pub mod ebpf;
pub mod error;
pub mod fix;
pub mod genl;
pub mod iptables;
pub mod ipvs;
pub mod kernel_module;
pub mod netns;
pub mod nftables;
mod report;
mod roots;
pub mod version;

use std::time::Duration;

pub use error::{CommandError, GenlError, ModuleLoadError, NetnsError};
pub use fix::Fix;
pub use report::{Check, ModeReport, NotLoaded, ProbeReport};
pub use roots::ProbeRoots;
pub use switchyard_crd::Mode;

use context::Context;

/// How to probe: where to read the kernel's state, which namespace to test in, how long
/// any one tool may take.
#[derive(Clone, Debug)]
pub struct Probe {
    netns: Option<String>,
    roots: ProbeRoots,
    timeout: Duration,
    load_ipvs_scheduler: Option<String>,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            netns: None,
            roots: ProbeRoots::default(),
            timeout: Duration::from_secs(10),
            load_ipvs_scheduler: None,
        }
    }
}

impl Probe {
    /// The default probe: real `/proc`, `/sys`, `/lib/modules`; a throwaway namespace for
    /// the checks that program things; 10 s per tool.
    pub fn new() -> Self {
        Probe::default()
    }

    /// Runs the programming checks in the existing named namespace (`ip netns`), instead
    /// of a throwaway one. They clean up after themselves either way.
    pub fn in_netns(mut self, name: impl Into<String>) -> Self {
        self.netns = Some(name.into());
        self
    }

    /// Reads the kernel's state under other roots (tests).
    pub fn with_roots(mut self, roots: ProbeRoots) -> Self {
        self.roots = roots;
        self
    }

    /// Before the IPVS checks, loads `ip_vs`, `ip_vs_<scheduler>` and `nf_conntrack` with
    /// `modprobe` ([`ipvs::load_modules`]), as kube-proxy does: a module that will not
    /// load is reported with modprobe's error. Changes the kernel; off by default.
    pub fn load_ipvs_modules(mut self, scheduler: impl Into<String>) -> Self {
        self.load_ipvs_scheduler = Some(scheduler.into());
        self
    }

    /// The longest any one tool may run before it is killed and its check fails.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Probes `modes` (in that order; `auto` and repeats are skipped). Blocking.
    pub fn run(&self, modes: &[Mode]) -> ProbeReport {
        let release = self
            .roots
            .kernel_release()
            .unwrap_or_else(|| "unknown".into());
        let mut ctx = Context::new(
            self.roots.clone(),
            release.clone(),
            self.timeout,
            self.netns.clone(),
        );
        ctx.load_ipvs_scheduler = self.load_ipvs_scheduler.clone();
        let mut seen = Vec::new();
        let mut reports = Vec::new();
        for &mode in modes {
            if mode == Mode::Auto || seen.contains(&mode) {
                continue;
            }
            seen.push(mode);
            reports.push(
                match mode {
                    Mode::Iptables => iptables::probe(&ctx),
                    Mode::Nftables => nftables::probe(&ctx),
                    Mode::Ipvs => ipvs::probe(&ctx),
                    Mode::Ebpf => ebpf::probe(&ctx),
                    Mode::Auto => unreachable!("skipped above"),
                }
                .with_fixes(&release),
            );
        }
        ProbeReport {
            kernel_release: release,
            modes: reports,
            warnings: bridge::br_netfilter_warning(&self.roots)
                .into_iter()
                .collect(),
        }
    }
}

/// Probes `modes` with the default [`Probe`] (pass [`Mode::ENGINES`] for all four).
pub fn probe(modes: &[Mode]) -> ProbeReport {
    Probe::new().run(modes)
}
