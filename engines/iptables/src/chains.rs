//! The names and fixed layout of the engine's iptables chains: the top-level chains in
//! `nat` and `filter`, the jump rules from the builtin chains into them, and the
//! per-service-port chain names (`SVC`, `SEP` ...) derived from the model's name digests.
//!
//! Every chain name starts with the engine's [`ChainPrefix`] (default `SY-`), its
//! ownership parameter: an engine owns exactly the chains [`Chains::owns`] recognises —
//! the fixed names, and a per-port kind followed by 16 base32 characters — so two
//! engines with different prefixes never delete each other's chains, even when one
//! prefix starts with the other (`SY-` and `SY-B-`). kube-proxy's `KUBE-` chains and the
//! host firewall are never touched.

use std::{fmt, net::IpAddr};

use switchyard_model::PortDigest;

/// The mark bit that asks the postrouting chain to masquerade a packet (kube-proxy's
/// default).
pub const MASQUERADE_MARK: &str = "0x4000";

/// iptables' longest chain name (`XT_EXTENSION_MAXNAMELEN` - 1).
const CHAIN_NAME_MAX: usize = 28;

/// Characters of a per-port chain's hash (16 base32 characters = 80 bits).
const HASH_CHARS: usize = 16;

/// The prefix of every chain an engine creates: 1 to 8 characters of `A-Z`, `a-z`,
/// `0-9`, `-`, `_`, not starting with `-`. Eight is what leaves room for the longest
/// per-port name (`PREFIX` + `SVC-` + 16 characters) under iptables' 28.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChainPrefix(String);

/// Why a chain prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("iptables chain prefix {prefix:?}: {reason}")]
pub struct ChainPrefixError {
    pub prefix: String,
    pub reason: &'static str,
}

impl ChainPrefix {
    pub const DEFAULT: &'static str = "SY-";
    pub const MAX_LEN: usize = 8;

    pub fn new(prefix: &str) -> Result<ChainPrefix, ChainPrefixError> {
        let refuse = |reason| {
            Err(ChainPrefixError {
                prefix: prefix.to_string(),
                reason,
            })
        };
        if prefix.is_empty() {
            return refuse("empty");
        }
        if prefix.len() > ChainPrefix::MAX_LEN {
            return refuse("longer than 8 characters (chain names are limited to 28)");
        }
        if prefix.starts_with('-') {
            return refuse("starts with '-' (it would read as an option)");
        }
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return refuse("only A-Z, a-z, 0-9, '-' and '_' are allowed");
        }
        Ok(ChainPrefix(prefix.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        self.0 == ChainPrefix::DEFAULT
    }
}

impl Default for ChainPrefix {
    fn default() -> Self {
        ChainPrefix(ChainPrefix::DEFAULT.to_string())
    }
}

impl fmt::Display for ChainPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The two tables the engine writes.
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

    pub fn index(self) -> usize {
        match self {
            Table::Filter => 0,
            Table::Nat => 1,
        }
    }
}

/// The kinds of per-service-port chain, and what each is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortChain {
    /// The first set of backends the plan uses (`SVC-`): upstream's cluster-policy
    /// chain in every case but an internal-Local port without external destinations.
    Service,
    /// A second set of backends (`SVL-`): upstream's local-policy chain.
    Local,
    /// A third set of backends (`SVX-`); no plan the model makes needs one.
    Alternate,
    /// External destinations: NodePort, external IPs, LB IPs (`EXT-`).
    External,
    /// loadBalancerSourceRanges (`FW-`): in `nat` with endpoints, in `filter` without.
    Firewall,
    /// Upstream's endpoint chain (`SEP-`). This engine makes none (the service chain
    /// DNATs itself); the name is an endpoint's affinity list, and chains of this kind
    /// that an earlier version left are still recognised as ours, so they go.
    Endpoint,
}

impl PortChain {
    pub const ALL: [PortChain; 6] = [
        PortChain::Service,
        PortChain::Local,
        PortChain::Alternate,
        PortChain::External,
        PortChain::Firewall,
        PortChain::Endpoint,
    ];

    fn kind(self) -> &'static str {
        match self {
            PortChain::Service => "SVC-",
            PortChain::Local => "SVL-",
            PortChain::Alternate => "SVX-",
            PortChain::External => "EXT-",
            PortChain::Firewall => "FW-",
            PortChain::Endpoint => "SEP-",
        }
    }
}

/// A rule in a builtin chain jumping into one of the engine's chains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jump {
    pub table: Table,
    pub builtin: &'static str,
    /// Matches before the comment (e.g. `-m conntrack --ctstate NEW`), or empty.
    pub matches: &'static str,
    pub comment: &'static str,
    pub target: String,
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
            && line
                .strip_suffix(self.target.as_str())
                .is_some_and(|l| l.ends_with(" -j "))
            && line.contains("switchyard")
    }
}

const NEW: &str = "-m conntrack --ctstate NEW";

/// Every chain name of one engine, from its prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chains {
    prefix: ChainPrefix,
    /// nat: dispatch on service VIPs (cluster, external and load-balancer IPs); its last
    /// rule sends local destinations to `nodeport_addresses`.
    pub services: String,
    /// nat: dispatch on NodePorts.
    pub nodeports: String,
    /// nat and filter: the destinations that accept NodePorts (nodePortAddresses, never
    /// loopback), to `nodeports` (nat) or `external_nodeports` (filter).
    pub nodeport_addresses: String,
    /// nat: masquerades packets carrying the mark.
    pub postrouting: String,
    /// nat: sets the mark.
    pub mark_masq: String,
    /// nat: marks packets whose source is outside every cluster CIDR (a family with
    /// several cluster CIDRs; a single one is matched inline with `! -s`).
    pub mark_nonlocal: String,
    /// filter: REJECT/DROP for cluster IPs without (local) endpoints. Same name as the
    /// nat dispatch chain, as upstream's `KUBE-SERVICES`.
    pub filter_services: String,
    /// filter: REJECT/DROP for external IPs and LB IPs without (local) endpoints, then
    /// the NodePort destinations.
    pub external_services: String,
    /// filter: REJECT/DROP for NodePorts without (local) endpoints.
    pub external_nodeports: String,
    /// filter: drops traffic to LB IPs not accepted by the service's firewall chain.
    pub firewall: String,
    /// filter: accepts health-check NodePorts.
    pub filter_nodeports: String,
    /// filter: accepts forwarded service traffic when FORWARD's policy is DROP.
    pub forward: String,
    /// nat and filter: empty chain whose disappearance means the table was flushed or
    /// deleted by someone else (upstream's `KUBE-PROXY-CANARY`).
    pub canary: String,
    jumps: Vec<Jump>,
}

impl Chains {
    pub fn new(prefix: &ChainPrefix) -> Chains {
        let name = |suffix: &str| format!("{prefix}{suffix}");
        let mut chains = Chains {
            prefix: prefix.clone(),
            services: name("SERVICES"),
            nodeports: name("NODEPORTS"),
            nodeport_addresses: name("NODEPORT-ADDRESSES"),
            postrouting: name("POSTROUTING"),
            mark_masq: name("MARK-MASQ"),
            mark_nonlocal: name("MARK-NONLOCAL"),
            filter_services: name("SERVICES"),
            external_services: name("EXTERNAL-SERVICES"),
            external_nodeports: name("EXTERNAL-NODEPORTS"),
            firewall: name("FIREWALL"),
            filter_nodeports: name("NODEPORTS"),
            forward: name("FORWARD"),
            canary: name("CANARY"),
            jumps: Vec::new(),
        };
        chains.jumps = chains.jump_list();
        chains
    }

    pub fn prefix(&self) -> &ChainPrefix {
        &self.prefix
    }

    /// The fixed chains of `table`, declared (flushed) on every full sync.
    pub fn fixed(&self, table: Table) -> Vec<&str> {
        match table {
            Table::Filter => vec![
                &self.filter_services,
                &self.external_services,
                &self.external_nodeports,
                &self.nodeport_addresses,
                &self.firewall,
                &self.filter_nodeports,
                &self.forward,
                &self.canary,
            ],
            Table::Nat => vec![
                &self.services,
                &self.nodeports,
                &self.nodeport_addresses,
                &self.postrouting,
                &self.mark_masq,
                &self.mark_nonlocal,
                &self.canary,
            ],
        }
        .into_iter()
        .map(String::as_str)
        .collect()
    }

    /// Jumps from builtin chains into ours, as upstream's `iptablesJumpChains`.
    pub fn jumps(&self) -> &[Jump] {
        &self.jumps
    }

    fn jump_list(&self) -> Vec<Jump> {
        let j = |table, builtin, matches, comment, target: &String| Jump {
            table,
            builtin,
            matches,
            comment,
            target: target.clone(),
        };
        use Table::{Filter, Nat};
        const FIREWALL: &str = "switchyard load balancer firewall";
        const PORTALS: &str = "switchyard service portals";
        const EXTERNAL: &str = "switchyard externally-visible service portals";
        vec![
            j(Filter, "INPUT", NEW, FIREWALL, &self.firewall),
            j(
                Filter,
                "INPUT",
                "",
                "switchyard health check service ports",
                &self.filter_nodeports,
            ),
            j(Filter, "INPUT", NEW, EXTERNAL, &self.external_services),
            j(Filter, "FORWARD", NEW, FIREWALL, &self.firewall),
            j(
                Filter,
                "FORWARD",
                "",
                "switchyard forwarding rules",
                &self.forward,
            ),
            j(Filter, "FORWARD", NEW, PORTALS, &self.filter_services),
            j(Filter, "FORWARD", NEW, EXTERNAL, &self.external_services),
            j(Filter, "OUTPUT", NEW, FIREWALL, &self.firewall),
            j(Filter, "OUTPUT", NEW, PORTALS, &self.filter_services),
            j(Nat, "PREROUTING", "", PORTALS, &self.services),
            j(Nat, "OUTPUT", "", PORTALS, &self.services),
            j(
                Nat,
                "POSTROUTING",
                "",
                "switchyard postrouting rules",
                &self.postrouting,
            ),
        ]
    }

    /// The chain of `kind` for the service port whose digest is `digest` (all kinds but
    /// [`PortChain::Endpoint`]; a port's chains share the hash, as upstream's).
    pub fn port(&self, kind: PortChain, digest: &PortDigest) -> String {
        self.hashed(kind, &digest.0)
    }

    /// The name of the backend `ip:port` of a service port as upstream's endpoint chain
    /// (`SEP-`): the name of its affinity list (`-m recent --name`).
    pub fn endpoint(&self, digest: &PortDigest, ip: IpAddr, port: u16) -> String {
        self.hashed(PortChain::Endpoint, &digest.with_endpoint(ip, port))
    }

    /// `PREFIX` + kind + 16 base32 characters of `hash` (at most 28 characters).
    fn hashed(&self, kind: PortChain, hash: &[u8; 32]) -> String {
        const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        // 16 base32 characters = the first 80 bits = 10 bytes.
        let bits = hash[..10]
            .iter()
            .fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
        let mut out = String::with_capacity(CHAIN_NAME_MAX);
        out.push_str(self.prefix.as_str());
        out.push_str(kind.kind());
        for i in (0..HASH_CHARS).rev() {
            out.push(ALPHABET[((bits >> (i * 5)) & 31) as usize] as char);
        }
        out
    }

    /// Whether `chain` is a per-port chain of this engine.
    pub fn is_port_chain(&self, chain: &str) -> bool {
        let Some(rest) = chain.strip_prefix(self.prefix.as_str()) else {
            return false;
        };
        PortChain::ALL.iter().any(|k| {
            rest.strip_prefix(k.kind()).is_some_and(|hash| {
                hash.len() == HASH_CHARS
                    && hash
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
            })
        })
    }

    /// Whether `chain` in `table` belongs to this engine (a fixed chain or a per-port
    /// one). Chains of an engine with another prefix never do.
    pub fn owns(&self, table: Table, chain: &str) -> bool {
        self.is_port_chain(chain) || self.fixed(table).contains(&chain)
    }
}

impl Default for Chains {
    fn default() -> Self {
        Chains::new(&ChainPrefix::default())
    }
}

/// A port's chains share one hash; this is it, for chain-name checks in tests.
pub fn port_hash(chain: &str) -> &str {
    &chain[chain.len().saturating_sub(HASH_CHARS)..]
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

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_model::ServicePortName;

    fn spn(ns: &str, name: &str) -> ServicePortName {
        switchyard_model::test_util::spn(ns, name, "http")
    }

    #[test]
    fn chain_names_are_stable_short_and_distinct() {
        let c = Chains::default();
        let d = spn("ns", "a").digest();
        let a = c.port(PortChain::Service, &d);
        assert_eq!(a, c.port(PortChain::Service, &spn("ns", "a").digest()));
        assert_eq!(a.len(), 23);
        assert!(a.starts_with("SY-SVC-"));
        assert!(c.is_port_chain(&a));
        assert_ne!(a, c.port(PortChain::Service, &spn("nsa", "").digest()));
        // As upstream, a port's SVC/SVL/EXT/FW chains share the hash.
        assert_eq!(port_hash(&a), port_hash(&c.port(PortChain::External, &d)));
        let sep = c.endpoint(&d, "10.0.0.1".parse().unwrap(), 80);
        assert!(sep.starts_with("SY-SEP-") && c.is_port_chain(&sep));
        assert_ne!(
            sep,
            c.endpoint(&d, "10.0.0.1".parse().unwrap(), 81),
            "the port is part of an endpoint's identity"
        );
    }

    #[test]
    fn prefixes_are_checked_and_own_only_their_chains() {
        for bad in ["", "-X", "ABCDEFGHI", "A B", "A\"", "É"] {
            assert!(ChainPrefix::new(bad).is_err(), "{bad:?}");
        }
        let sy = Chains::default();
        let longest = Chains::new(&ChainPrefix::new("SY-SVC-X").unwrap());
        let d = spn("ns", "a").digest();
        for kind in PortChain::ALL {
            let name = longest.port(kind, &d);
            assert!(name.len() <= CHAIN_NAME_MAX, "{name}");
            assert!(longest.is_port_chain(&name));
            assert!(!sy.owns(Table::Nat, &name), "{name}");
            assert!(!longest.owns(Table::Nat, &sy.port(kind, &d)));
        }
        for table in Table::BOTH {
            for fixed in longest.fixed(table) {
                assert!(fixed.len() <= CHAIN_NAME_MAX, "{fixed}");
                assert!(!sy.owns(table, fixed), "{fixed}");
            }
            for fixed in sy.fixed(table) {
                assert!(!longest.owns(table, fixed), "{fixed}");
                assert!(sy.owns(table, fixed));
            }
        }
        assert!(!sy.owns(Table::Nat, "KUBE-SERVICES"));
        assert!(!sy.owns(Table::Nat, "SY-SVC-abcdefghijklmnop"));
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
        let c = Chains::default();
        let j = &c.jumps()[5];
        let saved = format!("-A FORWARD {}", j.spec());
        assert!(j.matches_saved(&saved));
        assert!(!j.matches_saved("-A FORWARD -j SY-SERVICES"));
        assert!(!c.jumps()[0].matches_saved(&saved));
        let other = Chains::new(&ChainPrefix::new("SY-B-").unwrap());
        let saved = format!("-A FORWARD {}", other.jumps()[5].spec());
        assert!(!j.matches_saved(&saved), "{saved}");
    }
}
