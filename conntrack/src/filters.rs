//! Which conntrack flows a model change makes stale: [`ConntrackFilter`] and
//! [`stale_flow_filters`]. Pure; nothing here talks to the kernel.
//!
//! Semantics follow upstream kube-proxy (`pkg/proxy/conntrack`, the event-driven
//! cleanup), for UDP only as upstream does (TCP and SCTP flows end or get reset on
//! their own):
//!
//! 1. An endpoint that served a UDP service port and no longer does: delete the flows
//!    whose original destination is one of the port's VIPs (cluster, external and
//!    load-balancer IPs, with the port) or its NodePort, and whose reply source is the
//!    endpoint's IP — clients keep sending to it otherwise.
//! 2. A UDP service port that goes from no endpoint to some: delete the flows to its
//!    VIPs and NodePort; they may be cached as going nowhere (rejected, unreplied).
//! 3. A VIP, port or NodePort the service port no longer has (or the whole service port
//!    removed): delete every flow to it (upstream clears the cluster IPs of deleted UDP
//!    services; this extends that to every frontend that stops being served).
//!
//! "Serving" endpoints are those the plan routes to: every backend any of its targets
//! uses, in every family, compared by `ip:port` as upstream does.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use switchyard_model::{ChangeSet, IpFamily, NodeModel, Protocol, ServicePortPlan};

use switchyard_netlink::ctnetlink::Flow;

/// Selects flows by their original destination and reply source. `None` matches
/// anything; a filter with every field `None` matches every flow of its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConntrackFilter {
    pub protocol: Protocol,
    /// Original direction destination address (a VIP).
    pub orig_dst: Option<IpAddr>,
    /// Original direction destination port (the service port, or the NodePort).
    pub orig_dst_port: Option<u16>,
    /// Reply direction source address (the endpoint the flow was DNATed to).
    pub reply_src: Option<IpAddr>,
}

impl ConntrackFilter {
    pub fn matches(&self, flow: &Flow) -> bool {
        flow.original.protocol == self.protocol.number()
            && self.orig_dst.is_none_or(|ip| flow.original.dst == ip)
            && self
                .orig_dst_port
                .is_none_or(|p| flow.original.dst_port == p)
            && self.reply_src.is_none_or(|ip| flow.reply.src == ip)
    }
}

/// Filters indexed by destination port, so matching a large table against many
/// filters looks at a handful per flow.
pub(crate) struct FilterIndex<'a> {
    by_port: HashMap<u16, Vec<&'a ConntrackFilter>>,
    any_port: Vec<&'a ConntrackFilter>,
}

impl<'a> FilterIndex<'a> {
    pub(crate) fn new(filters: &'a [ConntrackFilter]) -> FilterIndex<'a> {
        let mut index = FilterIndex {
            by_port: HashMap::new(),
            any_port: Vec::new(),
        };
        for f in filters {
            match f.orig_dst_port {
                Some(port) => index.by_port.entry(port).or_default().push(f),
                None => index.any_port.push(f),
            }
        }
        index
    }

    pub(crate) fn matches(&self, flow: &Flow) -> bool {
        self.by_port
            .get(&flow.original.dst_port)
            .into_iter()
            .flatten()
            .chain(&self.any_port)
            .any(|f| f.matches(flow))
    }
}

/// Where clients of a service port send: a VIP with the service port, or the NodePort
/// on any node address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Frontend {
    Vip(IpAddr, u16),
    NodePort(u16),
}

impl Frontend {
    /// The filter for flows to this frontend, answered by `reply_src` if given. None
    /// when the endpoint is of the other family than the VIP (no flow can match).
    fn filter(self, protocol: Protocol, reply_src: Option<IpAddr>) -> Option<ConntrackFilter> {
        match self {
            Frontend::Vip(ip, port) => reply_src
                .is_none_or(|ep| IpFamily::of(&ep) == IpFamily::of(&ip))
                .then_some(ConntrackFilter {
                    protocol,
                    orig_dst: Some(ip),
                    orig_dst_port: Some(port),
                    reply_src,
                }),
            Frontend::NodePort(port) => Some(ConntrackFilter {
                protocol,
                orig_dst: None,
                orig_dst_port: Some(port),
                reply_src,
            }),
        }
    }
}

fn frontends(plan: Option<&ServicePortPlan>) -> BTreeSet<Frontend> {
    let Some(plan) = plan else {
        return BTreeSet::new();
    };
    plan.families
        .iter()
        .flat_map(|f| {
            f.vips()
                .map(|v| Frontend::Vip(v.addr, plan.port))
                .chain(f.node_port.map(Frontend::NodePort))
        })
        .collect()
}

/// The backends a service port routes to, as `(ip, port)`.
fn serving_endpoints(plan: Option<&ServicePortPlan>) -> BTreeSet<(IpAddr, u16)> {
    let Some(plan) = plan else {
        return BTreeSet::new();
    };
    plan.families
        .iter()
        .flat_map(|f| f.backends())
        .map(|b| (b.ip, b.port))
        .collect()
}

/// The filters selecting the flows made stale by `changes` (its `previous` holds the
/// old plans of what changed or went) now that `new` is applied. Sorted and without
/// duplicates; empty when nothing UDP changed.
pub fn stale_flow_filters(changes: &ChangeSet, new: &NodeModel) -> Vec<ConntrackFilter> {
    let mut filters = BTreeSet::new();
    for name in changes.touched() {
        if name.protocol != Protocol::Udp {
            continue;
        }
        let protocol = name.protocol;
        let (old_p, new_p) = (changes.previous.get(name), new.services.get(name));
        let (old_frontends, new_frontends) = (frontends(old_p), frontends(new_p));
        let (old_eps, new_eps) = (serving_endpoints(old_p), serving_endpoints(new_p));

        // 3. Frontends no longer served: every flow to them.
        for f in old_frontends.difference(&new_frontends) {
            filters.extend(f.filter(protocol, None));
        }
        // 1. Endpoints gone: their flows through the frontends that remain.
        let kept: Vec<&Frontend> = old_frontends.intersection(&new_frontends).collect();
        let gone_ips: BTreeSet<IpAddr> = old_eps.difference(&new_eps).map(|(ip, _)| *ip).collect();
        for ip in gone_ips {
            for f in &kept {
                filters.extend(f.filter(protocol, Some(ip)));
            }
        }
        // 2. First endpoint: flows cached as going nowhere.
        if old_eps.is_empty() && !new_eps.is_empty() {
            for f in &new_frontends {
                filters.extend(f.filter(protocol, None));
            }
        }
    }
    filters.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_model::test_util::{self, ep, TestService};
    use switchyard_netlink::ctnetlink::Tuple;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn dns(protocol: Protocol, vips: &[&str], node_port: Option<u16>, eps: &[&str]) -> TestService {
        let mut s = test_util::service(
            "dns",
            vips,
            53,
            eps.iter().map(|e| ep(e, 5353, false)).collect(),
        );
        s.name.namespace = "kube-system".into();
        s.name.port = "dns".into();
        s.name.protocol = protocol;
        s.node_port = node_port;
        s
    }

    fn model(ports: impl IntoIterator<Item = TestService>) -> NodeModel {
        test_util::model(ports.into_iter().collect())
    }

    fn filter(dst: Option<&str>, port: u16, reply: Option<&str>) -> ConntrackFilter {
        ConntrackFilter {
            protocol: Protocol::Udp,
            orig_dst: dst.map(ip),
            orig_dst_port: Some(port),
            reply_src: reply.map(ip),
        }
    }

    fn diff(old: &NodeModel, new: &NodeModel) -> Vec<ConntrackFilter> {
        stale_flow_filters(&ChangeSet::between(old, new), new)
    }

    #[test]
    fn endpoint_removed_deletes_its_flows_through_every_vip() {
        let mut before = dns(
            Protocol::Udp,
            &["172.30.0.10"],
            None,
            &["10.1.0.1", "10.1.0.2"],
        );
        before.external_ips = vec![ip("203.0.113.10")];
        before.load_balancer_ips = vec![ip("198.51.100.10")];
        let mut after = before.clone();
        after.endpoints.remove(1);
        assert_eq!(
            diff(&model([before]), &model([after])),
            vec![
                filter(Some("172.30.0.10"), 53, Some("10.1.0.2")),
                filter(Some("198.51.100.10"), 53, Some("10.1.0.2")),
                filter(Some("203.0.113.10"), 53, Some("10.1.0.2")),
            ]
        );
    }

    #[test]
    fn first_endpoint_deletes_flows_to_vips_and_node_port() {
        let before = dns(Protocol::Udp, &["172.30.0.10"], Some(30053), &[]);
        let after = dns(Protocol::Udp, &["172.30.0.10"], Some(30053), &["10.1.0.1"]);
        assert_eq!(
            diff(&model([before]), &model([after.clone()])),
            vec![
                filter(None, 30053, None),
                filter(Some("172.30.0.10"), 53, None)
            ]
        );
        // A new service with endpoints is newly active too (as on the first sync).
        assert_eq!(
            diff(&NodeModel::default(), &model([after])),
            vec![
                filter(None, 30053, None),
                filter(Some("172.30.0.10"), 53, None)
            ]
        );
        // Going from some to more endpoints is not.
        let before = dns(Protocol::Udp, &["172.30.0.10"], None, &["10.1.0.1"]);
        let after = dns(
            Protocol::Udp,
            &["172.30.0.10"],
            None,
            &["10.1.0.1", "10.1.0.2"],
        );
        assert!(diff(&model([before]), &model([after])).is_empty());
    }

    #[test]
    fn node_port_endpoint_removed() {
        let before = dns(Protocol::Udp, &["172.30.0.10"], Some(30053), &["10.1.0.1"]);
        let after = dns(Protocol::Udp, &["172.30.0.10"], Some(30053), &[]);
        assert_eq!(
            diff(&model([before]), &model([after])),
            vec![
                filter(None, 30053, Some("10.1.0.1")),
                filter(Some("172.30.0.10"), 53, Some("10.1.0.1")),
            ]
        );
    }

    #[test]
    fn tcp_and_sctp_produce_nothing() {
        for protocol in [Protocol::Tcp, Protocol::Sctp] {
            let before = dns(protocol, &["172.30.0.10"], Some(30053), &["10.1.0.1"]);
            let after = dns(protocol, &["172.30.0.10"], Some(30053), &["10.1.0.2"]);
            assert!(diff(&model([before.clone()]), &model([after])).is_empty());
            assert!(diff(&model([before]), &NodeModel::default()).is_empty());
        }
    }

    #[test]
    fn every_target_counts_as_serving() {
        // Under a Local external policy, the local endpoint serves outside traffic and
        // the remote one the cluster IP: both serve.
        let mut before = dns(Protocol::Udp, &["172.30.0.10"], Some(30053), &["10.1.0.1"]);
        before.endpoints.push(ep("10.1.0.9", 5353, true));
        before.external_policy_local = true;
        let mut after = before.clone();
        after.endpoints.remove(0);
        assert_eq!(
            diff(&model([before]), &model([after])),
            vec![
                filter(None, 30053, Some("10.1.0.1")),
                filter(Some("172.30.0.10"), 53, Some("10.1.0.1"))
            ]
        );
    }

    #[test]
    fn dual_stack_endpoint_filters_stay_in_family() {
        let before = dns(
            Protocol::Udp,
            &["172.30.0.10", "fd00:30::10"],
            None,
            &["10.1.0.1", "fd00:10::1"],
        );
        let after = dns(
            Protocol::Udp,
            &["172.30.0.10", "fd00:30::10"],
            None,
            &["10.1.0.1"],
        );
        assert_eq!(
            diff(&model([before]), &model([after])),
            vec![filter(Some("fd00:30::10"), 53, Some("fd00:10::1"))]
        );
    }

    #[test]
    fn removed_service_and_gone_frontends_clear_every_flow_to_them() {
        let before = dns(Protocol::Udp, &["172.30.0.10"], Some(30053), &["10.1.0.1"]);
        assert_eq!(
            diff(&model([before.clone()]), &NodeModel::default()),
            vec![
                filter(None, 30053, None),
                filter(Some("172.30.0.10"), 53, None)
            ]
        );
        // NodePort dropped (type NodePort -> ClusterIP), endpoint kept.
        let mut after = before.clone();
        after.node_port = None;
        assert_eq!(
            diff(&model([before.clone()]), &model([after])),
            vec![filter(None, 30053, None)]
        );
        // Port renumbered and an endpoint gone: old frontend cleared, the new one has
        // no flows to the gone endpoint.
        let mut after = before.clone();
        after.port = 54;
        after.endpoints = vec![ep("10.1.0.2", 5353, false)];
        assert_eq!(
            diff(&model([before]), &model([after])),
            vec![
                filter(None, 30053, Some("10.1.0.1")),
                filter(Some("172.30.0.10"), 53, None),
            ]
        );
    }

    #[test]
    fn a_full_change_set_cleans_what_it_names() {
        let kept = dns(Protocol::Udp, &["172.30.0.10"], None, &["10.1.0.1"]);
        let mut gone = dns(Protocol::Udp, &["172.30.0.11"], None, &["10.1.0.2"]);
        gone.name.name = "gone".into();
        let old = model([kept.clone(), gone]);
        let new = model([kept]);
        assert_eq!(
            stale_flow_filters(&ChangeSet::between(&old, &new).into_full(), &new),
            vec![filter(Some("172.30.0.11"), 53, None)]
        );
    }

    #[test]
    fn filter_matching() {
        let flow = Flow {
            original: Tuple {
                src: ip("10.0.0.2"),
                dst: ip("172.30.0.10"),
                protocol: 17,
                src_port: 1234,
                dst_port: 53,
            },
            reply: Tuple {
                src: ip("10.1.0.1"),
                dst: ip("10.0.0.2"),
                protocol: 17,
                src_port: 5353,
                dst_port: 1234,
            },
            id: None,
            zone: None,
        };
        let hit = filter(Some("172.30.0.10"), 53, Some("10.1.0.1"));
        assert!(hit.matches(&flow));
        assert!(filter(None, 53, None).matches(&flow));
        assert!(!filter(Some("172.30.0.10"), 54, None).matches(&flow));
        assert!(!filter(Some("172.30.0.11"), 53, None).matches(&flow));
        assert!(!filter(Some("172.30.0.10"), 53, Some("10.1.0.2")).matches(&flow));
        let tcp = ConntrackFilter {
            protocol: Protocol::Tcp,
            ..hit
        };
        assert!(!tcp.matches(&flow));
        let any_port = ConntrackFilter {
            orig_dst_port: None,
            ..hit
        };
        let filters = [filter(None, 54, None), tcp, any_port];
        assert!(FilterIndex::new(&filters).matches(&flow));
        assert!(!FilterIndex::new(&filters[..2]).matches(&flow));
    }
}
