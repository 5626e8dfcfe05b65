//! The typed service entries the dataplane stores: what a caller (the engine, encoding the
//! model's plan) hands to [`crate::Dataplane`], and what read-back returns. Conversions to
//! and from the map layout live here; the meaning of each field lives in `bpf/maps.h`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

pub use switchyard_model::Protocol;

use crate::{error::EbpfError, layout};

/// The transport protocols the maps know (`IPPROTO_*`).
pub(crate) fn protocol_from_number(n: u8) -> Option<Protocol> {
    [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        .into_iter()
        .find(|p| p.number() == n)
}

/// Who the client is: a process on this node (socket LB, cgroup programs) or a packet
/// from outside the node (tc programs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Node,
    External,
}

/// Which target of the plan a backend set holds (one service id has up to three).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetSet {
    /// Cluster traffic, internalTrafficPolicy applied.
    Internal,
    /// Traffic from outside the node, externalTrafficPolicy applied.
    External,
    /// External VIPs reached from the node or its pods (eTP=Local's short circuit).
    ShortCircuit,
}

impl TargetSet {
    pub(crate) fn code(self) -> u8 {
        match self {
            TargetSet::Internal => layout::TARGET_INTERNAL,
            TargetSet::External => layout::TARGET_EXTERNAL,
            TargetSet::ShortCircuit => layout::TARGET_SHORT_CIRCUIT,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<TargetSet> {
        match c {
            layout::TARGET_INTERNAL => Some(TargetSet::Internal),
            layout::TARGET_EXTERNAL => Some(TargetSet::External),
            layout::TARGET_SHORT_CIRCUIT => Some(TargetSet::ShortCircuit),
            _ => None,
        }
    }
}

/// What an entry does with a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// To one of the backends of the entry's set.
    Forward,
    /// The client times out.
    Drop,
    /// The client is refused (ECONNREFUSED; TCP RST / ICMP unreachable from tc).
    Reject,
}

/// One lookup key: a VIP (cluster IP, external IP, LB IP or a node address for a
/// NodePort), port and protocol, for one scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scope: Scope,
}

/// What one key leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The plan's stable service-port id.
    pub id: u32,
    pub action: Action,
    /// The backend set of `id` used by [`Action::Forward`].
    pub target: TargetSet,
    /// SNAT the client to the node address (tc; external traffic under eTP=Cluster).
    pub masquerade: bool,
    /// Drop clients outside the service's source ranges (tc; LoadBalancer IPs).
    pub source_ranges: bool,
    /// ClientIP affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
}

/// One backend (endpoint) of a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub addr: SocketAddr,
    /// Runs on this node.
    pub local: bool,
}

pub(crate) fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub(crate) fn addr_from_bytes(b: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

impl ServiceKey {
    pub(crate) fn to_raw(self) -> layout::SvcKey {
        layout::SvcKey {
            addr: addr_bytes(self.vip),
            port_be: self.port.to_be(),
            proto: self.protocol.number(),
            scope: match self.scope {
                Scope::Node => layout::SCOPE_NODE,
                Scope::External => layout::SCOPE_EXTERNAL,
            },
        }
    }

    pub(crate) fn from_raw(k: &layout::SvcKey) -> Result<ServiceKey, EbpfError> {
        let bad = |what: &str| EbpfError::Corrupt(format!("service key {k:?}: {what}"));
        Ok(ServiceKey {
            vip: addr_from_bytes(k.addr),
            port: u16::from_be(k.port_be),
            protocol: protocol_from_number(k.proto).ok_or_else(|| bad("protocol"))?,
            scope: match k.scope {
                layout::SCOPE_NODE => Scope::Node,
                layout::SCOPE_EXTERNAL => Scope::External,
                _ => return Err(bad("scope")),
            },
        })
    }
}

impl ServiceEntry {
    /// The map value for this entry with `count` backend slots.
    pub(crate) fn to_raw(self, count: u16) -> layout::SvcValue {
        let mut flags = 0;
        if self.masquerade {
            flags |= layout::SVC_F_MASQUERADE;
        }
        if self.source_ranges {
            flags |= layout::SVC_F_SOURCE_RANGES;
        }
        if self.affinity_timeout.is_some() {
            flags |= layout::SVC_F_AFFINITY;
        }
        layout::SvcValue {
            id: self.id,
            count,
            action: match self.action {
                Action::Forward => layout::ACTION_FORWARD,
                Action::Drop => layout::ACTION_DROP,
                Action::Reject => layout::ACTION_REJECT,
            },
            flags,
            affinity_timeout: self.affinity_timeout.unwrap_or(0),
            target: self.target.code(),
            pad: [0; 3],
        }
    }

    /// The entry and its backend count.
    pub(crate) fn from_raw(v: &layout::SvcValue) -> Result<(ServiceEntry, u16), EbpfError> {
        let bad = |what: &str| EbpfError::Corrupt(format!("service value {v:?}: {what}"));
        let entry = ServiceEntry {
            id: v.id,
            action: match v.action {
                layout::ACTION_FORWARD => Action::Forward,
                layout::ACTION_DROP => Action::Drop,
                layout::ACTION_REJECT => Action::Reject,
                _ => return Err(bad("action")),
            },
            target: TargetSet::from_code(v.target).ok_or_else(|| bad("target"))?,
            masquerade: v.flags & layout::SVC_F_MASQUERADE != 0,
            source_ranges: v.flags & layout::SVC_F_SOURCE_RANGES != 0,
            affinity_timeout: (v.flags & layout::SVC_F_AFFINITY != 0).then_some(v.affinity_timeout),
        };
        Ok((entry, v.count))
    }
}

pub(crate) fn backend_key(id: u32, target: TargetSet, slot: u16) -> layout::BackendKey {
    layout::BackendKey {
        id,
        slot,
        target: target.code(),
        pad: 0,
    }
}

impl Backend {
    pub(crate) fn to_raw(self) -> layout::BackendValue {
        layout::BackendValue {
            addr: addr_bytes(self.addr.ip()),
            port_be: self.addr.port().to_be(),
            flags: if self.local {
                layout::BACKEND_F_LOCAL
            } else {
                0
            },
            pad: 0,
        }
    }

    pub(crate) fn from_raw(v: &layout::BackendValue) -> Backend {
        Backend {
            addr: SocketAddr::new(addr_from_bytes(v.addr), u16::from_be(v.port_be)),
            local: v.flags & layout::BACKEND_F_LOCAL != 0,
        }
    }
}

/// A service port's source range (`loadBalancerSourceRanges` entry) as the LPM key data
/// and its prefix length.
pub(crate) fn source_range_key(id: u32, net: IpAddr, prefix: u8) -> (u32, layout::SrcRangeData) {
    let mut data = [0u8; 20];
    data[..4].copy_from_slice(&id.to_be_bytes());
    data[4..].copy_from_slice(&addr_bytes(net));
    let addr_bits = match net {
        IpAddr::V4(_) => 96 + u32::from(prefix.min(32)),
        IpAddr::V6(_) => u32::from(prefix.min(128)),
    };
    (32 + addr_bits, layout::SrcRangeData { data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_stored_mapped_and_read_back() {
        let ip: IpAddr = "10.96.0.10".parse().unwrap();
        let b = addr_bytes(ip);
        assert_eq!(&b[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(addr_from_bytes(b), ip);
        let v6: IpAddr = "fd00:96::a".parse().unwrap();
        assert_eq!(addr_from_bytes(addr_bytes(v6)), v6);
    }

    #[test]
    fn entries_round_trip() {
        let e = ServiceEntry {
            id: 7,
            action: Action::Forward,
            target: TargetSet::External,
            masquerade: true,
            source_ranges: true,
            affinity_timeout: Some(10800),
        };
        assert_eq!(ServiceEntry::from_raw(&e.to_raw(3)).unwrap(), (e, 3));
        let k = ServiceKey {
            vip: "192.168.0.2".parse().unwrap(),
            port: 30080,
            protocol: Protocol::Udp,
            scope: Scope::External,
        };
        assert_eq!(ServiceKey::from_raw(&k.to_raw()).unwrap(), k);
    }

    #[test]
    fn source_range_prefix_counts_id_and_mapped_bits() {
        let (len, _) = source_range_key(1, "203.0.113.0".parse().unwrap(), 25);
        assert_eq!(len, 32 + 96 + 25);
        let (len6, _) = source_range_key(1, "2600::".parse().unwrap(), 64);
        assert_eq!(len6, 32 + 64);
    }
}
