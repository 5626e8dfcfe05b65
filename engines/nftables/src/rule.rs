//! Rules as data, those of the fixed chains and of per-service-port chains: encoded as
//! nf_tables expressions for netlink batches, and written as nft text when the engine
//! runs `nft` (a debugging option). Each encoding mirrors the bytecode nft 1.0.6
//! generates for the same text (registers included), so the kernel holds the same rule
//! (and `nft list` shows the same line) whichever path wrote it; `tests/accepted.rs`
//! compares the kernel's own dumps of both.

use std::{
    fmt::{self, Write as _},
    net::IpAddr,
};

use ipnet::IpNet;
use switchyard_model::Protocol;

use switchyard_netlink::attr::attrs;

use crate::{
    netlink::{Attrs, RuleExpr, NFTA_DATA_VALUE, NFT_GOTO, NFT_JUMP, NFT_RETURN, NF_DROP},
    ruleset::{Family, MARK_MASQ_CHAIN},
};

/// A condition of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// `ip daddr A`.
    Daddr(IpAddr),
    /// `tcp dport P` (`meta l4proto tcp` and the transport header's port).
    Dport(Protocol, u16),
    /// `ip saddr @set`, or `ip saddr != @set`.
    SaddrIn { set: String, negate: bool },
    /// `ip saddr NET`.
    SaddrNet(IpNet),
    /// `numgen random mod N == 0`.
    Random(u32),
    /// `fib saddr type local`.
    FibSaddrLocal,
    /// `fib daddr type local`.
    FibDaddrLocal,
    /// `ip daddr @set`.
    DaddrIn(String),
    /// `ip daddr != NET` (NodePorts are never served on loopback).
    DaddrNotNet(IpNet),
    /// `ip saddr . ip daddr @set` (hairpin pairs).
    AddrPairIn(String),
    /// `meta l4proto P`.
    L4proto(Protocol),
    /// `meta mark & M == 0`.
    MarkClear(u32),
    /// `ct state new`.
    CtStateNew,
    /// `ct status dnat`.
    CtStatusDnat,
}

/// What a rule does when it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Jump(String),
    Goto(String),
    Return,
    Drop,
    /// `[update @set { ip saddr }] meta l4proto P dnat to ADDR:PORT`.
    Dnat {
        affinity: Option<String>,
        protocol: Protocol,
        ip: IpAddr,
        port: u16,
    },
    /// `meta l4proto P dnat ip to numgen random mod N offset O map @MAP`: one of `N`
    /// endpoints at random, from keys `O .. O + N` of a backend map.
    DnatMapped {
        protocol: Protocol,
        map: String,
        modulus: u32,
        offset: u32,
    },
    /// `ip daddr . meta l4proto . th dport vmap @MAP`.
    VipVmap(String),
    /// `meta l4proto . th dport vmap @MAP`.
    PortVmap(String),
    /// `meta mark set meta mark or M`.
    MarkOr(u32),
    /// `meta mark set meta mark xor M`.
    MarkXor(u32),
    /// `masquerade fully-random`.
    MasqueradeFullyRandom,
    /// `reject with tcp reset`.
    RejectTcpReset,
    /// `reject`: ICMP (ICMPv6) port unreachable.
    Reject,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub action: Action,
}

impl Rule {
    pub fn new(matches: Vec<Match>, action: Action) -> Rule {
        Rule { matches, action }
    }

    /// `jump mark-for-masquerade` after `matches`.
    pub fn mark(matches: Vec<Match>) -> Rule {
        Rule::new(matches, Action::Jump(MARK_MASQ_CHAIN.to_string()))
    }

    /// The nft text of the rule (as in a chain block or after `add rule ... CHAIN`).
    pub fn text(&self, family: Family) -> Text<'_> {
        Text(self, family)
    }

    /// Appends the rule's expressions (inside `NFTA_RULE_EXPRESSIONS`).
    pub fn encode(&self, family: Family, a: &mut Attrs<'_>) {
        for m in &self.matches {
            encode_match(m, family, a);
        }
        encode_action(&self.action, family, a);
    }

    /// Whether the rule uses a set other than the fixed ones (an affinity set).
    pub fn affinity_set(&self) -> Option<&str> {
        match &self.action {
            Action::Dnat {
                affinity: Some(s), ..
            } => Some(s),
            _ => None,
        }
    }
}

/// The address a dumped rule DNATs to (`... dnat to ADDR:PORT`): the immediate loaded
/// into register 1 before the `nat` expression, as [`Rule::encode`] writes it.
pub fn dnat_address(exprs: &[RuleExpr]) -> Option<IpAddr> {
    let nat = exprs.iter().position(|e| e.name == "nat")?;
    exprs[..nat].iter().rev().find_map(|e| {
        if e.name != "immediate" {
            return None;
        }
        let mut dreg = None;
        let mut value = None;
        for a in attrs(&e.data).flatten() {
            match a.kind {
                NFTA_IMMEDIATE_DREG => dreg = a.be32().ok(),
                NFTA_IMMEDIATE_DATA => {
                    value = a
                        .nested()
                        .flatten()
                        .find(|d| d.kind == NFTA_DATA_VALUE)
                        .and_then(|d| d.ip().ok());
                }
                _ => {}
            }
        }
        (dreg == Some(REG_1)).then_some(value).flatten()
    })
}

/// The backend map a dumped rule picks its endpoint from (`... dnat to numgen ... map
/// @MAP`), as [`Rule::encode`] writes it.
pub fn dnat_map(exprs: &[RuleExpr]) -> Option<String> {
    exprs.iter().filter(|e| e.name == "lookup").find_map(|e| {
        attrs(&e.data)
            .flatten()
            .find(|a| a.kind == NFTA_LOOKUP_SET)
            .and_then(|a| std::str::from_utf8(a.value).ok())
            .map(|s| s.trim_end_matches('\0').to_string())
            .filter(|name| crate::ruleset::backend_map_chunk(name).is_some())
    })
}

/// The keys a dumped rule picks among (`numgen random mod N offset O`): `O .. O + N`.
pub fn dnat_keys(exprs: &[RuleExpr]) -> Option<std::ops::Range<u32>> {
    let e = exprs.iter().find(|e| e.name == "numgen")?;
    let (mut modulus, mut offset) = (None, 0);
    for a in attrs(&e.data).flatten() {
        match a.kind {
            NFTA_NG_MODULUS => modulus = a.be32().ok(),
            NFTA_NG_OFFSET => offset = a.be32().ok()?,
            _ => {}
        }
    }
    Some(offset..offset.checked_add(modulus?)?)
}

/// Displays a rule as nft text.
pub struct Text<'a>(&'a Rule, Family);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Text(rule, family) = self;
        let ipx = family.nft();
        let mut sep = "";
        for m in &rule.matches {
            f.write_str(sep)?;
            sep = " ";
            match m {
                Match::Daddr(ip) => write!(f, "{ipx} daddr {ip}")?,
                Match::Dport(p, port) => write!(f, "{} dport {port}", p.as_str())?,
                Match::SaddrIn { set, negate } => {
                    let op = if *negate { "!= " } else { "" };
                    write!(f, "{ipx} saddr {op}@{set}")?
                }
                Match::SaddrNet(net) => write!(f, "{ipx} saddr {net}")?,
                Match::Random(n) => write!(f, "numgen random mod {n} == 0")?,
                Match::FibSaddrLocal => f.write_str("fib saddr type local")?,
                Match::FibDaddrLocal => f.write_str("fib daddr type local")?,
                Match::DaddrIn(set) => write!(f, "{ipx} daddr @{set}")?,
                Match::DaddrNotNet(net) => write!(f, "{ipx} daddr != {net}")?,
                Match::AddrPairIn(set) => write!(f, "{ipx} saddr . {ipx} daddr @{set}")?,
                Match::L4proto(p) => write!(f, "meta l4proto {}", p.as_str())?,
                Match::MarkClear(m) => write!(f, "meta mark & {m:#x} == 0")?,
                Match::CtStateNew => f.write_str("ct state new")?,
                Match::CtStatusDnat => f.write_str("ct status dnat")?,
            }
        }
        f.write_str(sep)?;
        match &rule.action {
            Action::Jump(c) => write!(f, "jump {c}"),
            Action::Goto(c) => write!(f, "goto {c}"),
            Action::Return => f.write_str("return"),
            Action::Drop => f.write_str("drop"),
            Action::Dnat {
                affinity,
                protocol,
                ip,
                port,
            } => {
                if let Some(set) = affinity {
                    write!(f, "update @{set} {{ {ipx} saddr }} ")?;
                }
                let mut to = String::new();
                match ip {
                    IpAddr::V4(ip) => {
                        let _ = write!(to, "{ip}:{port}");
                    }
                    IpAddr::V6(ip) => {
                        let _ = write!(to, "[{ip}]:{port}");
                    }
                }
                write!(f, "meta l4proto {} dnat to {to}", protocol.as_str())
            }
            Action::DnatMapped {
                protocol,
                map,
                modulus,
                offset,
            } => write!(
                f,
                "meta l4proto {} dnat {ipx} to numgen random mod {modulus} offset {offset} map @{map}",
                protocol.as_str()
            ),
            Action::VipVmap(map) => write!(f, "{ipx} daddr . meta l4proto . th dport vmap @{map}"),
            Action::PortVmap(map) => write!(f, "meta l4proto . th dport vmap @{map}"),
            Action::MarkOr(m) => write!(f, "meta mark set meta mark or {m:#x}"),
            Action::MarkXor(m) => write!(f, "meta mark set meta mark xor {m:#x}"),
            Action::MasqueradeFullyRandom => f.write_str("masquerade fully-random"),
            Action::RejectTcpReset => f.write_str("reject with tcp reset"),
            Action::Reject => f.write_str("reject"),
        }
    }
}

// Expression attributes (linux/netfilter/nf_tables.h).
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NETWORK: u32 = 1;
const TRANSPORT: u32 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const CMP_EQ: u32 = 0;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_L4PROTO: u32 = 16;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFT_LOOKUP_F_INV: u32 = 1;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_NG_DREG: u16 = 1;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_NG_TYPE: u16 = 3;
const NFT_NG_RANDOM: u32 = 1;
const NFTA_NG_OFFSET: u16 = 4;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_SADDR: u32 = 1;
const RTN_LOCAL: u32 = 2;
const NFTA_DYNSET_SET_NAME: u16 = 1;
const NFTA_DYNSET_OP: u16 = 3;
const NFTA_DYNSET_SREG_KEY: u16 = 4;
const NFT_DYNSET_OP_UPDATE: u32 = 1;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_FLAGS: u16 = 7;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_BITWISE_OP: u16 = 6;
const NFT_BITWISE_BOOL: u32 = 0;
const CMP_NEQ: u32 = 1;
const NFTA_META_SREG: u16 = 3;
const NFT_META_MARK: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 2;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_STATUS: u32 = 2;
/// `ct state new`: `NF_CT_STATE_BIT(IP_CT_NEW)`.
const CT_STATE_NEW: u32 = 1 << 3;
/// `ct status dnat`: `IPS_DST_NAT`.
const CT_STATUS_DNAT: u32 = 1 << 5;
const NFTA_MASQ_FLAGS: u16 = 1;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;
const NFTA_REJECT_TYPE: u16 = 1;
const NFTA_REJECT_ICMP_CODE: u16 = 2;
const NFT_REJECT_ICMP_UNREACH: u32 = 0;
const NFT_REJECT_TCP_RST: u32 = 1;
/// ICMP port unreachable (3), ICMPv6 port unreachable (4).
const ICMP_PORT_UNREACH: u8 = 3;
const ICMPV6_PORT_UNREACH: u8 = 4;
/// The first 32-bit register (`NFT_REG32_00`).
const NFT_REG32_00: u32 = 8;

/// The register nft names for the 32-bit slot `slot` of a concatenation: the 16-byte
/// register when the slot starts one (`NFT_REG_1` ...), else the 32-bit register.
fn slot_register(slot: u32) -> u32 {
    if slot.is_multiple_of(4) {
        REG_1 + slot / 4
    } else {
        NFT_REG32_00 + slot
    }
}

/// The conditions of a rule as nf_tables expressions.
fn encode_match(m: &Match, family: Family, a: &mut Attrs<'_>) {
    match m {
        Match::Daddr(ip) => {
            payload(a, NETWORK, daddr_offset(family), addr_len(family));
            cmp(a, CMP_EQ, &ip_bytes(ip));
        }
        Match::Dport(protocol, port) => {
            l4proto(a, *protocol);
            payload(a, TRANSPORT, 2, 2);
            cmp(a, CMP_EQ, &port.to_be_bytes());
        }
        Match::SaddrIn { set, negate } => {
            payload(a, NETWORK, saddr_offset(family), addr_len(family));
            lookup(a, set, REG_1, *negate);
        }
        Match::SaddrNet(net) => prefix_match(a, family, saddr_offset(family), net, CMP_EQ),
        Match::Random(modulus) => {
            a.expr("numgen", |a| {
                a.u32(NFTA_NG_DREG, REG_1);
                a.u32(NFTA_NG_MODULUS, *modulus);
                a.u32(NFTA_NG_TYPE, NFT_NG_RANDOM);
            });
            cmp(a, CMP_EQ, &0u32.to_ne_bytes());
        }
        Match::FibSaddrLocal => fib_local(a, NFTA_FIB_F_SADDR),
        Match::FibDaddrLocal => fib_local(a, NFTA_FIB_F_DADDR),
        Match::DaddrIn(set) => {
            payload(a, NETWORK, daddr_offset(family), addr_len(family));
            lookup(a, set, REG_1, false);
        }
        Match::DaddrNotNet(net) => prefix_match(a, family, daddr_offset(family), net, CMP_NEQ),
        Match::AddrPairIn(set) => {
            let len = addr_len(family);
            payload(a, NETWORK, saddr_offset(family), len);
            payload_to(
                a,
                slot_register(len / 4),
                NETWORK,
                daddr_offset(family),
                len,
            );
            lookup(a, set, REG_1, false);
        }
        Match::L4proto(protocol) => l4proto(a, *protocol),
        Match::MarkClear(mark) => {
            meta_load(a, NFT_META_MARK, REG_1);
            bitwise(a, 4, &mark.to_ne_bytes(), &[0; 4]);
            cmp(a, CMP_EQ, &[0; 4]);
        }
        Match::CtStateNew => ct_bit(a, NFT_CT_STATE, CT_STATE_NEW),
        Match::CtStatusDnat => ct_bit(a, NFT_CT_STATUS, CT_STATUS_DNAT),
    }
}

/// What a rule does, as nf_tables expressions.
fn encode_action(action: &Action, family: Family, a: &mut Attrs<'_>) {
    match action {
        Action::Jump(chain) => verdict(a, NFT_JUMP, Some(chain)),
        Action::Goto(chain) => verdict(a, NFT_GOTO, Some(chain)),
        Action::Return => verdict(a, NFT_RETURN, None),
        Action::Drop => verdict(a, NF_DROP, None),
        Action::Dnat {
            affinity,
            protocol,
            ip,
            port,
        } => dnat(a, family, affinity.as_deref(), *protocol, ip, *port),
        Action::DnatMapped {
            protocol,
            map,
            modulus,
            offset,
        } => {
            l4proto(a, *protocol);
            a.expr("numgen", |a| {
                a.u32(NFTA_NG_DREG, REG_1);
                a.u32(NFTA_NG_MODULUS, *modulus);
                a.u32(NFTA_NG_TYPE, NFT_NG_RANDOM);
                a.u32(NFTA_NG_OFFSET, *offset);
            });
            a.expr("lookup", |a| {
                a.str(NFTA_LOOKUP_SET, map);
                a.u32(NFTA_LOOKUP_SREG, REG_1);
                a.u32(NFTA_LOOKUP_DREG, REG_1);
            });
            nat_dnat(a, family, slot_register(addr_len(family) / 4));
        }
        Action::VipVmap(map) => {
            let len = addr_len(family);
            payload(a, NETWORK, daddr_offset(family), len);
            meta_load(a, NFT_META_L4PROTO, slot_register(len / 4));
            payload_to(a, slot_register(len / 4 + 1), TRANSPORT, 2, 2);
            vmap_lookup(a, map);
        }
        Action::PortVmap(map) => {
            meta_load(a, NFT_META_L4PROTO, REG_1);
            payload_to(a, slot_register(1), TRANSPORT, 2, 2);
            vmap_lookup(a, map);
        }
        Action::MarkOr(mark) => mark_set(a, !mark, *mark),
        Action::MarkXor(mark) => mark_set(a, u32::MAX, *mark),
        Action::MasqueradeFullyRandom => a.expr("masq", |a| {
            a.u32(NFTA_MASQ_FLAGS, NF_NAT_RANGE_PROTO_RANDOM_FULLY);
        }),
        Action::RejectTcpReset => reject(a, NFT_REJECT_TCP_RST, 0),
        Action::Reject => {
            let code = match family {
                Family::Ip => ICMP_PORT_UNREACH,
                Family::Ip6 => ICMPV6_PORT_UNREACH,
            };
            reject(a, NFT_REJECT_ICMP_UNREACH, code);
        }
    }
}

fn dnat(
    a: &mut Attrs<'_>,
    family: Family,
    affinity: Option<&str>,
    protocol: Protocol,
    ip: &IpAddr,
    port: u16,
) {
    if let Some(set) = affinity {
        payload(a, NETWORK, saddr_offset(family), addr_len(family));
        a.expr("dynset", |a| {
            a.str(NFTA_DYNSET_SET_NAME, set);
            a.u32(NFTA_DYNSET_OP, NFT_DYNSET_OP_UPDATE);
            a.u32(NFTA_DYNSET_SREG_KEY, REG_1);
        });
    }
    l4proto(a, protocol);
    immediate_data(a, REG_1, &ip_bytes(ip));
    immediate_data(a, REG_2, &port.to_be_bytes());
    nat_dnat(a, family, REG_2);
}

/// `dnat` to the address in register 1 and the port in `port_reg`.
fn nat_dnat(a: &mut Attrs<'_>, family: Family, port_reg: u32) {
    a.expr("nat", |a| {
        a.u32(NFTA_NAT_TYPE, NFT_NAT_DNAT);
        a.u32(
            NFTA_NAT_FAMILY,
            match family {
                Family::Ip => 2,
                Family::Ip6 => 10,
            },
        );
        a.u32(NFTA_NAT_REG_ADDR_MIN, REG_1);
        a.u32(NFTA_NAT_REG_PROTO_MIN, port_reg);
        a.u32(NFTA_NAT_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
    });
}

/// `ADDR-FIELD NET` (`op` equal) or `ADDR-FIELD != NET`: a whole address, a prefix on a
/// byte boundary (its leading bytes), or a masked address, as nft compiles each.
fn prefix_match(a: &mut Attrs<'_>, family: Family, offset: u32, net: &IpNet, op: u32) {
    let len = addr_len(family);
    let prefix = u32::from(net.prefix_len());
    let addr = ip_bytes(&net.addr());
    if prefix == len * 8 {
        payload(a, NETWORK, offset, len);
        cmp(a, op, &addr);
    } else if prefix.is_multiple_of(8) && prefix > 0 {
        let bytes = prefix / 8;
        payload(a, NETWORK, offset, bytes);
        cmp(a, op, &addr[..bytes as usize]);
    } else {
        payload(a, NETWORK, offset, len);
        let mask = ip_bytes(&net.netmask());
        a.expr("bitwise", |a| {
            a.u32(NFTA_BITWISE_SREG, REG_1);
            a.u32(NFTA_BITWISE_DREG, REG_1);
            a.u32(NFTA_BITWISE_LEN, len);
            a.data(NFTA_BITWISE_MASK, &mask);
            a.data(NFTA_BITWISE_XOR, &vec![0; len as usize]);
        });
        cmp(a, op, &addr);
    }
}

fn lookup(a: &mut Attrs<'_>, set: &str, sreg: u32, negate: bool) {
    a.expr("lookup", |a| {
        a.str(NFTA_LOOKUP_SET, set);
        a.u32(NFTA_LOOKUP_SREG, sreg);
        if negate {
            a.u32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
        }
    });
}

/// A verdict map lookup of the key built from register 1 on.
fn vmap_lookup(a: &mut Attrs<'_>, map: &str) {
    a.expr("lookup", |a| {
        a.str(NFTA_LOOKUP_SET, map);
        a.u32(NFTA_LOOKUP_SREG, REG_1);
        a.u32(NFTA_LOOKUP_DREG, REG_VERDICT);
    });
}

fn meta_load(a: &mut Attrs<'_>, key: u32, dreg: u32) {
    a.expr("meta", |a| {
        a.u32(NFTA_META_KEY, key);
        a.u32(NFTA_META_DREG, dreg);
    });
}

/// `reg1 = (reg1 & mask) ^ xor` over `len` bytes.
fn bitwise(a: &mut Attrs<'_>, len: u32, mask: &[u8], xor: &[u8]) {
    a.expr("bitwise", |a| {
        a.u32(NFTA_BITWISE_SREG, REG_1);
        a.u32(NFTA_BITWISE_DREG, REG_1);
        a.u32(NFTA_BITWISE_OP, NFT_BITWISE_BOOL);
        a.u32(NFTA_BITWISE_LEN, len);
        a.data(NFTA_BITWISE_MASK, mask);
        a.data(NFTA_BITWISE_XOR, xor);
    });
}

/// `meta mark set (meta mark & mask) ^ xor`.
fn mark_set(a: &mut Attrs<'_>, mask: u32, xor: u32) {
    meta_load(a, NFT_META_MARK, REG_1);
    bitwise(a, 4, &mask.to_ne_bytes(), &xor.to_ne_bytes());
    a.expr("meta", |a| {
        a.u32(NFTA_META_KEY, NFT_META_MARK);
        a.u32(NFTA_META_SREG, REG_1);
    });
}

/// `fib saddr|daddr type local`.
fn fib_local(a: &mut Attrs<'_>, flags: u32) {
    a.expr("fib", |a| {
        a.u32(NFTA_FIB_DREG, REG_1);
        a.u32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
        a.u32(NFTA_FIB_FLAGS, flags);
    });
    cmp(a, CMP_EQ, &RTN_LOCAL.to_ne_bytes());
}

/// `ct state|status BIT` (the bit set).
fn ct_bit(a: &mut Attrs<'_>, key: u32, bit: u32) {
    a.expr("ct", |a| {
        a.u32(NFTA_CT_KEY, key);
        a.u32(NFTA_CT_DREG, REG_1);
    });
    bitwise(a, 4, &bit.to_ne_bytes(), &[0; 4]);
    cmp(a, CMP_NEQ, &[0; 4]);
}

fn reject(a: &mut Attrs<'_>, kind: u32, code: u8) {
    a.expr("reject", |a| {
        a.u32(NFTA_REJECT_TYPE, kind);
        a.u8(NFTA_REJECT_ICMP_CODE, code);
    });
}

fn addr_len(family: Family) -> u32 {
    match family {
        Family::Ip => 4,
        Family::Ip6 => 16,
    }
}

fn saddr_offset(family: Family) -> u32 {
    match family {
        Family::Ip => 12,
        Family::Ip6 => 8,
    }
}

fn daddr_offset(family: Family) -> u32 {
    match family {
        Family::Ip => 16,
        Family::Ip6 => 24,
    }
}

pub fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}

fn payload(a: &mut Attrs<'_>, base: u32, offset: u32, len: u32) {
    payload_to(a, REG_1, base, offset, len);
}

fn payload_to(a: &mut Attrs<'_>, dreg: u32, base: u32, offset: u32, len: u32) {
    a.expr("payload", |a| {
        a.u32(NFTA_PAYLOAD_DREG, dreg);
        a.u32(NFTA_PAYLOAD_BASE, base);
        a.u32(NFTA_PAYLOAD_OFFSET, offset);
        a.u32(NFTA_PAYLOAD_LEN, len);
    });
}

fn cmp(a: &mut Attrs<'_>, op: u32, data: &[u8]) {
    a.expr("cmp", |a| {
        a.u32(NFTA_CMP_SREG, REG_1);
        a.u32(NFTA_CMP_OP, op);
        a.data(NFTA_CMP_DATA, data);
    });
}

fn l4proto(a: &mut Attrs<'_>, protocol: Protocol) {
    a.expr("meta", |a| {
        a.u32(NFTA_META_KEY, NFT_META_L4PROTO);
        a.u32(NFTA_META_DREG, REG_1);
    });
    cmp(a, CMP_EQ, &[protocol.number()]);
}

fn immediate_data(a: &mut Attrs<'_>, reg: u32, data: &[u8]) {
    a.expr("immediate", |a| {
        a.u32(NFTA_IMMEDIATE_DREG, reg);
        let n = a.begin(NFTA_IMMEDIATE_DATA);
        a.put(NFTA_DATA_VALUE, data);
        a.end(n);
    });
}

fn verdict(a: &mut Attrs<'_>, code: i32, chain: Option<&str>) {
    a.expr("immediate", |a| {
        a.u32(NFTA_IMMEDIATE_DREG, REG_VERDICT);
        a.verdict(NFTA_IMMEDIATE_DATA, code, chain);
    });
}
