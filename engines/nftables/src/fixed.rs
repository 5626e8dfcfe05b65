//! The fixed part of every table, as nft text for full syncs: base chains and their
//! jumps, the top-level chains (masquerading, reject, the filter checks, the service
//! lookups) and the interval sets. It depends on node-wide settings only, never on a
//! service port (see `port` for those).

use std::fmt::Write as _;

use ipnet::IpNet;
use switchyard_model::{MasqueradeSources, NodeModel};

use crate::{
    record::TableRecord,
    ruleset::{self, collapse, BaseChain, Family, MapKind},
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

/// `{ a, b, c }`, or empty for no items.
fn set_literal<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let mut out = String::new();
    for item in items {
        out.push_str(if out.is_empty() { "{ " } else { ", " });
        let _ = write!(out, "{item}");
    }
    if !out.is_empty() {
        out.push_str(" }");
    }
    out
}

/// Writes base chains with their jumps, counting rules.
fn base_chains(
    bases: &[BaseChain],
    jumps: &[(&str, &str, &str)],
    ipx: &str,
    out: &mut String,
    record: &mut TableRecord,
) {
    for base in bases {
        let _ = writeln!(
            out,
            "\tchain {} {{\n\t\ttype {} hook {} priority {}; policy accept;",
            base.name, base.kind, base.hook, base.priority
        );
        let mut rules = 0;
        if base.name == ruleset::NAT_POSTROUTING_CHAIN {
            // Hairpin: an endpoint reaching itself through a service is masqueraded
            // (one set of `endpoint . endpoint` pairs, rather than a rule per endpoint).
            let _ = writeln!(
                out,
                "\t\tct status dnat {ipx} saddr . {ipx} daddr @{} jump {}",
                MapKind::Hairpin.name(),
                ruleset::MARK_MASQ_CHAIN
            );
            rules += 1;
        }
        for (from, cond, to) in jumps {
            if *from == base.name {
                let _ = writeln!(out, "\t\t{cond}jump {to}");
                rules += 1;
            }
        }
        out.push_str("\t}\n");
        record.chains.insert(base.name.into(), rules);
    }
}

/// Writes fixed chains and their rules, counting rules.
fn chains(list: &[(&str, &[String])], out: &mut String, record: &mut TableRecord) {
    for (name, rules) in list {
        let _ = writeln!(out, "\tchain {name} {{");
        for r in rules.iter() {
            let _ = writeln!(out, "\t\t{r}");
        }
        out.push_str("\t}\n");
        record.chains.insert((*name).into(), rules.len());
    }
}

/// The `nodeport-ips` and `cluster-cidrs` interval sets (in every table).
fn interval_sets(ctx: &NodeCtx, out: &mut String) {
    for (name, nets) in [
        (ruleset::NODEPORT_IPS_SET, &ctx.node_port_nets),
        (ruleset::CLUSTER_CIDRS_SET, &ctx.cluster_cidrs),
    ] {
        let _ = write!(
            out,
            "\tset {name} {{\n\t\ttype {}\n\t\tflags interval\n\t\tauto-merge\n",
            ctx.family.addr_type()
        );
        if !nets.is_empty() {
            let _ = writeln!(out, "\t\telements = {}", set_literal(nets.iter()));
        }
        out.push_str("\t}\n");
    }
}

/// The loopback exclusion of NodePort matches.
fn no_localhost(family: Family) -> &'static str {
    match family {
        Family::Ip => "ip daddr != 127.0.0.0/8",
        Family::Ip6 => "ip6 daddr != ::1",
    }
}

/// The NodePort destination condition: a local address within `nodePortAddresses`,
/// never loopback.
fn nodeport_destination(ctx: &NodeCtx) -> String {
    format!(
        "fib daddr type local {} {} daddr @{}",
        no_localhost(ctx.family),
        ctx.family.nft(),
        ruleset::NODEPORT_IPS_SET
    )
}

/// The fixed part of a shard table: its base chains, its `services` chain (the
/// `service-ips` lookup) and `nodeports` chain (the `service-nodeports` lookup),
/// `mark-for-masquerade`, and the replicated interval sets.
pub fn shard(ctx: &NodeCtx, out: &mut String, record: &mut TableRecord) {
    let ipx = ctx.family.nft();
    base_chains(
        ruleset::SHARD_BASE_CHAINS,
        ruleset::SHARD_JUMPS,
        ipx,
        out,
        record,
    );
    let services = [format!(
        "{ipx} daddr . meta l4proto . th dport vmap @service-ips"
    )];
    let nodeports = [format!(
        "{} meta l4proto . th dport vmap @service-nodeports",
        nodeport_destination(ctx)
    )];
    let mark = [format!(
        "meta mark set meta mark or {}",
        ruleset::MASQUERADE_MARK
    )];
    let fixed: [(&str, &[String]); 3] = [
        (ruleset::SERVICES_CHAIN, &services),
        (ruleset::NODEPORTS_CHAIN, &nodeports),
        (ruleset::MARK_MASQ_CHAIN, &mark),
    ];
    chains(&fixed, out, record);
    interval_sets(ctx, out);
}

/// The masquerade marking of cluster IP traffic: one rule for every service port
/// (upstream has one per service port chain), ahead of the DNAT (the shards' nat chains
/// run after this table's).
fn cluster_ip_masquerade(ctx: &NodeCtx) -> Vec<String> {
    let ipx = ctx.family.nft();
    match ctx.masquerade {
        MasqueradeSources::All => vec![format!(
            "{ipx} daddr @{} jump {}",
            ruleset::CLUSTER_IPS_SET,
            ruleset::MARK_MASQ_CHAIN
        )],
        MasqueradeSources::OutsideClusterCidrs => vec![format!(
            "{ipx} daddr @{} {ipx} saddr != @{} jump {}",
            ruleset::CLUSTER_IPS_SET,
            ruleset::CLUSTER_CIDRS_SET,
            ruleset::MARK_MASQ_CHAIN
        )],
        MasqueradeSources::None => Vec::new(),
    }
}

/// The fixed part of a family's main table: base chains, top-level chains, the interval
/// sets (map declarations and elements are written by the caller).
pub fn main(ctx: &NodeCtx, out: &mut String, record: &mut TableRecord) {
    let ipx = ctx.family.nft();
    base_chains(ruleset::BASE_CHAINS, ruleset::JUMPS, ipx, out, record);
    let services = cluster_ip_masquerade(ctx);
    let masquerading = [
        format!("meta mark & {} == 0 return", ruleset::MASQUERADE_MARK),
        format!("meta mark set meta mark xor {}", ruleset::MASQUERADE_MARK),
        "masquerade fully-random".to_string(),
    ];
    let mark = [format!(
        "meta mark set meta mark or {}",
        ruleset::MASQUERADE_MARK
    )];
    // TCP gets a reset: ICMP errors towards a host are rate-limited by the kernel
    // (net.ipv4.icmp_ratelimit), so a client could see a timeout instead of a refusal.
    let reject = [
        "meta l4proto tcp reject with tcp reset".to_string(),
        "reject".to_string(),
    ];
    let endpoints_check = [format!(
        "{ipx} daddr . meta l4proto . th dport vmap @no-endpoint-services"
    )];
    let nodeport_check = [format!(
        "{} meta l4proto . th dport vmap @no-endpoint-nodeports",
        nodeport_destination(ctx)
    )];
    let firewall_check = [format!(
        "{ipx} daddr . meta l4proto . th dport vmap @firewall-ips"
    )];
    let cluster_ips_check = [format!(
        "{ipx} daddr @{} goto {}",
        ruleset::CLUSTER_IPS_SET,
        ruleset::REJECT_CHAIN
    )];
    let fixed: [(&str, &[String]); 8] = [
        (ruleset::SERVICES_CHAIN, &services),
        (ruleset::MASQUERADING_CHAIN, &masquerading),
        (ruleset::MARK_MASQ_CHAIN, &mark),
        (ruleset::REJECT_CHAIN, &reject),
        (ruleset::SERVICE_ENDPOINTS_CHECK_CHAIN, &endpoints_check),
        (ruleset::NODEPORT_ENDPOINTS_CHECK_CHAIN, &nodeport_check),
        (ruleset::FIREWALL_CHECK_CHAIN, &firewall_check),
        (ruleset::CLUSTER_IPS_CHECK_CHAIN, &cluster_ips_check),
    ];
    chains(&fixed, out, record);
    interval_sets(ctx, out);
}
