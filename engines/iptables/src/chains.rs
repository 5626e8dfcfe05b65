//! The names and fixed layout of Switchyard's iptables rules: the top-level `SY-` chains
//! in `nat` and `filter`, the jump rules from the builtin chains into them, and the
//! hashed per-service-port chain names (`SY-SVC-…`, `SY-SEP-…`). Every chain Switchyard
//! creates starts with [`PREFIX`], so it never touches kube-proxy's `KUBE-` chains and
//! `cleanup` can find everything it made.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use switchyard_core::{Endpoint, ServicePortName};

/// Prefix of every chain Switchyard creates.
pub const PREFIX: &str = "SY-";

/// The mark bit that asks `SY-POSTROUTING` to masquerade a packet (kube-proxy's default).
pub const MASQUERADE_MARK: &str = "0x4000";

/// nat: dispatch on service VIPs (cluster, external and load-balancer IPs).
pub const SERVICES: &str = "SY-SERVICES";
/// nat: dispatch on NodePorts; reached from the last rule of `SY-SERVICES`.
pub const NODEPORTS: &str = "SY-NODEPORTS";
/// nat: masquerades packets carrying the mark.
pub const POSTROUTING: &str = "SY-POSTROUTING";
/// nat: sets the mark.
pub const MARK_MASQ: &str = "SY-MARK-MASQ";
/// nat: marks packets whose source is outside every cluster CIDR (used when a family
/// has several cluster CIDRs; a single one is matched inline with `! -s`).
pub const MARK_NONLOCAL: &str = "SY-MARK-NONLOCAL";
/// filter: REJECT/DROP for cluster IPs without (local) endpoints.
pub const FILTER_SERVICES: &str = "SY-SERVICES";
/// filter: REJECT/DROP for external IPs, LB IPs and NodePorts without (local) endpoints.
pub const EXTERNAL_SERVICES: &str = "SY-EXTERNAL-SERVICES";
/// filter: drops traffic to LB IPs not accepted by the service's firewall chain.
pub const FIREWALL: &str = "SY-FIREWALL";
/// filter: accepts health-check NodePorts.
pub const FILTER_NODEPORTS: &str = "SY-NODEPORTS";
/// filter: accepts forwarded service traffic when FORWARD's policy is DROP.
pub const FORWARD: &str = "SY-FORWARD";
/// nat and filter: empty chain whose disappearance means the table was flushed or
/// deleted by someone else (upstream's `KUBE-PROXY-CANARY`).
pub const CANARY: &str = "SY-CANARY";

/// The two tables Switchyard writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Filter,
    Nat,
}

impl Table {
    pub const BOTH: [Table; 2] = [Table::Filter, Table::Nat];

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }

    /// The fixed chains of this table, declared (flushed) on every full sync.
    pub fn fixed_chains(self) -> &'static [&'static str] {
        match self {
            Table::Filter => &[
                FILTER_SERVICES,
                EXTERNAL_SERVICES,
                FIREWALL,
                FILTER_NODEPORTS,
                FORWARD,
                CANARY,
            ],
            Table::Nat => &[
                SERVICES,
                NODEPORTS,
                POSTROUTING,
                MARK_MASQ,
                MARK_NONLOCAL,
                CANARY,
            ],
        }
    }
}

/// A rule in a builtin chain jumping into one of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jump {
    pub table: Table,
    pub builtin: &'static str,
    /// Matches before the comment (e.g. `-m conntrack --ctstate NEW`), or empty.
    pub matches: &'static str,
    pub comment: &'static str,
    pub target: &'static str,
}

impl Jump {
    /// The rule spec after `-A/-I/-D CHAIN`.
    pub fn spec(&self) -> String {
        let sep = if self.matches.is_empty() { "" } else { " " };
        format!(
            "{}{sep}-m comment --comment \"{}\" -j {}",
            self.matches, self.comment, self.target
        )
    }

    /// Whether a line of `iptables-save` output is this jump (or an equivalent one).
    pub fn matches_saved(&self, line: &str) -> bool {
        line.strip_prefix("-A ")
            .and_then(|rest| rest.strip_prefix(self.builtin))
            .is_some_and(|rest| rest.starts_with(' '))
            && line.ends_with(&format!(" -j {}", self.target))
            && line.contains("switchyard")
    }
}

const NEW: &str = "-m conntrack --ctstate NEW";

/// Jumps from builtin chains into ours, as upstream's `iptablesJumpChains`.
pub const JUMPS: &[Jump] = &[
    Jump {
        table: Table::Filter,
        builtin: "INPUT",
        matches: NEW,
        comment: "switchyard load balancer firewall",
        target: FIREWALL,
    },
    Jump {
        table: Table::Filter,
        builtin: "INPUT",
        matches: "",
        comment: "switchyard health check service ports",
        target: FILTER_NODEPORTS,
    },
    Jump {
        table: Table::Filter,
        builtin: "INPUT",
        matches: NEW,
        comment: "switchyard externally-visible service portals",
        target: EXTERNAL_SERVICES,
    },
    Jump {
        table: Table::Filter,
        builtin: "FORWARD",
        matches: NEW,
        comment: "switchyard load balancer firewall",
        target: FIREWALL,
    },
    Jump {
        table: Table::Filter,
        builtin: "FORWARD",
        matches: "",
        comment: "switchyard forwarding rules",
        target: FORWARD,
    },
    Jump {
        table: Table::Filter,
        builtin: "FORWARD",
        matches: NEW,
        comment: "switchyard service portals",
        target: FILTER_SERVICES,
    },
    Jump {
        table: Table::Filter,
        builtin: "FORWARD",
        matches: NEW,
        comment: "switchyard externally-visible service portals",
        target: EXTERNAL_SERVICES,
    },
    Jump {
        table: Table::Filter,
        builtin: "OUTPUT",
        matches: NEW,
        comment: "switchyard load balancer firewall",
        target: FIREWALL,
    },
    Jump {
        table: Table::Filter,
        builtin: "OUTPUT",
        matches: NEW,
        comment: "switchyard service portals",
        target: FILTER_SERVICES,
    },
    Jump {
        table: Table::Nat,
        builtin: "PREROUTING",
        matches: "",
        comment: "switchyard service portals",
        target: SERVICES,
    },
    Jump {
        table: Table::Nat,
        builtin: "OUTPUT",
        matches: "",
        comment: "switchyard service portals",
        target: SERVICES,
    },
    Jump {
        table: Table::Nat,
        builtin: "POSTROUTING",
        matches: "",
        comment: "switchyard postrouting rules",
        target: POSTROUTING,
    },
];

/// The kinds of per-service-port chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortChain {
    /// Cluster traffic policy: every usable endpoint (`SY-SVC-`).
    Cluster,
    /// Local traffic policy: this node's endpoints (`SY-SVL-`).
    Local,
    /// External destinations (NodePort, external IPs, LB IPs) (`SY-EXT-`).
    External,
    /// loadBalancerSourceRanges (`SY-FW-`).
    Firewall,
}

impl PortChain {
    fn prefix(self) -> &'static str {
        match self {
            PortChain::Cluster => "SY-SVC-",
            PortChain::Local => "SY-SVL-",
            PortChain::External => "SY-EXT-",
            PortChain::Firewall => "SY-FW-",
        }
    }

    /// The chain of this kind for `name`: prefix + 16 base32 characters of a SHA-256
    /// (at most 23 characters, under iptables' 28).
    pub fn name(self, name: &ServicePortName) -> String {
        let mut h = Sha256::new();
        hash_port_name(&mut h, name);
        chain_name(self.prefix(), h)
    }
}

/// The endpoint chain (`SY-SEP-…`) of `endpoint` in service port `name`.
pub fn endpoint_chain(name: &ServicePortName, endpoint: &Endpoint) -> String {
    let mut h = Sha256::new();
    hash_port_name(&mut h, name);
    h.update(endpoint.to_string().as_bytes());
    chain_name("SY-SEP-", h)
}

/// Length-prefixed fields, so no two distinct names hash the same input.
fn hash_port_name(h: &mut Sha256, name: &ServicePortName) {
    for field in [&name.namespace, &name.name, &name.port] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.update(name.protocol.as_str().as_bytes());
}

fn chain_name(prefix: &str, h: Sha256) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = h.finalize();
    // 16 base32 characters = the first 80 bits = 10 bytes.
    let mut bits: u128 = 0;
    for b in &digest[..10] {
        bits = (bits << 8) | u128::from(*b);
    }
    let mut out = String::with_capacity(prefix.len() + 16);
    out.push_str(prefix);
    for i in (0..16).rev() {
        out.push(ALPHABET[((bits >> (i * 5)) & 31) as usize] as char);
    }
    out
}

/// Longest comment kept (the kernel's limit is 255 bytes).
const COMMENT_MAX: usize = 200;

/// Writes `text` as a double-quoted iptables comment, keeping only characters that
/// cannot end the quote, start an escape or a new line; anything else becomes `_`.
/// No Service name can inject a rule through a comment.
pub fn write_comment(out: &mut String, text: &str) {
    out.push_str("-m comment --comment \"");
    for (n, c) in text.chars().enumerate() {
        if n >= COMMENT_MAX {
            out.push_str("...");
            break;
        }
        let safe = c.is_ascii_alphanumeric()
            || matches!(
                c,
                ' ' | '/' | ':' | '.' | '-' | '_' | '>' | '[' | ']' | ',' | '=' | '+' | '@'
            );
        out.push(if safe { c } else { '_' });
    }
    out.push('"');
}

/// A comment as [`write_comment`] writes it.
pub fn comment(text: &str) -> String {
    let mut s = String::new();
    write_comment(&mut s, text);
    s
}

/// Formats into `out` (writing to a String cannot fail).
pub fn push_fmt(out: &mut String, args: std::fmt::Arguments<'_>) {
    let _ = out.write_fmt(args);
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::Protocol;

    fn spn(ns: &str, name: &str) -> ServicePortName {
        ServicePortName {
            namespace: ns.into(),
            name: name.into(),
            port: "http".into(),
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn chain_names_are_stable_short_and_distinct() {
        let a = PortChain::Cluster.name(&spn("ns", "a"));
        assert_eq!(a, PortChain::Cluster.name(&spn("ns", "a")));
        assert_eq!(a.len(), 23);
        assert!(a.starts_with("SY-SVC-"));
        assert!(a[7..]
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()));
        assert_ne!(a, PortChain::Cluster.name(&spn("nsa", "")));
        // As upstream, a port's SVC/SVL/EXT/FW chains share the hash.
        assert_eq!(a[7..], PortChain::External.name(&spn("ns", "a"))[7..]);
    }

    #[test]
    fn comments_are_sanitized() {
        let c = comment("a\"b\n-A INPUT -j DROP\\;ü");
        assert_eq!(c, "-m comment --comment \"a_b_-A INPUT -j DROP___\"");
        let long = comment(&"x".repeat(300));
        assert!(long.len() < 255);
    }

    #[test]
    fn jumps_match_saved_lines() {
        let j = JUMPS[5];
        let saved = format!("-A FORWARD {}", j.spec());
        assert!(j.matches_saved(&saved));
        assert!(!j.matches_saved("-A FORWARD -j SY-SERVICES"));
        assert!(!JUMPS[0].matches_saved(&saved));
    }
}
