//! One service port's plan, in one family, encoded as iptables rules in the shape of
//! upstream kube-proxy's iptables proxier (`pkg/proxy/iptables/proxier.go`). Nothing
//! here decides Service semantics: the plan's targets, short circuit, masquerade,
//! firewall and affinity say what to write.
//!
//! - Dispatch, in the shared chains: nat `SERVICES` sends each cluster IP to the chain
//!   of the internal target, each external IP to `EXT-`, each LB IP to `FW-` (source
//!   ranges) or `EXT-`; nat `NODEPORTS` sends the NodePort to `EXT-`. A `Drop` or
//!   `Reject` target is a rule in filter instead (`SERVICES` for cluster IPs,
//!   `EXTERNAL-SERVICES` for external and LB IPs, `EXTERNAL-NODEPORTS` for the
//!   NodePort), and a health-check NodePort an ACCEPT in filter `NODEPORTS`.
//! - One chain per distinct set of backends the targets use (`SVC-`, then `SVL-`):
//!   internal, external and short-circuit targets with the same backends share it. It
//!   masquerades cluster IP traffic (only in the internal target's chain, matched on
//!   the cluster IP since the chain is shared), checks ClientIP affinity
//!   (`-m recent --rcheck`), and picks an endpoint with `-m statistic`, each pick a
//!   DNAT. Upstream has a chain per endpoint (`SEP-`) here; see [`backend_chains`] for
//!   why there is none, and `fixed.rs` for the hairpin masquerade that was in it.
//! - `EXT-` when the port handles outside traffic (reachable from outside, with
//!   endpoints somewhere): masquerade mark, or under a Local policy the short circuit
//!   (pods by cluster CIDR, the node by `addrtype --src-type LOCAL`, masqueraded), then
//!   the external target.
//! - `FW-` for LB source ranges, independent of endpoints: with an `EXT-` chain it is a
//!   nat chain sending allowed sources on (what it does not DNAT, filter `FIREWALL`
//!   drops, as upstream); without one (the port rejects) it is a filter chain returning
//!   allowed sources, which are then rejected, and dropping the rest — clients outside
//!   the ranges never learn whether the service exists (upstream nftables' behaviour).
//!
//! A `Reject` target refuses TCP with a reset (`--reject-with tcp-reset`), other
//! protocols with ICMP port unreachable: the kernel rate-limits ICMP errors, so an ICMP
//! refusal can turn into a client timeout, and Linux ignores an ICMPv6 unreachable for
//! the first SYN of a connection (the nftables engine does the same; both upstream
//! proxiers send ICMP).

use std::fmt::{Arguments, Write as _};

use ipnet::IpNet;
use switchyard_model::{
    Backend, Backends, FamilyPlan, IpFamily, MasqueradeSources, NodeModel, PortDigest, Protocol,
    ServicePortPlan, Target,
};

use crate::{
    chains::{write_comment, Chains, PortChain, Table},
    record::{DispatchChain, PortRecord},
};

/// Node-wide settings of one family: what the per-port encoding and the fixed rules
/// need.
#[derive(Clone, Debug)]
pub struct FamilyContext<'a> {
    pub family: IpFamily,
    pub chains: &'a Chains,
    /// This family's cluster CIDRs: the pod detector of the short circuit, and the
    /// sources not masqueraded.
    pub cluster_cidrs: Vec<IpNet>,
    /// This family's `nodePortAddresses` (local addresses within them, never loopback,
    /// accept NodePorts).
    pub node_port_addresses: Vec<IpNet>,
    /// Omit comments on per-endpoint rules (upstream's large-cluster mode).
    pub large: bool,
    /// Drop forwarded packets conntrack finds INVALID (not when
    /// `nf_conntrack_tcp_be_liberal` is set, as upstream).
    pub drop_invalid: bool,
}

impl<'a> FamilyContext<'a> {
    pub fn new(
        model: &NodeModel,
        family: IpFamily,
        chains: &'a Chains,
        large: bool,
        drop_invalid: bool,
    ) -> FamilyContext<'a> {
        FamilyContext {
            family,
            chains,
            cluster_cidrs: model.cluster_cidrs(family),
            node_port_addresses: model.node_port_addresses(family),
            large,
            drop_invalid,
        }
    }
}

/// One service port's rules in one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRules {
    /// The bodies of the port's own chains (`-A …` lines), per table (`Table::index`).
    pub body: [String; 2],
    pub record: PortRecord,
}

/// Encodes `plan` for `ctx.family`; `None` when the port has no plan in this family
/// (each family's tables only get their own addresses).
pub fn encode_port(ctx: &FamilyContext<'_>, plan: &ServicePortPlan) -> Option<PortRules> {
    let f = plan.family(ctx.family)?;
    let layout = Layout::new(ctx.chains, plan, f);
    let mut w = Writer::new(ctx, plan);
    cluster_ip_dispatch(&mut w, f, &layout);
    external_dispatch(&mut w, f, &layout);
    if let Some(hc) = &plan.health_check {
        // Accepted whether or not this node has endpoints, as upstream.
        let port = hc.node_port;
        w.dispatch(
            DispatchChain::HealthCheck,
            &format!("{} health check node port", w.label),
            format_args!("-m tcp -p tcp --dport {port} -j ACCEPT"),
        );
    }
    firewall_chain(&mut w, f, &layout);
    external_chain(&mut w, f, &layout);
    backend_chains(&mut w, f, &layout);
    Some(w.finish())
}

/// The chains of one port in one family, and which target each serves.
struct Layout {
    digest: PortDigest,
    /// Each distinct set of backends with its chain. The short circuit's (cluster-wide)
    /// set comes first, then the external target's, then the internal one's, so the
    /// names match upstream's `SVC-` (cluster policy) and `SVL-` (local policy).
    backend_chains: Vec<(Backends, String)>,
    /// `EXT-`, when the port handles outside traffic.
    external: Option<String>,
    /// `FW-`, when the LB IPs have source ranges, and its table.
    firewall: Option<(Table, String)>,
}

impl Layout {
    fn new(chains: &Chains, plan: &ServicePortPlan, f: &FamilyPlan) -> Layout {
        let digest = plan.name.digest();
        // Upstream: the external chain exists iff the port is reachable from outside
        // and has endpoints somewhere.
        let external = (f.externally_accessible() && !f.rejects())
            .then(|| chains.port(PortChain::External, &digest));
        let wanted = [
            f.short_circuit.as_ref(),
            external.as_ref().and_then(|_| f.external.backends()),
            f.internal.backends(),
        ];
        let mut backend_chains: Vec<(Backends, String)> = Vec::new();
        for backends in wanted.into_iter().flatten() {
            if !backend_chains.iter().any(|(b, _)| b == backends) {
                let kind = [PortChain::Service, PortChain::Local, PortChain::Alternate]
                    [backend_chains.len()];
                backend_chains.push((backends.clone(), chains.port(kind, &digest)));
            }
        }
        let firewall = f.firewall.as_ref().map(|_| {
            let table = if external.is_some() {
                Table::Nat
            } else {
                Table::Filter
            };
            (table, chains.port(PortChain::Firewall, &digest))
        });
        Layout {
            digest,
            backend_chains,
            external,
            firewall,
        }
    }

    /// The chain choosing among `backends`.
    fn chain_of(&self, backends: &Backends) -> &str {
        self.backend_chains
            .iter()
            .find(|(b, _)| b == backends)
            .map(|(_, c)| c.as_str())
            .expect("every target's backends have a chain")
    }
}

/// Accumulates one port's rules and record.
struct Writer<'a> {
    ctx: &'a FamilyContext<'a>,
    /// The port's name, for comments.
    label: String,
    protocol: Protocol,
    port: u16,
    out: PortRules,
}

impl<'a> Writer<'a> {
    fn new(ctx: &'a FamilyContext<'a>, plan: &ServicePortPlan) -> Writer<'a> {
        Writer {
            ctx,
            label: plan.name.to_string(),
            protocol: plan.protocol,
            port: plan.port,
            out: PortRules::default(),
        }
    }

    fn chains(&self) -> &'a Chains {
        self.ctx.chains
    }

    /// Declares a chain the port owns.
    fn own(&mut self, table: Table, chain: &str) {
        self.out.record.chains[table.index()].push(chain.to_string());
    }

    /// `-A CHAIN [comment] REST` in the port's own chain.
    fn rule(&mut self, table: Table, chain: &str, comment: Option<&str>, rest: Arguments<'_>) {
        let text = &mut self.out.body[table.index()];
        text.push_str("-A ");
        text.push_str(chain);
        text.push(' ');
        if let Some(c) = comment {
            write_comment(text, c);
            text.push(' ');
        }
        let _ = text.write_fmt(rest);
        text.push('\n');
        self.out.record.body_rules[table.index()] += 1;
    }

    /// A per-endpoint nat rule: commented unless in large-cluster mode.
    fn endpoint_rule(&mut self, chain: &str, comment: &str, rest: Arguments<'_>) {
        let c = (!self.ctx.large).then_some(comment);
        self.rule(Table::Nat, chain, c, rest);
    }

    /// A rule in one of the shared chains.
    fn dispatch(&mut self, chain: DispatchChain, comment: &str, rest: Arguments<'_>) {
        let mut spec = String::new();
        write_comment(&mut spec, comment);
        spec.push(' ');
        let _ = spec.write_fmt(rest);
        // One rule per spec (an address listed twice): partial syncs diff specs as sets.
        if !self.out.record.dispatch.get(chain).contains(&spec) {
            self.out.record.dispatch.push(chain, spec);
        }
    }

    /// `-m P -p P`: the port's protocol.
    fn proto(&self) -> &'static str {
        self.protocol.as_str()
    }

    /// What a `Drop` or `Reject` target does, and the comment saying why.
    fn refusal(&self, target: &Target) -> (&'static str, String) {
        match (target, self.protocol) {
            (Target::Reject, Protocol::Tcp) => (
                "REJECT --reject-with tcp-reset",
                format!("{} has no endpoints", self.label),
            ),
            (Target::Reject, _) => ("REJECT", format!("{} has no endpoints", self.label)),
            _ => ("DROP", format!("{} has no local endpoints", self.label)),
        }
    }

    fn finish(self) -> PortRules {
        self.out
    }
}

/// Cluster IPs: to the internal target's chain, or a DROP/REJECT in filter.
fn cluster_ip_dispatch(w: &mut Writer<'_>, f: &FamilyPlan, layout: &Layout) {
    let (p, port) = (w.proto(), w.port);
    match f.internal.backends() {
        Some(b) => {
            let chain = layout.chain_of(b);
            let comment = format!("{} cluster IP", w.label);
            for ip in &f.cluster_ips {
                w.dispatch(
                    DispatchChain::NatServices,
                    &comment,
                    format_args!("-m {p} -p {p} -d {ip} --dport {port} -j {chain}"),
                );
            }
        }
        None => {
            let (action, comment) = w.refusal(&f.internal);
            for ip in &f.cluster_ips {
                w.dispatch(
                    DispatchChain::FilterServices,
                    &comment,
                    format_args!("-m {p} -p {p} -d {ip} --dport {port} -j {action}"),
                );
            }
        }
    }
}

/// External IPs, LB IPs and the NodePort: to `EXT-` (LB IPs through a nat `FW-`) when
/// the port handles outside traffic; a DROP/REJECT in filter when outside traffic has no
/// backend; the firewall's filter rules; the health-check ACCEPT.
fn external_dispatch(w: &mut Writer<'_>, f: &FamilyPlan, layout: &Layout) {
    let (p, port) = (w.proto(), w.port);
    let refusal = f
        .external
        .backends()
        .is_none()
        .then(|| w.refusal(&f.external));
    for vip in f.external_vips() {
        let ip = vip.addr;
        let is_lb = f.load_balancer_ips.contains(&ip);
        let firewall = layout.firewall.as_ref().filter(|_| is_lb);
        if let Some(ext) = &layout.external {
            let (to, what) = match firewall {
                Some((_, fw)) => (fw, "loadbalancer IP"),
                None if is_lb => (ext, "loadbalancer IP"),
                None => (ext, "external IP"),
            };
            w.dispatch(
                DispatchChain::NatServices,
                &format!("{} {what}", w.label),
                format_args!("-m {p} -p {p} -d {ip} --dport {port} -j {to}"),
            );
        }
        if let Some((table, fw)) = firewall {
            // nat `FW-` sent allowed sources on: drop what it did not DNAT. Without
            // endpoints, the filter `FW-` decides.
            let (action, comment) = match table {
                Table::Nat => ("DROP", format!("{} traffic not accepted by {fw}", w.label)),
                Table::Filter => (fw.as_str(), format!("{} source ranges", w.label)),
            };
            w.dispatch(
                DispatchChain::Firewall,
                &comment,
                format_args!("-m {p} -p {p} -d {ip} --dport {port} -j {action}"),
            );
        }
        if let Some((action, comment)) = &refusal {
            w.dispatch(
                DispatchChain::ExternalServices,
                comment,
                format_args!("-m {p} -p {p} -d {ip} --dport {port} -j {action}"),
            );
        }
    }
    if let Some(node_port) = f.node_port {
        if let Some(ext) = &layout.external {
            w.dispatch(
                DispatchChain::NatNodePorts,
                &w.label.clone(),
                format_args!("-m {p} -p {p} --dport {node_port} -j {ext}"),
            );
        }
        if let Some((action, comment)) = &refusal {
            w.dispatch(
                DispatchChain::ExternalNodePorts,
                comment,
                format_args!("-m {p} -p {p} --dport {node_port} -j {action}"),
            );
        }
    }
}

/// `FW-`: the allowed sources of the LB IPs (the plan's firewall, this family's).
fn firewall_chain(w: &mut Writer<'_>, f: &FamilyPlan, layout: &Layout) {
    let (Some(fw), Some((table, chain))) = (&f.firewall, &layout.firewall) else {
        return;
    };
    let (table, chain) = (*table, chain.as_str());
    w.own(table, chain);
    let comment = format!("{} loadbalancer IP", w.label);
    let allowed = fw.allowed.iter().filter(|n| w.ctx.family.has_net(n));
    match (table, &layout.external) {
        (Table::Nat, Some(ext)) => {
            for net in allowed {
                w.rule(
                    table,
                    chain,
                    Some(&comment),
                    format_args!("-s {net} -j {ext}"),
                );
            }
            let firewall = &w.chains().firewall;
            let other = format!("other traffic to {} will be dropped by {firewall}", w.label);
            w.rule(table, chain, Some(&other), format_args!("-j RETURN"));
        }
        _ => {
            for net in allowed {
                w.rule(
                    table,
                    chain,
                    Some(&comment),
                    format_args!("-s {net} -j RETURN"),
                );
            }
            let other = format!("other traffic to {}", w.label);
            w.rule(table, chain, Some(&other), format_args!("-j DROP"));
        }
    }
}

/// `EXT-`: masquerade, or the Local policy's short circuit, then the external target.
fn external_chain(w: &mut Writer<'_>, f: &FamilyPlan, layout: &Layout) {
    let Some(ext) = &layout.external else {
        return;
    };
    w.own(Table::Nat, ext);
    let mark = &w.chains().mark_masq;
    let label = w.label.clone();
    if f.masquerade.external {
        let c = format!("masquerade traffic for {label} external destinations");
        w.rule(Table::Nat, ext, Some(&c), format_args!("-j {mark}"));
    } else {
        let short_circuit = f.short_circuit.as_ref().map(|b| layout.chain_of(b));
        if let Some(sc) = short_circuit {
            let c = format!("pod traffic for {label} external destinations");
            for cidr in &w.ctx.cluster_cidrs {
                w.rule(Table::Nat, ext, Some(&c), format_args!("-s {cidr} -j {sc}"));
            }
        }
        let c = format!("masquerade LOCAL traffic for {label} external destinations");
        w.rule(
            Table::Nat,
            ext,
            Some(&c),
            format_args!("-m addrtype --src-type LOCAL -j {mark}"),
        );
        if let Some(sc) = short_circuit {
            let c = format!("route LOCAL traffic for {label} external destinations");
            w.rule(
                Table::Nat,
                ext,
                Some(&c),
                format_args!("-m addrtype --src-type LOCAL -j {sc}"),
            );
        }
    }
    if let Some(b) = f.external.backends() {
        let chain = layout.chain_of(b);
        w.rule(Table::Nat, ext, None, format_args!("-j {chain}"));
    }
}

/// The chains choosing among each set of backends: masquerade of cluster IP traffic
/// (the internal target's chain only), affinity, the random choice, each choice a DNAT
/// in the chain itself.
///
/// Upstream sends each choice to a chain of its endpoint (`SEP-`: hairpin mark,
/// affinity `--set`, DNAT). Here the DNAT is the choosing rule itself: a chain per
/// endpoint made a 50k-service node carry 350k chains, and both iptables tools walk
/// their chain tables in buckets of a fixed count (libiptc's sorted index, libxtables'
/// 512-bucket non-target table, iptables-nft's 512-bucket chain cache), so a full
/// restore grew with rules × chains (69 s legacy, 155 s nft at 50k; 5.4 s and 15 s
/// without them). The hairpin mark moved to one rule per family in `POSTROUTING`
/// (`fixed.rs`), affinity's `--set` into the rule that picks (after the `--rcheck`
/// where affinity holds, as upstream's endpoint chain sets after its service chain
/// checked). An endpoint's affinity list keeps the name upstream gives its endpoint
/// chain and its list ([`Chains::endpoint`]).
fn backend_chains(w: &mut Writer<'_>, f: &FamilyPlan, layout: &Layout) {
    let internal = f.internal.backends();
    let p = w.proto();
    for (backends, chain) in &layout.backend_chains {
        w.own(Table::Nat, chain);
        if internal == Some(backends) {
            masquerade_cluster_ips(w, f, chain);
        }
        let label = w.label.clone();
        let chains = w.chains();
        let list = |b: &Backend| chains.endpoint(&layout.digest, b.ip, b.port);
        if let Some(seconds) = f.affinity {
            for b in backends {
                let list = list(b);
                w.endpoint_rule(
                    chain,
                    &format!("{label} -> {b}"),
                    format_args!(
                        "-m recent --name {list} --rcheck --seconds {seconds} --reap -m recent --name {list} --set -m {p} -p {p} -j DNAT --to-destination {b}"
                    ),
                );
            }
        }
        let n = backends.len();
        for (i, b) in backends.iter().enumerate() {
            let c = format!("{label} -> {b}");
            let pick = if i + 1 < n {
                format!(
                    "-m statistic --mode random --probability {:.10} ",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            let remember = if f.affinity.is_some() {
                format!("-m recent --name {} --set ", list(b))
            } else {
                String::new()
            };
            w.endpoint_rule(
                chain,
                &c,
                format_args!("{pick}{remember}-m {p} -p {p} -j DNAT --to-destination {b}"),
            );
        }
    }
}

/// The first rules of the internal target's chain: mark cluster IP traffic for
/// masquerading, from the sources the plan says (matched on the cluster IP and port:
/// external and short-circuit traffic share the chain and is not marked here).
fn masquerade_cluster_ips(w: &mut Writer<'_>, f: &FamilyPlan, chain: &str) {
    let chains = w.chains();
    let action = match (f.masquerade.cluster_ips, w.ctx.cluster_cidrs.as_slice()) {
        (MasqueradeSources::All, _) => format!("-j {}", chains.mark_masq),
        (MasqueradeSources::OutsideClusterCidrs, [one]) => {
            format!("! -s {one} -j {}", chains.mark_masq)
        }
        (MasqueradeSources::OutsideClusterCidrs, [_, _, ..]) => {
            format!("-j {}", chains.mark_nonlocal)
        }
        (MasqueradeSources::OutsideClusterCidrs, []) | (MasqueradeSources::None, _) => return,
    };
    let (p, port) = (w.proto(), w.port);
    let comment = format!("{} cluster IP", w.label);
    for ip in &f.cluster_ips {
        w.rule(
            Table::Nat,
            chain,
            Some(&comment),
            format_args!("-m {p} -p {p} -d {ip} --dport {port} {action}"),
        );
    }
}
