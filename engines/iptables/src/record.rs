//! What the engine applied, per family and service port: the chains each port owns and
//! its rules in the shared dispatch chains. Partial syncs diff against this record
//! instead of reading the kernel back; `verify` compares the kernel with it.

use std::collections::HashMap;

use switchyard_model::{IpFamily, ServicePortName};

use crate::chains::{Chains, Table};

/// The shared chains a service port puts rules in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DispatchChain {
    /// nat: cluster, external and LB IPs to the port's chains.
    NatServices,
    /// nat: NodePorts to the port's external chain.
    NatNodePorts,
    /// filter: cluster IPs without (local) endpoints.
    FilterServices,
    /// filter: external IPs and LB IPs without (local) endpoints.
    ExternalServices,
    /// filter: NodePorts without (local) endpoints.
    ExternalNodePorts,
    /// filter: LB IPs with source ranges.
    Firewall,
    /// filter: health-check NodePorts.
    HealthCheck,
}

impl DispatchChain {
    pub const ALL: [DispatchChain; 7] = [
        DispatchChain::NatServices,
        DispatchChain::NatNodePorts,
        DispatchChain::FilterServices,
        DispatchChain::ExternalServices,
        DispatchChain::ExternalNodePorts,
        DispatchChain::Firewall,
        DispatchChain::HealthCheck,
    ];

    pub fn table(self) -> Table {
        match self {
            DispatchChain::NatServices | DispatchChain::NatNodePorts => Table::Nat,
            _ => Table::Filter,
        }
    }

    pub fn name(self, chains: &Chains) -> &str {
        match self {
            DispatchChain::NatServices => &chains.services,
            DispatchChain::NatNodePorts => &chains.nodeports,
            DispatchChain::FilterServices => &chains.filter_services,
            DispatchChain::ExternalServices => &chains.external_services,
            DispatchChain::ExternalNodePorts => &chains.external_nodeports,
            DispatchChain::Firewall => &chains.firewall,
            DispatchChain::HealthCheck => &chains.filter_nodeports,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A service port's rules in the shared chains, as rule specs (what follows
/// `-A CHAIN `).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dispatch {
    lists: [Vec<String>; 7],
}

impl Dispatch {
    pub fn push(&mut self, chain: DispatchChain, spec: String) {
        self.lists[chain.index()].push(spec);
    }

    pub fn get(&self, chain: DispatchChain) -> &[String] {
        &self.lists[chain.index()]
    }

    /// Every list with its chain.
    pub fn lists(&self) -> impl Iterator<Item = (DispatchChain, &[String])> {
        DispatchChain::ALL.into_iter().map(|c| (c, self.get(c)))
    }

    pub fn rules(&self, table: Table) -> usize {
        self.lists()
            .filter(|(c, _)| c.table() == table)
            .map(|(_, l)| l.len())
            .sum()
    }
}

/// What one service port programmed in one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRecord {
    /// Chains this port owns, per table (`Table::index`): nat `SVC-`, `SVL-`, `EXT-`,
    /// `FW-`; filter `FW-` (source ranges of a port without endpoints).
    pub chains: [Vec<String>; 2],
    /// Rules inside those chains, per table.
    pub body_rules: [usize; 2],
    pub dispatch: Dispatch,
}

impl PortRecord {
    pub fn chains(&self, table: Table) -> &[String] {
        &self.chains[table.index()]
    }

    pub fn rules(&self, table: Table) -> usize {
        self.body_rules[table.index()] + self.dispatch.rules(table)
    }
}

/// What one family's tables hold in the engine's chains.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilyRecord {
    pub ports: HashMap<ServicePortName, PortRecord>,
    /// Rules in the fixed chains, per table (`Table::index`).
    pub fixed: [usize; 2],
    /// Rules of all ports, per table, kept in step with `ports`.
    port_rules: [usize; 2],
}

impl FamilyRecord {
    /// Replaces (or removes) one port's record, keeping the counts in step.
    pub fn set(&mut self, name: ServicePortName, record: Option<PortRecord>) {
        if let Some(old) = self.ports.remove(&name) {
            for t in Table::BOTH {
                self.port_rules[t.index()] -= old.rules(t);
            }
        }
        if let Some(new) = record {
            for t in Table::BOTH {
                self.port_rules[t.index()] += new.rules(t);
            }
            self.ports.insert(name, new);
        }
    }

    /// Rules in the engine's own chains of `table` (jumps from builtin chains excluded).
    pub fn chain_rules(&self, table: Table) -> usize {
        self.fixed[table.index()] + self.port_rules[table.index()]
    }

    /// Rules in the fixed chains of `table`: the fixed rules and every port's dispatch
    /// rules (what `verify` counts without listing the per-port chains).
    pub fn fixed_chain_rules(&self, table: Table) -> usize {
        self.fixed[table.index()]
            + self
                .ports
                .values()
                .map(|p| p.dispatch.rules(table))
                .sum::<usize>()
    }

    /// The per-port chains of `table`, all ports.
    pub fn port_chains(&self, table: Table) -> impl Iterator<Item = &String> {
        self.ports.values().flat_map(move |p| p.chains(table))
    }

    /// Rules including the jumps from builtin chains.
    pub fn rules(&self, table: Table, chains: &Chains) -> usize {
        self.chain_rules(table) + chains.jumps().iter().filter(|j| j.table == table).count()
    }
}

/// Everything the engine applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub v4: FamilyRecord,
    pub v6: FamilyRecord,
    /// Per-endpoint rules were written without comments (many endpoints, as upstream's
    /// large-cluster mode); a switch needs a full sync.
    pub large: bool,
    /// Forwarded INVALID packets are dropped (a change needs a full sync).
    pub drop_invalid: bool,
}

impl Applied {
    pub fn family(&self, family: IpFamily) -> &FamilyRecord {
        match family {
            IpFamily::V4 => &self.v4,
            IpFamily::V6 => &self.v6,
        }
    }

    pub fn family_mut(&mut self, family: IpFamily) -> &mut FamilyRecord {
        match family {
            IpFamily::V4 => &mut self.v4,
            IpFamily::V6 => &mut self.v6,
        }
    }

    /// Rules programmed per table (`filter`, `nat`), both families together, for
    /// `kubeproxy_sync_proxy_rules_iptables_total{table}`.
    /// Only the `families` programmed count.
    pub fn rules_by_table(&self, chains: &Chains, families: &[IpFamily]) -> Vec<(String, usize)> {
        Table::BOTH
            .iter()
            .map(|t| {
                let n = families
                    .iter()
                    .map(|f| self.family(*f).rules(*t, chains))
                    .sum();
                (t.as_str().to_string(), n)
            })
            .collect()
    }
}
