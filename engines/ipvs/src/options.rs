//! [`IpvsOptions`]: what the engine owns (interface and table names: its ownership
//! parameters, so two engines never touch each other's state), where it works (a
//! network namespace), and the `ipvs` block of the ProxyConfig in the engine's terms.

use std::time::Duration;

use ipnet::IpNet;
use switchyard_model::kernel_has_ipv6;
use switchyard_netlink::ipvs::Timeouts;

use crate::{dummy::INTERFACE, helper::TABLE, servers::Scheduler};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsOptions {
    /// Program this network namespace (a name under `/run/netns`) instead of the
    /// caller's.
    pub netns: Option<String>,
    /// The dummy interface holding the VIPs (at most 15 bytes).
    pub interface: String,
    /// The helper nftables table (in the `ip` and `ip6` families).
    pub table: String,
    pub scheduler: Scheduler,
    /// `arp_ignore=1`, `arp_announce=2`.
    pub strict_arp: bool,
    /// IPVS connection timeouts; 0 leaves the kernel's.
    pub timeouts: Timeouts,
    /// Virtual servers in these CIDRs are never deleted, even at our addresses
    /// (kube-proxy's `excludeCIDRs`).
    pub exclude_cidrs: Vec<IpNet>,
    /// Longest a TCP/SCTP real server drains (weight 0) before it is deleted with
    /// connections left. Default 15 minutes, IPVS's own idle timeout for established
    /// TCP connections.
    pub drain_limit: Duration,
    /// Program IPv6 too (false on a kernel without IPv6).
    pub ipv6: bool,
    /// The `nft` binary (full syncs of the helper table, and partial syncs that create
    /// per-port chains).
    pub nft_path: String,
}

impl Default for IpvsOptions {
    fn default() -> Self {
        IpvsOptions {
            netns: None,
            interface: INTERFACE.to_string(),
            table: TABLE.to_string(),
            scheduler: Scheduler::default(),
            strict_arp: false,
            timeouts: Timeouts::default(),
            exclude_cidrs: Vec::new(),
            drain_limit: Duration::from_secs(15 * 60),
            ipv6: kernel_has_ipv6(),
            nft_path: "nft".to_string(),
        }
    }
}
