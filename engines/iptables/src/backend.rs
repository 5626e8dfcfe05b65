//! Which iptables backend to drive — `iptables-nft` (the nf_tables kernel API) or
//! `iptables-legacy` (x_tables) — and the binaries of each. Rules written through one
//! are invisible to the other's tools, so a node must use the backend its other
//! components use: [`detect_backend`] picks the one that already holds more rules, as
//! kube-proxy's iptables wrapper does.

use std::process::{Command, Stdio};

use switchyard_model::IpFamily;

/// The iptables backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `iptables-nft-*` (nf_tables).
    Nft,
    /// `iptables-legacy-*` (x_tables).
    Legacy,
    /// Whichever holds more rules at the first sync (ties: nft).
    #[default]
    Detect,
}

/// The tool binaries of a concrete backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binaries {
    pub iptables: &'static str,
    pub ip6tables: &'static str,
    pub iptables_restore: &'static str,
    pub ip6tables_restore: &'static str,
    pub iptables_save: &'static str,
    pub ip6tables_save: &'static str,
}

impl Binaries {
    pub fn restore(&self, family: IpFamily) -> &'static str {
        match family {
            IpFamily::V4 => self.iptables_restore,
            IpFamily::V6 => self.ip6tables_restore,
        }
    }

    /// `iptables` or `ip6tables`.
    pub fn iptables(&self, family: IpFamily) -> &'static str {
        match family {
            IpFamily::V4 => self.iptables,
            IpFamily::V6 => self.ip6tables,
        }
    }

    pub fn save(&self, family: IpFamily) -> &'static str {
        match family {
            IpFamily::V4 => self.iptables_save,
            IpFamily::V6 => self.ip6tables_save,
        }
    }
}

impl Backend {
    /// The binaries of `Nft` or `Legacy`; `None` for `Detect`.
    pub fn binaries(self) -> Option<Binaries> {
        match self {
            Backend::Nft => Some(Binaries {
                iptables: "iptables-nft",
                ip6tables: "ip6tables-nft",
                iptables_restore: "iptables-nft-restore",
                ip6tables_restore: "ip6tables-nft-restore",
                iptables_save: "iptables-nft-save",
                ip6tables_save: "ip6tables-nft-save",
            }),
            Backend::Legacy => Some(Binaries {
                iptables: "iptables-legacy",
                ip6tables: "ip6tables-legacy",
                iptables_restore: "iptables-legacy-restore",
                ip6tables_restore: "ip6tables-legacy-restore",
                iptables_save: "iptables-legacy-save",
                ip6tables_save: "ip6tables-legacy-save",
            }),
            Backend::Detect => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
            Backend::Detect => "detect",
        }
    }
}

/// Rules (lines starting with `-`) in both families' `*-save` output of `backend`;
/// `None` when its tools cannot run at all.
fn rule_lines(backend: Backend, netns: Option<&str>) -> Option<usize> {
    let bins = backend.binaries()?;
    let mut total = 0;
    let mut ran = false;
    for family in [IpFamily::V4, IpFamily::V6] {
        let tool = bins.save(family);
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, tool]);
                c
            }
            None => Command::new(tool),
        };
        let Ok(out) = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .stdout(Stdio::piped())
            .output()
        else {
            continue;
        };
        if !out.status.success() {
            continue;
        }
        ran = true;
        total += String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with('-'))
            .count();
    }
    ran.then_some(total)
}

/// The backend this node uses: the one whose tables hold more rules (ties and empty
/// nodes: nft; a backend whose tools do not run is never chosen when the other runs).
/// Runs `iptables-{nft,legacy}-save` and `ip6tables-…-save`, inside `netns` if given.
pub fn detect_backend(netns: Option<&str>) -> Backend {
    let nft = rule_lines(Backend::Nft, netns);
    let legacy = rule_lines(Backend::Legacy, netns);
    let chosen = match (nft, legacy) {
        (Some(n), Some(l)) if l > n => Backend::Legacy,
        (None, Some(_)) => Backend::Legacy,
        _ => Backend::Nft,
    };
    tracing::debug!(?nft, ?legacy, backend = chosen.as_str(), "iptables backend");
    chosen
}
