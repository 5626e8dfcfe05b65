//! `NodeModel`: every service port's [`ServicePortPlan`] on this node, and the node-wide
//! settings engines encode once (node addresses, NodePort addresses, cluster CIDRs). A
//! pure function of the Services, EndpointSlices, the node and the config; engines
//! receive it and never look behind it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;

use crate::{
    changes::ChangeSet,
    endpoints::Endpoint,
    facts::{Catalog, ModelConfig, NodeFacts, ServiceEntry, ServiceKey, SliceEntry},
    family::{IpFamily, Protocol},
    name::{PortIds, ServicePortName},
    plan::{plan_port, MasqueradeSources, NodeContext, PortFacts, ServicePortPlan},
};

/// Everything an engine needs to program this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeModel {
    pub node_name: String,
    /// The node's zone label (topology hints).
    pub zone: String,
    /// The node's primary InternalIPs (one per family), from its Node object.
    pub node_ips: Vec<IpAddr>,
    /// Destination addresses that accept NodePort traffic (CIDRs; a primary node IP
    /// is a host-length prefix). Engines also require the address to be local and not
    /// loopback.
    pub node_port_addresses: Vec<IpNet>,
    /// Pod CIDRs: traffic from them is "from a pod of the cluster". Empty: no
    /// local-traffic detector.
    pub cluster_cidrs: Vec<IpNet>,
    pub masquerade_all: bool,
    pub services: BTreeMap<ServicePortName, ServicePortPlan>,
    ids: PortIds,
}

impl NodeModel {
    /// Builds the model of `node` from the catalog and config. The catalog's objects
    /// were validated by their source; anything still unusable is left out.
    pub fn build(catalog: &dyn Catalog, node: &NodeFacts, config: &ModelConfig) -> NodeModel {
        let mut node_port_addresses: Vec<IpNet> = config.node_port_cidrs.clone();
        if config.node_port_primary || config.node_port_cidrs.is_empty() {
            node_port_addresses.extend(node.primary_ips.iter().map(|ip| IpNet::from(*ip)));
        }
        node_port_addresses.sort();
        node_port_addresses.dedup();
        let mut model = NodeModel {
            node_name: node.name.clone(),
            zone: node.zone.clone(),
            node_ips: node.primary_ips.clone(),
            node_port_addresses,
            cluster_cidrs: config.cluster_cidrs.clone(),
            masquerade_all: config.masquerade_all,
            services: BTreeMap::new(),
            ids: PortIds::default(),
        };
        // Collected at once, the map is built with full nodes (inserting one by one in
        // order leaves them half empty). Ids are allocated in name order.
        let mut plans: Vec<ServicePortPlan> = Vec::new();
        for (ns, name, svc) in catalog.services() {
            let slices: Vec<&SliceEntry> = catalog.slices_of(ns, name).collect();
            model.plan_service(ns, name, svc, &slices, &BTreeMap::new(), &mut plans);
        }
        model.services = plans.into_iter().map(|p| (p.name.clone(), p)).collect();
        model
    }

    /// Recomputes only `services` (namespace, name) from the catalog, in place, and
    /// returns what changed: the cheap path for a few Services or EndpointSlices
    /// changing. Node-wide changes need [`NodeModel::build`].
    pub fn update_services(
        &mut self,
        catalog: &dyn Catalog,
        services: &BTreeSet<ServiceKey>,
    ) -> ChangeSet {
        let mut changes = ChangeSet::default();
        for (ns, name) in services {
            let mut old = self.take_service(ns, name);
            let mut plans = Vec::new();
            if let Some(svc) = catalog.service(ns, name) {
                let slices: Vec<&SliceEntry> = catalog.slices_of(ns, name).collect();
                self.plan_service(ns, name, svc, &slices, &old, &mut plans);
            }
            for plan in plans {
                match old.remove(&plan.name) {
                    None => {
                        changes.added.insert(plan.name.clone());
                    }
                    Some(prev) if prev != plan => {
                        changes.changed.insert(plan.name.clone());
                        changes.previous.insert(prev.name.clone(), prev);
                    }
                    Some(_) => {}
                }
                self.services.insert(plan.name.clone(), plan);
            }
            for (k, prev) in old {
                self.ids.release(prev.id);
                changes.removed.insert(k.clone());
                changes.previous.insert(k, prev);
            }
        }
        changes
    }

    /// Removes and returns the plans of one Service's ports.
    fn take_service(&mut self, ns: &str, name: &str) -> BTreeMap<ServicePortName, ServicePortPlan> {
        let first = ServicePortName::new(ns, name, "", Protocol::Tcp);
        let names: Vec<ServicePortName> = self
            .services
            .range(first..)
            .take_while(|(k, _)| k.namespace == ns && k.name == name)
            .map(|(k, _)| k.clone())
            .collect();
        names
            .into_iter()
            .filter_map(|k| self.services.remove_entry(&k))
            .collect()
    }

    /// Plans every port of one Service into `out`; a port keeps the id of its plan in
    /// `previous`.
    fn plan_service(
        &mut self,
        ns: &str,
        name: &str,
        svc: &ServiceEntry,
        slices: &[&SliceEntry],
        previous: &BTreeMap<ServicePortName, ServicePortPlan>,
        out: &mut Vec<ServicePortPlan>,
    ) {
        if !svc.proxied {
            return;
        }
        let node = NodeContext {
            node_name: &self.node_name,
            zone: &self.zone,
            node_ips: &self.node_ips,
            cluster_cidrs: &self.cluster_cidrs,
            masquerade_all: self.masquerade_all,
        };
        for port in &svc.ports {
            let port_name = ServicePortName::new(ns, name, &port.name, port.protocol);
            let id = match previous.get(&port_name) {
                Some(p) => p.id,
                None => self.ids.allocate(&port_name.digest()),
            };
            let endpoints = slice_endpoints(slices, &port.name, port.protocol, &self.node_name);
            let facts = PortFacts {
                name: port_name,
                service: svc,
                port,
                endpoints: &endpoints,
            };
            out.push(plan_port(&node, &facts, id));
        }
    }

    /// Node-wide settings (everything but the services) differ.
    pub fn globals_differ(&self, other: &NodeModel) -> bool {
        self.node_name != other.node_name
            || self.zone != other.zone
            || self.node_ips != other.node_ips
            || self.node_port_addresses != other.node_port_addresses
            || self.cluster_cidrs != other.cluster_cidrs
            || self.masquerade_all != other.masquerade_all
    }

    /// Backends of every service port, every family.
    pub fn endpoint_count(&self) -> usize {
        self.services
            .values()
            .map(ServicePortPlan::endpoint_count)
            .sum()
    }

    /// The node's primary IPs of `family`.
    pub fn node_ips(&self, family: IpFamily) -> Vec<IpAddr> {
        family.filter(&self.node_ips)
    }

    /// The `nodePortAddresses` CIDRs of `family`.
    pub fn node_port_addresses(&self, family: IpFamily) -> Vec<IpNet> {
        family.filter_nets(&self.node_port_addresses)
    }

    /// The cluster CIDRs of `family`.
    pub fn cluster_cidrs(&self, family: IpFamily) -> Vec<IpNet> {
        family.filter_nets(&self.cluster_cidrs)
    }

    /// Which sources of traffic to cluster IPs of `family` are masqueraded (the same
    /// for every port: [`crate::Masquerade::cluster_ips`]).
    pub fn masquerade_sources(&self, family: IpFamily) -> MasqueradeSources {
        NodeContext {
            node_name: &self.node_name,
            zone: &self.zone,
            node_ips: &self.node_ips,
            cluster_cidrs: &self.cluster_cidrs,
            masquerade_all: self.masquerade_all,
        }
        .masquerade_sources(family)
    }

    /// Adds (or replaces) a plan directly, keeping its id reserved: for engine tests and
    /// benchmarks that build plans by hand.
    pub fn insert_plan(&mut self, plan: ServicePortPlan) {
        self.ids.keep(plan.id);
        self.services.insert(plan.name.clone(), plan);
    }
}

/// Every endpoint of the slices whose port named `port_name` has `protocol`, each
/// address and port once.
pub(crate) fn slice_endpoints(
    slices: &[&SliceEntry],
    port_name: &str,
    protocol: Protocol,
    node_name: &str,
) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    for slice in slices {
        let Some(port) = slice
            .ports
            .iter()
            .find(|p| p.name == port_name && p.protocol == Some(protocol))
        else {
            continue;
        };
        let Some(port_number) = port.port else {
            continue;
        };
        for ep in &slice.endpoints {
            // The same address in two slices: a running endpoint wins over a
            // terminating one (upstream prefers the running pod).
            if let Some(i) = out
                .iter()
                .position(|o| o.ip == ep.ip && o.port == port_number)
            {
                if ep.terminating {
                    continue;
                }
                out.swap_remove(i);
            }
            out.push(Endpoint {
                ip: ep.ip,
                port: port_number,
                local: ep.node_name.as_deref() == Some(node_name),
                ready: ep.ready,
                serving: ep.serving,
                terminating: ep.terminating,
                zone_hints: ep.zone_hints().to_vec(),
                node_hints: ep.node_hints().to_vec(),
            });
        }
    }
    out.sort();
    out
}
