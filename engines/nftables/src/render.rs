//! Text generation: the whole ruleset of every table (`render_full`) and the partial
//! transaction that rewrites only some service ports (`render_partial`, which also
//! carries the same transaction as data for a netlink batch, see [`Partial::encode`]).
//! Both are pure functions of the model (and, for partial, of the record of what was
//! applied); they also return the record the kernel will hold once applied.
//!
//! Per service port and family (upstream kube-proxy's layout, minus endpoint chains):
//! - `svc-H` (Cluster policy) and `local-H` (Local policy): affinity checks, then the
//!   random endpoint choice and its DNAT (masquerade marking for cluster IP traffic is
//!   one rule in `services` for all service ports);
//! - `ext-H`: entry for NodePort, external IP and LB IP traffic;
//! - `fw-H`: LoadBalancerSourceRanges;
//! - `aff-E-T`: affinity set of one endpoint (ClientIP affinity only).
//!
//! The random choice is a cascade, rule `i` of `N` being
//! `numgen random mod (N - i) == 0 meta l4proto P dnat to EP-i` (uniform, like
//! iptables' `statistic`), not upstream's `numgen random mod N vmap { ... }`: the kernel
//! creates anonymous maps, and binds rules to a shared named map, in quadratic time
//! (8000 anonymous maps: 12 s). The cascade only runs for a connection's first packet
//! (NAT chains). No rule uses an anonymous set for the same reason (named sets, or one
//! rule per item). Upstream's per-endpoint chains (hairpin masquerade, affinity update,
//! DNAT) are gone: six times fewer chains. Hairpin is one `hairpin` set of
//! `endpoint . endpoint` pairs checked in `nat-postrouting`; each endpoint's pair is an
//! element claimed, like map keys, by every service port using that endpoint.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fmt::{self, Write as _},
    net::IpAddr,
};

use ipnet::IpNet;
use switchyard_core::{ChangeSet, Endpoint, NodeModel, Protocol, ServicePort, ServicePortName};

use crate::{
    netlink::{Batch, ElementBytes, NFT_GOTO, NFT_JUMP, NF_DROP},
    record::{Applied, Element, FamilyRecord, PortObjects, TableRecord},
    rule::{ip_bytes, protocol_number, Action, Match, Rule},
    ruleset::{
        self, collapse, element_table, object_table, table_name, Family, MapKind, PortChains,
        TABLES,
    },
};

/// The node-wide settings of one family, prepared once per render.
struct FamilyCtx {
    family: Family,
    masquerade_all: bool,
    /// This family's cluster CIDRs (in the `cluster-cidrs` set).
    cluster_cidrs: Vec<IpNet>,
    node_ips: Vec<IpAddr>,
    node_port_nets: Vec<IpNet>,
}

impl FamilyCtx {
    fn new(model: &NodeModel, family: Family) -> FamilyCtx {
        let cidrs = collapse(
            model
                .cluster_cidrs
                .iter()
                .filter(|n| family.has_net(n))
                .copied(),
        );
        FamilyCtx {
            family,
            masquerade_all: model.masquerade_all,
            cluster_cidrs: cidrs,
            node_ips: model
                .node_ips
                .iter()
                .filter(|ip| family.has(ip))
                .copied()
                .collect(),
            node_port_nets: collapse(
                model
                    .node_port_addresses
                    .iter()
                    .filter(|n| family.has_net(n))
                    .copied(),
            ),
        }
    }
}

/// `{ a, b, c }`, or empty for no items.
fn set_literal<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
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

/// Whether chains are written inside a `table { }` block or as commands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Block,
    Commands,
}

/// Writes chains and their rules, counting rules. In `Commands` style, chain and set
/// creation go to `decl` and rules to `body`, so every chain exists before any rule
/// refers to it. In `Block` style, chains of the main table (`fw-`) go to `main` when
/// given (see `ruleset::object_table`), the others to `body`.
struct ChainText<'a> {
    style: Style,
    family: Family,
    decl: &'a mut String,
    body: &'a mut String,
    main: Option<&'a mut String>,
    /// The open chain is written to `main`.
    to_main: bool,
    chain: String,
    open: bool,
    rules: usize,
    /// In `Commands` style, every chain written and its rules (for netlink).
    collected: Vec<(String, Vec<Rule>)>,
    /// In `Commands` style, every affinity set declared and its timeout.
    collected_sets: Vec<(String, u32)>,
}

impl<'a> ChainText<'a> {
    fn new(style: Style, family: Family, decl: &'a mut String, body: &'a mut String) -> Self {
        ChainText {
            style,
            family,
            decl,
            body,
            main: None,
            to_main: false,
            chain: String::new(),
            open: false,
            rules: 0,
            collected: Vec::new(),
            collected_sets: Vec::new(),
        }
    }

    /// Block style: chains of the main table go to `main`.
    fn with_main(mut self, main: &'a mut String) -> Self {
        self.main = Some(main);
        self
    }

    /// Where the open chain is written (`Block` style).
    fn out(&mut self) -> &mut String {
        match (self.to_main, self.main.as_deref_mut()) {
            (true, Some(main)) => main,
            _ => &mut *self.body,
        }
    }

    /// Starts `name`; returns the rule count of the previous chain, if one was open.
    fn chain(&mut self, name: &str, objects: &mut PortObjects) {
        self.close(objects);
        match self.style {
            Style::Block => {
                self.to_main = object_table(name) == 0;
                let _ = writeln!(self.out(), "\tchain {name} {{");
            }
            Style::Commands => {
                let fam = self.family.nft();
                let table = table_name(object_table(name));
                let _ = writeln!(self.decl, "add chain {fam} {table} {name}");
                let _ = writeln!(self.decl, "flush chain {fam} {table} {name}");
            }
        }
        self.chain.clear();
        self.chain.push_str(name);
        self.open = true;
        self.rules = 0;
        if self.style == Style::Commands {
            self.collected.push((name.to_string(), Vec::new()));
        }
    }

    fn rule(&mut self, rule: Rule) {
        let text = rule.text(self.family);
        match self.style {
            Style::Block => {
                let _ = writeln!(self.out(), "\t\t{text}");
            }
            Style::Commands => {
                let _ = writeln!(
                    self.body,
                    "add rule {} {} {} {text}",
                    self.family.nft(),
                    table_name(object_table(&self.chain)),
                    self.chain
                );
                if let Some((_, rules)) = self.collected.last_mut() {
                    rules.push(rule);
                }
            }
        }
        self.rules += 1;
    }

    fn close(&mut self, objects: &mut PortObjects) {
        if self.open {
            if self.style == Style::Block {
                self.out().push_str("\t}\n");
                self.to_main = false;
            }
            objects.chains.push((self.chain.clone(), self.rules));
            self.open = false;
        }
    }

    fn affinity_set(&mut self, name: &str, timeout: u32, objects: &mut PortObjects) {
        self.close(objects);
        let addr = self.family.addr_type();
        match self.style {
            Style::Block => {
                let _ = writeln!(
                    self.body,
                    "\tset {name} {{\n\t\ttype {addr}\n\t\tflags dynamic,timeout\n\t\ttimeout {timeout}s\n\t}}"
                );
            }
            Style::Commands => {
                let _ = writeln!(
                    self.decl,
                    "add set {} {} {name} {{ type {addr}; flags dynamic,timeout; timeout {timeout}s; }}",
                    self.family.nft(),
                    table_name(object_table(name))
                );
                self.collected_sets.push((name.to_string(), timeout));
            }
        }
        objects.sets.push(name.to_string());
    }
}

/// The verdict sending a packet to `reject-chain`.
const REJECT: &str = "goto reject-chain";

/// Renders one service port into `chains`, returning everything it owns. A port with no
/// cluster IP of this family owns nothing in this family's table.
fn render_port(ctx: &FamilyCtx, sp: &ServicePort, chains: &mut ChainText<'_>) -> PortObjects {
    let mut objects = PortObjects::default();
    let fam = ctx.family;
    let cluster_ips: Vec<&IpAddr> = sp.cluster_ips.iter().filter(|ip| fam.has(ip)).collect();
    if cluster_ips.is_empty() {
        return objects;
    }
    let names = PortChains::new(&sp.name);
    let proto = sp.protocol.as_str();
    let port = sp.port;
    let cluster: Vec<&Endpoint> = sp
        .cluster_endpoints
        .iter()
        .filter(|e| fam.has(&e.ip))
        .collect();
    let local: Vec<&Endpoint> = sp
        .local_endpoints
        .iter()
        .filter(|e| fam.has(&e.ip))
        .collect();
    let external_ips: Vec<&IpAddr> = sp.external_ips.iter().filter(|ip| fam.has(ip)).collect();
    let lb_ips: Vec<&IpAddr> = sp
        .load_balancer_ips
        .iter()
        .filter(|ip| fam.has(ip))
        .collect();
    let externally = sp.node_port.is_some() || !external_ips.is_empty() || !lb_ips.is_empty();
    let internal_local = sp.internal_policy_local;
    let external_local = sp.external_policy_local && externally;

    let has_endpoints = !cluster.is_empty() || !local.is_empty();
    let uses_cluster = !cluster.is_empty() && (!internal_local || externally);
    let uses_local = !local.is_empty() && (internal_local || external_local);
    let has_internal = has_endpoints
        && if internal_local {
            !local.is_empty()
        } else {
            !cluster.is_empty()
        };
    let has_external = has_endpoints
        && if external_local {
            !local.is_empty()
        } else {
            !cluster.is_empty()
        };
    let uses_external = has_endpoints && externally;
    let uses_firewall = !lb_ips.is_empty() && !sp.load_balancer_source_ranges.is_empty();
    let no_endpoints_verdict = if has_endpoints { "drop" } else { REJECT };

    let svc_chain = names.service();
    let local_chain = names.local();
    let ext_chain = names.external();
    let fw_chain = names.firewall();
    let internal_chain = if internal_local {
        &local_chain
    } else {
        &svc_chain
    };

    // Map elements.
    let mut element = |kind: MapKind, key: String, value: String| {
        // An address can be both an external and an LB IP: one element per key.
        if !objects
            .elements
            .iter()
            .any(|e| e.kind == kind && *e.key == *key)
        {
            objects.elements.push(Element::new(kind, key, value));
        }
    };
    for ip in &cluster_ips {
        element(MapKind::ClusterIps, ip.to_string(), String::new());
        let key = format!("{ip} . {proto} . {port}");
        if has_internal {
            element(MapKind::ServiceIps, key, format!("goto {internal_chain}"));
        } else {
            element(
                MapKind::NoEndpointServices,
                key,
                no_endpoints_verdict.to_string(),
            );
        }
    }
    for ip in external_ips.iter().chain(&lb_ips) {
        let key = format!("{ip} . {proto} . {port}");
        if has_endpoints {
            element(
                MapKind::ServiceIps,
                key.clone(),
                format!("goto {ext_chain}"),
            );
        }
        if !has_external {
            element(
                MapKind::NoEndpointServices,
                key,
                no_endpoints_verdict.to_string(),
            );
        }
    }
    if uses_firewall {
        for ip in &lb_ips {
            element(
                MapKind::FirewallIps,
                format!("{ip} . {proto} . {port}"),
                format!("goto {fw_chain}"),
            );
        }
    }
    if let Some(node_port) = sp.node_port {
        let key = format!("{proto} . {node_port}");
        if has_endpoints {
            element(
                MapKind::ServiceNodePorts,
                key.clone(),
                format!("goto {ext_chain}"),
            );
        }
        if !has_external {
            element(
                MapKind::NoEndpointNodePorts,
                key,
                no_endpoints_verdict.to_string(),
            );
        }
    }

    // Every endpoint some policy chain uses: its hairpin element (and affinity set).
    let mut endpoints: Vec<&Endpoint> = Vec::new();
    if uses_cluster {
        endpoints.extend(&cluster);
    }
    if uses_local {
        endpoints.extend(&local);
    }
    endpoints.sort_by_key(|e| (e.ip, e.port));
    endpoints.dedup_by_key(|e| (e.ip, e.port));
    let affinity = sp.affinity_timeout;
    let affinity_name = |ep: &Endpoint| {
        affinity.map(|t| {
            // A changed timeout is a new set: nft cannot change a set's timeout.
            let mut name = names.affinity(ep);
            let _ = write!(name, "-{t}");
            name
        })
    };
    for ep in &endpoints {
        element(
            MapKind::Hairpin,
            format!("{} . {}", ep.ip, ep.ip),
            String::new(),
        );
    }
    for ep in &endpoints {
        if let (Some(set), Some(timeout)) = (affinity_name(ep), affinity) {
            chains.affinity_set(&set, timeout, &mut objects);
        }
    }
    let dnat = |ep: &Endpoint| Action::Dnat {
        affinity: affinity_name(ep),
        protocol: sp.protocol,
        ip: ep.ip,
        port: ep.port,
    };

    // Policy chains.
    let policy_chains = [
        (uses_cluster, &svc_chain, &cluster, !internal_local),
        (uses_local, &local_chain, &local, internal_local),
    ];
    for (used, chain, eps, _) in policy_chains {
        if !used {
            continue;
        }
        chains.chain(chain, &mut objects);
        for ep in eps.iter() {
            if let Some(set) = affinity_name(ep) {
                chains.rule(Rule::new(
                    vec![Match::SaddrIn { set, negate: false }],
                    dnat(ep),
                ));
            }
        }
        let n = eps.len();
        for (i, ep) in eps.iter().enumerate() {
            let matches = if i + 1 < n {
                vec![Match::Random((n - i) as u32)]
            } else {
                vec![]
            };
            chains.rule(Rule::new(matches, dnat(ep)));
        }
    }

    // External chain.
    if uses_external {
        chains.chain(&ext_chain, &mut objects);
        if !external_local {
            chains.rule(Rule::mark(vec![]));
        } else {
            if uses_cluster && !ctx.cluster_cidrs.is_empty() {
                // Pod traffic to an external address is treated as cluster traffic.
                chains.rule(Rule::new(
                    vec![Match::SaddrIn {
                        set: ruleset::CLUSTER_CIDRS_SET.to_string(),
                        negate: false,
                    }],
                    Action::Goto(svc_chain.clone()),
                ));
            }
            // Node traffic: its source is a local address, so masquerade it.
            chains.rule(Rule::mark(vec![Match::FibSaddrLocal]));
            if uses_cluster {
                chains.rule(Rule::new(
                    vec![Match::FibSaddrLocal],
                    Action::Goto(svc_chain.clone()),
                ));
            }
        }
        if has_external {
            let target = if external_local {
                &local_chain
            } else {
                &svc_chain
            };
            chains.rule(Rule::new(vec![], Action::Goto(target.clone())));
        }
    }

    // Firewall chain.
    if uses_firewall {
        chains.chain(&fw_chain, &mut objects);
        let ranges: Vec<IpNet> = sp
            .load_balancer_source_ranges
            .iter()
            .filter(|n| fam.has_net(n))
            .copied()
            .collect();
        let allow_from_node = ranges
            .iter()
            .any(|r| ctx.node_ips.iter().any(|ip| r.contains(ip)));
        let mut sources = ranges;
        if allow_from_node {
            sources.extend(lb_ips.iter().map(|ip| IpNet::from(**ip)));
        }
        // One rule per source rather than an anonymous set: the kernel creates anonymous
        // sets in quadratic time.
        for source in collapse(sources) {
            chains.rule(Rule::new(vec![Match::SaddrNet(source)], Action::Return));
        }
        chains.rule(Rule::new(vec![], Action::Drop));
    }
    chains.close(&mut objects);
    objects
}

/// Writes base chains with their jumps, counting rules.
fn render_base_chains(
    bases: &[ruleset::BaseChain],
    jumps: &[(&str, &str, &str)],
    ipx: &str,
    out: &mut String,
    count: &mut impl FnMut(&str, usize),
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
        count(base.name, rules);
    }
}

/// Writes fixed chains and their rules, counting rules.
fn render_chains(
    chains: &[(&str, &[String])],
    out: &mut String,
    count: &mut impl FnMut(&str, usize),
) {
    for (name, rules) in chains {
        let _ = writeln!(out, "\tchain {name} {{");
        for r in rules.iter() {
            let _ = writeln!(out, "\t\t{r}");
        }
        out.push_str("\t}\n");
        count(name, rules.len());
    }
}

/// The `nodeport-ips` and `cluster-cidrs` interval sets (in every table).
fn render_interval_sets(ctx: &FamilyCtx, out: &mut String) {
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

/// The fixed part of a shard table: its base chains, its `services` chain (the
/// `service-ips` and `service-nodeports` lookups), `mark-for-masquerade`, and the
/// replicated interval sets. Chain rule counts go to
/// `record`.
fn render_shard_fixed(ctx: &FamilyCtx, out: &mut String, record: &mut TableRecord) {
    let ipx = ctx.family.nft();
    let mut count = |name: &str, rules: usize| {
        record.chains.insert(name.to_string(), rules);
    };
    render_base_chains(
        ruleset::SHARD_BASE_CHAINS,
        ruleset::SHARD_JUMPS,
        ipx,
        out,
        &mut count,
    );
    let no_localhost = no_localhost(ctx.family);
    let services = [
        format!("{ipx} daddr . meta l4proto . th dport vmap @service-ips"),
        format!(
            "fib daddr type local {no_localhost} {ipx} daddr @{} meta l4proto . th dport vmap @service-nodeports",
            ruleset::NODEPORT_IPS_SET
        ),
    ];
    let fixed: [(&str, &[String]); 2] = [
        (ruleset::SERVICES_CHAIN, &services),
        (
            ruleset::MARK_MASQ_CHAIN,
            &[format!(
                "meta mark set meta mark or {}",
                ruleset::MASQUERADE_MARK
            )],
        ),
    ];
    render_chains(&fixed, out, &mut count);
    render_interval_sets(ctx, out);
}

/// The fixed part of a family's main table: base chains, top-level chains, declarations
/// of maps and sets (their elements are written by the caller). Chain rule counts go to
/// `record`.
fn render_fixed(ctx: &FamilyCtx, out: &mut String, record: &mut TableRecord) {
    let ipx = ctx.family.nft();
    let mut count = |name: &str, rules: usize| {
        record.chains.insert(name.to_string(), rules);
    };
    render_base_chains(ruleset::BASE_CHAINS, ruleset::JUMPS, ipx, out, &mut count);
    let no_localhost = no_localhost(ctx.family);
    // Cluster IP traffic from outside the cluster CIDRs (or all of it with
    // masqueradeAll) is masqueraded: one rule for every service port (upstream has one
    // per service port chain), ahead of the DNAT (the shards' nat chains run after this
    // table's).
    let mut services = Vec::with_capacity(1);
    if ctx.masquerade_all {
        services.push(format!(
            "{ipx} daddr @{} jump {}",
            ruleset::CLUSTER_IPS_SET,
            ruleset::MARK_MASQ_CHAIN
        ));
    } else if !ctx.cluster_cidrs.is_empty() {
        services.push(format!(
            "{ipx} daddr @{} {ipx} saddr != @{} jump {}",
            ruleset::CLUSTER_IPS_SET,
            ruleset::CLUSTER_CIDRS_SET,
            ruleset::MARK_MASQ_CHAIN
        ));
    }
    let fixed: [(&str, &[String]); 8] = [
        (ruleset::SERVICES_CHAIN, &services),
        (
            ruleset::MASQUERADING_CHAIN,
            &[
                format!("meta mark & {} == 0 return", ruleset::MASQUERADE_MARK),
                format!("meta mark set meta mark xor {}", ruleset::MASQUERADE_MARK),
                "masquerade fully-random".to_string(),
            ],
        ),
        (
            ruleset::MARK_MASQ_CHAIN,
            &[format!("meta mark set meta mark or {}", ruleset::MASQUERADE_MARK)],
        ),
        // TCP gets a reset: ICMP errors towards a host are rate-limited by the kernel
        // (net.ipv4.icmp_ratelimit), so a client could see a timeout instead of a refusal.
        (
            ruleset::REJECT_CHAIN,
            &[
                "meta l4proto tcp reject with tcp reset".to_string(),
                "reject".to_string(),
            ],
        ),
        (
            ruleset::SERVICE_ENDPOINTS_CHECK_CHAIN,
            &[format!(
                "{ipx} daddr . meta l4proto . th dport vmap @no-endpoint-services"
            )],
        ),
        (
            ruleset::NODEPORT_ENDPOINTS_CHECK_CHAIN,
            &[format!(
                "fib daddr type local {no_localhost} {ipx} daddr @{} meta l4proto . th dport vmap @no-endpoint-nodeports",
                ruleset::NODEPORT_IPS_SET
            )],
        ),
        (
            ruleset::FIREWALL_CHECK_CHAIN,
            &[format!(
                "{ipx} daddr . meta l4proto . th dport vmap @firewall-ips"
            )],
        ),
        (
            ruleset::CLUSTER_IPS_CHECK_CHAIN,
            &[format!(
                "{ipx} daddr @{} goto {}",
                ruleset::CLUSTER_IPS_SET,
                ruleset::REJECT_CHAIN
            )],
        ),
    ];
    render_chains(&fixed, out, &mut count);
    render_interval_sets(ctx, out);
}

/// Renders one family's tables (main, then shards) as pieces of text appended to `out`
/// (bodies are moved, not copied), returning their record.
fn render_family_full(model: &NodeModel, family: Family, out: &mut Vec<String>) -> FamilyRecord {
    let ctx = FamilyCtx::new(model, family);
    let mut record = FamilyRecord::default();
    let fam = family.nft();
    let mut bodies: Vec<String> = vec![String::new(); TABLES];
    render_fixed(&ctx, &mut bodies[0], &mut record.tables[0]);
    for (t, body) in bodies.iter_mut().enumerate().skip(1) {
        render_shard_fixed(&ctx, body, &mut record.tables[t]);
    }

    let mut elements: Vec<[String; MapKind::ALL.len()]> = vec![Default::default(); TABLES];
    let mut unused = String::new();
    let (main, shards) = bodies.split_at_mut(1);
    for sp in model.services.values() {
        let table = PortChains::new(&sp.name).table();
        let mut chains = ChainText::new(Style::Block, family, &mut unused, &mut shards[table - 1])
            .with_main(&mut main[0]);
        let objects = render_port(&ctx, sp, &mut chains);
        for e in &objects.elements {
            if record.head(e.kind, &e.key).is_none() {
                let buf = &mut elements[element_table(e.kind, &e.value)][e.kind.index()];
                if !buf.is_empty() {
                    buf.push_str(", ");
                }
                buf.push_str(&e.key);
                if e.kind.is_map() {
                    buf.push_str(" : ");
                    buf.push_str(&e.value);
                }
            }
            // `insert_port` below records the claim; `head` sees earlier ports only.
        }
        record.insert_port(&sp.name, objects);
    }
    for (t, body) in bodies.into_iter().enumerate() {
        let table = table_name(t);
        out.push(format!(
            "add table {fam} {table}\ndelete table {fam} {table}\ntable {fam} {table} {{\n"
        ));
        out.push(body);
        let mut tail = String::new();
        let out_tail = &mut tail;
        for kind in MapKind::ALL {
            if kind.is_sharded() != (t > 0) {
                continue;
            }
            let keyword = if kind.is_map() { "map" } else { "set" };
            let _ = write!(
                out_tail,
                "\t{keyword} {} {{\n\t\t{}\n",
                kind.name(),
                kind.type_decl(family)
            );
            let buf = &elements[t][kind.index()];
            if !buf.is_empty() {
                let _ = writeln!(out_tail, "\t\telements = {{ {buf} }}");
            }
            out_tail.push_str("\t}\n");
        }
        tail.push_str("}\n");
        out.push(tail);
    }
    record
}

/// The whole ruleset of every table (main and shards, both families), as one `nft -f` transaction that atomically
/// replaces whatever tables were there.
pub fn render_full(model: &NodeModel) -> String {
    render_full_with_record(model).0
}

/// `render_full`, and the record of what the kernel holds once it is applied.
pub fn render_full_with_record(model: &NodeModel) -> (String, Applied) {
    let (pieces, applied) = render_full_pieces(model, true);
    (pieces.concat(), applied)
}

/// `render_full_with_record` as consecutive pieces of text (per table: header, chains,
/// maps), to be fed to `nft` one after the other without concatenating them.
/// Without `ipv6` (a kernel without IPv6) only the `ip` tables are written.
pub fn render_full_pieces(model: &NodeModel, ipv6: bool) -> (Vec<String>, Applied) {
    let mut out = Vec::with_capacity(4 * TABLES * Family::BOTH.len());
    let mut applied = Applied {
        ipv4_only: !ipv6,
        ..Applied::default()
    };
    for &family in applied.programmed() {
        applied.families[family.index()] = render_family_full(model, family, &mut out);
    }
    (out, applied)
}

/// A partial transaction and what it changes in the record.
pub struct Partial {
    /// The nft input; empty when nothing needs to change.
    pub text: String,
    families: [FamilyPartial; 2],
}

/// The touched service ports of one family and what each now owns.
#[derive(Default)]
struct FamilyPartial {
    ports: Vec<(ServicePortName, PortObjects)>,
    ops: FamilyOps,
}

/// What a partial sync writes in one family's table, as data (for netlink).
#[derive(Default)]
struct FamilyOps {
    /// Chains created if missing, flushed, then filled with these rules.
    chains: Vec<(String, Vec<Rule>)>,
    /// Elements deleted: table index, map, key.
    deletes: Vec<(usize, MapKind, String)>,
    /// Elements added: map, key, value (the value tells the table).
    adds: Vec<(MapKind, String, String)>,
    /// Chains flushed, then deleted.
    stale_chains: Vec<String>,
    /// Affinity sets created (with their timeouts), before any rule uses them.
    new_sets: Vec<(String, u32)>,
    /// Affinity sets deleted, last.
    stale_sets: Vec<String>,
}

/// Why a partial transaction cannot go through netlink (it then goes through `nft`).
#[derive(Debug, PartialEq, Eq)]
pub struct NeedsNft(pub String);

impl Partial {
    /// Brings `applied` to what the kernel holds after `text` was applied.
    pub fn commit(self, applied: &mut Applied) {
        for (record, family) in applied.families.iter_mut().zip(self.families) {
            for (name, _) in &family.ports {
                record.remove_port(name);
            }
            for (name, objects) in family.ports {
                record.insert_port(&name, objects);
            }
        }
    }

    /// Appends the same transaction as `text` to a netlink batch, or says why it
    /// cannot (an element it cannot encode); the batch is then left unusable.
    pub fn encode(&self, batch: &mut Batch) -> Result<(), NeedsNft> {
        let tables: Vec<String> = (0..TABLES).map(table_name).collect();
        let table_of = |name: &str| tables[object_table(name)].as_str();
        for (family, partial) in Family::BOTH.into_iter().zip(&self.families) {
            let ops = &partial.ops;
            for (set, timeout) in &ops.new_sets {
                batch.add_affinity_set(family, table_of(set), set, *timeout);
            }
            for (chain, _) in &ops.chains {
                batch.add_chain(family, table_of(chain), chain);
                batch.flush_chain(family, table_of(chain), chain);
            }
            for (t, table) in tables.iter().enumerate() {
                for kind in MapKind::ALL {
                    let keys = ops
                        .deletes
                        .iter()
                        .filter(|(i, k, _)| *i == t && *k == kind)
                        .map(|(_, _, key)| element_bytes(key, ""))
                        .collect::<Result<Vec<_>, _>>()?;
                    if !keys.is_empty() {
                        batch.delete_elements(family, table, kind.name(), &keys);
                    }
                }
            }
            for (chain, rules) in &ops.chains {
                for rule in rules {
                    batch.add_rule(family, table_of(chain), chain, |a| rule.encode(family, a));
                }
            }
            for (t, table) in tables.iter().enumerate() {
                for kind in MapKind::ALL {
                    let elements = ops
                        .adds
                        .iter()
                        .filter(|(k, _, v)| *k == kind && element_table(*k, v) == t)
                        .map(|(_, key, value)| element_bytes(key, value))
                        .collect::<Result<Vec<_>, _>>()?;
                    if !elements.is_empty() {
                        batch.add_elements(family, table, kind.name(), &elements);
                    }
                }
            }
            for chain in &ops.stale_chains {
                batch.flush_chain(family, table_of(chain), chain);
            }
            for chain in &ops.stale_chains {
                batch.delete_chain(family, table_of(chain), chain);
            }
            for set in &ops.stale_sets {
                batch.delete_set(family, table_of(set), set);
            }
        }
        Ok(())
    }
}

/// The netlink form of an element written as text: the key's components (addresses,
/// protocol names, ports) each padded to 4 bytes, and the verdict if any.
pub fn element_bytes(key: &str, value: &str) -> Result<ElementBytes, NeedsNft> {
    let mut bytes = Vec::with_capacity(16);
    for part in key.split(" . ") {
        if let Ok(ip) = part.parse::<IpAddr>() {
            bytes.extend_from_slice(&ip_bytes(&ip));
        } else if let Some(p) = ["tcp", "udp", "sctp"].iter().position(|p| *p == part) {
            let p = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp][p];
            bytes.extend_from_slice(&[protocol_number(p), 0, 0, 0]);
        } else if let Ok(port) = part.parse::<u16>() {
            let [a, b] = port.to_be_bytes();
            bytes.extend_from_slice(&[a, b, 0, 0]);
        } else {
            return Err(NeedsNft(format!("element key {key}")));
        }
    }
    let verdict = if value.is_empty() {
        None
    } else if value == "drop" {
        Some((NF_DROP, None))
    } else if let Some(chain) = value.strip_prefix("goto ") {
        Some((NFT_GOTO, Some(chain.to_string())))
    } else if let Some(chain) = value.strip_prefix("jump ") {
        Some((NFT_JUMP, Some(chain.to_string())))
    } else {
        return Err(NeedsNft(format!("element value {value}")));
    };
    Ok(ElementBytes {
        key: bytes,
        verdict,
    })
}

/// Renders a transaction rewriting only the service ports `changes` names (added,
/// changed or removed), against `applied`, the record of what the kernel holds.
pub fn render_partial(model: &NodeModel, changes: &ChangeSet, applied: &Applied) -> Partial {
    let touched: BTreeSet<&ServicePortName> = changes
        .added
        .iter()
        .chain(&changes.changed)
        .chain(&changes.removed)
        .collect();
    let mut text = String::new();
    let mut families: [FamilyPartial; 2] = Default::default();
    for &family in applied.programmed() {
        let record = &applied.families[family.index()];
        let ctx = FamilyCtx::new(model, family);
        families[family.index()] = render_family_partial(&ctx, model, &touched, record, &mut text);
    }
    Partial { text, families }
}

fn render_family_partial(
    ctx: &FamilyCtx,
    model: &NodeModel,
    touched: &BTreeSet<&ServicePortName>,
    record: &FamilyRecord,
    text: &mut String,
) -> FamilyPartial {
    let fam = ctx.family.nft();
    let mut decl = String::new();
    let mut body = String::new();
    let mut new_ports = Vec::with_capacity(touched.len());
    let mut ops = FamilyOps::default();
    for name in touched {
        let objects = match model.services.get(*name) {
            Some(sp) => {
                let mut chains = ChainText::new(Style::Commands, ctx.family, &mut decl, &mut body);
                let objects = render_port(ctx, sp, &mut chains);
                ops.chains.append(&mut chains.collected);
                for (set, timeout) in chains.collected_sets.drain(..) {
                    if !record.has_set(&set) && !ops.new_sets.iter().any(|(s, _)| *s == set) {
                        ops.new_sets.push((set, timeout));
                    }
                }
                objects
            }
            None => PortObjects::default(),
        };
        new_ports.push(((*name).clone(), objects));
    }

    let touched_owner = |n: &ServicePortName| touched.contains(n);
    // Keys whose kernel value may change: every key a touched port claimed or claims.
    let mut dirty: Vec<(MapKind, &str)> = Vec::new();
    let mut seen: HashSet<(MapKind, &str)> = HashSet::new();
    let mut first_new: HashMap<(MapKind, &str), &str> = HashMap::new();
    for name in touched {
        if let Some(old) = record.ports.get(*name) {
            for e in &old.elements {
                if seen.insert((e.kind, &e.key)) {
                    dirty.push((e.kind, &e.key));
                }
            }
        }
    }
    for (_, objects) in &new_ports {
        for e in &objects.elements {
            first_new.entry((e.kind, &e.key)).or_insert(&e.value);
            if seen.insert((e.kind, &e.key)) {
                dirty.push((e.kind, &e.key));
            }
        }
    }
    let mut deletes: Vec<[String; MapKind::ALL.len()]> = vec![Default::default(); TABLES];
    let mut adds: Vec<[String; MapKind::ALL.len()]> = vec![Default::default(); TABLES];
    for (kind, key) in dirty {
        let claims = record.claims(kind, key);
        let before = claims.and_then(|c| c.first()).map(|(_, v)| &**v);
        let after = claims
            .and_then(|c| c.iter().find(|(n, _)| !touched_owner(n.as_ref())))
            .map(|(_, v)| &**v)
            .or_else(|| first_new.get(&(kind, key)).copied());
        if before == after {
            continue;
        }
        if let Some(before) = before {
            let t = element_table(kind, before);
            ops.deletes.push((t, kind, key.to_string()));
            let buf = &mut deletes[t][kind.index()];
            if !buf.is_empty() {
                buf.push_str(", ");
            }
            buf.push_str(key);
        }
        if let Some(value) = after {
            ops.adds.push((kind, key.to_string(), value.to_string()));
            let buf = &mut adds[element_table(kind, value)][kind.index()];
            if !buf.is_empty() {
                buf.push_str(", ");
            }
            buf.push_str(key);
            if kind.is_map() {
                buf.push_str(" : ");
                buf.push_str(value);
            }
        }
    }

    // Chains and sets a touched port owned and no longer owns.
    let mut kept_chains: HashSet<&str> = HashSet::new();
    let mut kept_sets: HashSet<&str> = HashSet::new();
    for (_, objects) in &new_ports {
        kept_chains.extend(objects.chains.iter().map(|(c, _)| c.as_str()));
        kept_sets.extend(objects.sets.iter().map(String::as_str));
    }
    let mut stale_chains: Vec<&str> = Vec::new();
    let mut stale_sets: Vec<&str> = Vec::new();
    for name in touched {
        if let Some(old) = record.ports.get(*name) {
            stale_chains.extend(
                old.chains
                    .iter()
                    .map(|(c, _)| c.as_str())
                    .filter(|c| !kept_chains.contains(c)),
            );
            stale_sets.extend(
                old.sets
                    .iter()
                    .map(String::as_str)
                    .filter(|s| !kept_sets.contains(s)),
            );
        }
    }

    // Order: create chains and sets; drop elements pointing at old chains; fill chains;
    // add elements; empty, then delete, chains and sets nothing refers to any more.
    text.push_str(&decl);
    for (t, bufs) in deletes.iter().enumerate() {
        for kind in MapKind::ALL {
            let buf = &bufs[kind.index()];
            if !buf.is_empty() {
                let _ = writeln!(
                    text,
                    "delete element {fam} {} {} {{ {buf} }}",
                    table_name(t),
                    kind.name()
                );
            }
        }
    }
    text.push_str(&body);
    for (t, bufs) in adds.iter().enumerate() {
        for kind in MapKind::ALL {
            let buf = &bufs[kind.index()];
            if !buf.is_empty() {
                let _ = writeln!(
                    text,
                    "add element {fam} {} {} {{ {buf} }}",
                    table_name(t),
                    kind.name()
                );
            }
        }
    }
    for chain in &stale_chains {
        let table = table_name(object_table(chain));
        let _ = writeln!(text, "flush chain {fam} {table} {chain}");
    }
    for chain in &stale_chains {
        let table = table_name(object_table(chain));
        let _ = writeln!(text, "delete chain {fam} {table} {chain}");
    }
    for set in &stale_sets {
        let table = table_name(object_table(set));
        let _ = writeln!(text, "delete set {fam} {table} {set}");
    }
    ops.stale_sets = stale_sets.iter().map(|s| s.to_string()).collect();
    ops.stale_chains = stale_chains.iter().map(|c| c.to_string()).collect();
    FamilyPartial {
        ports: new_ports,
        ops,
    }
}
