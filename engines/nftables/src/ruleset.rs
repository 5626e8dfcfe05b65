//! The names and fixed layout of Switchyard's nftables ruleset: the main and shard
//! tables, the base chains and their hooks, the top-level chains and maps, and how
//! per-service-port chain names are derived (a stable hash, so no Service name ever
//! reaches nft unescaped).

use std::{fmt::Write as _, net::IpAddr};

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use switchyard_core::{Endpoint, IpFamily, ServicePortName};

/// Name of the main table in both families (fixed parts: filter checks, masquerading,
/// hairpin, cluster IPs, no-endpoint maps).
pub const TABLE: &str = "switchyard";

/// Shard tables per family (`switchyard-0` ...): the per-service-port chains (but the
/// rare `fw-` ones), affinity sets, and the verdict maps pointing into them
/// (`service-ips`, `service-nodeports`), each with its own nat hooks. A service port lives in one shard (a stable
/// hash of its name), so a partial sync of one port touches (and makes the kernel
/// re-validate) one small table only.
pub const SHARDS: usize = 16;

/// Tables per family: index 0 is the main table, `1 + i` is shard `i`.
pub const TABLES: usize = SHARDS + 1;

/// The name of table `index` (0: main, `1 + i`: shard `i`).
pub fn table_name(index: usize) -> String {
    if index == 0 {
        TABLE.to_string()
    } else {
        format!("{TABLE}-{}", index - 1)
    }
}

/// The table index of a table name, if it is one of ours.
pub fn table_index(name: &str) -> Option<usize> {
    if name == TABLE {
        return Some(0);
    }
    let i: usize = name.strip_prefix(TABLE)?.strip_prefix('-')?.parse().ok()?;
    (i < SHARDS && name == table_name(i + 1)).then_some(i + 1)
}

/// The table holding a chain or set named `name`: per-service-port objects
/// (`svc-`, `local-`, `ext-`, `aff-` and two hex digits of the port's hash) live in
/// their port's shard, everything else in the main table (`fw-` chains too: they are
/// rare, `firewall-ips` points to them and the filter hooks run it, so it stays in the
/// small main table with the other filter checks).
pub fn object_table(name: &str) -> usize {
    let rest = ["svc-", "local-", "ext-", "aff-"]
        .iter()
        .find_map(|p| name.strip_prefix(p));
    match rest
        .and_then(|r| r.get(..2))
        .and_then(|h| u8::from_str_radix(h, 16).ok())
    {
        Some(byte) => 1 + byte as usize % SHARDS,
        None => 0,
    }
}

/// The table holding an element of `kind` with `value`: sharded maps' elements live with
/// the chain they point to.
pub fn element_table(kind: MapKind, value: &str) -> usize {
    if !kind.is_sharded() {
        return 0;
    }
    value
        .strip_prefix("goto ")
        .or_else(|| value.strip_prefix("jump "))
        .map_or(0, object_table)
}

/// The mark bit that asks `masquerading` to SNAT a packet (as kube-proxy's default).
pub const MASQUERADE_MARK: &str = "0x4000";

pub const SERVICES_CHAIN: &str = "services";
pub const MASQUERADING_CHAIN: &str = "masquerading";
pub const MARK_MASQ_CHAIN: &str = "mark-for-masquerade";
pub const REJECT_CHAIN: &str = "reject-chain";
pub const SERVICE_ENDPOINTS_CHECK_CHAIN: &str = "service-endpoints-check";
pub const NODEPORT_ENDPOINTS_CHECK_CHAIN: &str = "nodeport-endpoints-check";
pub const FIREWALL_CHECK_CHAIN: &str = "firewall-check";
pub const CLUSTER_IPS_CHECK_CHAIN: &str = "cluster-ips-check";

pub const NAT_POSTROUTING_CHAIN: &str = "nat-postrouting";

pub const NODEPORT_IPS_SET: &str = "nodeport-ips";
pub const CLUSTER_IPS_SET: &str = "cluster-ips";
pub const HAIRPIN_SET: &str = "hairpin";
/// This family's cluster CIDRs (the local-traffic detector), an interval set.
pub const CLUSTER_CIDRS_SET: &str = "cluster-cidrs";

/// A base chain: attached to a netfilter hook.
pub struct BaseChain {
    pub name: &'static str,
    pub kind: &'static str,
    pub hook: &'static str,
    pub priority: &'static str,
}

/// The nat base chains of the main table run just before the shards' (the nat hook
/// calls nat chains in priority order until one maps the connection), so the
/// masquerade mark for cluster IP traffic sees the original destination.
pub const MAIN_NAT_PRIORITY: &str = "-101";

/// A shard's base chains: its NAT lookups (`services`).
pub const SHARD_BASE_CHAINS: &[BaseChain] = &[
    BaseChain {
        name: "nat-prerouting",
        kind: "nat",
        hook: "prerouting",
        priority: "-100",
    },
    BaseChain {
        name: "nat-output",
        kind: "nat",
        hook: "output",
        priority: "-100",
    },
];

/// Jumps from a shard's base chains.
pub const SHARD_JUMPS: &[(&str, &str, &str)] = &[
    ("nat-prerouting", "", SERVICES_CHAIN),
    ("nat-output", "", SERVICES_CHAIN),
];

/// As upstream (numeric: nft 1.0.6 only names `dstnat` for prerouting; dstnat = -100,
/// srcnat = 100): filter chains run before DNAT so they see the original destination;
/// `filter-output-post-dnat` runs after it, for `cluster-ips-check`.
pub const BASE_CHAINS: &[BaseChain] = &[
    BaseChain {
        name: "filter-prerouting",
        kind: "filter",
        hook: "prerouting",
        priority: "-110",
    },
    BaseChain {
        name: "filter-input",
        kind: "filter",
        hook: "input",
        priority: "-110",
    },
    BaseChain {
        name: "filter-forward",
        kind: "filter",
        hook: "forward",
        priority: "-110",
    },
    BaseChain {
        name: "filter-output",
        kind: "filter",
        hook: "output",
        priority: "-110",
    },
    BaseChain {
        name: "filter-output-post-dnat",
        kind: "filter",
        hook: "output",
        priority: "-90",
    },
    BaseChain {
        name: "nat-prerouting",
        kind: "nat",
        hook: "prerouting",
        priority: MAIN_NAT_PRIORITY,
    },
    BaseChain {
        name: "nat-output",
        kind: "nat",
        hook: "output",
        priority: MAIN_NAT_PRIORITY,
    },
    BaseChain {
        name: NAT_POSTROUTING_CHAIN,
        kind: "nat",
        hook: "postrouting",
        priority: "100",
    },
];

/// Jumps from base chains to top-level chains: (from, condition, to).
pub const JUMPS: &[(&str, &str, &str)] = &[
    ("filter-prerouting", "ct state new ", FIREWALL_CHECK_CHAIN),
    (
        "filter-input",
        "ct state new ",
        NODEPORT_ENDPOINTS_CHECK_CHAIN,
    ),
    (
        "filter-input",
        "ct state new ",
        SERVICE_ENDPOINTS_CHECK_CHAIN,
    ),
    (
        "filter-forward",
        "ct state new ",
        SERVICE_ENDPOINTS_CHECK_CHAIN,
    ),
    ("filter-forward", "ct state new ", CLUSTER_IPS_CHECK_CHAIN),
    (
        "filter-output",
        "ct state new ",
        SERVICE_ENDPOINTS_CHECK_CHAIN,
    ),
    ("filter-output", "ct state new ", FIREWALL_CHECK_CHAIN),
    (
        "filter-output-post-dnat",
        "ct state new ",
        CLUSTER_IPS_CHECK_CHAIN,
    ),
    ("nat-prerouting", "", SERVICES_CHAIN),
    ("nat-output", "", SERVICES_CHAIN),
    (NAT_POSTROUTING_CHAIN, "", MASQUERADING_CHAIN),
];

/// The maps and sets whose elements belong to service ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MapKind {
    /// `addr . proto . port : verdict` for cluster IPs, external IPs and LB IPs.
    ServiceIps,
    /// `proto . port : verdict` for NodePorts.
    ServiceNodePorts,
    /// `addr . proto . port : verdict` rejecting (or dropping) with no endpoints.
    NoEndpointServices,
    /// `proto . port : verdict`, same for NodePorts.
    NoEndpointNodePorts,
    /// `addr . proto . port : verdict` to the firewall chain of an LB IP.
    FirewallIps,
    /// Set of active cluster IPs (`cluster-ips-check` rejects unused ports on them).
    ClusterIps,
    /// Set of `endpoint . endpoint` address pairs: a connection DNATed to its own
    /// source is masqueraded (`nat-postrouting`).
    Hairpin,
}

impl MapKind {
    pub const ALL: [MapKind; 7] = [
        MapKind::ServiceIps,
        MapKind::ServiceNodePorts,
        MapKind::NoEndpointServices,
        MapKind::NoEndpointNodePorts,
        MapKind::FirewallIps,
        MapKind::ClusterIps,
        MapKind::Hairpin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MapKind::ServiceIps => "service-ips",
            MapKind::ServiceNodePorts => "service-nodeports",
            MapKind::NoEndpointServices => "no-endpoint-services",
            MapKind::NoEndpointNodePorts => "no-endpoint-nodeports",
            MapKind::FirewallIps => "firewall-ips",
            MapKind::ClusterIps => CLUSTER_IPS_SET,
            MapKind::Hairpin => HAIRPIN_SET,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether elements live in the shard tables (with the chains they point to).
    pub fn is_sharded(self) -> bool {
        matches!(self, MapKind::ServiceIps | MapKind::ServiceNodePorts)
    }

    /// Whether elements carry a verdict (a map) or not (a set).
    pub fn is_map(self) -> bool {
        !matches!(self, MapKind::ClusterIps | MapKind::Hairpin)
    }

    /// The nft type declaration for this family (`type ...` or `typeof ...`).
    pub fn type_decl(self, family: Family) -> String {
        let addr = family.addr_type();
        match self {
            MapKind::ServiceIps | MapKind::NoEndpointServices | MapKind::FirewallIps => {
                format!("type {addr} . inet_proto . inet_service : verdict")
            }
            MapKind::ServiceNodePorts | MapKind::NoEndpointNodePorts => {
                "type inet_proto . inet_service : verdict".to_string()
            }
            MapKind::ClusterIps => format!("type {addr}"),
            MapKind::Hairpin => format!("type {addr} . {addr}"),
        }
    }
}

/// One of the two families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::Ip, Family::Ip6];

    /// The families a node programs: both, or IPv4 alone on a kernel without IPv6.
    pub fn programmed(ipv6: bool) -> &'static [Family] {
        if ipv6 {
            &Family::BOTH
        } else {
            &Family::BOTH[..1]
        }
    }

    /// The nft family keyword, also the address match keyword (`ip saddr`, `ip6 saddr`).
    pub fn nft(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    pub fn addr_type(self) -> &'static str {
        match self {
            Family::Ip => "ipv4_addr",
            Family::Ip6 => "ipv6_addr",
        }
    }

    pub fn ip_family(self) -> IpFamily {
        match self {
            Family::Ip => IpFamily::V4,
            Family::Ip6 => IpFamily::V6,
        }
    }

    pub fn index(self) -> usize {
        match self {
            Family::Ip => 0,
            Family::Ip6 => 1,
        }
    }

    pub fn has(self, ip: &IpAddr) -> bool {
        IpFamily::of(ip) == self.ip_family()
    }

    pub fn has_net(self, net: &IpNet) -> bool {
        IpFamily::of_net(net) == self.ip_family()
    }
}

/// The stable identity of a service port's chains: 16 hex digits of SHA-256 over the
/// length-prefixed fields of its name (so no two names collide by concatenation), plus
/// a readable part limited to `[a-z0-9-]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortChains {
    base: String,
    hash: [u8; 8],
}

/// Longest readable suffix kept in a chain name (names stay far below nft's 256 bytes).
const READABLE_MAX: usize = 40;

impl PortChains {
    pub fn new(name: &ServicePortName) -> PortChains {
        let mut hasher = Sha256::new();
        for part in [
            name.namespace.as_str(),
            name.name.as_str(),
            name.port.as_str(),
            name.protocol.as_str(),
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize();
        let mut hash = [0u8; 8];
        hash.copy_from_slice(&digest[..8]);
        let mut base = String::with_capacity(16 + 1 + READABLE_MAX);
        push_hex(&mut base, &hash);
        let readable = readable(&format!(
            "{}-{}-{}-{}",
            name.namespace, name.name, name.port, name.protocol
        ));
        if !readable.is_empty() {
            base.push('-');
            base.push_str(&readable);
        }
        PortChains { base, hash }
    }

    /// Cluster traffic policy chain (load-balances over cluster endpoints).
    pub fn service(&self) -> String {
        format!("svc-{}", self.base)
    }

    /// Local traffic policy chain (load-balances over local endpoints).
    pub fn local(&self) -> String {
        format!("local-{}", self.base)
    }

    /// External traffic (NodePort, external IPs, LB IPs) entry chain.
    pub fn external(&self) -> String {
        format!("ext-{}", self.base)
    }

    /// LoadBalancerSourceRanges chain.
    pub fn firewall(&self) -> String {
        format!("fw-{}", self.base)
    }

    /// The table (index) of this port's chains and sets.
    pub fn table(&self) -> usize {
        1 + self.hash[0] as usize % SHARDS
    }

    /// Stable per-endpoint name part (`ep-` and a hash whose first byte is the port's,
    /// so the name tells the shard).
    fn endpoint(&self, ep: &Endpoint) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.hash);
        hasher.update(ep.to_string().as_bytes());
        let digest = hasher.finalize();
        let mut name = String::with_capacity(3 + 16);
        name.push_str("ep-");
        push_hex(&mut name, &self.hash[..1]);
        push_hex(&mut name, &digest[..7]);
        name
    }

    /// Affinity set of one endpoint.
    pub fn affinity(&self, ep: &Endpoint) -> String {
        let mut name = self.endpoint(ep);
        name.replace_range(0..2, "aff");
        name
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

/// Lower-cased `[a-z0-9-]` rendition of `s`, runs of other characters collapsed to one
/// `-`, bounded length, no leading or trailing `-`.
pub fn readable(s: &str) -> String {
    let mut out = String::with_capacity(READABLE_MAX);
    for c in s.chars() {
        if out.len() >= READABLE_MAX {
            break;
        }
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// Removes CIDRs contained in another of the list (nft rejects overlapping intervals in
/// some set kinds), sorted.
pub fn collapse(nets: impl IntoIterator<Item = IpNet>) -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = nets.into_iter().map(|n| n.trunc()).collect();
    nets.sort_by_key(|n| (n.prefix_len(), *n));
    nets.dedup();
    let mut out: Vec<IpNet> = Vec::with_capacity(nets.len());
    for n in nets {
        if !out.iter().any(|o| o.contains(&n)) {
            out.push(n);
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::Protocol;

    fn spn(ns: &str, name: &str, port: &str) -> ServicePortName {
        ServicePortName {
            namespace: ns.into(),
            name: name.into(),
            port: port.into(),
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn names_are_stable_and_safe() {
        let a = PortChains::new(&spn("default", "web", "http"));
        assert_eq!(a, PortChains::new(&spn("default", "web", "http")));
        assert!(a.service().starts_with("svc-"));
        assert!(a.service().ends_with("-default-web-http-tcp"));
        let evil = PortChains::new(&spn("a\"; flush ruleset;", &"é".repeat(253), "}\n{"));
        for n in [
            evil.service(),
            evil.external(),
            evil.firewall(),
            evil.local(),
        ] {
            assert!(n.len() < 80, "{n}");
            assert!(n
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        }
        assert_ne!(
            PortChains::new(&spn("a", "bc", "")).service(),
            PortChains::new(&spn("ab", "c", "")).service()
        );
    }

    #[test]
    fn objects_live_in_their_ports_shard() {
        let a = PortChains::new(&spn("default", "web", "http"));
        let ep = Endpoint {
            ip: "10.1.0.1".parse().unwrap(),
            port: 80,
            local: false,
            ready: true,
            serving: true,
            terminating: false,
            zone_hints: vec![],
            node_hints: vec![],
        };
        for n in [a.service(), a.local(), a.external(), a.affinity(&ep)] {
            assert_eq!(object_table(&n), a.table(), "{n}");
        }
        assert_eq!(object_table(&a.firewall()), 0);
        assert_eq!(object_table("services"), 0);
        assert_eq!(
            element_table(MapKind::ServiceIps, &format!("goto {}", a.service())),
            a.table()
        );
        assert_eq!(element_table(MapKind::NoEndpointServices, "drop"), 0);
        for i in 0..TABLES {
            assert_eq!(table_index(&table_name(i)), Some(i));
        }
        assert_eq!(table_index("switchyard-16"), None);
    }

    #[test]
    fn collapse_drops_contained() {
        let nets = collapse(
            ["10.0.0.0/8", "10.1.0.0/16", "192.168.0.1/32", "10.0.0.0/8"]
                .iter()
                .map(|s| s.parse().unwrap()),
        );
        assert_eq!(nets.len(), 2);
    }
}
