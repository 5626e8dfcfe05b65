//! The fixed part of every table, as data: base chains with their rules, the top-level
//! chains (masquerading, reject, the filter checks, the service lookups) and the
//! interval sets with their prefixes. It depends on node-wide settings only, never on a
//! service port (see `port` for those). `render` writes it as netlink messages or nft
//! text; `digest` digests it, so a restarted engine can tell whether a table's fixed
//! part is still what it would write.

use ipnet::IpNet;
use switchyard_model::{MasqueradeSources, NodeModel};

use crate::{
    record::TableRecord,
    rule::{Action, Match, Rule},
    ruleset::{self, collapse, BaseChain, Family, Jump, MapKind, MASQUERADE_MARK},
};

/// The node-wide settings of one family, prepared once per render.
pub struct NodeCtx {
    pub family: Family,
    /// Which sources of cluster IP traffic are masqueraded (the same for every port:
    /// one rule in `services` encodes every plan's `masquerade.cluster_ips`).
    pub masquerade: MasqueradeSources,
    /// This family's cluster CIDRs (in the `cluster-cidrs` set).
    pub cluster_cidrs: Vec<IpNet>,
    pub node_port_nets: Vec<IpNet>,
}

impl NodeCtx {
    pub fn new(model: &NodeModel, family: Family) -> NodeCtx {
        let f = family.ip_family();
        NodeCtx {
            family,
            masquerade: model.masquerade_sources(f),
            cluster_cidrs: collapse(model.cluster_cidrs(f)),
            node_port_nets: collapse(model.node_port_addresses(f)),
        }
    }
}

/// The fixed part of one table.
pub struct FixedTable {
    /// Base chains and their rules.
    pub base_chains: Vec<(&'static BaseChain, Vec<Rule>)>,
    /// Regular chains and their rules.
    pub chains: Vec<(&'static str, Vec<Rule>)>,
    /// The interval sets (`nodeport-ips`, `cluster-cidrs`) and their prefixes.
    pub interval_sets: [(&'static str, Vec<IpNet>); 2],
}

impl FixedTable {
    /// The fixed part of table `t` (0: main, else a shard).
    pub fn new(ctx: &NodeCtx, t: usize) -> FixedTable {
        let (bases, jumps, chains) = if t == 0 {
            (ruleset::BASE_CHAINS, ruleset::JUMPS, main_chains(ctx))
        } else {
            (
                ruleset::SHARD_BASE_CHAINS,
                ruleset::SHARD_JUMPS,
                shard_chains(ctx),
            )
        };
        FixedTable {
            base_chains: bases
                .iter()
                .map(|base| (base, base_rules(base, jumps)))
                .collect(),
            chains,
            interval_sets: [
                (ruleset::NODEPORT_IPS_SET, ctx.node_port_nets.clone()),
                (ruleset::CLUSTER_CIDRS_SET, ctx.cluster_cidrs.clone()),
            ],
        }
    }

    /// Records the fixed chains and their rule counts.
    pub fn record(&self, record: &mut TableRecord) {
        for (base, rules) in &self.base_chains {
            record.chains.insert(base.name.into(), rules.len());
        }
        for (name, rules) in &self.chains {
            record.chains.insert((*name).into(), rules.len());
        }
    }
}

/// A base chain's rules: the hairpin check (postrouting), then its jumps.
fn base_rules(base: &BaseChain, jumps: &[Jump]) -> Vec<Rule> {
    let mut rules = Vec::new();
    if base.name == ruleset::NAT_POSTROUTING_CHAIN {
        // Hairpin: an endpoint reaching itself through a service is masqueraded (one set
        // of `endpoint . endpoint` pairs, rather than a rule per endpoint).
        rules.push(Rule::mark(vec![
            Match::CtStatusDnat,
            Match::AddrPairIn(MapKind::Hairpin.name().to_string()),
        ]));
    }
    for (from, new_only, to) in jumps {
        if *from == base.name {
            let matches = if *new_only {
                vec![Match::CtStateNew]
            } else {
                vec![]
            };
            rules.push(Rule::new(matches, Action::Jump((*to).to_string())));
        }
    }
    rules
}

/// The NodePort destination condition: a local address within `nodePortAddresses`,
/// never loopback.
fn nodeport_destination(ctx: &NodeCtx) -> Vec<Match> {
    let loopback: IpNet = match ctx.family {
        Family::Ip => "127.0.0.0/8",
        Family::Ip6 => "::1/128",
    }
    .parse()
    .expect("a valid prefix");
    vec![
        Match::FibDaddrLocal,
        Match::DaddrNotNet(loopback),
        Match::DaddrIn(ruleset::NODEPORT_IPS_SET.to_string()),
    ]
}

fn mark_for_masquerade() -> (&'static str, Vec<Rule>) {
    (
        ruleset::MARK_MASQ_CHAIN,
        vec![Rule::new(vec![], Action::MarkOr(MASQUERADE_MARK))],
    )
}

/// The fixed chains of a shard table: its `services` chain (the `service-ips` lookup),
/// `nodeports` chain (the `service-nodeports` lookup) and `mark-for-masquerade`.
fn shard_chains(ctx: &NodeCtx) -> Vec<(&'static str, Vec<Rule>)> {
    let services = Rule::new(
        vec![],
        Action::VipVmap(MapKind::ServiceIps.name().to_string()),
    );
    let nodeports = Rule::new(
        nodeport_destination(ctx),
        Action::PortVmap(MapKind::ServiceNodePorts.name().to_string()),
    );
    vec![
        (ruleset::SERVICES_CHAIN, vec![services]),
        (ruleset::NODEPORTS_CHAIN, vec![nodeports]),
        mark_for_masquerade(),
    ]
}

/// The masquerade marking of cluster IP traffic: one rule for every service port
/// (upstream has one per service port chain), ahead of the DNAT (the shards' nat chains
/// run after this table's).
fn cluster_ip_masquerade(ctx: &NodeCtx) -> Vec<Rule> {
    let to_cluster_ip = Match::DaddrIn(ruleset::CLUSTER_IPS_SET.to_string());
    match ctx.masquerade {
        MasqueradeSources::All => vec![Rule::mark(vec![to_cluster_ip])],
        MasqueradeSources::OutsideClusterCidrs => vec![Rule::mark(vec![
            to_cluster_ip,
            Match::SaddrIn {
                set: ruleset::CLUSTER_CIDRS_SET.to_string(),
                negate: true,
            },
        ])],
        MasqueradeSources::None => Vec::new(),
    }
}

/// The fixed chains of a family's main table.
fn main_chains(ctx: &NodeCtx) -> Vec<(&'static str, Vec<Rule>)> {
    let vmap = |kind: MapKind| Action::VipVmap(kind.name().to_string());
    let masquerading = vec![
        Rule::new(vec![Match::MarkClear(MASQUERADE_MARK)], Action::Return),
        Rule::new(vec![], Action::MarkXor(MASQUERADE_MARK)),
        Rule::new(vec![], Action::MasqueradeFullyRandom),
    ];
    // TCP gets a reset: ICMP errors towards a host are rate-limited by the kernel
    // (net.ipv4.icmp_ratelimit), so a client could see a timeout instead of a refusal.
    let reject = vec![
        Rule::new(
            vec![Match::L4proto(switchyard_model::Protocol::Tcp)],
            Action::RejectTcpReset,
        ),
        Rule::new(vec![], Action::Reject),
    ];
    let nodeport_check = Rule::new(
        nodeport_destination(ctx),
        Action::PortVmap(MapKind::NoEndpointNodePorts.name().to_string()),
    );
    let cluster_ips_check = Rule::new(
        vec![Match::DaddrIn(ruleset::CLUSTER_IPS_SET.to_string())],
        Action::Goto(ruleset::REJECT_CHAIN.to_string()),
    );
    vec![
        (ruleset::SERVICES_CHAIN, cluster_ip_masquerade(ctx)),
        (ruleset::MASQUERADING_CHAIN, masquerading),
        mark_for_masquerade(),
        (ruleset::REJECT_CHAIN, reject),
        (
            ruleset::SERVICE_ENDPOINTS_CHECK_CHAIN,
            vec![Rule::new(vec![], vmap(MapKind::NoEndpointServices))],
        ),
        (
            ruleset::NODEPORT_ENDPOINTS_CHECK_CHAIN,
            vec![nodeport_check],
        ),
        (
            ruleset::FIREWALL_CHECK_CHAIN,
            vec![Rule::new(vec![], vmap(MapKind::FirewallIps))],
        ),
        (ruleset::CLUSTER_IPS_CHECK_CHAIN, vec![cluster_ips_check]),
    ]
}
