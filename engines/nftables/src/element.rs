//! Map and set elements as data, from the renderer to the kernel: keys (`addr . proto .
//! port`, `proto . port`, `addr`, `addr . addr`) and verdicts (`drop`, `goto CHAIN`), and
//! the chains and sets they name with the table each lives in. The same value is written
//! as nft text (full syncs) and as netlink bytes (partial syncs, lookups in `verify`);
//! nothing is rendered to text and parsed back.

use std::{fmt, net::IpAddr, sync::Arc};

use switchyard_model::Protocol;

use crate::{
    netlink::{ElementBytes, NFT_GOTO, NF_DROP},
    rule::ip_bytes,
    ruleset::{Family, MapKind, REJECT_CHAIN},
};

/// A chain (or set) and the table holding it (0: the main table, `1 + i`: shard `i`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub table: usize,
    pub name: Arc<str>,
}

impl ObjectRef {
    pub fn new(table: usize, name: impl Into<Arc<str>>) -> ObjectRef {
        ObjectRef {
            table,
            name: name.into(),
        }
    }

    /// A fixed object of the main table.
    pub fn main(name: &str) -> ObjectRef {
        ObjectRef::new(0, name)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// The key of an element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ElementKey {
    /// `addr . proto . port`: `service-ips`, `no-endpoint-services`, `firewall-ips`.
    Vip(IpAddr, Protocol, u16),
    /// `proto . port`: `service-nodeports`, `no-endpoint-nodeports`.
    NodePort(Protocol, u16),
    /// `addr`: `cluster-ips`.
    Addr(IpAddr),
    /// `addr . addr`: `hairpin`.
    Pair(IpAddr, IpAddr),
    /// `port id . digest`: `port-digests` (see [`crate::digest`]).
    Digest([u8; 16]),
}

impl ElementKey {
    /// The netlink form: each component padded to 4 bytes, as nft encodes
    /// concatenations.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40);
        let proto = |out: &mut Vec<u8>, p: Protocol| out.extend_from_slice(&[p.number(), 0, 0, 0]);
        let port = |out: &mut Vec<u8>, n: u16| {
            let [a, b] = n.to_be_bytes();
            out.extend_from_slice(&[a, b, 0, 0]);
        };
        match *self {
            ElementKey::Vip(ip, p, n) => {
                out.extend_from_slice(&ip_bytes(&ip));
                proto(&mut out, p);
                port(&mut out, n);
            }
            ElementKey::NodePort(p, n) => {
                proto(&mut out, p);
                port(&mut out, n);
            }
            ElementKey::Addr(ip) => out.extend_from_slice(&ip_bytes(&ip)),
            ElementKey::Pair(a, b) => {
                out.extend_from_slice(&ip_bytes(&a));
                out.extend_from_slice(&ip_bytes(&b));
            }
            ElementKey::Digest(d) => out.extend_from_slice(&d),
        }
        out
    }
}

impl ElementKey {
    /// The key of a `kind` element of `family` from its netlink form (a dump), or `None`
    /// when the bytes are not one.
    pub fn from_bytes(kind: MapKind, family: Family, bytes: &[u8]) -> Option<ElementKey> {
        let addr_len = match family {
            Family::Ip => 4,
            Family::Ip6 => 16,
        };
        let ip = |b: &[u8]| -> Option<IpAddr> {
            match b.len() {
                4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
                16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
                _ => None,
            }
        };
        let proto_port = |b: &[u8]| -> Option<(Protocol, u16)> {
            let [p, 0, 0, 0, hi, lo, 0, 0] = <[u8; 8]>::try_from(b).ok()? else {
                return None;
            };
            let protocol = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
                .into_iter()
                .find(|x| x.number() == p)?;
            Some((protocol, u16::from_be_bytes([hi, lo])))
        };
        match kind {
            MapKind::ServiceIps | MapKind::NoEndpointServices | MapKind::FirewallIps => {
                let (addr, rest) = bytes.split_at_checked(addr_len)?;
                let (p, n) = proto_port(rest)?;
                Some(ElementKey::Vip(ip(addr)?, p, n))
            }
            MapKind::ServiceNodePorts | MapKind::NoEndpointNodePorts => {
                let (p, n) = proto_port(bytes)?;
                Some(ElementKey::NodePort(p, n))
            }
            MapKind::ClusterIps if bytes.len() == addr_len => Some(ElementKey::Addr(ip(bytes)?)),
            MapKind::Hairpin if bytes.len() == 2 * addr_len => {
                let (a, b) = bytes.split_at(addr_len);
                Some(ElementKey::Pair(ip(a)?, ip(b)?))
            }
            MapKind::PortDigests => Some(ElementKey::Digest(bytes.try_into().ok()?)),
            MapKind::ClusterIps | MapKind::Hairpin => None,
        }
    }
}

impl fmt::Display for ElementKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElementKey::Vip(ip, p, n) => write!(f, "{ip} . {p} . {n}"),
            ElementKey::NodePort(p, n) => write!(f, "{p} . {n}"),
            ElementKey::Addr(ip) => write!(f, "{ip}"),
            ElementKey::Pair(a, b) => write!(f, "{a} . {b}"),
            ElementKey::Digest(d) => write!(f, "{}", std::net::Ipv6Addr::from(*d)),
        }
    }
}

/// The value of a verdict-map element (sets have none).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// A set element.
    None,
    Drop,
    /// `goto CHAIN` (`reject-chain` for a rejection).
    Goto(ObjectRef),
    /// A set element carrying a comment, no verdict (`port-digests`: the port's chain
    /// names without their prefix, so an engine can find the chains of a port it no
    /// longer knows).
    Comment(Arc<str>),
}

impl Verdict {
    /// The verdict of an element of table `t` from a dump (the chains our elements
    /// point to live in the element's table), or `None` when it is not one of ours.
    pub fn from_dump(verdict: Option<&(i32, Option<String>)>, t: usize) -> Option<Verdict> {
        match verdict {
            None => Some(Verdict::None),
            Some((NF_DROP, None)) => Some(Verdict::Drop),
            Some((NFT_GOTO, Some(chain))) => Some(Verdict::Goto(ObjectRef::new(t, chain.as_str()))),
            Some(_) => None,
        }
    }

    pub fn reject() -> Verdict {
        Verdict::Goto(ObjectRef::main(REJECT_CHAIN))
    }

    /// The chain this verdict sends packets to.
    pub fn chain(&self) -> Option<&ObjectRef> {
        match self {
            Verdict::Goto(c) => Some(c),
            Verdict::None | Verdict::Drop | Verdict::Comment(_) => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::None => Ok(()),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
            Verdict::Comment(text) => write!(f, "comment {text:?}"),
        }
    }
}

/// One element a service port wants in one map or set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub kind: MapKind,
    pub key: ElementKey,
    pub value: Verdict,
}

impl Element {
    /// The table the element lives in: sharded maps' elements live with the chain they
    /// point to, the others in the main table.
    pub fn table(&self) -> usize {
        table_of(self.kind, &self.key, &self.value)
    }

    /// The netlink form.
    pub fn bytes(&self) -> ElementBytes {
        ElementBytes {
            key: self.key.bytes(),
            verdict: match &self.value {
                Verdict::None | Verdict::Comment(_) => None,
                Verdict::Drop => Some((NF_DROP, None)),
                Verdict::Goto(c) => Some((NFT_GOTO, Some(c.name.to_string()))),
            },
            comment: match &self.value {
                Verdict::Comment(text) => Some(text.to_string()),
                _ => None,
            },
        }
    }

    /// `KEY`, `KEY : VERDICT` or `KEY comment "TEXT"`, as in an nft element list.
    pub fn text(&self) -> String {
        match self.value {
            Verdict::None => self.key.to_string(),
            Verdict::Comment(_) => format!("{} {}", self.key, self.value),
            _ => format!("{} : {}", self.key, self.value),
        }
    }
}

/// The table holding an element of `kind` with `key` and `value` (see
/// [`Element::table`]): a port's digest lives in the port's shard (its id's first byte
/// picks it, as for the port's chains).
pub fn table_of(kind: MapKind, key: &ElementKey, value: &Verdict) -> usize {
    match (kind.is_sharded(), key, value.chain()) {
        (true, ElementKey::Digest(d), _) => crate::ruleset::shard_table(d[0]),
        (true, _, Some(c)) => c.table,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_as_text_and_bytes() {
        let k = ElementKey::Vip("10.0.0.1".parse().unwrap(), Protocol::Tcp, 80);
        assert_eq!(k.to_string(), "10.0.0.1 . tcp . 80");
        assert_eq!(k.bytes(), vec![10, 0, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0]);
        let n = ElementKey::NodePort(Protocol::Udp, 30080);
        assert_eq!(n.bytes(), vec![17, 0, 0, 0, 0x75, 0x80, 0, 0]);
        let e = Element {
            kind: MapKind::ServiceIps,
            key: k,
            value: Verdict::Goto(ObjectRef::new(3, "svc-x")),
        };
        assert_eq!(e.text(), "10.0.0.1 . tcp . 80 : goto svc-x");
        assert_eq!(e.table(), 3);
        let np = Element {
            kind: MapKind::NoEndpointServices,
            key: k,
            value: Verdict::reject(),
        };
        assert_eq!(np.table(), 0);
        assert_eq!(np.text(), "10.0.0.1 . tcp . 80 : goto reject-chain");
    }
}
