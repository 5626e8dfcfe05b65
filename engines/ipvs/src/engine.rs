//! `IpvsEngine`: the `ProxyEngine` for IPVS. A full sync adopts what the kernel
//! already holds (dump, compare, write the difference: connections through servers
//! that stay are never cut) and replaces the helper table atomically; a partial sync
//! writes only what the changed ports' winning claims change. Any failure drops the
//! record, so the next sync is full.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Instant,
};

use async_trait::async_trait;
use ipnet::IpNet;
use switchyard_model::{
    tool::apply_with_tool, ChangeSet, Drift, EngineError, IpFamily, KernelObject, Mode, NodeModel,
    Owner, PortInspection, ProxyEngine, Retirement, ServicePortName, SyncReport,
};
use switchyard_netlink::{
    ipvs::{Ipvs, ServiceId},
    nftables::NftSocket,
    rtnetlink::Rtnl,
    Netns,
};
use switchyard_nftables::ruleset::collapse;

use crate::{
    dummy, helper,
    helper::text::NodeRules,
    options::IpvsOptions,
    ownership::Owned,
    record::{Delta, Record},
    servers::{read_server, sweep_drained, Writer},
    sysctl, verify,
    wants::port_wants,
};

/// The IPVS dataplane engine.
pub struct IpvsEngine {
    pub(crate) options: IpvsOptions,
    /// What the kernel holds, as far as the engine knows; `None` before the first
    /// successful sync and after a failure (the next sync is full).
    pub(crate) record: Option<Record>,
    pub(crate) ipvs: Option<Ipvs>,
    pub(crate) rtnl: Option<Rtnl>,
    pub(crate) nft: Option<NftSocket>,
    /// NodePort addresses found by the last full sync.
    pub(crate) node_addrs: Vec<IpAddr>,
    /// The node-wide rules of the helper table, per family, as last written.
    pub(crate) node_rules: Vec<NodeRules>,
    /// Rotates the virtual servers whose real servers `verify` reads.
    pub(crate) verify_cursor: usize,
    /// IPVS operations of the last sync.
    last_operations: usize,
}

/// Unavailable: this kernel (or namespace) has no IPVS.
fn unavailable(e: switchyard_netlink::NetlinkError) -> EngineError {
    if e.errno() == Some(nix::errno::Errno::ENOENT as i32) {
        EngineError::Unavailable {
            mode: Mode::Ipvs,
            reason: format!(
                "the IPVS netlink family is not registered ({e}): kernel module ip_vs not loaded"
            ),
        }
    } else {
        e.into()
    }
}

impl IpvsEngine {
    pub fn new(options: IpvsOptions) -> IpvsEngine {
        IpvsEngine {
            options,
            record: None,
            ipvs: None,
            rtnl: None,
            nft: None,
            node_addrs: Vec::new(),
            node_rules: Vec::new(),
            verify_cursor: 0,
            last_operations: 0,
        }
    }

    pub fn options(&self) -> &IpvsOptions {
        &self.options
    }

    /// IPVS operations (virtual and real server adds, updates, deletes) the last sync
    /// wrote.
    pub fn last_operations(&self) -> usize {
        self.last_operations
    }

    /// The NodePort addresses the engine serves (found by the last full sync).
    pub fn node_port_addresses(&self) -> &[IpAddr] {
        &self.node_addrs
    }

    fn netns(&self) -> Netns {
        Netns::from_name(self.options.netns.as_deref())
    }

    pub(crate) fn families(&self) -> &'static [IpFamily] {
        if self.options.ipv6 {
            &IpFamily::ALL
        } else {
            &IpFamily::ALL[..1]
        }
    }

    /// Opens whatever socket is not open yet.
    pub(crate) fn open(&mut self) -> Result<(), EngineError> {
        if self.ipvs.is_none() {
            self.ipvs = Some(Ipvs::open(&self.netns()).map_err(unavailable)?);
        }
        if self.rtnl.is_none() {
            self.rtnl = Some(Rtnl::open(&self.netns())?);
        }
        if self.nft.is_none() {
            self.nft = Some(NftSocket::open(self.options.netns.as_deref())?);
        }
        Ok(())
    }

    /// Drops the sockets (after an error they may hold unread answers).
    fn close(&mut self) {
        self.ipvs = None;
        self.rtnl = None;
        self.nft = None;
    }

    pub(crate) async fn nft(&self, text: &str) -> Result<(), EngineError> {
        apply_with_tool(
            self.options.netns.as_deref(),
            &self.options.nft_path,
            &["-f", "-"],
            &[text],
        )
        .await
    }

    fn node_rules(&self, model: &NodeModel) -> Vec<NodeRules> {
        self.families()
            .iter()
            .map(|&family| NodeRules {
                family,
                cluster_cidrs: collapse(model.cluster_cidrs(family)),
                masquerade: model.masquerade_sources(family),
            })
            .collect()
    }

    async fn full_sync(
        &mut self,
        model: &NodeModel,
        changes: &ChangeSet,
    ) -> Result<SyncReport, EngineError> {
        // Forget the record first (a failure makes the next sync full), keeping which
        // servers it held: they are ours to delete if no port wants them any more.
        let previous: BTreeSet<ServiceId> = self
            .record
            .take()
            .map(|r| r.kernel.into_keys().collect())
            .unwrap_or_default();
        let start = Instant::now();
        self.open()?;
        let rtnl = self.rtnl.as_mut().expect("opened");
        let index = dummy::ensure(rtnl, &self.options.interface)?;
        let node_addrs = dummy::node_port_addresses(rtnl, Some(index), &model.node_port_addresses)?;
        let old_vips = dummy::vips(rtnl, index)?;
        let ipv6 = self.options.ipv6;
        let mut record = Record::of(
            model
                .services
                .iter()
                .map(|(name, plan)| (name.clone(), port_wants(plan, &node_addrs, ipv6))),
        );
        // What is ours, read before the helper table (our ownership record) is replaced.
        let families = self.families();
        let mut owned = Owned::read(
            self.nft.as_mut().expect("opened"),
            &self.options.table,
            families,
        )?;
        owned.vips.extend(old_vips.iter().copied());
        let rules = self.node_rules(model);
        self.nft(&helper::text::tables(&self.options.table, &record, &rules))
            .await?;
        let wanted = record.addresses();
        let rtnl = self.rtnl.as_mut().expect("opened");
        for ip in wanted.difference(&old_vips) {
            rtnl.add_address(index, dummy::vip_address(*ip))?;
        }
        owned.servers = previous;
        self.adopt(&mut record, &owned)?;
        let rtnl = self.rtnl.as_mut().expect("opened");
        for ip in old_vips.difference(&wanted) {
            rtnl.delete_address(index, dummy::vip_address(*ip))?;
        }
        self.node_addrs = node_addrs;
        self.node_rules = rules;
        let rules = record.kernel.len();
        self.record = Some(record);
        Ok(SyncReport {
            full: true,
            service_ports_written: model.services.len(),
            service_ports_removed: changes.removed.len(),
            rules,
            apply_time: start.elapsed(),
            ..SyncReport::default()
        })
    }

    /// Brings IPVS to the record's winning claims from what the kernel holds: servers
    /// that match are kept as they are, the rest is written, and servers of ours that
    /// no port wants any more are deleted.
    fn adopt(&mut self, record: &mut Record, owned: &Owned) -> Result<(), EngineError> {
        let now = Instant::now();
        let ipvs = self.ipvs.as_mut().expect("opened");
        let wanted: BTreeMap<ServiceId, _> = record
            .servers
            .winners()
            .map(|(id, f)| (*id, f.clone()))
            .collect();
        let mut kernel = BTreeMap::new();
        let mut operations = 0;
        for service in ipvs.services()? {
            let id = service.id;
            if wanted.contains_key(&id) {
                kernel.insert(id, read_server(ipvs, service, now)?);
            } else if owned.owns(&id) && !excluded(&self.options.exclude_cidrs, &id) {
                operations += 1;
                ipvs.delete_service(&id)?;
            }
        }
        let mut w = Writer {
            ipvs,
            scheduler: &self.options.scheduler,
            now,
            operations,
        };
        for (id, frontend) in &wanted {
            w.server(*id, Some(frontend), &mut kernel)?;
        }
        self.last_operations = w.operations;
        record.kernel = kernel;
        sweep_drained(
            ipvs_of(&mut self.ipvs),
            &mut record.kernel,
            now,
            self.options.drain_limit,
        )?;
        Ok(())
    }

    async fn partial_sync(
        &mut self,
        model: &NodeModel,
        changes: &ChangeSet,
    ) -> Result<SyncReport, EngineError> {
        let mut record = self.record.take().expect("checked by the caller");
        let start = Instant::now();
        self.open()?;
        let ipv6 = self.options.ipv6;
        let ports = changes
            .touched()
            .map(|name| {
                let wants = model
                    .services
                    .get(name)
                    .map(|p| port_wants(p, &self.node_addrs, ipv6));
                (name.clone(), wants)
            })
            .collect();
        let delta = record.replace(ports);
        self.apply_delta(&mut record, &delta).await?;
        let rules = record.kernel.len();
        self.record = Some(record);
        Ok(SyncReport {
            full: false,
            service_ports_written: changes.added.len() + changes.changed.len(),
            service_ports_removed: changes.removed.len(),
            rules,
            apply_time: start.elapsed(),
            ..SyncReport::default()
        })
    }

    /// Writes a delta in an order that never leaves a served VIP without backends:
    /// helper chains and element adds, addresses, servers that stay or come, helper
    /// element deletes, servers that go, addresses that go, chains that go.
    async fn apply_delta(&mut self, record: &mut Record, delta: &Delta) -> Result<(), EngineError> {
        let now = Instant::now();
        self.helper_adds(delta).await?;
        // The interface is looked up only when addresses change (an endpoint change
        // does not touch it).
        let index = if delta.addresses_added.is_empty() && delta.addresses_removed.is_empty() {
            None
        } else {
            Some(self.dummy_index()?)
        };
        let rtnl = self.rtnl.as_mut().expect("opened");
        if let Some(index) = index {
            for ip in &delta.addresses_added {
                rtnl.add_address(index, dummy::vip_address(*ip))?;
            }
        }
        let mut w = Writer {
            ipvs: self.ipvs.as_mut().expect("opened"),
            scheduler: &self.options.scheduler,
            now,
            operations: 0,
        };
        for (id, want) in delta.servers.iter().filter(|(_, w)| w.is_some()) {
            w.server(*id, want.as_ref(), &mut record.kernel)?;
        }
        let mut operations = w.operations;
        self.helper_deletes(delta)?;
        let mut w = Writer {
            ipvs: self.ipvs.as_mut().expect("opened"),
            scheduler: &self.options.scheduler,
            now,
            operations,
        };
        for (id, _) in delta.servers.iter().filter(|(_, w)| w.is_none()) {
            w.server(*id, None, &mut record.kernel)?;
        }
        operations = w.operations;
        let rtnl = self.rtnl.as_mut().expect("opened");
        if let Some(index) = index {
            for ip in &delta.addresses_removed {
                rtnl.delete_address(index, dummy::vip_address(*ip))?;
            }
        }
        self.helper_stale_chains(delta).await?;
        self.last_operations = operations;
        // No sweep of drained real servers here: it walks every virtual server, which
        // at 10k services costs more than the change itself. The drift check (every
        // syncPeriod) and full syncs sweep; upstream checks once a minute.
        Ok(())
    }

    pub(crate) fn dummy_index(&mut self) -> Result<u32, EngineError> {
        let name = self.options.interface.clone();
        let rtnl = self.rtnl.as_mut().expect("opened");
        rtnl.link_index(&name)?.ok_or_else(|| EngineError::Kernel {
            operation: format!("finding interface {name}"),
            source: std::io::Error::from_raw_os_error(nix::errno::Errno::ENODEV as i32),
        })
    }

    /// New chains (through `nft`, rare) or element adds and value changes (one
    /// netlink batch).
    async fn helper_adds(&mut self, delta: &Delta) -> Result<(), EngineError> {
        let table = self.options.table.clone();
        if delta.helper.iter().any(|h| !h.chains.is_empty()) {
            let mut text = String::new();
            for (h, &family) in delta.helper.iter().zip(&IpFamily::ALL) {
                let chains: Vec<&helper::Chain> = h.chains.iter().collect();
                let replaced: Vec<&helper::Element> = h.replaced.iter().collect();
                let adds: Vec<&helper::Element> = h.adds.iter().collect();
                text.push_str(&helper::text::partial(
                    &table, family, &chains, &replaced, &adds,
                ));
            }
            return self.nft(&text).await;
        }
        let nft = self.nft.as_mut().expect("opened");
        let mut batch = nft.batch();
        for (h, &family) in delta.helper.iter().zip(&IpFamily::ALL) {
            let replaced: Vec<&helper::Element> = h.replaced.iter().collect();
            let adds: Vec<&helper::Element> = h.adds.iter().collect();
            helper::batch::encode(&mut batch, &table, family, &replaced, &adds);
        }
        Ok(nft.commit(batch)?)
    }

    fn helper_deletes(&mut self, delta: &Delta) -> Result<(), EngineError> {
        let table = &self.options.table;
        let nft = self.nft.as_mut().expect("opened");
        let mut batch = nft.batch();
        for (h, &family) in delta.helper.iter().zip(&IpFamily::ALL) {
            let deletes: Vec<&helper::Element> = h.deletes.iter().collect();
            helper::batch::encode(&mut batch, table, family, &deletes, &[]);
        }
        Ok(nft.commit(batch)?)
    }

    async fn helper_stale_chains(&mut self, delta: &Delta) -> Result<(), EngineError> {
        let mut text = String::new();
        for (h, &family) in delta.helper.iter().zip(&IpFamily::ALL) {
            let names: Vec<&str> = h.stale_chains.iter().map(String::as_str).collect();
            text.push_str(&helper::text::delete_chains(
                &self.options.table,
                family,
                &names,
            ));
        }
        if text.is_empty() {
            return Ok(());
        }
        self.nft(&text).await
    }
}

fn ipvs_of(ipvs: &mut Option<Ipvs>) -> &mut Ipvs {
    ipvs.as_mut().expect("opened")
}

/// A virtual server in `excludeCIDRs`: never deleted.
pub(crate) fn excluded(cidrs: &[IpNet], id: &ServiceId) -> bool {
    match id {
        ServiceId::Addr { addr, .. } => cidrs.iter().any(|n| n.contains(addr)),
        ServiceId::Fwmark { .. } => false,
    }
}

#[async_trait]
impl ProxyEngine for IpvsEngine {
    fn mode(&self) -> Mode {
        Mode::Ipvs
    }

    fn owner(&self) -> Owner {
        if self.options.interface == dummy::INTERFACE && self.options.table == helper::TABLE {
            "ipvs".to_string()
        } else {
            format!("ipvs ({}, {})", self.options.interface, self.options.table)
        }
    }

    async fn prepare(&mut self) -> Result<(), EngineError> {
        self.open()?;
        let settings = sysctl::settings(self.options.strict_arp, &sysctl::kernel_release());
        sysctl::apply(self.options.netns.as_deref(), &settings)?;
        let t = self.options.timeouts;
        if t.tcp != 0 || t.tcp_fin != 0 || t.udp != 0 {
            self.ipvs.as_mut().expect("opened").set_timeouts(&t)?;
        }
        let rtnl = self.rtnl.as_mut().expect("opened");
        dummy::ensure(rtnl, &self.options.interface)?;
        Ok(())
    }

    async fn sync(
        &mut self,
        model: &NodeModel,
        changes: &ChangeSet,
    ) -> Result<SyncReport, EngineError> {
        let result = if changes.full || self.record.is_none() {
            self.full_sync(model, changes).await
        } else {
            self.partial_sync(model, changes).await
        };
        if result.is_err() {
            self.record = None;
            self.close();
        }
        result
    }

    async fn verify(&mut self, model: &NodeModel) -> Result<Drift, EngineError> {
        let result = verify::verify(self, model);
        if result.is_err() {
            self.close();
        }
        result
    }

    async fn inspect(
        &mut self,
        model: &NodeModel,
        port: &ServicePortName,
    ) -> Result<PortInspection, EngineError> {
        let (mut out, plan) = match PortInspection::of_port(self.owner(), model, port) {
            Ok(start) => start,
            Err(not_in_model) => return Ok(not_in_model),
        };
        self.open()?;
        let name = self.options.interface.clone();
        let rtnl = self.rtnl.as_mut().expect("opened");
        let index = rtnl.link_index(&name)?;
        let node_addrs = dummy::node_port_addresses(rtnl, index, &model.node_port_addresses)?;
        let vips = match index {
            Some(i) => dummy::vips(rtnl, i)?,
            None => Default::default(),
        };
        let wants = port_wants(plan, &node_addrs, self.options.ipv6);
        for s in &wants.shared {
            if let crate::wants::Shared::Address(ip) = s {
                if vips.contains(ip) {
                    out.found(KernelObject::new("address", format!("{name} {ip}"), ""));
                } else {
                    out.differs(format!("{ip} is not on interface {name}"));
                }
            }
        }
        let ipvs = self.ipvs.as_mut().expect("opened");
        let kernel = crate::inspect::read_servers(ipvs, &wants)?;
        crate::inspect::compare_servers(&wants, &self.options.scheduler, &kernel, &mut out);
        let nft = self.nft.as_mut().expect("opened");
        crate::inspect::compare_helper(nft, &self.options.table, &wants, &mut out)?;
        Ok(out)
    }

    async fn cleanup(&mut self) -> Result<(), EngineError> {
        self.record = None;
        self.close();
        crate::cleanup::cleanup(self).await
    }

    async fn retire(&mut self) -> Result<Retirement, EngineError> {
        self.record = None;
        self.close();
        crate::cleanup::retire(self).await
    }
}
