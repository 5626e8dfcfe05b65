//! What one service port's plan asks of the kernel in IPVS mode ([`PortWants`]), as
//! data; a pure function of the plan and the node's NodePort addresses. Nothing here
//! decides Service semantics: targets, masquerading, firewall, affinity and the short
//! circuit come from the plan (kube-proxy's IPVS layout):
//!
//! - one virtual server per cluster IP, external IP and LB IP and port (internal
//!   target's backends for cluster IPs, external target's for the others), and one
//!   per allowed node address for the NodePort; Drop and Reject targets keep the
//!   virtual server without real servers and add a `no-endpoint` element (the helper
//!   ruleset drops or rejects before IPVS sees the packet);
//! - under `externalTrafficPolicy: Local` with endpoints somewhere, a firewall-mark
//!   virtual server per family (mark [`fwmark`] of the port's id) with the
//!   short-circuit backends, and an `sc-H` chain setting that mark, which the helper
//!   ruleset jumps to for pods' and the node's own traffic to the external
//!   destinations;
//! - the VIPs on the dummy interface, masquerade and check elements per destination,
//!   `fw-H` for load-balancer source ranges, and a hairpin pair per backend.

use std::{fmt::Write as _, net::IpAddr};

use switchyard_model::{Backends, FamilyPlan, IpFamily, Protocol, ServicePortPlan, Target};
use switchyard_netlink::ipvs::ServiceId;
use switchyard_nftables::ruleset::collapse;

use crate::helper::{Chain, ChainRule, Key, SetKind, Verdict};

/// Firewall marks of the short-circuit virtual servers: the port's id (24 bits) spread
/// over bits 0-13 and 15-24, with bit 31 set: never 0, and never the masquerade bit
/// (0x4000, bit 14), which `masquerading` would otherwise find on short-circuited pod
/// traffic (whose source must be kept).
pub const FWMARK_BASE: u32 = 0x8000_0000;

pub fn fwmark(id: u32) -> u32 {
    let id = id & 0x00FF_FFFF;
    FWMARK_BASE | ((id & !0x3FFF) << 1) | (id & 0x3FFF)
}

/// Claim ranks: service IPs (and fwmark servers) win over NodePorts on the same
/// address and port, as in upstream's dispatch order.
pub const RANK_SERVICE_IP: u8 = 0;
pub const RANK_NODE_PORT: u8 = 1;

/// One virtual server and the helper elements keyed by its destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub protocol: Protocol,
    /// Real servers (weight 1), sorted.
    pub backends: Vec<(IpAddr, u16)>,
    /// ClientIP affinity: persistence timeout in seconds.
    pub persistence: Option<u32>,
    /// Elements of the helper sets keyed by this destination (`addr . proto . port`);
    /// none for a firewall-mark server.
    pub sets: Vec<(SetKind, Verdict)>,
}

/// An object several ports may need at once (kept while any does).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shared {
    /// A VIP on the dummy interface.
    Address(IpAddr),
    /// A set element without a value, in one family's table.
    Element(IpFamily, SetKind, Key),
}

/// Everything one service port wants, every family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortWants {
    /// Virtual servers with their claim rank.
    pub servers: Vec<(ServiceId, u8, Frontend)>,
    pub shared: Vec<Shared>,
    pub chains: Vec<Chain>,
}

impl PortWants {
    fn server(&mut self, id: ServiceId, rank: u8, frontend: Frontend) {
        if !self.servers.iter().any(|(s, _, _)| *s == id) {
            self.servers.push((id, rank, frontend));
        }
    }

    fn shared(&mut self, s: Shared) {
        if !self.shared.contains(&s) {
            self.shared.push(s);
        }
    }
}

/// `fw-H` / `sc-H`: 16 hex digits of the port name's digest.
fn chain_name(prefix: &str, plan: &ServicePortPlan) -> String {
    let mut name = String::with_capacity(prefix.len() + 16);
    name.push_str(prefix);
    for b in &plan.name.digest().0[..8] {
        let _ = write!(name, "{b:02x}");
    }
    name
}

fn backends_of(target: Option<&Backends>) -> Vec<(IpAddr, u16)> {
    target
        .map(|b| b.iter().map(|b| (b.ip, b.port)).collect())
        .unwrap_or_default()
}

/// The `no-endpoint` verdict of a target without backends.
fn no_endpoint(target: &Target) -> Option<Verdict> {
    match target {
        Target::Endpoints(_) => None,
        Target::Drop => Some(Verdict::Drop),
        Target::Reject => Some(Verdict::Reject),
    }
}

/// The port's wants; `node_addrs` are the node's addresses allowed for NodePorts
/// (local, within `nodePortAddresses`, not loopback); without `ipv6` (a kernel without
/// IPv6) the IPv6 plan is left out.
pub fn port_wants(plan: &ServicePortPlan, node_addrs: &[IpAddr], ipv6: bool) -> PortWants {
    let mut out = PortWants::default();
    for f in plan
        .families
        .iter()
        .filter(|f| ipv6 || f.family == IpFamily::V4)
    {
        family_wants(plan, f, node_addrs, &mut out);
    }
    out
}

fn family_wants(
    plan: &ServicePortPlan,
    f: &FamilyPlan,
    node_addrs: &[IpAddr],
    out: &mut PortWants,
) {
    let (protocol, port) = (plan.protocol, plan.port);
    let frontend = |target: &Target, sets: Vec<(SetKind, Verdict)>| Frontend {
        protocol,
        backends: backends_of(target.backends()),
        persistence: f.affinity,
        sets,
    };
    for &ip in &f.cluster_ips {
        let mut sets = vec![(SetKind::ClusterPorts, Verdict::None)];
        sets.extend(no_endpoint(&f.internal).map(|v| (SetKind::NoEndpoint, v)));
        out.server(
            ServiceId::new(protocol, ip, port),
            RANK_SERVICE_IP,
            frontend(&f.internal, sets),
        );
        out.shared(Shared::Address(ip));
        out.shared(Shared::Element(
            f.family,
            SetKind::ClusterIps,
            Key::Addr(ip),
        ));
    }
    let short_circuit = f.short_circuit.as_ref().map(|sc| {
        let name = chain_name("sc-", plan);
        short_circuit_wants(plan, f, sc, &name, out);
        name
    });
    let firewall = f.firewall.as_ref().map(|fw| {
        let name = chain_name("fw-", plan);
        let mut rules: Vec<ChainRule> =
            collapse(fw.allowed.iter().copied().filter(|n| f.family.has_net(n)))
                .into_iter()
                .map(ChainRule::Allow)
                .collect();
        rules.push(ChainRule::Drop);
        out.chains.push(Chain {
            family: f.family,
            name: name.clone(),
            rules,
        });
        name
    });
    let external_sets = |load_balancer: bool, node_port: bool| {
        let masq = if f.masquerade.external {
            SetKind::MasqExternal
        } else {
            SetKind::LocalExternal
        };
        let mut sets = vec![(masq, Verdict::None)];
        sets.extend(no_endpoint(&f.external).map(|v| (SetKind::NoEndpoint, v)));
        if let (true, Some(fw)) = (load_balancer, &firewall) {
            sets.push((SetKind::Firewall, Verdict::Jump(fw.clone())));
        }
        if let Some(sc) = &short_circuit {
            sets.push((SetKind::ShortCircuit, Verdict::Jump(sc.clone())));
        }
        if node_port {
            sets.push((SetKind::NodePorts, Verdict::None));
        }
        sets
    };
    for vip in f.external_vips() {
        let lb = f.load_balancer_ips.contains(&vip.addr);
        out.server(
            ServiceId::new(protocol, vip.addr, port),
            RANK_SERVICE_IP,
            frontend(&f.external, external_sets(lb, false)),
        );
        out.shared(Shared::Address(vip.addr));
    }
    if let Some(node_port) = f.node_port {
        for &addr in node_addrs.iter().filter(|a| f.family.has(a)) {
            out.server(
                ServiceId::new(protocol, addr, node_port),
                RANK_NODE_PORT,
                frontend(&f.external, external_sets(false, true)),
            );
        }
    }
    for b in f.backends() {
        out.shared(Shared::Element(
            f.family,
            SetKind::Hairpin,
            Key::Pair(b.ip, b.ip),
        ));
    }
}

/// The firewall-mark server of the short circuit, its mark in `sc-marks`, and the
/// chain setting the mark.
fn short_circuit_wants(
    plan: &ServicePortPlan,
    f: &FamilyPlan,
    backends: &Backends,
    chain: &str,
    out: &mut PortWants,
) {
    let mark = fwmark(plan.id);
    out.server(
        ServiceId::Fwmark {
            family: f.family,
            mark,
        },
        RANK_SERVICE_IP,
        Frontend {
            protocol: plan.protocol,
            backends: backends_of(Some(backends)),
            persistence: f.affinity,
            sets: Vec::new(),
        },
    );
    out.shared(Shared::Element(f.family, SetKind::ScMarks, Key::Mark(mark)));
    out.chains.push(Chain {
        family: f.family,
        name: chain.to_string(),
        rules: vec![ChainRule::SetMark(mark)],
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_model::test_util::{self, ep};

    fn plan(s: test_util::TestService) -> ServicePortPlan {
        let m = test_util::model(vec![s]);
        m.services.values().next().unwrap().clone()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn firewall_marks_are_distinct_and_never_carry_the_masquerade_bit() {
        let marks: std::collections::HashSet<u32> =
            (1..=0xFF_FFFF).step_by(7).map(fwmark).collect();
        assert_eq!(marks.len(), (1..=0xFF_FFFF).step_by(7).count());
        assert!(marks.iter().all(|m| m & 0x4000 == 0 && *m != 0));
        assert_eq!(fwmark(0x4000), 0x8000_8000);
    }

    #[test]
    fn cluster_ip_with_endpoints_and_without() {
        let p = plan(test_util::service(
            "web",
            &["10.96.0.1"],
            80,
            vec![ep("10.1.0.1", 8080, false), ep("10.1.0.2", 8080, true)],
        ));
        let w = port_wants(&p, &[], true);
        assert_eq!(w.servers.len(), 1);
        let (id, rank, fe) = &w.servers[0];
        assert_eq!(*id, ServiceId::new(Protocol::Tcp, ip("10.96.0.1"), 80));
        assert_eq!(*rank, RANK_SERVICE_IP);
        assert_eq!(
            fe.backends,
            [(ip("10.1.0.1"), 8080), (ip("10.1.0.2"), 8080)]
        );
        assert_eq!(fe.sets, [(SetKind::ClusterPorts, Verdict::None)]);
        assert!(w.shared.contains(&Shared::Address(ip("10.96.0.1"))));
        assert!(w.shared.contains(&Shared::Element(
            IpFamily::V4,
            SetKind::Hairpin,
            Key::Pair(ip("10.1.0.2"), ip("10.1.0.2"))
        )));

        let p = plan(test_util::service("empty", &["10.96.0.2"], 80, vec![]));
        let w = port_wants(&p, &[], true);
        let fe = &w.servers[0].2;
        assert!(fe.backends.is_empty());
        assert!(fe.sets.contains(&(SetKind::NoEndpoint, Verdict::Reject)));
    }

    #[test]
    fn node_ports_on_each_allowed_address_and_local_policy_short_circuit() {
        let mut s = test_util::service(
            "np",
            &["10.96.0.3", "fd00::3"],
            80,
            vec![ep("10.1.0.1", 8080, false), ep("fd00:10::9", 8080, false)],
        );
        s.node_port = Some(30080);
        s.external_policy_local = true;
        let p = plan(s);
        let addrs = [ip("192.168.0.2"), ip("2001:db8::1")];
        let w = port_wants(&p, &addrs, true);
        let np = ServiceId::new(Protocol::Tcp, ip("192.168.0.2"), 30080);
        let (_, rank, fe) = w.servers.iter().find(|(id, _, _)| *id == np).unwrap();
        assert_eq!(*rank, RANK_NODE_PORT);
        assert!(fe.backends.is_empty(), "no local endpoint: external drops");
        assert!(fe.sets.contains(&(SetKind::NoEndpoint, Verdict::Drop)));
        assert!(fe.sets.contains(&(SetKind::LocalExternal, Verdict::None)));
        assert!(fe.sets.contains(&(SetKind::NodePorts, Verdict::None)));
        let mark = fwmark(p.id);
        for family in IpFamily::ALL {
            let id = ServiceId::Fwmark { family, mark };
            let (_, _, sc) = w.servers.iter().find(|(s, _, _)| *s == id).unwrap();
            assert_eq!(
                sc.backends.len(),
                1,
                "{family}: the family's cluster-wide backends"
            );
        }
        assert_eq!(w.chains.len(), 2);
        assert_eq!(w.chains[0].rules, [ChainRule::SetMark(mark)]);
    }
}
