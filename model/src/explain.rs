//! Why each endpoint of a service port serves or not: the plan's decisions, told per
//! endpoint and target for `switchyard explain`. The reasons are read off the plan (an
//! endpoint serves a target exactly when the plan's backends for it hold the endpoint),
//! never decided again here.

use std::fmt;

use crate::{
    endpoints::Endpoint,
    facts::{Catalog, ModelConfig, NodeFacts},
    family::IpFamily,
    model::NodeModel,
    name::ServicePortName,
    plan::{ServicePortPlan, Target},
};

/// Why an endpoint does not serve a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Left {
    /// Neither ready nor serving and terminating.
    NotReady,
    /// Serving and terminating, but ready endpoints exist: the fallback is not used.
    Terminating,
    /// Ready, but topology hints send this node's traffic elsewhere.
    Topology {
        zones: Vec<String>,
        nodes: Vec<String>,
    },
    /// A Local traffic policy, and the endpoint is on another node.
    NotLocal,
}

impl fmt::Display for Left {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Left::NotReady => f.write_str("not ready"),
            Left::Terminating => f.write_str("terminating (ready endpoints exist)"),
            Left::Topology { zones, nodes } => {
                write!(f, "topology: hinted for")?;
                if !zones.is_empty() {
                    write!(f, " zones {}", zones.join(","))?;
                }
                if !nodes.is_empty() {
                    write!(f, " nodes {}", nodes.join(","))?;
                }
                Ok(())
            }
            Left::NotLocal => f.write_str("on another node (Local policy)"),
        }
    }
}

/// Whether an endpoint serves one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Serves,
    Left(Left),
    /// The target is Drop or Reject: nothing serves it.
    NoTarget,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Serves => f.write_str("serves"),
            Role::Left(why) => write!(f, "left out: {why}"),
            Role::NoTarget => f.write_str("-"),
        }
    }
}

/// One endpoint and its role for internal and external traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRole {
    pub endpoint: Endpoint,
    pub internal: Role,
    pub external: Role,
}

/// A service port's plan and every endpoint's part in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortExplanation {
    pub plan: ServicePortPlan,
    pub endpoints: Vec<EndpointRole>,
}

/// Explains `name` on `node`: its plan (built exactly as the agent builds it) and the
/// role of each endpoint. `None` when the model has no such service port.
pub fn explain_port(
    catalog: &dyn Catalog,
    node: &NodeFacts,
    config: &ModelConfig,
    name: &ServicePortName,
) -> Option<PortExplanation> {
    let model = NodeModel::build(catalog, node, config);
    let plan = model.services.get(name)?.clone();
    let svc = catalog.service(&name.namespace, &name.name)?;
    let port = svc
        .ports
        .iter()
        .find(|p| p.name == name.port && p.protocol == name.protocol)?;
    let slices: Vec<_> = catalog.slices_of(&name.namespace, &name.name).collect();
    let all = crate::model::slice_endpoints(&slices, &port.name, port.protocol, &node.name);
    let endpoints = all
        .into_iter()
        .map(|e| {
            let family = plan.family(IpFamily::of(&e.ip));
            let (internal, external) = match family {
                Some(f) => {
                    let external_local = svc.external_policy_local && f.externally_accessible();
                    (
                        role(&e, &f.internal, svc.internal_policy_local),
                        role(&e, &f.external, external_local),
                    )
                }
                None => (Role::NoTarget, Role::NoTarget),
            };
            EndpointRole {
                internal,
                external,
                endpoint: e,
            }
        })
        .collect();
    Some(PortExplanation { plan, endpoints })
}

/// The role of `e` for `target` (under a Local policy when `local_policy`), read off the
/// target's backends.
fn role(e: &Endpoint, target: &Target, local_policy: bool) -> Role {
    let Some(backends) = target.backends() else {
        return Role::NoTarget;
    };
    if backends.iter().any(|b| b.ip == e.ip && b.port == e.port) {
        return Role::Serves;
    }
    Role::Left(if local_policy && !e.local {
        Left::NotLocal
    } else if !e.ready && (!e.serving || !e.terminating) {
        Left::NotReady
    } else if !e.ready {
        Left::NotLocal
    } else {
        Left::Topology {
            zones: e.zone_hints.clone(),
            nodes: e.node_hints.clone(),
        }
    })
}
