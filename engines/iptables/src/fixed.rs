//! The rules of the engine's fixed chains in one family, from node-wide settings only:
//! forwarding accepts (and the INVALID drop), mark-then-masquerade (with the hairpin
//! check, [`hairpin_bytecode`]), and the NodePort destinations.
//!
//! NodePorts are accepted on the local addresses within `nodePortAddresses` and never
//! on loopback (upstream nftables' rule; upstream iptables also serves 127.0.0.1 by
//! default, the CVE-2020-8558 class). A CIDR can contain loopback (`0.0.0.0/0`,
//! `0.0.0.0/1`), and one rule cannot match "in the CIDR and not loopback", so both
//! tables have a `NODEPORT-ADDRESSES` chain, reached for local destinations: it returns
//! loopback first (when a CIDR overlaps it), then sends each CIDR on — to `NODEPORTS`
//! (nat, the last rule of `SERVICES`) and to `EXTERNAL-NODEPORTS` (filter, from
//! `EXTERNAL-SERVICES`), so a NodePort without endpoints is refused on exactly the
//! addresses that would serve it.

use std::fmt::Write as _;

use ipnet::IpNet;
use switchyard_model::IpFamily;

use crate::{chains::Table, chains::MASQUERADE_MARK, port::FamilyContext};

/// Fixed rules of one table, as `-A` lines.
#[derive(Clone, Debug, Default)]
pub struct FixedRules {
    /// Rules written before the per-port rules.
    pub head: String,
    /// Rules that must follow every per-port rule of their chain (nat `SERVICES`: the
    /// NodePort jump).
    pub tail: String,
    pub count: usize,
}

impl FixedRules {
    fn rule(&mut self, chain: &str, rest: std::fmt::Arguments<'_>) {
        let _ = writeln!(self.head, "-A {chain} {rest}");
        self.count += 1;
    }

    fn last_rule(&mut self, chain: &str, rest: std::fmt::Arguments<'_>) {
        let _ = writeln!(self.tail, "-A {chain} {rest}");
        self.count += 1;
    }
}

/// The fixed rules of `table` in `ctx.family`.
pub fn fixed_rules(table: Table, ctx: &FamilyContext<'_>) -> FixedRules {
    match table {
        Table::Filter => filter_rules(ctx),
        Table::Nat => nat_rules(ctx),
    }
}

fn filter_rules(ctx: &FamilyContext<'_>) -> FixedRules {
    let c = ctx.chains;
    let mut out = FixedRules::default();
    let mark = MASQUERADE_MARK;
    if ctx.drop_invalid {
        out.rule(
            &c.forward,
            format_args!("-m conntrack --ctstate INVALID -j DROP"),
        );
    }
    out.rule(
        &c.forward,
        format_args!(
            "-m comment --comment \"switchyard forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT"
        ),
    );
    out.rule(
        &c.forward,
        format_args!(
            "-m comment --comment \"switchyard forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        ),
    );
    if node_port_addresses(&mut out, ctx, &c.external_nodeports) {
        out.rule(
            &c.external_services,
            format_args!(
                "-m comment --comment \"switchyard NodePorts without endpoints\" -m addrtype --dst-type LOCAL -j {}",
                c.nodeport_addresses
            ),
        );
    }
    out
}

fn nat_rules(ctx: &FamilyContext<'_>) -> FixedRules {
    let c = ctx.chains;
    let mut out = FixedRules::default();
    let mark = MASQUERADE_MARK;
    out.rule(
        &c.postrouting,
        format_args!(
            "-m comment --comment \"switchyard hairpin: a service connection sent back to its source\" -m conntrack --ctstate DNAT -m bpf --bytecode \"{}\" -j {}",
            hairpin_bytecode(ctx.family),
            c.mark_masq
        ),
    );
    out.rule(
        &c.postrouting,
        format_args!("-m mark ! --mark {mark}/{mark} -j RETURN"),
    );
    out.rule(&c.postrouting, format_args!("-j MARK --xor-mark {mark}"));
    out.rule(
        &c.postrouting,
        format_args!(
            "-m comment --comment \"switchyard service traffic requiring SNAT\" -j MASQUERADE --random-fully"
        ),
    );
    out.rule(&c.mark_masq, format_args!("-j MARK --or-mark {mark}"));
    if ctx.cluster_cidrs.len() > 1 {
        for cidr in &ctx.cluster_cidrs {
            out.rule(&c.mark_nonlocal, format_args!("-s {cidr} -j RETURN"));
        }
        out.rule(&c.mark_nonlocal, format_args!("-j {}", c.mark_masq));
    }
    if node_port_addresses(&mut out, ctx, &c.nodeports) {
        out.last_rule(
            &c.services,
            format_args!(
                "-m comment --comment \"switchyard service nodeports, NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j {}",
                c.nodeport_addresses
            ),
        );
    }
    out
}

/// A classic BPF program (`xt_bpf`'s `--bytecode`: the instruction count, then
/// `code jt jf k` per instruction) matching a packet whose source address equals its
/// destination address; it reads the network header, where netfilter's hooks start.
///
/// This is the hairpin check upstream writes into each endpoint chain (`-s POD -j
/// KUBE-MARK-MASQ` before the DNAT to that pod): in `POSTROUTING` a connection this
/// engine DNATed (`--ctstate DNAT`) already carries its endpoint as destination, so
/// "the endpoint is the client" is one rule per family instead of one per endpoint.
pub fn hairpin_bytecode(family: IpFamily) -> &'static str {
    // ld [s]; tax; ld [d]; jeq x, next, fail ... ret #1; fail: ret #0.
    match family {
        // Source at 12, destination at 16.
        IpFamily::V4 => "6,32 0 0 12,7 0 0 0,32 0 0 16,29 0 1 0,6 0 0 1,6 0 0 0",
        // Source at 8..24, destination at 24..40, compared a word at a time.
        IpFamily::V6 => concat!(
            "18,32 0 0 8,7 0 0 0,32 0 0 24,29 0 13 0,",
            "32 0 0 12,7 0 0 0,32 0 0 28,29 0 9 0,",
            "32 0 0 16,7 0 0 0,32 0 0 32,29 0 5 0,",
            "32 0 0 20,7 0 0 0,32 0 0 36,29 0 1 0,",
            "6 0 0 1,6 0 0 0"
        ),
    }
}

/// The loopback network of a family.
pub fn loopback(family: IpFamily) -> IpNet {
    match family {
        IpFamily::V4 => "127.0.0.0/8".parse().expect("valid"),
        IpFamily::V6 => "::1/128".parse().expect("valid"),
    }
}

fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The rules of `NODEPORT-ADDRESSES` sending NodePort destinations to `target`;
/// false when no address of this family accepts NodePorts (no jump is needed).
fn node_port_addresses(out: &mut FixedRules, ctx: &FamilyContext<'_>, target: &str) -> bool {
    let chain = &ctx.chains.nodeport_addresses;
    let lo = loopback(ctx.family);
    let cidrs: Vec<&IpNet> = ctx
        .node_port_addresses
        .iter()
        .filter(|n| !lo.contains(*n))
        .collect();
    if cidrs.iter().any(|n| overlap(n, &lo)) {
        out.rule(
            chain,
            format_args!(
                "-m comment --comment \"switchyard no NodePorts on loopback\" -d {lo} -j RETURN"
            ),
        );
    }
    for cidr in &cidrs {
        if cidr.prefix_len() == 0 {
            // iptables-nft cannot load a zero-length address match.
            out.rule(chain, format_args!("-j {target}"));
        } else {
            out.rule(chain, format_args!("-d {cidr} -j {target}"));
        }
    }
    !cidrs.is_empty()
}
