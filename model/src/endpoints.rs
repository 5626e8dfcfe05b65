//! Which endpoints of a service port serve this node's traffic, as upstream kube-proxy's
//! `CategorizeEndpoints` decides: ready endpoints, filtered by topology hints; serving
//! and terminating ones when none is ready (no topology then); and for Local traffic
//! policies the endpoints on this node (ready, else serving and terminating).
//!
//! Upstream runs one proxier per IP family, each seeing only its family's
//! EndpointSlices, so every decision here is taken per family: an IPv6 family whose
//! endpoints are all terminating falls back to them even when IPv4 has ready ones, and
//! topology is judged on the family's own endpoints.

use std::{fmt, net::IpAddr};

use crate::family::IpFamily;

/// One endpoint of a service port, with what decides whether it serves.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// The endpoint runs on this node.
    pub local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Topology hints from the EndpointSlice (`hints.forZones`, `hints.forNodes`).
    pub zone_hints: Vec<String>,
    pub node_hints: Vec<String>,
}

impl Endpoint {
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.ip)
    }

    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_endpoint(f, self.ip, self.port)
    }
}

/// `ip:port`, `[ip6]:port`.
pub(crate) fn write_endpoint(f: &mut fmt::Formatter<'_>, ip: IpAddr, port: u16) -> fmt::Result {
    match ip {
        IpAddr::V4(ip) => write!(f, "{ip}:{port}"),
        IpAddr::V6(ip) => write!(f, "[{ip}]:{port}"),
    }
}

/// Topology routing chosen from the endpoints' hints, as upstream's
/// `topologyModeFromHints`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// Every ready endpoint is usable.
    Any,
    /// Only endpoints hinted for this node.
    SameNode,
    /// Only endpoints hinted for this node's zone.
    SameZone,
}

/// Hints are used only when every ready endpoint carries them and at least one names
/// this node (node hints, preferred) or its zone.
fn topology(endpoints: &[&Endpoint], node_name: &str, zone: &str) -> Topology {
    let ready: Vec<&&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return Topology::Any;
    }
    let all_node_hints = ready.iter().all(|e| !e.node_hints.is_empty());
    if all_node_hints
        && ready
            .iter()
            .any(|e| e.node_hints.iter().any(|n| n == node_name))
    {
        return Topology::SameNode;
    }
    let all_zone_hints = ready.iter().all(|e| !e.zone_hints.is_empty());
    if all_zone_hints
        && !zone.is_empty()
        && ready.iter().any(|e| e.zone_hints.iter().any(|z| z == zone))
    {
        return Topology::SameZone;
    }
    Topology::Any
}

/// The endpoints of one family of a service port, sorted into the sets traffic
/// policies use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Categorized<'a> {
    /// For Cluster policies: ready and usable under topology; serving and terminating
    /// ones when none is ready. Empty when no Cluster policy applies.
    pub cluster: Vec<&'a Endpoint>,
    /// For Local policies: this node's ready endpoints, else its serving and
    /// terminating ones. Empty when no Local policy applies.
    pub local: Vec<&'a Endpoint>,
    /// Some endpoint anywhere is ready, or serving and terminating (upstream's
    /// `hasAnyEndpoints`): without one, the service port rejects its traffic.
    pub any: bool,
}

/// Which sets of `endpoints` (all of one family) the port's policies need.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Uses {
    pub cluster: bool,
    pub local: bool,
}

pub(crate) fn categorize<'a>(
    endpoints: &[&'a Endpoint],
    uses: Uses,
    node_name: &str,
    zone: &str,
) -> Categorized<'a> {
    let mut out = Categorized {
        any: endpoints.iter().any(|e| e.ready || e.serving_terminating()),
        ..Categorized::default()
    };
    if uses.cluster {
        let topo = topology(endpoints, node_name, zone);
        let usable_here = |e: &Endpoint| match topo {
            Topology::Any => true,
            Topology::SameNode => e.node_hints.iter().any(|n| n == node_name),
            Topology::SameZone => e.zone_hints.iter().any(|z| z == zone),
        };
        out.cluster = endpoints
            .iter()
            .copied()
            .filter(|e| e.ready && usable_here(e))
            .collect();
        if out.cluster.is_empty() {
            out.cluster = endpoints
                .iter()
                .copied()
                .filter(|e| e.serving_terminating())
                .collect();
        }
    }
    if uses.local {
        out.local = endpoints
            .iter()
            .copied()
            .filter(|e| e.local && e.ready)
            .collect();
        if out.local.is_empty() {
            out.local = endpoints
                .iter()
                .copied()
                .filter(|e| e.local && e.serving_terminating())
                .collect();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str, local: bool, ready: bool, terminating: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 80,
            local,
            ready,
            serving: ready || terminating,
            terminating,
            zone_hints: vec![],
            node_hints: vec![],
        }
    }

    const BOTH: Uses = Uses {
        cluster: true,
        local: true,
    };

    #[test]
    fn ready_first_then_serving_terminating() {
        let eps = [
            ep("10.0.0.1", true, false, true),
            ep("10.0.0.2", false, true, false),
        ];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let c = categorize(&refs, BOTH, "n", "");
        assert_eq!(c.cluster, vec![&eps[1]]);
        // No local ready endpoint: the local terminating one.
        assert_eq!(c.local, vec![&eps[0]]);
        assert!(c.any);
        let gone = [ep("10.0.0.1", true, false, false)];
        let refs: Vec<&Endpoint> = gone.iter().collect();
        let c = categorize(&refs, BOTH, "n", "");
        assert!(c.cluster.is_empty() && c.local.is_empty() && !c.any);
    }

    #[test]
    fn topology_needs_every_ready_endpoint_hinted_and_one_match() {
        let mut eps = [
            ep("10.0.0.1", false, true, false),
            ep("10.0.0.2", false, true, false),
        ];
        eps[0].zone_hints = vec!["za".into()];
        eps[1].zone_hints = vec!["zb".into()];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        assert_eq!(categorize(&refs, BOTH, "n", "za").cluster, vec![&eps[0]]);
        assert_eq!(categorize(&refs, BOTH, "n", "zc").cluster.len(), 2);
        assert_eq!(categorize(&refs, BOTH, "n", "").cluster.len(), 2);
        eps[1].zone_hints.clear();
        let refs: Vec<&Endpoint> = eps.iter().collect();
        assert_eq!(categorize(&refs, BOTH, "n", "za").cluster.len(), 2);
    }

    #[test]
    fn unused_sets_stay_empty() {
        let eps = [ep("10.0.0.1", true, true, false)];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let c = categorize(
            &refs,
            Uses {
                cluster: false,
                local: true,
            },
            "n",
            "",
        );
        assert!(c.cluster.is_empty());
        assert_eq!(c.local.len(), 1);
    }
}
