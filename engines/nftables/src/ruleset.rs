//! The names and fixed layout of Switchyard's nftables ruleset: the main and shard
//! tables, the base chains and their hooks, the top-level chains and maps, and how
//! per-service-port chain names are derived (a stable hash, so no Service name ever
//! reaches nft unescaped).

use std::{fmt::Write as _, net::IpAddr, sync::Arc};

use ipnet::IpNet;
use switchyard_model::{Backend, IpFamily, PortDigest, ServicePortName};

use crate::{
    element::ObjectRef,
    netlink::{ChainType, DataType, Hook, KeyType, SetFlags, SetSpec},
};

/// Default name of the main table in both families (fixed parts: filter checks,
/// masquerading, hairpin, cluster IPs, no-endpoint maps); shards are `NAME-0` ...
/// The name is the engine's ownership parameter ([`TableNames`]).
pub const TABLE: &str = "switchyard";

/// Shard tables per family (`switchyard-0` ...): the per-service-port chains (but the
/// rare `fw-` ones), affinity sets, and the verdict maps pointing into them
/// (`service-ips`, `service-nodeports`), each with its own nat hooks. A service port lives
/// in one shard (a stable hash of its name), so a partial sync of one port touches (and
/// makes the kernel re-validate) one small table only.
pub const SHARDS: usize = 16;

/// Tables per family: index 0 is the main table, `1 + i` is shard `i`.
pub const TABLES: usize = SHARDS + 1;

/// The names of an engine's tables: `PREFIX` (index 0) and `PREFIX-0` ... `PREFIX-15`.
/// Two engines with different prefixes never touch each other's tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableNames {
    names: Vec<String>,
}

impl TableNames {
    pub fn new(prefix: &str) -> TableNames {
        let names = (0..TABLES)
            .map(|i| {
                if i == 0 {
                    prefix.to_string()
                } else {
                    format!("{prefix}-{}", i - 1)
                }
            })
            .collect();
        TableNames { names }
    }

    /// The name of table `index` (0: main, `1 + i`: shard `i`).
    pub fn name(&self, index: usize) -> &str {
        &self.names[index]
    }

    /// The table index of a table name, if it is one of these.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }
}

impl Default for TableNames {
    fn default() -> Self {
        TableNames::new(TABLE)
    }
}

/// The mark bit that asks `masquerading` to SNAT a packet (as kube-proxy's default).
pub const MASQUERADE_MARK: u32 = 0x4000;

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
/// Digests of what was written per service port and table (see [`MapKind::PortDigests`]).
pub const PORT_DIGESTS_SET: &str = "port-digests";

/// A base chain: attached to a netfilter hook, with policy accept.
pub struct BaseChain {
    pub name: &'static str,
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: i32,
}

impl BaseChain {
    /// `type T hook H priority P; policy accept;` (priorities numeric: nft 1.0.6 only
    /// names `dstnat` for prerouting).
    pub fn declaration(&self) -> String {
        let kind = match self.kind {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
            ChainType::Route => "route",
        };
        let hook = match self.hook {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        };
        format!(
            "type {kind} hook {hook} priority {}; policy accept;",
            self.priority
        )
    }

    /// The netlink form.
    pub fn netlink(&self) -> crate::netlink::BaseChainSpec {
        crate::netlink::BaseChainSpec {
            chain_type: self.kind,
            hook: self.hook,
            priority: self.priority,
            accept: true,
        }
    }
}

/// The nat base chains of the main table run just before the shards' (the nat hook
/// calls nat chains in priority order until one maps the connection), so the
/// masquerade mark for cluster IP traffic sees the original destination.
pub const MAIN_NAT_PRIORITY: i32 = -101;

/// A shard's base chains: its service IP lookups (`services`) at -100 and its NodePort
/// lookups (`nodeports`) at -99. Every shard's service IP map is consulted before any
/// shard's NodePort map, as in upstream's single chain: an address that is both a
/// service IP and a node address, on a port that is another service's NodePort, goes
/// to the service IP (measured cost: see BENCHMARKS.md, connection setup).
pub const SHARD_BASE_CHAINS: &[BaseChain] = &[
    BaseChain {
        name: "nat-prerouting",
        kind: ChainType::Nat,
        hook: Hook::Prerouting,
        priority: -100,
    },
    BaseChain {
        name: "nat-output",
        kind: ChainType::Nat,
        hook: Hook::Output,
        priority: -100,
    },
    BaseChain {
        name: "nat-prerouting-nodeports",
        kind: ChainType::Nat,
        hook: Hook::Prerouting,
        priority: -99,
    },
    BaseChain {
        name: "nat-output-nodeports",
        kind: ChainType::Nat,
        hook: Hook::Output,
        priority: -99,
    },
];

/// The chain of a shard holding its NodePort lookup.
pub const NODEPORTS_CHAIN: &str = "nodeports";

/// A jump from a base chain: (from, only for new connections (`ct state new`), to).
pub type Jump = (&'static str, bool, &'static str);

/// Jumps from a shard's base chains.
pub const SHARD_JUMPS: &[Jump] = &[
    ("nat-prerouting", false, SERVICES_CHAIN),
    ("nat-output", false, SERVICES_CHAIN),
    ("nat-prerouting-nodeports", false, NODEPORTS_CHAIN),
    ("nat-output-nodeports", false, NODEPORTS_CHAIN),
];

/// As upstream since 1.34 (kubernetes#132456; numeric priorities: nft 1.0.6 only names
/// `dstnat` for prerouting; dstnat = -100, srcnat = 100): the firewall runs before DNAT
/// (it must see the LB IP), the no-endpoint and cluster-IP checks after it (priority 0),
/// so traffic a nat chain short-circuits to an endpoint (the node's own traffic to an
/// `externalTrafficPolicy: Local` address without local endpoints) is never dropped by a
/// check meant for its original destination.
pub const BASE_CHAINS: &[BaseChain] = &[
    BaseChain {
        name: "filter-prerouting-pre-dnat",
        kind: ChainType::Filter,
        hook: Hook::Prerouting,
        priority: -110,
    },
    BaseChain {
        name: "filter-output-pre-dnat",
        kind: ChainType::Filter,
        hook: Hook::Output,
        priority: -110,
    },
    BaseChain {
        name: "filter-input",
        kind: ChainType::Filter,
        hook: Hook::Input,
        priority: 0,
    },
    BaseChain {
        name: "filter-forward",
        kind: ChainType::Filter,
        hook: Hook::Forward,
        priority: 0,
    },
    BaseChain {
        name: "filter-output",
        kind: ChainType::Filter,
        hook: Hook::Output,
        priority: 0,
    },
    BaseChain {
        name: "nat-prerouting",
        kind: ChainType::Nat,
        hook: Hook::Prerouting,
        priority: MAIN_NAT_PRIORITY,
    },
    BaseChain {
        name: "nat-output",
        kind: ChainType::Nat,
        hook: Hook::Output,
        priority: MAIN_NAT_PRIORITY,
    },
    BaseChain {
        name: NAT_POSTROUTING_CHAIN,
        kind: ChainType::Nat,
        hook: Hook::Postrouting,
        priority: 100,
    },
];

/// Jumps from base chains to top-level chains.
pub const JUMPS: &[Jump] = &[
    ("filter-prerouting-pre-dnat", true, FIREWALL_CHECK_CHAIN),
    ("filter-output-pre-dnat", true, FIREWALL_CHECK_CHAIN),
    ("filter-input", true, NODEPORT_ENDPOINTS_CHECK_CHAIN),
    ("filter-input", true, SERVICE_ENDPOINTS_CHECK_CHAIN),
    ("filter-forward", true, SERVICE_ENDPOINTS_CHECK_CHAIN),
    ("filter-forward", true, CLUSTER_IPS_CHECK_CHAIN),
    ("filter-output", true, SERVICE_ENDPOINTS_CHECK_CHAIN),
    ("filter-output", true, CLUSTER_IPS_CHECK_CHAIN),
    ("nat-prerouting", false, SERVICES_CHAIN),
    ("nat-output", false, SERVICES_CHAIN),
    (NAT_POSTROUTING_CHAIN, false, MASQUERADING_CHAIN),
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
    /// Set of `port id . digest` (16 bytes, declared `ipv6_addr`: nft has no raw type)
    /// in every table: per service port (in its shard), the digest of everything written
    /// for it, and per table the digest of the fixed part (port id 0). A restarted
    /// engine reads them back to adopt what still matches (see `adopt`).
    PortDigests,
}

impl MapKind {
    pub const ALL: [MapKind; 8] = [
        MapKind::ServiceIps,
        MapKind::ServiceNodePorts,
        MapKind::NoEndpointServices,
        MapKind::NoEndpointNodePorts,
        MapKind::FirewallIps,
        MapKind::ClusterIps,
        MapKind::Hairpin,
        MapKind::PortDigests,
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
            MapKind::PortDigests => PORT_DIGESTS_SET,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether elements live in the shard tables (with the chains they point to, or
    /// the port they describe).
    pub fn is_sharded(self) -> bool {
        matches!(
            self,
            MapKind::ServiceIps | MapKind::ServiceNodePorts | MapKind::PortDigests
        )
    }

    /// Whether table `t` (0: main, `1 + i`: shard `i`) has this map or set.
    pub fn in_table(self, t: usize) -> bool {
        self == MapKind::PortDigests || self.is_sharded() == (t > 0)
    }

    /// Whether elements carry a verdict (a map) or not (a set).
    pub fn is_map(self) -> bool {
        !matches!(
            self,
            MapKind::ClusterIps | MapKind::Hairpin | MapKind::PortDigests
        )
    }

    /// The key's components in `family`.
    pub fn key(self, family: Family) -> &'static [KeyType] {
        const V4_VIP: [KeyType; 3] = [KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService];
        const V6_VIP: [KeyType; 3] = [KeyType::Ipv6Addr, KeyType::InetProto, KeyType::InetService];
        const PORT: [KeyType; 2] = [KeyType::InetProto, KeyType::InetService];
        match (self, family) {
            (
                MapKind::ServiceIps | MapKind::NoEndpointServices | MapKind::FirewallIps,
                Family::Ip,
            ) => &V4_VIP,
            (
                MapKind::ServiceIps | MapKind::NoEndpointServices | MapKind::FirewallIps,
                Family::Ip6,
            ) => &V6_VIP,
            (MapKind::ServiceNodePorts | MapKind::NoEndpointNodePorts, _) => &PORT,
            (MapKind::ClusterIps, Family::Ip) => &[KeyType::Ipv4Addr],
            (MapKind::ClusterIps, Family::Ip6) => &[KeyType::Ipv6Addr],
            (MapKind::Hairpin, Family::Ip) => &[KeyType::Ipv4Addr, KeyType::Ipv4Addr],
            (MapKind::Hairpin, Family::Ip6) => &[KeyType::Ipv6Addr, KeyType::Ipv6Addr],
            (MapKind::PortDigests, _) => &[KeyType::Ipv6Addr],
        }
    }

    /// The netlink declaration in `family`.
    pub fn spec(self, family: Family) -> SetSpec<'static> {
        SetSpec {
            name: self.name(),
            key: self.key(family),
            data: self.is_map().then_some(DataType::Verdict),
            flags: SetFlags::default(),
            timeout_ms: None,
            userdata: None,
        }
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
            MapKind::PortDigests => "type ipv6_addr".to_string(),
        }
    }
}

/// Backend maps per shard table (`backends-0` ... `backends-63`): `numgen key : addr .
/// port`. A backend chain picks its endpoint with one rule, `meta l4proto P dnat to
/// numgen random mod N offset O map @backends-C`, over its own range of keys `O ..
/// O + N` in one of these maps, instead of a cascade of N rules. Several maps, not one:
/// the kernel checks every element added to a map against every rule bound to it, so a
/// map shared by 3000 chains costs quadratic time; 64 per shard keep ≈ 50 chains per
/// map at 50k service ports. A map exists once a chain used it (never deleted by a
/// partial sync; a full sync declares those in use).
pub const BACKEND_MAPS: usize = 64;

/// Bits of a backend-map key that index the endpoint: a chain maps at most 4096
/// endpoints (more fall back to the cascade); the other 20 bits are the chain's slot.
pub const BACKEND_INDEX_BITS: u32 = 12;

/// Most endpoints one chain picks among through a backend map.
pub const MAPPED_BACKENDS_MAX: usize = 1 << BACKEND_INDEX_BITS;

const BACKEND_MAP_PREFIX: &str = "backends-";

/// The name of backend map `chunk`.
pub fn backend_map_name(chunk: u8) -> String {
    format!("{BACKEND_MAP_PREFIX}{chunk}")
}

/// The chunk of a backend map's name (`backends-7`: 7).
pub fn backend_map_chunk(name: &str) -> Option<u8> {
    let n: u8 = name.strip_prefix(BACKEND_MAP_PREFIX)?.parse().ok()?;
    (usize::from(n) < BACKEND_MAPS && backend_map_name(n) == name).then_some(n)
}

/// Where a backend chain's keys live: map `chunk` of its shard, keys `offset ..`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendSlot {
    pub chunk: u8,
    pub offset: u32,
}

/// A backend map's key and value types (`numgen` results to `addr . port`).
const BACKEND_VALUE_V4: [KeyType; 2] = [KeyType::Ipv4Addr, KeyType::InetService];
const BACKEND_VALUE_V6: [KeyType; 2] = [KeyType::Ipv6Addr, KeyType::InetService];

/// nft 1.0.6's user data for `typeof numgen random mod 2 : ip daddr . th dport` (the
/// records name nft expressions: numgen, a concatenation of two payloads); bytes 62 and
/// 68 describe the address payload, and differ for `ip6 daddr`.
const BACKEND_MAP_UDATA: [u8; 100] = [
    0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x03, 0x1a, 0x00, 0x04,
    0x17, 0x00, 0x00, 0x00, 0x01, 0x12, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x02, 0x00,
    0x00, 0x00, 0x02, 0x04, 0x00, 0x00, 0x00, 0x00, 0x04, 0x34, 0x00, 0x04, 0x0d, 0x00, 0x00, 0x00,
    0x01, 0x2c, 0x00, 0x14, 0x00, 0x04, 0x07, 0x00, 0x00, 0x00, 0x01, 0x0c, 0x00, 0x04, 0x0c, 0x00,
    0x00, 0x00, 0x01, 0x04, 0x0c, 0x00, 0x00, 0x00, 0x01, 0x14, 0x00, 0x04, 0x07, 0x00, 0x00, 0x00,
    0x01, 0x0c, 0x00, 0x04, 0x0b, 0x00, 0x00, 0x00, 0x01, 0x04, 0x02, 0x00, 0x00, 0x00, 0x06, 0x04,
    0x00, 0x00, 0x00, 0x00,
];
const BACKEND_MAP_UDATA_V6: [u8; 100] = {
    let mut u = BACKEND_MAP_UDATA;
    u[62] = 0x0d;
    u[68] = 0x09;
    u
};

/// A backend map's netlink declaration.
pub fn backend_map_spec(family: Family, name: &str) -> SetSpec<'_> {
    let (value, udata): (&'static [KeyType], &'static [u8]) = match family {
        Family::Ip => (&BACKEND_VALUE_V4, &BACKEND_MAP_UDATA),
        Family::Ip6 => (&BACKEND_VALUE_V6, &BACKEND_MAP_UDATA_V6),
    };
    SetSpec {
        name,
        key: &[KeyType::Integer],
        data: Some(DataType::Values(value)),
        flags: SetFlags::default(),
        timeout_ms: None,
        userdata: Some(udata),
    }
}

/// A backend map's nft type declaration.
pub fn backend_map_decl(family: Family) -> String {
    format!(
        "typeof numgen random mod 2 : {} daddr . th dport",
        family.nft()
    )
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

/// The stable identity of a service port's chains: 16 hex digits of the port name's
/// digest (the model's name hashing), plus a readable part limited to `[a-z0-9-]`, and
/// the shard the digest picks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortChains {
    base: String,
    digest: PortDigest,
}

/// Longest readable suffix kept in a chain name (names stay far below nft's 256 bytes).
const READABLE_MAX: usize = 40;

impl PortChains {
    pub fn new(name: &ServicePortName) -> PortChains {
        let digest = name.digest();
        let mut base = String::with_capacity(16 + 1 + READABLE_MAX);
        push_hex(&mut base, &digest.0[..8]);
        let readable = readable(&format!(
            "{}-{}-{}-{}",
            name.namespace, name.name, name.port, name.protocol
        ));
        if !readable.is_empty() {
            base.push('-');
            base.push_str(&readable);
        }
        PortChains { base, digest }
    }

    /// The table (index) of this port's chains and sets.
    pub fn table(&self) -> usize {
        shard_table(self.digest.0[0])
    }

    /// What the port's chain names share after their prefix (`HEX-readable`).
    pub fn base(&self) -> Arc<str> {
        self.base.as_str().into()
    }

    /// The chains of a port whose names share `base`, in shard `table`: every name
    /// [`PortChains`] can give (a port uses some of them).
    pub fn all_chains(table: usize, base: &str) -> [ObjectRef; 5] {
        [
            ObjectRef::new(table, format!("svc-{base}")),
            ObjectRef::new(table, format!("local-{base}")),
            ObjectRef::new(table, format!("alt-{base}")),
            ObjectRef::new(table, format!("ext-{base}")),
            ObjectRef::new(0, format!("fw-{base}")),
        ]
    }

    /// The port's id in `port-digests`: the first 8 bytes of its name's digest (the
    /// hex digits its chain names start with).
    pub fn id(&self) -> [u8; 8] {
        self.digest.0[..8].try_into().expect("8 bytes")
    }

    fn chain(&self, prefix: &str) -> ObjectRef {
        ObjectRef::new(self.table(), format!("{prefix}{}", self.base))
    }

    /// The chain load-balancing over the backends internal traffic goes to.
    pub fn service(&self) -> ObjectRef {
        self.chain("svc-")
    }

    /// The chain load-balancing over a second set of backends (the node's own, under
    /// `externalTrafficPolicy: Local`).
    pub fn local(&self) -> ObjectRef {
        self.chain("local-")
    }

    /// The chain load-balancing over a third set of backends (not produced by today's
    /// plans, kept so the encoding is total).
    pub fn alternate(&self) -> ObjectRef {
        self.chain("alt-")
    }

    /// External traffic (NodePort, external IPs, LB IPs) entry chain.
    pub fn external(&self) -> ObjectRef {
        self.chain("ext-")
    }

    /// Where backend chain `index` (0: [`Self::service`], 1: [`Self::local`], 2:
    /// [`Self::alternate`]) keeps its keys in a backend map: four more bytes of the
    /// name's digest, the top 6 the map, the low 20 the slot.
    pub fn backend_slot(&self, index: usize) -> BackendSlot {
        let at = 8 + 4 * index.min(2);
        let v = u32::from_be_bytes(self.digest.0[at..at + 4].try_into().expect("4 bytes"));
        BackendSlot {
            chunk: (v >> 26) as u8,
            offset: (v & ((1 << (32 - BACKEND_INDEX_BITS)) - 1)) << BACKEND_INDEX_BITS,
        }
    }

    /// LoadBalancerSourceRanges chain, in the main table with the other filter checks
    /// (rare; `firewall-ips` points to it and the filter hooks run it).
    pub fn firewall(&self) -> ObjectRef {
        ObjectRef::new(0, format!("fw-{}", self.base))
    }

    /// Affinity set of one backend (`aff-` and a hash of the port and the backend).
    pub fn affinity(&self, backend: &Backend) -> ObjectRef {
        let digest = self.digest.with_endpoint(backend.ip, backend.port);
        let mut name = String::with_capacity(4 + 16);
        name.push_str("aff-");
        push_hex(&mut name, &self.digest.0[..1]);
        push_hex(&mut name, &digest[..7]);
        ObjectRef::new(self.table(), name)
    }
}

/// The shard table (index) of a service port whose name digest starts with `byte`.
pub fn shard_table(byte: u8) -> usize {
    1 + byte as usize % SHARDS
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

    use switchyard_model::test_util::spn;

    #[test]
    fn names_are_stable_and_safe() {
        let a = PortChains::new(&spn("default", "web", "http"));
        assert_eq!(a, PortChains::new(&spn("default", "web", "http")));
        assert!(a.service().name.starts_with("svc-"));
        assert!(a.service().name.ends_with("-default-web-http-tcp"));
        let evil = PortChains::new(&spn("a\"; flush ruleset;", &"é".repeat(253), "}\n{"));
        for n in [
            evil.service(),
            evil.external(),
            evil.firewall(),
            evil.local(),
        ] {
            assert!(n.name.len() < 80, "{n}");
            assert!(n
                .name
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
        let b = Backend {
            ip: "10.1.0.1".parse().unwrap(),
            port: 80,
            local: false,
        };
        for n in [a.service(), a.local(), a.external(), a.affinity(&b)] {
            assert_eq!(n.table, a.table(), "{n}");
        }
        assert_eq!(a.firewall().table, 0);
        let t = TableNames::default();
        for i in 0..TABLES {
            assert_eq!(t.index(t.name(i)), Some(i));
        }
        assert_eq!(t.index("switchyard-16"), None);
        assert_eq!(TableNames::new("other").name(3), "other-2");
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
