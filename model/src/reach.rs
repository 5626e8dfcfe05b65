//! Whether traffic from a source reaches a backend of a service port, and if not, why:
//! the plan's decisions applied to one source and one destination, for `switchyard
//! explain --from`. The source is classified as the model does (a pod of the cluster
//! CIDRs, the node itself, or outside the cluster); the destination is one of the
//! port's addresses (a cluster IP, an external IP, a load-balancer IP, or the NodePort
//! on a node address). Nothing is decided again here: targets, short circuit and
//! firewall are the plan's.

use std::{fmt, net::IpAddr};

use crate::{
    family::IpFamily,
    model::NodeModel,
    plan::{Backend, FamilyPlan, ServicePortPlan, Target, VipKind},
};

/// Where traffic comes from, as the plan tells sources apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceClass {
    /// In the node's cluster CIDRs: a pod of the cluster.
    Pod,
    /// One of the node's own addresses (or loopback).
    Node,
    /// Anything else.
    Outside,
}

impl fmt::Display for SourceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceClass::Pod => "a pod (cluster CIDR)",
            SourceClass::Node => "the node itself",
            SourceClass::Outside => "outside the cluster",
        })
    }
}

/// Classifies `source`: the node's own addresses first (`local` adds the addresses of
/// the node's interfaces to the Node object's), then the cluster CIDRs.
pub fn classify(model: &NodeModel, local: &[IpAddr], source: IpAddr) -> SourceClass {
    if source.is_loopback() || model.node_ips.contains(&source) || local.contains(&source) {
        SourceClass::Node
    } else if model.cluster_cidrs.iter().any(|n| n.contains(&source)) {
        SourceClass::Pod
    } else {
        SourceClass::Outside
    }
}

/// One address clients send to for a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destination {
    pub addr: IpAddr,
    pub port: u16,
    /// `None`: the NodePort on a node address.
    pub kind: Option<VipKind>,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::endpoints::write_endpoint(f, self.addr, self.port)?;
        f.write_str(match self.kind {
            Some(VipKind::ClusterIp) => " (cluster IP)",
            Some(VipKind::ExternalIp) => " (external IP)",
            Some(VipKind::LoadBalancer) => " (load-balancer IP)",
            None => " (NodePort)",
        })
    }
}

/// Every destination of `plan`: its VIPs, and its NodePort on each node address that
/// accepts NodePorts (the Node object's primary IPs within `nodePortAddresses`).
pub fn destinations(model: &NodeModel, plan: &ServicePortPlan) -> Vec<Destination> {
    let mut out = Vec::new();
    for f in &plan.families {
        out.extend(f.vips().map(|v| Destination {
            addr: v.addr,
            port: plan.port,
            kind: Some(v.kind),
        }));
        if let Some(node_port) = f.node_port {
            out.extend(
                node_port_addresses(model, f.family).map(|addr| Destination {
                    addr,
                    port: node_port,
                    kind: None,
                }),
            );
        }
    }
    out
}

fn node_port_addresses(model: &NodeModel, family: IpFamily) -> impl Iterator<Item = IpAddr> + '_ {
    model.node_ips.iter().copied().filter(move |ip| {
        family.has(ip) && model.node_port_addresses.iter().any(|n| n.contains(ip))
    })
}

/// What happens to a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It is sent to one of these backends.
    Reaches(Vec<Backend>),
    /// It is dropped (the client times out).
    Dropped(String),
    /// It is refused (TCP reset, ICMP port unreachable).
    Refused(String),
    /// It never meets the port's rules at all.
    Unreachable(String),
}

impl Outcome {
    pub fn reaches(&self) -> bool {
        matches!(self, Outcome::Reaches(_))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Reaches(backends) => {
                f.write_str("reaches ")?;
                for (i, b) in backends.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{b}")?;
                }
                Ok(())
            }
            Outcome::Dropped(why) => write!(f, "dropped: {why}"),
            Outcome::Refused(why) => write!(f, "refused: {why}"),
            Outcome::Unreachable(why) => write!(f, "not handled: {why}"),
        }
    }
}

/// What the plan does with traffic from `source` (of `class`) to `dest`.
pub fn reach(
    plan: &ServicePortPlan,
    class: SourceClass,
    source: IpAddr,
    dest: &Destination,
) -> Outcome {
    let Some(f) = plan.family(IpFamily::of(&dest.addr)) else {
        return Outcome::Unreachable(format!(
            "the service has no {} plan",
            IpFamily::of(&dest.addr)
        ));
    };
    if IpFamily::of(&source) != f.family {
        return Outcome::Unreachable(format!(
            "source {source} and destination {} are of different IP families",
            dest.addr
        ));
    }
    match dest.kind {
        Some(VipKind::ClusterIp) => target_outcome(&f.internal, "internalTrafficPolicy"),
        kind => external(f, kind, class, source),
    }
}

/// Traffic to a NodePort, external or load-balancer IP.
fn external(f: &FamilyPlan, kind: Option<VipKind>, class: SourceClass, source: IpAddr) -> Outcome {
    if kind == Some(VipKind::LoadBalancer) {
        if let Some(firewall) = &f.firewall {
            let allowed = firewall.allows(&source)
                || (class == SourceClass::Node
                    && f.load_balancer_ips.iter().any(|ip| firewall.allows(ip)));
            if !allowed {
                let ranges: Vec<String> =
                    firewall.allowed.iter().map(ToString::to_string).collect();
                return Outcome::Dropped(format!(
                    "source {source} is outside loadBalancerSourceRanges [{}]",
                    ranges.join(", ")
                ));
            }
        }
    }
    if matches!(class, SourceClass::Pod | SourceClass::Node) {
        if let Some(short) = &f.short_circuit {
            return Outcome::Reaches(short.as_slice().to_vec());
        }
    }
    target_outcome(&f.external, "externalTrafficPolicy")
}

fn target_outcome(target: &Target, policy: &str) -> Outcome {
    match target {
        Target::Endpoints(b) => Outcome::Reaches(b.as_slice().to_vec()),
        Target::Drop => Outcome::Dropped(format!(
            "{policy} is Local and this node has no ready endpoint"
        )),
        Target::Reject => Outcome::Refused("the service has no ready endpoint".to_string()),
    }
}

/// Why no traffic at all reaches a backend of `plan` (no target of any family has
/// endpoints); `None` when some does.
pub fn no_endpoints(plan: &ServicePortPlan) -> Option<String> {
    if plan.families.iter().any(|f| !f.backends().is_empty()) {
        return None;
    }
    Some(if plan.families.iter().all(FamilyPlan::rejects) {
        "the service has no ready endpoint: connections are refused".to_string()
    } else {
        "no target has endpoints on this node (Local traffic policy): connections are dropped"
            .to_string()
    })
}
