//! The rules of per-service-port chains, as data: written as nft text by full syncs
//! (and partial ones that fall back to `nft`), and encoded as nf_tables expressions by
//! netlink partial syncs. Each encoding mirrors the bytecode nft 1.0.6 generates for the
//! same text, so the kernel holds the same rule (and `nft list` shows the same line)
//! whichever path wrote it.

use std::{
    fmt::{self, Write as _},
    net::IpAddr,
};

use ipnet::IpNet;
use switchyard_model::Protocol;

use crate::{
    netlink::{Attrs, NFTA_DATA_VALUE, NFT_GOTO, NFT_JUMP, NFT_RETURN, NF_DROP},
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
                    a.expr("lookup", |a| {
                        a.str(NFTA_LOOKUP_SET, set);
                        a.u32(NFTA_LOOKUP_SREG, REG_1);
                        if *negate {
                            a.u32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
                        }
                    });
                }
                Match::SaddrNet(net) => {
                    let len = addr_len(family);
                    let prefix = net.prefix_len() as u32;
                    let addr = ip_bytes(&net.addr());
                    if prefix == len * 8 {
                        payload(a, NETWORK, saddr_offset(family), len);
                        cmp(a, CMP_EQ, &addr);
                    } else if prefix.is_multiple_of(8) && prefix > 0 {
                        let bytes = prefix / 8;
                        payload(a, NETWORK, saddr_offset(family), bytes);
                        cmp(a, CMP_EQ, &addr[..bytes as usize]);
                    } else {
                        payload(a, NETWORK, saddr_offset(family), len);
                        let mask = ip_bytes(&net.netmask());
                        a.expr("bitwise", |a| {
                            a.u32(NFTA_BITWISE_SREG, REG_1);
                            a.u32(NFTA_BITWISE_DREG, REG_1);
                            a.u32(NFTA_BITWISE_LEN, len);
                            a.data(NFTA_BITWISE_MASK, &mask);
                            a.data(NFTA_BITWISE_XOR, &vec![0; len as usize]);
                        });
                        cmp(a, CMP_EQ, &addr);
                    }
                }
                Match::Random(modulus) => {
                    a.expr("numgen", |a| {
                        a.u32(NFTA_NG_DREG, REG_1);
                        a.u32(NFTA_NG_MODULUS, *modulus);
                        a.u32(NFTA_NG_TYPE, NFT_NG_RANDOM);
                    });
                    cmp(a, CMP_EQ, &0u32.to_ne_bytes());
                }
                Match::FibSaddrLocal => {
                    a.expr("fib", |a| {
                        a.u32(NFTA_FIB_DREG, REG_1);
                        a.u32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
                        a.u32(NFTA_FIB_FLAGS, NFTA_FIB_F_SADDR);
                    });
                    cmp(a, CMP_EQ, &RTN_LOCAL.to_ne_bytes());
                }
            }
        }
        match &self.action {
            Action::Jump(chain) => verdict(a, NFT_JUMP, Some(chain)),
            Action::Goto(chain) => verdict(a, NFT_GOTO, Some(chain)),
            Action::Return => verdict(a, NFT_RETURN, None),
            Action::Drop => verdict(a, NF_DROP, None),
            Action::Dnat {
                affinity,
                protocol,
                ip,
                port,
            } => {
                if let Some(set) = affinity {
                    payload(a, NETWORK, saddr_offset(family), addr_len(family));
                    a.expr("dynset", |a| {
                        a.str(NFTA_DYNSET_SET_NAME, set);
                        a.u32(NFTA_DYNSET_OP, NFT_DYNSET_OP_UPDATE);
                        a.u32(NFTA_DYNSET_SREG_KEY, REG_1);
                    });
                }
                l4proto(a, *protocol);
                immediate_data(a, REG_1, &ip_bytes(ip));
                immediate_data(a, REG_2, &port.to_be_bytes());
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
                    a.u32(NFTA_NAT_REG_PROTO_MIN, REG_2);
                    a.u32(NFTA_NAT_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
                });
            }
        }
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
    a.expr("payload", |a| {
        a.u32(NFTA_PAYLOAD_DREG, REG_1);
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
