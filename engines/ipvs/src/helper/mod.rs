//! The helper ruleset: what IPVS cannot do, in one nftables table per family
//! (`switchyard-ipvs` by default, the engine's ownership parameter), never touching the
//! nftables engine's tables. Its rules are fixed (they depend on node-wide settings
//! only); service ports only add set and map elements, plus a chain for the rare ports
//! with load-balancer source ranges (`fw-H`) or an `externalTrafficPolicy: Local` short
//! circuit (`sc-H`). So a partial sync is a handful of element changes in one netlink
//! batch, and only a port with such a chain goes through `nft`.
//!
//! Why nftables and not iptables + ipset as upstream: the project already speaks
//! nf_tables (netlink batches, dumps), one table holds the whole ruleset and is
//! replaced atomically, sets take concatenated `addr . proto . port` keys (upstream
//! needs one ipset per key shape), and no second tool (`ipset`) is needed.
//!
//! Hooks, against IPVS's own (`LOCAL_IN` at 98 for traffic from elsewhere, `LOCAL_OUT`
//! at -98 for the node's own):
//! - `prerouting` (filter, -150): traffic from the cluster CIDRs to an external
//!   address of a Local-policy port gets its short-circuit firewall mark (`vmap
//!   @short-circuit` → `sc-H`: `meta mark set M`), which selects the port's fwmark
//!   virtual server (cluster-wide backends);
//! - `output` (filter, -150, before IPVS): the node's own traffic gets the same marks,
//!   then the checks, then the masquerade mark;
//! - `input` (filter, 0, before IPVS): the checks, then the masquerade mark;
//! - `checks`: load-balancer source ranges (`vmap @firewall` → `fw-H`), then, unless
//!   short-circuited (`meta mark @sc-marks`), Drop and Reject targets (`vmap
//!   @no-endpoint`), then traffic to a cluster IP on a port no service has is
//!   rejected (`@cluster-ports`, `@cluster-ips`);
//! - `mark-for-masquerade`: mark 0x4000 (kube-proxy's) for external destinations
//!   under the Cluster policy (`@masq-external`) and cluster IPs from outside the
//!   cluster CIDRs (or from anywhere with `masqueradeAll`); the node's own traffic to
//!   Local-policy external destinations too (`@local-external`, in `output`);
//! - `postrouting` (nat, 100): hairpin (`@hairpin` endpoint pairs) is marked; the
//!   node's own short-circuited traffic is masqueraded; `masquerading` SNATs marked
//!   packets and clears the bit.
//!
//! Why a mark set before IPVS and not `ct original` in postrouting: nft 1.0.6 refuses
//! `ct original proto-dst` in a concatenation (its type is unknown without a protocol
//! context). Why short-circuited packets never carry the masquerade bit: IPVS compares
//! a packet's whole mark with a firewall-mark service's mark.
//!
//! `node-ports` records which NodePort virtual servers are ours (for cleanup and
//! adoption after a restart); no rule reads it.
//!
//! - [`text`]: the whole table as nft text (full syncs), and partial changes as text.
//! - [`batch`]: partial element changes as one nf_tables netlink batch.

pub mod batch;
pub mod text;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use switchyard_model::{IpFamily, Protocol};

/// Default name of the helper table in both families.
pub const TABLE: &str = "switchyard-ipvs";

/// The helper table's base chains (its hooks, see [`text::fixed_chains`]): emptied,
/// they leave the table inert, its sets readable.
pub const BASE_CHAINS: [&str; 4] = ["prerouting", "output", "input", "postrouting"];

pub const REJECT_CHAIN: &str = "reject-chain";
pub const CHECKS_CHAIN: &str = "checks";

/// The sets and maps service ports add elements to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetKind {
    /// Cluster IPs (`addr`): other ports on them are rejected.
    ClusterIps,
    /// Cluster IP virtual servers (`addr . proto . port`).
    ClusterPorts,
    /// External destinations masqueraded from anywhere (Cluster policy).
    MasqExternal,
    /// External destinations of Local-policy ports (the node's own traffic is
    /// masqueraded).
    LocalExternal,
    /// NodePort virtual servers of ours (ownership record).
    NodePorts,
    /// `endpoint . endpoint` address pairs: hairpin traffic is masqueraded.
    Hairpin,
    /// Firewall marks of the short-circuit virtual servers.
    ScMarks,
    /// `addr . proto . port : drop | goto reject-chain`.
    NoEndpoint,
    /// `addr . proto . port : jump fw-H`.
    Firewall,
    /// `addr . proto . port : jump sc-H`.
    ShortCircuit,
}

impl SetKind {
    pub const ALL: [SetKind; 10] = [
        SetKind::ClusterIps,
        SetKind::ClusterPorts,
        SetKind::MasqExternal,
        SetKind::LocalExternal,
        SetKind::NodePorts,
        SetKind::Hairpin,
        SetKind::ScMarks,
        SetKind::NoEndpoint,
        SetKind::Firewall,
        SetKind::ShortCircuit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SetKind::ClusterIps => "cluster-ips",
            SetKind::ClusterPorts => "cluster-ports",
            SetKind::MasqExternal => "masq-external",
            SetKind::LocalExternal => "local-external",
            SetKind::NodePorts => "node-ports",
            SetKind::Hairpin => "hairpin",
            SetKind::ScMarks => "sc-marks",
            SetKind::NoEndpoint => "no-endpoint",
            SetKind::Firewall => "firewall",
            SetKind::ShortCircuit => "short-circuit",
        }
    }

    pub fn is_map(self) -> bool {
        matches!(
            self,
            SetKind::NoEndpoint | SetKind::Firewall | SetKind::ShortCircuit
        )
    }

    /// The nft type declaration in `family`'s table.
    pub fn type_decl(self, family: IpFamily) -> String {
        let addr = addr_type(family);
        match self {
            SetKind::ClusterIps => format!("type {addr}"),
            SetKind::Hairpin => format!("type {addr} . {addr}"),
            SetKind::ScMarks => "type mark".to_string(),
            SetKind::NoEndpoint | SetKind::Firewall | SetKind::ShortCircuit => {
                format!("type {addr} . inet_proto . inet_service : verdict")
            }
            _ => format!("type {addr} . inet_proto . inet_service"),
        }
    }
}

/// The interval set of this family's cluster CIDRs (node-wide, written by full syncs).
pub const CLUSTER_CIDRS_SET: &str = "cluster-cidrs";

pub fn addr_type(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ipv4_addr",
        IpFamily::V6 => "ipv6_addr",
    }
}

/// The nft family keyword (also the address match keyword: `ip saddr`, `ip6 saddr`).
pub fn nft_family(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// The key of a set or map element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// `addr . proto . port`.
    Frontend(IpAddr, Protocol, u16),
    Addr(IpAddr),
    /// `addr . addr`.
    Pair(IpAddr, IpAddr),
    Mark(u32),
}

impl Key {
    pub fn family(&self) -> Option<IpFamily> {
        match self {
            Key::Frontend(ip, ..) | Key::Addr(ip) | Key::Pair(ip, _) => Some(IpFamily::of(ip)),
            Key::Mark(_) => None,
        }
    }

    /// The netlink form: concatenation components padded to 4 bytes, as nft encodes
    /// them; a mark in host byte order (nft's `mark` type).
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40);
        match *self {
            Key::Frontend(ip, p, port) => {
                out.extend_from_slice(&ip_bytes(&ip));
                out.extend_from_slice(&[p.number(), 0, 0, 0]);
                let [a, b] = port.to_be_bytes();
                out.extend_from_slice(&[a, b, 0, 0]);
            }
            Key::Addr(ip) => out.extend_from_slice(&ip_bytes(&ip)),
            Key::Pair(a, b) => {
                out.extend_from_slice(&ip_bytes(&a));
                out.extend_from_slice(&ip_bytes(&b));
            }
            Key::Mark(m) => out.extend_from_slice(&m.to_ne_bytes()),
        }
        out
    }

    /// Decodes the netlink form of a `kind` element of `family` (ownership records read
    /// back); `None` for bytes of another shape.
    pub fn decode(kind: SetKind, family: IpFamily, bytes: &[u8]) -> Option<Key> {
        let n = match family {
            IpFamily::V4 => 4,
            IpFamily::V6 => 16,
        };
        let addr = |b: &[u8]| -> Option<IpAddr> {
            match family {
                IpFamily::V4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?))),
                IpFamily::V6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
            }
        };
        match kind {
            SetKind::ScMarks => Some(Key::Mark(u32::from_ne_bytes(bytes.try_into().ok()?))),
            SetKind::ClusterIps => Some(Key::Addr(addr(bytes)?)),
            SetKind::Hairpin if bytes.len() == 2 * n => {
                Some(Key::Pair(addr(&bytes[..n])?, addr(&bytes[n..])?))
            }
            SetKind::Hairpin => None,
            _ if bytes.len() == n + 8 => {
                let protocol = match bytes[n] {
                    6 => Protocol::Tcp,
                    17 => Protocol::Udp,
                    132 => Protocol::Sctp,
                    _ => return None,
                };
                let port = u16::from_be_bytes([bytes[n + 4], bytes[n + 5]]);
                Some(Key::Frontend(addr(&bytes[..n])?, protocol, port))
            }
            _ => None,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Frontend(ip, p, port) => write!(f, "{ip} . {p} . {port}"),
            Key::Addr(ip) => write!(f, "{ip}"),
            Key::Pair(a, b) => write!(f, "{a} . {b}"),
            Key::Mark(m) => write!(f, "{m:#010x}"),
        }
    }
}

pub fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The value of a map element (sets have none).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    None,
    Drop,
    /// `goto reject-chain`.
    Reject,
    /// `jump CHAIN` (a port's `fw-H` or `sc-H`).
    Jump(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::None => Ok(()),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Reject => write!(f, "goto {REJECT_CHAIN}"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
        }
    }
}

/// One element of one set or map.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    pub set: SetKind,
    pub key: Key,
    pub value: Verdict,
}

impl Element {
    /// `KEY` or `KEY : VERDICT`, as in an nft element list.
    pub fn text(&self) -> String {
        match self.value {
            Verdict::None => self.key.to_string(),
            _ => format!("{} : {}", self.key, self.value),
        }
    }
}

/// A rule of a per-port chain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ChainRule {
    /// `ip saddr NET return`: a load-balancer source range.
    Allow(IpNet),
    Drop,
    /// `meta mark set M`: the short circuit's firewall mark.
    SetMark(u32),
}

impl ChainRule {
    pub fn text(&self, family: IpFamily) -> String {
        match self {
            ChainRule::Allow(net) => format!("{} saddr {net} return", nft_family(family)),
            ChainRule::Drop => "drop".to_string(),
            ChainRule::SetMark(m) => format!("meta mark set {m:#010x}"),
        }
    }
}

/// A per-port chain in one family's table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Chain {
    pub family: IpFamily,
    pub name: String,
    pub rules: Vec<ChainRule>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_netlink_form() {
        let cases = [
            (
                SetKind::NodePorts,
                Key::Frontend("192.168.0.2".parse().unwrap(), Protocol::Udp, 30053),
            ),
            (
                SetKind::ClusterPorts,
                Key::Frontend("fd00::1".parse().unwrap(), Protocol::Sctp, 80),
            ),
            (SetKind::ClusterIps, Key::Addr("10.96.0.1".parse().unwrap())),
            (
                SetKind::Hairpin,
                Key::Pair("fd00::2".parse().unwrap(), "fd00::2".parse().unwrap()),
            ),
            (SetKind::ScMarks, Key::Mark(0x0100_0042)),
        ];
        for (kind, key) in cases {
            let family = key.family().unwrap_or(IpFamily::V4);
            assert_eq!(Key::decode(kind, family, &key.bytes()), Some(key), "{key}");
        }
        assert_eq!(Key::decode(SetKind::NodePorts, IpFamily::V4, &[1, 2]), None);
        assert_eq!(
            Key::Frontend("10.0.0.1".parse().unwrap(), Protocol::Tcp, 80).bytes(),
            [10, 0, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0]
        );
    }
}
