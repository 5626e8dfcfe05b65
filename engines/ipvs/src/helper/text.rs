//! The helper table as nft text: the whole table for full syncs (one `nft -f`
//! transaction that atomically replaces it), and the partial changes that create or
//! delete per-port chains (rare: load-balancer source ranges, Local-policy short
//! circuits). Element-only changes go through [`super::batch`] instead.

use std::fmt::Write as _;

use ipnet::IpNet;
use switchyard_model::{IpFamily, MasqueradeSources};

use crate::record::Record;

use super::{
    addr_type, nft_family, Chain, Element, SetKind, CHECKS_CHAIN, CLUSTER_CIDRS_SET, REJECT_CHAIN,
};

/// The node-wide settings one family's fixed rules depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRules {
    pub family: IpFamily,
    /// This family's cluster CIDRs, without overlaps.
    pub cluster_cidrs: Vec<IpNet>,
    /// Which sources of cluster IP traffic are masqueraded.
    pub masquerade: MasqueradeSources,
}

/// A fixed chain: its name, its base-chain header (if it is one) and its rules.
pub struct FixedChain {
    pub name: &'static str,
    pub base: Option<&'static str>,
    pub rules: Vec<String>,
}

/// `ip daddr . meta l4proto . th dport`.
fn frontend_match(ipx: &str) -> String {
    format!("{ipx} daddr . meta l4proto . th dport")
}

/// The mark bit asking `masquerading` to SNAT a packet (kube-proxy's). IPVS compares
/// a packet's whole mark with firewall-mark services' marks, so packets carrying a
/// short-circuit mark never get it (their masquerading is decided apart).
pub const MASQUERADE_MARK: &str = "0x00004000";

pub const MARK_CHAIN: &str = "mark-for-masquerade";
pub const MASQUERADING_CHAIN: &str = "masquerading";

fn set_masquerade_mark() -> String {
    format!("meta mark set meta mark or {MASQUERADE_MARK}")
}

/// The fixed chains of one family's table (rules depend on node-wide settings only).
pub fn fixed_chains(node: &NodeRules) -> Vec<FixedChain> {
    let ipx = nft_family(node.family);
    let frontend = frontend_match(ipx);
    let sc = SetKind::ShortCircuit.name();
    let not_short_circuited = format!("meta mark != @{}", SetKind::ScMarks.name());
    let mut prerouting = Vec::new();
    if !node.cluster_cidrs.is_empty() {
        prerouting.push(format!(
            "ct state new {ipx} saddr @{CLUSTER_CIDRS_SET} {frontend} vmap @{sc}"
        ));
    }
    let mut mark = vec![format!(
        "{frontend} @{} {}",
        SetKind::MasqExternal.name(),
        set_masquerade_mark()
    )];
    let cluster = format!("{frontend} @{}", SetKind::ClusterPorts.name());
    match node.masquerade {
        MasqueradeSources::All => mark.push(format!("{cluster} {}", set_masquerade_mark())),
        MasqueradeSources::OutsideClusterCidrs => mark.push(format!(
            "{cluster} {ipx} saddr != @{CLUSTER_CIDRS_SET} {}",
            set_masquerade_mark()
        )),
        MasqueradeSources::None => {}
    }
    vec![
        FixedChain {
            name: "prerouting",
            base: Some("type filter hook prerouting priority -150; policy accept;"),
            rules: prerouting,
        },
        FixedChain {
            name: "output",
            base: Some("type filter hook output priority -150; policy accept;"),
            rules: vec![
                format!("ct state new {frontend} vmap @{sc}"),
                format!("ct state new jump {CHECKS_CHAIN}"),
                format!("ct state new {not_short_circuited} jump {MARK_CHAIN}"),
                format!(
                    "ct state new {not_short_circuited} {frontend} @{} {}",
                    SetKind::LocalExternal.name(),
                    set_masquerade_mark()
                ),
            ],
        },
        FixedChain {
            name: "input",
            base: Some("type filter hook input priority 0; policy accept;"),
            rules: vec![
                format!("ct state new jump {CHECKS_CHAIN}"),
                format!("ct state new {not_short_circuited} jump {MARK_CHAIN}"),
            ],
        },
        FixedChain {
            name: "postrouting",
            base: Some("type nat hook postrouting priority 100; policy accept;"),
            rules: vec![
                format!(
                    "{ipx} saddr . {ipx} daddr @{} {}",
                    SetKind::Hairpin.name(),
                    set_masquerade_mark()
                ),
                format!(
                    "meta mark @{} fib saddr type local masquerade fully-random",
                    SetKind::ScMarks.name()
                ),
                format!("jump {MASQUERADING_CHAIN}"),
            ],
        },
        FixedChain {
            name: MARK_CHAIN,
            base: None,
            rules: mark,
        },
        FixedChain {
            name: MASQUERADING_CHAIN,
            base: None,
            rules: vec![
                format!("meta mark & {MASQUERADE_MARK} == 0 return"),
                format!("meta mark set meta mark xor {MASQUERADE_MARK}"),
                "masquerade fully-random".to_string(),
            ],
        },
        FixedChain {
            name: CHECKS_CHAIN,
            base: None,
            rules: vec![
                format!("{frontend} vmap @{}", SetKind::Firewall.name()),
                format!("meta mark @{} return", SetKind::ScMarks.name()),
                format!("{frontend} vmap @{}", SetKind::NoEndpoint.name()),
                format!("{frontend} @{} return", SetKind::ClusterPorts.name()),
                format!(
                    "{ipx} daddr @{} goto {REJECT_CHAIN}",
                    SetKind::ClusterIps.name()
                ),
            ],
        },
        FixedChain {
            name: REJECT_CHAIN,
            base: None,
            // TCP gets a reset: the kernel rate-limits ICMP errors, so a client could
            // see a timeout instead of a refusal (as the nftables engine).
            rules: vec![
                "meta l4proto tcp reject with tcp reset".to_string(),
                "reject".to_string(),
            ],
        },
    ]
}

fn chain_block(out: &mut String, name: &str, base: Option<&str>, rules: &[String]) {
    let _ = writeln!(out, "\tchain {name} {{");
    if let Some(base) = base {
        let _ = writeln!(out, "\t\t{base}");
    }
    for r in rules {
        let _ = writeln!(out, "\t\t{r}");
    }
    out.push_str("\t}\n");
}

/// The whole table of one family, replacing whatever table of that name was there
/// (one atomic transaction with the other family's).
pub fn full_table(
    table: &str,
    node: &NodeRules,
    chains: &[&Chain],
    elements: &[&Element],
) -> String {
    let fam = nft_family(node.family);
    let mut out =
        format!("add table {fam} {table}\ndelete table {fam} {table}\ntable {fam} {table} {{\n");
    for c in fixed_chains(node) {
        chain_block(&mut out, c.name, c.base, &c.rules);
    }
    for c in chains {
        let rules: Vec<String> = c.rules.iter().map(|r| r.text(c.family)).collect();
        chain_block(&mut out, &c.name, None, &rules);
    }
    let _ = write!(
        out,
        "\tset {CLUSTER_CIDRS_SET} {{\n\t\ttype {}\n\t\tflags interval\n\t\tauto-merge\n",
        addr_type(node.family)
    );
    if !node.cluster_cidrs.is_empty() {
        let list: Vec<String> = node.cluster_cidrs.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(out, "\t\telements = {{ {} }}", list.join(", "));
    }
    out.push_str("\t}\n");
    for kind in SetKind::ALL {
        let keyword = if kind.is_map() { "map" } else { "set" };
        let _ = write!(
            out,
            "\t{keyword} {} {{\n\t\t{}\n",
            kind.name(),
            kind.type_decl(node.family)
        );
        let list: Vec<String> = elements
            .iter()
            .filter(|e| e.set == kind)
            .map(|e| e.text())
            .collect();
        if !list.is_empty() {
            let _ = writeln!(out, "\t\telements = {{ {} }}", list.join(", "));
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    out
}

/// The helper table of every family in `rules` with `record`'s chains and elements,
/// as one `nft -f` transaction.
pub fn tables(table: &str, record: &Record, rules: &[NodeRules]) -> String {
    let elements = record.elements();
    let mut text = String::new();
    for node in rules {
        let chains: Vec<&Chain> = record
            .chains
            .values()
            .filter(|c| c.family == node.family)
            .collect();
        let mine: Vec<&Element> = elements
            .iter()
            .filter(|(f, _)| *f == node.family)
            .map(|(_, e)| e)
            .collect();
        text.push_str(&full_table(table, node, &chains, &mine));
    }
    text
}

/// Partial changes of one family as nft text: chains created (or refilled), element
/// deletes, then adds.
pub fn partial(
    table: &str,
    family: IpFamily,
    chains: &[&Chain],
    deletes: &[&Element],
    adds: &[&Element],
) -> String {
    let fam = nft_family(family);
    let mut out = String::new();
    for c in chains {
        let _ = writeln!(out, "add chain {fam} {table} {}", c.name);
        let _ = writeln!(out, "flush chain {fam} {table} {}", c.name);
        for r in &c.rules {
            let _ = writeln!(out, "add rule {fam} {table} {} {}", c.name, r.text(family));
        }
    }
    for e in deletes {
        let _ = writeln!(
            out,
            "delete element {fam} {table} {} {{ {} }}",
            e.set.name(),
            e.key
        );
    }
    for e in adds {
        let _ = writeln!(
            out,
            "add element {fam} {table} {} {{ {} }}",
            e.set.name(),
            e.text()
        );
    }
    out
}

/// Deletes chains nothing refers to any more (a transaction of its own, after the
/// elements pointing at them are gone: kernels before 6.2 refuse both in one).
pub fn delete_chains(table: &str, family: IpFamily, names: &[&str]) -> String {
    let fam = nft_family(family);
    let mut out = String::new();
    for name in names {
        let _ = writeln!(out, "flush chain {fam} {table} {name}");
        let _ = writeln!(out, "delete chain {fam} {table} {name}");
    }
    out
}

/// Deletes the table in `families`, whether or not it exists.
pub fn delete_table(table: &str, families: &[IpFamily]) -> String {
    let mut out = String::new();
    for &family in families {
        let fam = nft_family(family);
        let _ = writeln!(out, "add table {fam} {table}\ndelete table {fam} {table}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::helper::{Key, Verdict};
    use switchyard_model::Protocol;

    #[test]
    fn masquerading_follows_the_node_setting() {
        let mut node = NodeRules {
            family: IpFamily::V4,
            cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            masquerade: MasqueradeSources::OutsideClusterCidrs,
        };
        let mark = |node: &NodeRules| {
            fixed_chains(node)
                .into_iter()
                .find(|c| c.name == MARK_CHAIN)
                .unwrap()
                .rules
        };
        assert_eq!(mark(&node).len(), 2);
        assert!(mark(&node)[1].contains("ip saddr != @cluster-cidrs"));
        node.masquerade = MasqueradeSources::None;
        assert_eq!(mark(&node).len(), 1);
        node.family = IpFamily::V6;
        node.cluster_cidrs.clear();
        let pre = fixed_chains(&node);
        assert!(
            pre[0].rules.is_empty(),
            "no cluster CIDRs: no pod short circuit"
        );
        assert!(mark(&node)[0].starts_with("ip6 daddr . meta l4proto . th dport"));
    }

    #[test]
    fn base_chains_are_the_hooked_ones() {
        let node = NodeRules {
            family: IpFamily::V4,
            cluster_cidrs: vec![],
            masquerade: MasqueradeSources::All,
        };
        let hooked: Vec<&str> = fixed_chains(&node)
            .iter()
            .filter(|c| c.base.is_some())
            .map(|c| c.name)
            .collect();
        assert_eq!(hooked, crate::helper::BASE_CHAINS);
    }

    #[test]
    fn elements_land_in_their_sets() {
        let node = NodeRules {
            family: IpFamily::V4,
            cluster_cidrs: vec![],
            masquerade: MasqueradeSources::All,
        };
        let e = Element {
            set: SetKind::NoEndpoint,
            key: Key::Frontend("10.96.0.1".parse().unwrap(), Protocol::Tcp, 80),
            value: Verdict::Reject,
        };
        let text = full_table("t", &node, &[], &[&e]);
        assert!(
            text.contains("elements = { 10.96.0.1 . tcp . 80 : goto reject-chain }"),
            "{text}"
        );
        assert!(text.starts_with("add table ip t\ndelete table ip t\n"));
    }
}
