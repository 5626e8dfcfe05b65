//! What the engine applied, per family and service port: the chains each port owns and
//! its rules in the shared dispatch chains. Partial syncs diff against this record
//! instead of reading the kernel back; `verify` compares the kernel with it.

use std::collections::HashMap;

use switchyard_core::{IpFamily, ServicePortName};

use crate::chains::{self, Table};

/// A service port's rules in the shared chains, as rule specs (what follows
/// `-A CHAIN `).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dispatch {
    /// nat `SY-SERVICES`: cluster, external and LB IPs.
    pub nat_services: Vec<String>,
    /// nat `SY-NODEPORTS`.
    pub nat_nodeports: Vec<String>,
    /// filter `SY-SERVICES`: cluster IPs without (local) endpoints.
    pub filter_services: Vec<String>,
    /// filter `SY-EXTERNAL-SERVICES`: external destinations without (local) endpoints.
    pub filter_external: Vec<String>,
    /// filter `SY-FIREWALL`: LB IPs with source ranges.
    pub filter_firewall: Vec<String>,
    /// filter `SY-NODEPORTS`: health-check NodePorts.
    pub filter_nodeports: Vec<String>,
}

impl Dispatch {
    /// Every list with its table and chain.
    pub fn lists(&self) -> [(Table, &'static str, &[String]); 6] {
        [
            (Table::Nat, chains::SERVICES, &self.nat_services),
            (Table::Nat, chains::NODEPORTS, &self.nat_nodeports),
            (
                Table::Filter,
                chains::FILTER_SERVICES,
                &self.filter_services,
            ),
            (
                Table::Filter,
                chains::EXTERNAL_SERVICES,
                &self.filter_external,
            ),
            (Table::Filter, chains::FIREWALL, &self.filter_firewall),
            (
                Table::Filter,
                chains::FILTER_NODEPORTS,
                &self.filter_nodeports,
            ),
        ]
    }

    pub fn rules(&self, table: Table) -> usize {
        self.lists()
            .iter()
            .filter(|(t, _, _)| *t == table)
            .map(|(_, _, l)| l.len())
            .sum()
    }
}

/// What one service port programmed in one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRecord {
    /// nat chains this port owns (`SY-SVC-`, `SY-SVL-`, `SY-EXT-`, `SY-FW-`, `SY-SEP-`).
    pub chains: Vec<String>,
    /// Rules inside those chains.
    pub body_rules: usize,
    pub dispatch: Dispatch,
}

impl PortRecord {
    pub fn rules(&self, table: Table) -> usize {
        let own = if table == Table::Nat {
            self.body_rules
        } else {
            0
        };
        own + self.dispatch.rules(table)
    }
}

/// What one family's tables hold in Switchyard's chains.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilyRecord {
    pub ports: HashMap<ServicePortName, PortRecord>,
    /// Rules in the fixed chains (nat, filter).
    pub fixed_nat: usize,
    pub fixed_filter: usize,
    /// Of `fixed_nat`, the NodePort jumps at the end of nat `SY-SERVICES`.
    pub nodeport_jumps: usize,
    /// Rules of all ports (nat, filter), kept in step with `ports`.
    pub port_nat: usize,
    pub port_filter: usize,
}

impl FamilyRecord {
    /// Replaces (or removes) one port's record, keeping the counts in step.
    pub fn set(&mut self, name: ServicePortName, record: Option<PortRecord>) {
        if let Some(old) = self.ports.remove(&name) {
            self.port_nat -= old.rules(Table::Nat);
            self.port_filter -= old.rules(Table::Filter);
        }
        if let Some(new) = record {
            self.port_nat += new.rules(Table::Nat);
            self.port_filter += new.rules(Table::Filter);
            self.ports.insert(name, new);
        }
    }

    /// Rules in Switchyard's own chains of `table` (jumps from builtin chains excluded).
    pub fn chain_rules(&self, table: Table) -> usize {
        match table {
            Table::Nat => self.fixed_nat + self.port_nat,
            Table::Filter => self.fixed_filter + self.port_filter,
        }
    }

    /// Rules in nat `SY-SERVICES`.
    pub fn services_rules(&self) -> usize {
        self.nodeport_jumps
            + self
                .ports
                .values()
                .map(|p| p.dispatch.nat_services.len())
                .sum::<usize>()
    }

    /// The nat chains of all ports.
    pub fn port_chains(&self) -> impl Iterator<Item = &String> {
        self.ports.values().flat_map(|p| &p.chains)
    }

    /// Rules including the jumps from builtin chains.
    pub fn rules(&self, table: Table) -> usize {
        self.chain_rules(table) + chains::JUMPS.iter().filter(|j| j.table == table).count()
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

    /// Rules programmed per table, both families together.
    pub fn rule_counts(&self) -> Vec<(String, usize)> {
        Table::BOTH
            .iter()
            .map(|t| {
                (
                    t.as_str().to_string(),
                    self.v4.rules(*t) + self.v6.rules(*t),
                )
            })
            .collect()
    }

    pub fn rule_count(&self) -> usize {
        self.rule_counts().iter().map(|(_, n)| n).sum()
    }
}
