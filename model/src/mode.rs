//! `Mode`: which dataplane engine programs a node (or `auto`, the best one it supports).
//! It is part of the ProxyConfig API (re-exported by `switchyard-crd`) and the first
//! thing an engine says about itself.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A dataplane engine, or `auto` (the best one this node supports).
#[derive(
    Serialize,
    Deserialize,
    JsonSchema,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// kube-proxy's default mode.
    #[default]
    Iptables,
    Nftables,
    Ipvs,
    Ebpf,
    Auto,
}

impl Mode {
    pub const ENGINES: [Mode; 4] = [Mode::Iptables, Mode::Nftables, Mode::Ipvs, Mode::Ebpf];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
            Mode::Ipvs => "ipvs",
            Mode::Ebpf => "ebpf",
            Mode::Auto => "auto",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "iptables" => Ok(Mode::Iptables),
            "nftables" => Ok(Mode::Nftables),
            "ipvs" => Ok(Mode::Ipvs),
            "ebpf" => Ok(Mode::Ebpf),
            "auto" => Ok(Mode::Auto),
            other => Err(format!(
                "unknown mode {other:?} (expected iptables, nftables, ipvs, ebpf or auto)"
            )),
        }
    }
}
