//! `iptables-restore` input, full ([`render_full`]) and partial, in the shape of
//! upstream kube-proxy's iptables proxier (`pkg/proxy/iptables/proxier.go`), under
//! Switchyard's `SY-` chains. Rendering is pure: what the kernel already holds comes in
//! as a [`KernelChains`] (full sync) or the engine's record (partial sync).
//!
//! Per service port and family:
//! - nat `SY-SERVICES`: `-d VIP --dport P` → internal chain (`SY-SVC-`, or `SY-SVL-` for
//!   internalTrafficPolicy Local) for cluster IPs; → `SY-EXT-` for external IPs; →
//!   `SY-FW-` (source ranges) or `SY-EXT-` for LB IPs. nat `SY-NODEPORTS`: `--dport N` →
//!   `SY-EXT-`.
//! - `SY-SVC-`/`SY-SVL-`: mark for masquerade what is not from a cluster CIDR, then
//!   ClientIP affinity (`-m recent --rcheck`) and a `-m statistic` choice of `SY-SEP-`.
//! - `SY-SEP-`: hairpin mark, affinity `--set`, DNAT.
//! - filter: REJECT without endpoints, DROP for Local policies without local endpoints,
//!   DROP of LB traffic not accepted by the firewall chain, ACCEPT of health-check ports.

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    net::IpAddr,
};

use ipnet::IpNet;
use switchyard_core::{ChangeSet, Endpoint, IpFamily, NodeModel, ServicePort, ServicePortName};

use crate::{
    chains::{self, comment, endpoint_chain, write_comment, PortChain, Table, JUMPS},
    record::{Applied, Dispatch, FamilyRecord, PortRecord},
};

/// Above this many endpoints (all service ports together) per-endpoint rules carry no
/// comment, as upstream's large-cluster mode, to keep the ruleset small.
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// Whether `model` renders in large-cluster mode.
pub fn large_cluster(model: &NodeModel) -> bool {
    model.endpoint_count() > LARGE_CLUSTER_ENDPOINTS
}

/// Node-wide settings of one family.
#[derive(Clone, Debug)]
pub struct FamilyContext {
    pub family: IpFamily,
    pub cluster_cidrs: Vec<IpNet>,
    pub node_ips: Vec<IpAddr>,
    pub node_port_addresses: Vec<IpNet>,
    pub masquerade_all: bool,
    /// Omit comments on per-endpoint rules.
    pub large: bool,
}

impl FamilyContext {
    pub fn new(model: &NodeModel, family: IpFamily, large: bool) -> FamilyContext {
        let nets = |v: &[IpNet]| {
            v.iter()
                .filter(|n| IpFamily::of_net(n) == family)
                .copied()
                .collect()
        };
        FamilyContext {
            family,
            cluster_cidrs: nets(&model.cluster_cidrs),
            node_ips: model
                .node_ips
                .iter()
                .filter(|ip| IpFamily::of(ip) == family)
                .copied()
                .collect(),
            node_port_addresses: nets(&model.node_port_addresses),
            masquerade_all: model.masquerade_all,
            large,
        }
    }
}

/// What already exists in the kernel, from `iptables-save` (full syncs only).
#[derive(Clone, Debug, Default)]
pub struct KernelChains {
    /// `SY-` chains present, per table.
    pub nat: HashSet<String>,
    pub filter: HashSet<String>,
    /// Which of [`JUMPS`] are present.
    pub jumps: Vec<bool>,
}

impl KernelChains {
    /// Parses `iptables-save` output.
    pub fn parse(saved: &str) -> KernelChains {
        let mut k = KernelChains {
            jumps: vec![false; JUMPS.len()],
            ..Default::default()
        };
        let mut table = None;
        for line in saved.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = match t.trim() {
                    "nat" => Some(Table::Nat),
                    "filter" => Some(Table::Filter),
                    _ => None,
                };
                continue;
            }
            let Some(table) = table else { continue };
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or("");
                if name.starts_with(chains::PREFIX) {
                    match table {
                        Table::Nat => k.nat.insert(name.to_string()),
                        Table::Filter => k.filter.insert(name.to_string()),
                    };
                }
            } else if line.starts_with("-A ") {
                for (i, j) in JUMPS.iter().enumerate() {
                    if j.table == table && j.matches_saved(line) {
                        k.jumps[i] = true;
                    }
                }
            }
        }
        k
    }

    fn chains(&self, table: Table) -> &HashSet<String> {
        match table {
            Table::Nat => &self.nat,
            Table::Filter => &self.filter,
        }
    }
}

/// One service port's rules in one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRules {
    /// Declared nat chains, bodies (`-A …` lines) and the record.
    pub body: String,
    pub record: PortRecord,
}

struct Body<'a> {
    text: String,
    rules: usize,
    chains: Vec<String>,
    large: bool,
    name: &'a str,
}

impl Body<'_> {
    /// `-A CHAIN [comment] REST`.
    fn rule(&mut self, chain: &str, comment_text: Option<&str>, rest: std::fmt::Arguments<'_>) {
        self.text.push_str("-A ");
        self.text.push_str(chain);
        self.text.push(' ');
        if let Some(c) = comment_text {
            write_comment(&mut self.text, c);
            self.text.push(' ');
        }
        let _ = self.text.write_fmt(rest);
        self.text.push('\n');
        self.rules += 1;
    }

    /// A per-endpoint rule: commented unless in large-cluster mode.
    fn endpoint_rule(&mut self, chain: &str, comment_text: &str, rest: std::fmt::Arguments<'_>) {
        let c = (!self.large).then_some(comment_text);
        self.rule(chain, c, rest);
    }
}

fn spec(comment_text: &str, rest: std::fmt::Arguments<'_>) -> String {
    let mut s = comment(comment_text);
    s.push(' ');
    let _ = s.write_fmt(rest);
    s
}

fn endpoints_of(eps: &[Endpoint], family: IpFamily, used: bool) -> Vec<&Endpoint> {
    if !used {
        return Vec::new();
    }
    eps.iter().filter(|e| e.family() == family).collect()
}

/// Renders one service port for one family; `None` when the port has no address in
/// this family (each family's tables only get their own addresses).
pub fn render_port(sp: &ServicePort, ctx: &FamilyContext) -> Option<PortRules> {
    let family = ctx.family;
    if !sp.has_family(family) {
        return None;
    }
    let of = |ips: &[IpAddr]| -> Vec<IpAddr> {
        ips.iter()
            .filter(|ip| IpFamily::of(ip) == family)
            .copied()
            .collect()
    };
    let cluster_ips = of(&sp.cluster_ips);
    let external_ips = of(&sp.external_ips);
    let lb_ips = of(&sp.load_balancer_ips);
    let externally = sp.node_port.is_some() || !external_ips.is_empty() || !lb_ips.is_empty();
    let ext_local = sp.external_policy_local && externally;
    let uses_cluster = !sp.internal_policy_local || externally;
    let uses_local = sp.internal_policy_local || ext_local;
    let cluster_eps = endpoints_of(&sp.cluster_endpoints, family, uses_cluster);
    let local_eps = endpoints_of(&sp.local_endpoints, family, uses_local);
    // Every endpoint reachable by some chain, with its SEP chain name.
    let mut seps: BTreeMap<(IpAddr, u16), (&Endpoint, String)> = BTreeMap::new();
    for e in cluster_eps.iter().chain(&local_eps) {
        seps.entry((e.ip, e.port))
            .or_insert_with(|| (*e, endpoint_chain(&sp.name, e)));
    }
    // Usable endpoints anywhere, even when none is reachable under this port's policies
    // (internalTrafficPolicy Local without local endpoints: DROP, not REJECT).
    let has_endpoints =
        !seps.is_empty() || sp.cluster_endpoints.iter().any(|e| e.family() == family);
    let uses_svc = !cluster_eps.is_empty();
    let uses_svl = !local_eps.is_empty();
    let svc = PortChain::Cluster.name(&sp.name);
    let svl = PortChain::Local.name(&sp.name);
    let ext = PortChain::External.name(&sp.name);
    let fw = PortChain::Firewall.name(&sp.name);
    let (internal_chain, has_internal) = if sp.internal_policy_local {
        (&svl, uses_svl)
    } else {
        (&svc, uses_svc)
    };
    let (external_policy_chain, has_external) = if ext_local {
        (&svl, uses_svl)
    } else {
        (&svc, uses_svc)
    };
    let uses_ext = has_endpoints && externally;
    let ranges: Vec<IpNet> = sp
        .load_balancer_source_ranges
        .iter()
        .filter(|n| IpFamily::of_net(n) == family)
        .copied()
        .collect();
    // Source ranges only of the other family: nothing of this family is allowed.
    let uses_fw = has_endpoints && !lb_ips.is_empty() && !sp.load_balancer_source_ranges.is_empty();

    let name = sp.name.to_string();
    let proto = sp.protocol.as_str();
    let port = sp.port;
    let no_endpoints = format!("{name} has no endpoints");
    let no_local = format!("{name} has no local endpoints");
    let (internal_filter, internal_filter_comment) = if !has_endpoints {
        ("REJECT", &no_endpoints)
    } else {
        ("DROP", &no_local)
    };
    let (external_filter, external_filter_comment) = (internal_filter, internal_filter_comment);

    let mut d = Dispatch::default();
    let mut body = Body {
        text: String::new(),
        rules: 0,
        chains: Vec::new(),
        large: ctx.large,
        name: &name,
    };

    // Cluster IPs.
    let cluster_comment = format!("{name} cluster IP");
    for ip in &cluster_ips {
        if has_internal {
            d.nat_services.push(spec(
                &cluster_comment,
                format_args!("-m {proto} -p {proto} -d {ip} --dport {port} -j {internal_chain}"),
            ));
        } else {
            d.filter_services.push(spec(
                internal_filter_comment,
                format_args!("-m {proto} -p {proto} -d {ip} --dport {port} -j {internal_filter}"),
            ));
        }
    }
    // External IPs.
    let external_comment = format!("{name} external IP");
    for ip in &external_ips {
        if has_endpoints {
            d.nat_services.push(spec(
                &external_comment,
                format_args!("-m {proto} -p {proto} -d {ip} --dport {port} -j {ext}"),
            ));
        }
        if !has_external {
            d.filter_external.push(spec(
                external_filter_comment,
                format_args!("-m {proto} -p {proto} -d {ip} --dport {port} -j {external_filter}"),
            ));
        }
    }
    // Load-balancer IPs.
    let lb_comment = format!("{name} loadbalancer IP");
    let lb_target = if uses_fw { &fw } else { &ext };
    for ip in &lb_ips {
        if has_endpoints {
            d.nat_services.push(spec(
                &lb_comment,
                format_args!("-m {proto} -p {proto} -d {ip} --dport {port} -j {lb_target}"),
            ));
        }
        if uses_fw {
            d.filter_firewall.push(spec(
                &format!("{name} traffic not accepted by {fw}"),
                format_args!("-m {proto} -p {proto} -d {ip} --dport {port} -j DROP"),
            ));
        }
        if !has_external {
            d.filter_external.push(spec(
                external_filter_comment,
                format_args!("-m {proto} -p {proto} -d {ip} --dport {port} -j {external_filter}"),
            ));
        }
    }
    // NodePort.
    if let Some(node_port) = sp.node_port {
        if has_endpoints {
            d.nat_nodeports.push(spec(
                &name,
                format_args!("-m {proto} -p {proto} --dport {node_port} -j {ext}"),
            ));
        }
        if !has_external {
            d.filter_external.push(spec(
                external_filter_comment,
                format_args!(
                    "-m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {node_port} -j {external_filter}"
                ),
            ));
        }
    }
    if let Some(hc) = sp.health_check_node_port {
        d.filter_nodeports.push(spec(
            &format!("{name} health check node port"),
            format_args!("-m tcp -p tcp --dport {hc} -j ACCEPT"),
        ));
    }

    // Firewall chain.
    if uses_fw {
        body.chains.push(fw.clone());
        for range in &ranges {
            body.rule(&fw, Some(&lb_comment), format_args!("-s {range} -j {ext}"));
        }
        let from_node = ranges
            .iter()
            .any(|r| ctx.node_ips.iter().any(|ip| r.contains(ip)));
        if from_node {
            for ip in &lb_ips {
                body.rule(&fw, Some(&lb_comment), format_args!("-s {ip} -j {ext}"));
            }
        }
        body.rule(
            &fw,
            Some(&format!(
                "other traffic to {name} will be dropped by {}",
                chains::FIREWALL
            )),
            format_args!("-j RETURN"),
        );
    }

    // External chain.
    if uses_ext {
        body.chains.push(ext.clone());
        if !ext_local {
            body.rule(
                &ext,
                Some(&format!(
                    "masquerade traffic for {name} external destinations"
                )),
                format_args!("-j {}", chains::MARK_MASQ),
            );
        } else {
            if uses_svc {
                let pod = format!("pod traffic for {name} external destinations");
                for cidr in &ctx.cluster_cidrs {
                    body.rule(&ext, Some(&pod), format_args!("-s {cidr} -j {svc}"));
                }
            }
            body.rule(
                &ext,
                Some(&format!(
                    "masquerade LOCAL traffic for {name} external destinations"
                )),
                format_args!("-m addrtype --src-type LOCAL -j {}", chains::MARK_MASQ),
            );
            if uses_svc {
                body.rule(
                    &ext,
                    Some(&format!(
                        "route LOCAL traffic for {name} external destinations"
                    )),
                    format_args!("-m addrtype --src-type LOCAL -j {svc}"),
                );
            }
        }
        if has_external {
            body.rule(&ext, None, format_args!("-j {external_policy_chain}"));
        }
    }

    // Policy chains.
    for (chain, used, eps) in [(&svc, uses_svc, &cluster_eps), (&svl, uses_svl, &local_eps)] {
        if !used {
            continue;
        }
        body.chains.push(chain.clone());
        if has_internal && chain == internal_chain {
            for ip in &cluster_ips {
                let masq = format_args!("-m {proto} -p {proto} -d {ip} --dport {port}");
                if ctx.masquerade_all {
                    body.rule(
                        chain,
                        Some(&cluster_comment),
                        format_args!("{masq} -j {}", chains::MARK_MASQ),
                    );
                } else if ctx.cluster_cidrs.iter().any(|c| c.prefix_len() == 0) {
                    // Every source is in the cluster: nothing to masquerade (and
                    // iptables-nft cannot express `! -s 0.0.0.0/0`: the kernel
                    // refuses a zero-length compare).
                } else if ctx.cluster_cidrs.len() == 1 {
                    body.rule(
                        chain,
                        Some(&cluster_comment),
                        format_args!(
                            "{masq} ! -s {} -j {}",
                            ctx.cluster_cidrs[0],
                            chains::MARK_MASQ
                        ),
                    );
                } else if ctx.cluster_cidrs.len() > 1 {
                    body.rule(
                        chain,
                        Some(&cluster_comment),
                        format_args!("{masq} -j {}", chains::MARK_NONLOCAL),
                    );
                }
            }
        }
        write_choice(&mut body, chain, eps, &seps, sp.affinity_timeout);
    }

    // Endpoint chains.
    for (e, chain) in seps.values() {
        body.chains.push(chain.clone());
        let name = body.name.to_string();
        body.endpoint_rule(
            chain,
            &name,
            format_args!("-s {} -j {}", e.ip, chains::MARK_MASQ),
        );
        let affinity = if sp.affinity_timeout.is_some() {
            format!("-m recent --name {chain} --set ")
        } else {
            String::new()
        };
        body.endpoint_rule(
            chain,
            &name,
            format_args!("{affinity}-m {proto} -p {proto} -j DNAT --to-destination {e}"),
        );
    }

    Some(PortRules {
        body: body.text,
        record: PortRecord {
            chains: body.chains,
            body_rules: body.rules,
            dispatch: d,
        },
    })
}

/// Affinity checks, then the random choice among `eps`, as upstream's
/// `writeServiceToEndpointRules`.
fn write_choice(
    body: &mut Body<'_>,
    chain: &str,
    eps: &[&Endpoint],
    seps: &BTreeMap<(IpAddr, u16), (&Endpoint, String)>,
    affinity: Option<u32>,
) {
    let name = body.name.to_string();
    let sep = |e: &Endpoint| &seps[&(e.ip, e.port)].1;
    if let Some(seconds) = affinity {
        for e in eps {
            let target = sep(e);
            body.endpoint_rule(
                chain,
                &format!("{name} -> {e}"),
                format_args!(
                    "-m recent --name {target} --rcheck --seconds {seconds} --reap -j {target}"
                ),
            );
        }
    }
    let n = eps.len();
    for (i, e) in eps.iter().enumerate() {
        let target = sep(e);
        let c = format!("{name} -> {e}");
        if i + 1 < n {
            let p = 1.0 / (n - i) as f64;
            body.endpoint_rule(
                chain,
                &c,
                format_args!("-m statistic --mode random --probability {p:.10} -j {target}"),
            );
        } else {
            body.endpoint_rule(chain, &c, format_args!("-j {target}"));
        }
    }
}

/// Rules of the fixed chains of one table (returns the text and the rule count).
fn fixed_rules(table: Table, ctx: &FamilyContext) -> (String, usize) {
    let mut out = String::new();
    let mut n = 0;
    let mut rule = |chain: &str, rest: std::fmt::Arguments<'_>| {
        let _ = writeln!(out, "-A {chain} {rest}");
        n += 1;
    };
    let mark = chains::MASQUERADE_MARK;
    match table {
        Table::Filter => {
            let f = chains::FORWARD;
            rule(f, format_args!("-m conntrack --ctstate INVALID -j DROP"));
            rule(
                f,
                format_args!(
                    "-m comment --comment \"switchyard forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT"
                ),
            );
            rule(
                f,
                format_args!(
                    "-m comment --comment \"switchyard forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
                ),
            );
        }
        Table::Nat => {
            let p = chains::POSTROUTING;
            rule(p, format_args!("-m mark ! --mark {mark}/{mark} -j RETURN"));
            rule(p, format_args!("-j MARK --xor-mark {mark}"));
            rule(
                p,
                format_args!(
                    "-m comment --comment \"switchyard service traffic requiring SNAT\" -j MASQUERADE --random-fully"
                ),
            );
            rule(chains::MARK_MASQ, format_args!("-j MARK --or-mark {mark}"));
            if ctx.cluster_cidrs.len() > 1 {
                for cidr in &ctx.cluster_cidrs {
                    rule(chains::MARK_NONLOCAL, format_args!("-s {cidr} -j RETURN"));
                }
                rule(
                    chains::MARK_NONLOCAL,
                    format_args!("-j {}", chains::MARK_MASQ),
                );
            }
        }
    }
    (out, n)
}

/// The last rules of nat `SY-SERVICES`: local destinations within nodePortAddresses go
/// to `SY-NODEPORTS`.
fn nodeport_jumps(ctx: &FamilyContext) -> (String, usize) {
    let mut out = String::new();
    let c = "-m comment --comment \"switchyard service nodeports, NOTE: this must be the last rule in this chain\"";
    let loopback = match ctx.family {
        IpFamily::V4 => "127.0.0.0/8",
        IpFamily::V6 => "::1/128",
    };
    for cidr in &ctx.node_port_addresses {
        if cidr.prefix_len() == 0 {
            let _ = writeln!(
                out,
                "-A {} {c} -m addrtype --dst-type LOCAL ! -d {loopback} -j {}",
                chains::SERVICES,
                chains::NODEPORTS
            );
        } else {
            let _ = writeln!(
                out,
                "-A {} {c} -d {cidr} -m addrtype --dst-type LOCAL -j {}",
                chains::SERVICES,
                chains::NODEPORTS
            );
        }
    }
    (out, ctx.node_port_addresses.len())
}

/// Declares a few chains in name order (partial syncs and the fixed chains). A full
/// sync's per-port chains are declared in model order instead, see
/// [`render_family_full`].
fn declare_sorted(out: &mut String, mut chains: Vec<&str>) {
    chains.sort_unstable();
    chains.dedup();
    for c in chains {
        declare(out, c);
    }
}

fn declare(out: &mut String, chain: &str) {
    out.push(':');
    out.push_str(chain);
    out.push_str(" - [0:0]\n");
}

fn delete(out: &mut String, chain: &str) {
    out.push_str("-X ");
    out.push_str(chain);
    out.push('\n');
}

fn push_spec(out: &mut String, op: &str, chain: &str, spec: &str) {
    out.push_str(op);
    out.push(' ');
    out.push_str(chain);
    out.push(' ');
    out.push_str(spec);
    out.push('\n');
}

/// Missing jumps from builtin chains, inserted first in their chain.
fn jumps(out: &mut String, table: Table, kernel: &KernelChains) {
    // Inserted in reverse, so they end up in `JUMPS` order.
    for (i, j) in JUMPS.iter().enumerate().rev() {
        if j.table == table && !kernel.jumps.get(i).copied().unwrap_or(false) {
            push_spec(out, "-I", &format!("{} 1", j.builtin), &j.spec());
        }
    }
}

/// Stale `SY-` chains (present in the kernel, not wanted): flushed, then deleted at the
/// end of the table's section.
fn stale<'a>(kernel: &'a KernelChains, table: Table, wanted: &HashSet<&str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = kernel
        .chains(table)
        .iter()
        .map(String::as_str)
        .filter(|c| !wanted.contains(c))
        .collect();
    v.sort_unstable();
    v
}

/// How the full restore input is shaped for the tool that reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Shape {
    /// Plain input, for any `*-restore` (and `--test`).
    #[default]
    Plain,
    /// For `iptables-nft-restore --noflush`: the nat section lists the table (`-S`,
    /// [`LIST_ALL`]) before declaring the per-port chains. Without it, the tool records
    /// every chain name a command names in a sorted linked list (`nft_cache_level_set`
    /// → `cache_chain_list_insert`, a linear scan per command): O(commands × chains),
    /// 78 s at 10k services. A command naming no chain makes it fetch all chains instead
    /// and skip that list; `-S` is the only such command that changes nothing (its
    /// output is discarded). It must come after the jumps into builtin chains: `-S`
    /// fakes missing builtin chains in the tool's cache, so a jump inserted after it
    /// into a builtin chain the kernel does not have yet would fail.
    NftListFirst,
}

/// The line that makes iptables-nft-restore fetch all chains of the table (see
/// [`Shape::NftListFirst`]).
pub const LIST_ALL: &str = "-S\n";

/// `text` without its [`LIST_ALL`] lines (for a table iptables-nft cannot list, e.g. one
/// holding rules made with `nft`: then the slow shape is the only one that works).
pub fn without_list_all(text: &str) -> String {
    text.replace(&format!("\n{LIST_ALL}"), "\n")
}

/// The full restore input for one family, with the record of what it programs.
///
/// The per-port chains are declared in model order, that is in no particular name
/// order (their names are hashes). iptables-nft sorts the chains it lists (`-S`,
/// `iptables-nft-save`) with a first-element-pivot quicksort of the kernel's chain list,
/// which is in creation order: chains created in name order make every listing
/// quadratic (`iptables-nft-save -t nat` 55 s at 10k services, 2.2 s otherwise).
pub fn render_family_full(
    model: &NodeModel,
    family: IpFamily,
    large: bool,
    kernel: &KernelChains,
    shape: Shape,
) -> (String, FamilyRecord) {
    let ctx = FamilyContext::new(model, family, large);
    let mut record = FamilyRecord::default();
    let mut bodies = String::new();
    let mut port_decls = String::new();
    let mut lists: [String; 6] = Default::default();
    for sp in model.services.values() {
        let Some(rules) = render_port(sp, &ctx) else {
            continue;
        };
        bodies.push_str(&rules.body);
        for c in &rules.record.chains {
            declare(&mut port_decls, c);
        }
        for (i, (_, chain, specs)) in rules.record.dispatch.lists().iter().enumerate() {
            for s in specs.iter() {
                push_spec(&mut lists[i], "-A", chain, s);
            }
        }
        record.set(sp.name.clone(), Some(rules.record));
    }
    let mut out = String::with_capacity(bodies.len() * 5 / 4 + port_decls.len() + 4096);

    // filter
    out.push_str("*filter\n");
    let (fixed, n) = fixed_rules(Table::Filter, &ctx);
    record.fixed_filter = n;
    let wanted: HashSet<&str> = Table::Filter.fixed_chains().iter().copied().collect();
    let stale_filter = stale(kernel, Table::Filter, &wanted);
    declare_sorted(
        &mut out,
        Table::Filter
            .fixed_chains()
            .iter()
            .copied()
            .chain(stale_filter.iter().copied())
            .collect(),
    );
    out.push_str(&fixed);
    for l in &lists[2..] {
        out.push_str(l);
    }
    jumps(&mut out, Table::Filter, kernel);
    for c in &stale_filter {
        delete(&mut out, c);
    }
    out.push_str("COMMIT\n");

    // nat: fixed chains and the jumps into them, [the listing], per-port chains, rules.
    out.push_str("*nat\n");
    let (fixed, n) = fixed_rules(Table::Nat, &ctx);
    let (np, np_n) = nodeport_jumps(&ctx);
    record.fixed_nat = n + np_n;
    record.nodeport_jumps = np_n;
    let mut wanted: HashSet<&str> = Table::Nat.fixed_chains().iter().copied().collect();
    for p in record.ports.values() {
        wanted.extend(p.chains.iter().map(String::as_str));
    }
    let stale_nat = stale(kernel, Table::Nat, &wanted);
    declare_sorted(&mut out, Table::Nat.fixed_chains().to_vec());
    jumps(&mut out, Table::Nat, kernel);
    if shape == Shape::NftListFirst {
        out.push_str(LIST_ALL);
    }
    out.push_str(&port_decls);
    for c in &stale_nat {
        declare(&mut out, c);
    }
    out.push_str(&fixed);
    out.push_str(&bodies);
    out.push_str(&lists[0]);
    out.push_str(&np);
    out.push_str(&lists[1]);
    for c in &stale_nat {
        delete(&mut out, c);
    }
    out.push_str("COMMIT\n");
    (out, record)
}

/// The full restore input for one family of `model`, as for a first sync on a node
/// with none of Switchyard's chains. Pure; for tests and benchmarks.
pub fn render_full(model: &NodeModel, family: IpFamily) -> String {
    render_full_shaped(model, family, Shape::Plain)
}

/// [`render_full`] in a given [`Shape`].
pub fn render_full_shaped(model: &NodeModel, family: IpFamily, shape: Shape) -> String {
    render_family_full(
        model,
        family,
        large_cluster(model),
        &KernelChains::default(),
        shape,
    )
    .0
}

/// A partial sync of one family: its restore input (empty: nothing to do) and the
/// record updates to commit once it applied.
#[derive(Debug, Default)]
pub struct FamilyPartial {
    pub text: String,
    pub updates: Vec<(ServicePortName, Option<PortRecord>)>,
}

/// Rewrites the chains of the service ports named in `changes` and patches their rules
/// in the shared chains (`-D` what went away, `-I`/`-A` what is new).
pub fn render_family_partial(
    model: &NodeModel,
    changes: &ChangeSet,
    applied: &Applied,
    family: IpFamily,
) -> FamilyPartial {
    let ctx = FamilyContext::new(model, family, applied.large);
    let record = applied.family(family);
    let mut filter = String::new();
    let mut decls: Vec<String> = Vec::new();
    let mut bodies = String::new();
    let mut nat = String::new();
    let mut deletes = Vec::new();
    let mut updates = Vec::new();
    let empty = PortRecord::default();
    for name in changes
        .added
        .iter()
        .chain(&changes.changed)
        .chain(&changes.removed)
    {
        let old = record.ports.get(name);
        let new = model
            .services
            .get(name)
            .and_then(|sp| render_port(sp, &ctx));
        if old.is_none() && new.is_none() {
            continue;
        }
        let old_r = old.unwrap_or(&empty);
        let new_r = new.as_ref().map(|r| &r.record).unwrap_or(&empty);
        decls.extend(new_r.chains.iter().cloned());
        let kept: HashSet<&str> = new_r.chains.iter().map(String::as_str).collect();
        for c in &old_r.chains {
            if !kept.contains(c.as_str()) {
                decls.push(c.clone());
                deletes.push(c.clone());
            }
        }
        if let Some(r) = &new {
            bodies.push_str(&r.body);
        }
        for ((table, chain, old_l), (_, _, new_l)) in old_r
            .dispatch
            .lists()
            .iter()
            .zip(new_r.dispatch.lists().iter())
        {
            let out = match table {
                Table::Filter => &mut filter,
                Table::Nat => &mut nat,
            };
            for s in old_l.iter().filter(|s| !new_l.contains(s)) {
                push_spec(out, "-D", chain, s);
            }
            let add = if *chain == chains::SERVICES && *table == Table::Nat {
                // Before the NodePort jumps, which must stay last.
                format!("{chain} 1")
            } else {
                chain.to_string()
            };
            let op = if *chain == chains::SERVICES && *table == Table::Nat {
                "-I"
            } else {
                "-A"
            };
            for s in new_l.iter().filter(|s| !old_l.contains(s)) {
                push_spec(out, op, &add, s);
            }
        }
        updates.push((name.clone(), new.map(|r| r.record)));
    }
    let mut text = String::new();
    if !filter.is_empty() {
        text.push_str("*filter\n");
        text.push_str(&filter);
        text.push_str("COMMIT\n");
    }
    if !decls.is_empty() || !nat.is_empty() {
        text.push_str("*nat\n");
        declare_sorted(&mut text, decls.iter().map(String::as_str).collect());
        text.push_str(&bodies);
        text.push_str(&nat);
        for c in &deletes {
            delete(&mut text, c);
        }
        text.push_str("COMMIT\n");
    }
    FamilyPartial { text, updates }
}

/// Restore input removing everything Switchyard made in one family, given its
/// `iptables-save` output: jump rules from builtin chains (any rule there targeting an
/// `SY-` chain), then every `SY-` chain. `None` when there is nothing to remove. With
/// [`Shape::NftListFirst`], each table's section starts with [`LIST_ALL`] (tens of
/// thousands of chains to delete otherwise cost minutes in iptables-nft-restore).
pub fn render_cleanup(saved: &str, shape: Shape) -> Option<String> {
    let mut out = String::new();
    let mut section = String::new();
    let mut chains_here: Vec<String> = Vec::new();
    let mut table: Option<String> = None;
    let mut any = false;
    for line in saved.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = Some(t.trim().to_string());
            section.clear();
            chains_here.clear();
            continue;
        }
        let Some(t) = &table else { continue };
        if line == "COMMIT" {
            if !section.is_empty() || !chains_here.is_empty() {
                let _ = writeln!(out, "*{t}");
                if shape == Shape::NftListFirst {
                    out.push_str(LIST_ALL);
                }
                out.push_str(&section);
                for c in &chains_here {
                    declare(&mut out, c);
                }
                for c in &chains_here {
                    delete(&mut out, c);
                }
                out.push_str("COMMIT\n");
                any = true;
            }
            table = None;
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            if name.starts_with(chains::PREFIX) {
                chains_here.push(name.to_string());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or("");
            let targets_ours = rule
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1].starts_with(chains::PREFIX));
            if !chain.starts_with(chains::PREFIX) && targets_ours {
                let _ = writeln!(section, "-D {rule}");
            }
        }
    }
    any.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_removes_only_ours() {
        let saved = "*filter\n:INPUT ACCEPT [0:0]\n:FOREIGN - [0:0]\n:SY-FIREWALL - [0:0]\n-A INPUT -m comment --comment \"switchyard x\" -j SY-FIREWALL\n-A INPUT -j FOREIGN\n-A FOREIGN -j ACCEPT\n-A SY-FIREWALL -j DROP\nCOMMIT\n*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n";
        let out = render_cleanup(saved, Shape::Plain).unwrap();
        assert_eq!(
            out,
            "*filter\n-D INPUT -m comment --comment \"switchyard x\" -j SY-FIREWALL\n:SY-FIREWALL - [0:0]\n-X SY-FIREWALL\nCOMMIT\n"
        );
        assert!(render_cleanup("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n", Shape::Plain).is_none());
        let nft = render_cleanup(saved, Shape::NftListFirst).unwrap();
        assert!(nft.starts_with("*filter\n-S\n-D INPUT "), "{nft}");
    }
}
