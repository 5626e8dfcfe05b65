//! [`EbpfEngine`]: the `ProxyEngine` for eBPF. It encodes the model's plans into the
//! dataplane's maps (see `encode`) and decides no Service semantics.
//!
//! - `prepare` mounts bpffs if missing, loads the programs over the pinned maps and
//!   attaches the cgroup programs (and explicitly configured tc interfaces), replacing a
//!   previous process's attachments without a gap.
//! - A full sync rereads the maps (so what a previous process, or anyone, left is
//!   adopted or repaired: only differences are written), resolves the node's NodePort
//!   addresses and default interfaces, and writes every plan, then attaches the tc
//!   programs where they belong. Plans are written in chunks ([`FULL_SYNC_CHUNK`]), so a
//!   full sync holds a bounded amount of encoded content at a time.
//! - A partial sync writes only the changed ports' families: a one-endpoint change is
//!   one backend-slot write, plus one entry write per key when the count changes.
//! - Any failure makes the next sync a full one.
//! - A new map layout (see `layout`), or new map sizes, live in their own pin directory:
//!   the new programs are attached beside the old layout's, which keep serving until the
//!   first full sync has filled the new maps; then the old layout's pins are removed.
//!   Sockets need no state to keep working; tc flows of outside clients NATed by the old
//!   programs end there.
//! - `verify` compares the maps with the record of what was applied, checks the pinned
//!   attachments, and that the node's addresses still give the same NodePort addresses.
//! - `cleanup` detaches and unpins everything under the pin root (bpffs stays mounted).

use std::{collections::BTreeSet, io, net::IpAddr, time::Instant};

use async_trait::async_trait;
use switchyard_model::{
    ChangeSet, Drift, EngineError, Mode, NodeModel, PortInspection, Protocol, ProxyEngine,
    ServicePortName, ServicePortPlan, SyncReport,
};

use crate::{
    dataplane::{Dataplane, ServicePort, WriteStats},
    encode::{candidates, encode_family, renumber, Shadows},
    error::EbpfError,
    loader::{self, DataplaneConfig, DROP_EGRESS, SOCK_PROGRAMS},
    mounts,
    node::{self, in_netns, InterfaceAddress},
    options::EbpfOptions,
    service::ServiceKey,
};

/// Service ports a full sync encodes and writes at a time.
pub const FULL_SYNC_CHUNK: usize = 2048;

/// The interfaces the tc programs are attached to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interfaces {
    pub external: Vec<String>,
    pub backend: Vec<String>,
}

/// The eBPF dataplane engine.
pub struct EbpfEngine {
    options: EbpfOptions,
    dataplane: Option<Dataplane>,
    /// The node's addresses serving NodePorts, as of the last full sync.
    node_ports: Vec<IpAddr>,
    /// Service IPs among them, hiding NodePorts (see `encode`).
    shadows: Shadows,
    interfaces: Option<Interfaces>,
    /// Set after any failure and before the first sync: the next sync is full.
    needs_full: bool,
    last_writes: WriteStats,
}

impl EbpfEngine {
    pub fn new(options: EbpfOptions) -> EbpfEngine {
        EbpfEngine {
            options,
            dataplane: None,
            node_ports: Vec::new(),
            shadows: Shadows::default(),
            interfaces: None,
            needs_full: true,
            last_writes: WriteStats::default(),
        }
    }

    pub fn options(&self) -> &EbpfOptions {
        &self.options
    }

    /// The map operations of the last sync.
    pub fn last_writes(&self) -> WriteStats {
        self.last_writes
    }

    /// The interfaces the last full sync attached the tc programs to.
    pub fn interfaces(&self) -> Option<&Interfaces> {
        self.interfaces.as_ref()
    }

    /// The node addresses NodePorts are served on (as of the last full sync).
    pub fn node_port_addresses(&self) -> &[IpAddr] {
        &self.node_ports
    }

    /// The loaded dataplane (after `prepare`), to read the maps back.
    pub fn dataplane(&self) -> Option<&Dataplane> {
        self.dataplane.as_ref()
    }

    fn dataplane_config(&self) -> Result<DataplaneConfig, EbpfError> {
        let cgroup = match &self.options.cgroup {
            Some(c) => c.clone(),
            None => mounts::find_cgroup2()?,
        };
        Ok(DataplaneConfig {
            bpffs: self.options.bpffs.clone(),
            pin_root: self.options.pin_root.clone(),
            cgroup,
            external_interfaces: self.options.external_interfaces.clone().unwrap_or_default(),
            backend_interfaces: self.options.backend_interfaces.clone().unwrap_or_default(),
            sizes: self.options.sizes.clone(),
        })
    }

    fn load(&mut self) -> Result<&mut Dataplane, EbpfError> {
        if self.dataplane.is_none() {
            let cfg = self.dataplane_config()?;
            let dp = in_netns(self.options.netns.as_deref(), || Dataplane::load(cfg))?;
            self.dataplane = Some(dp);
            self.needs_full = true;
        }
        Ok(self.dataplane.as_mut().expect("just loaded"))
    }

    fn addresses(&self) -> Result<Vec<InterfaceAddress>, EbpfError> {
        in_netns(self.options.netns.as_deref(), node::interface_addresses)
    }

    /// The interfaces to attach to: the configured ones, else those of the module doc.
    fn resolve_interfaces(&self, model: &NodeModel, addrs: &[InterfaceAddress]) -> Interfaces {
        let external = match &self.options.external_interfaces {
            Some(list) => list.clone(),
            None => node::interfaces_holding(addrs, &model.node_ips),
        };
        let backend = match &self.options.backend_interfaces {
            Some(list) => list.clone(),
            None => node::interfaces_within(addrs, &model.cluster_cidrs, &external),
        };
        if external.is_empty() {
            tracing::warn!(node_ips = ?model.node_ips, "no interface holds a node IP: NodePort, LoadBalancer and external-IP traffic from outside is not served");
        }
        Interfaces { external, backend }
    }

    fn full_sync(&mut self, model: &NodeModel) -> Result<(usize, WriteStats), EbpfError> {
        let addrs = self.addresses()?;
        let node_ports = node::node_port_addresses(&addrs, &model.node_port_addresses);
        let interfaces = self.resolve_interfaces(model, &addrs);
        let netns = self.options.netns.clone();
        let dp = self.load()?;
        dp.reread()?;
        for ip in &model.node_ips {
            dp.set_masquerade_address(*ip)?;
        }
        let mut shadows = Shadows::default();
        for plan in model.services.values() {
            shadows.add(plan, &node_ports);
        }
        let mut stats = WriteStats::default();
        let mut keep: BTreeSet<u32> = BTreeSet::new();
        let plans: Vec<&ServicePortPlan> = model.services.values().collect();
        for chunk in plans.chunks(FULL_SYNC_CHUNK) {
            let mut ports = Vec::new();
            for plan in chunk {
                ports.extend(place_plan(dp, plan, &node_ports, &shadows)?);
            }
            keep.extend(ports.iter().map(|p| p.id));
            add(&mut stats, dp.apply(&ports, &[])?);
        }
        let stale: Vec<u32> = dp
            .record
            .keys()
            .filter(|id| !keep.contains(id))
            .copied()
            .collect();
        add(&mut stats, dp.apply(&[], &stale)?);
        in_netns(netns.as_deref(), || {
            dp.set_tc_interfaces(&interfaces.external, &interfaces.backend)
        })?;
        // A new layout was built beside the old one (its programs attached beside the
        // old ones, which kept serving): now that it holds everything, the old one goes.
        let keep = dp.config().pin_dir();
        for old in loader::remove_other_layouts(&self.options.pin_root, &keep)? {
            tracing::info!(layout = %old.display(), "removed the pins of another map layout");
        }
        self.node_ports = node_ports;
        self.shadows = shadows;
        self.interfaces = Some(interfaces);
        Ok((model.services.len(), stats))
    }

    fn partial_sync(
        &mut self,
        model: &NodeModel,
        changes: &ChangeSet,
    ) -> Result<(usize, WriteStats), EbpfError> {
        let node_ports = self.node_ports.clone();
        let rewrite = self.update_shadows(model, changes);
        let shadows = self.shadows.clone();
        let dp = self.load()?;
        let mut removals: Vec<u32> = Vec::new();
        for (name, old) in &changes.previous {
            let still = model.services.get(name);
            for fam in &old.families {
                if still.and_then(|p| p.family(fam.family)).is_none() {
                    removals.extend(candidates(old.id, fam.family));
                }
            }
        }
        let mut ports = Vec::new();
        let mut written = 0;
        for name in changes.added.iter().chain(&changes.changed).chain(&rewrite) {
            let Some(plan) = model.services.get(name) else {
                continue;
            };
            ports.extend(place_plan(dp, plan, &node_ports, &shadows)?);
            written += 1;
        }
        removals.retain(|id| !ports.iter().any(|p| p.id == *id));
        Ok((written, dp.apply(&ports, &removals)?))
    }

    /// Counts the changed ports' service IPs out and in; the ports whose NodePort entries
    /// a service IP now hides or no longer hides (not already among the changes).
    fn update_shadows(
        &mut self,
        model: &NodeModel,
        changes: &ChangeSet,
    ) -> BTreeSet<ServicePortName> {
        let mut flipped: BTreeSet<(u16, Protocol)> = BTreeSet::new();
        for old in changes.previous.values() {
            flipped.extend(self.shadows.remove(old, &self.node_ports));
        }
        for name in changes.added.iter().chain(&changes.changed) {
            if let Some(plan) = model.services.get(name) {
                flipped.extend(self.shadows.add(plan, &self.node_ports));
            }
        }
        if flipped.is_empty() {
            return BTreeSet::new();
        }
        model
            .services
            .values()
            .filter(|p| {
                p.families.iter().any(|f| {
                    f.node_port
                        .is_some_and(|np| flipped.contains(&(np, p.protocol)))
                })
            })
            .map(|p| p.name.clone())
            .filter(|n| !changes.added.contains(n) && !changes.changed.contains(n))
            .collect()
    }

    /// What `verify` finds, in words.
    fn drift(&mut self, model: &NodeModel) -> Result<Vec<String>, EbpfError> {
        let addrs = self.addresses()?;
        let Some(dp) = self.dataplane.as_ref() else {
            return Ok(vec!["the dataplane is not loaded".into()]);
        };
        let mut found = dp.verify()?;
        let cgroup = loader::pinned_cgroup_programs(&dp.config().pin_dir())?;
        for program in SOCK_PROGRAMS.iter().chain([&DROP_EGRESS]) {
            if !cgroup.iter().any(|p| p == program) {
                found.push(format!("cgroup program {program} is not attached"));
            }
        }
        if let Some(want) = &self.interfaces {
            let mut expected: Vec<(loader::TcSide, String)> = Vec::new();
            for i in &want.external {
                expected.push((loader::TcSide::Ingress, i.clone()));
                expected.push((loader::TcSide::Egress, i.clone()));
            }
            for i in want.backend.iter().filter(|i| !want.external.contains(i)) {
                expected.push((loader::TcSide::Ingress, i.clone()));
            }
            expected.sort();
            let have = dp.tc_interfaces()?;
            if have != expected {
                found.push(format!("tc attachments {have:?}, expected {expected:?}"));
            }
            if self.resolve_interfaces(model, &addrs) != *want {
                found.push("the node's interfaces changed".into());
            }
        }
        let node_ports = node::node_port_addresses(&addrs, &model.node_port_addresses);
        if node_ports != self.node_ports {
            found.push(format!(
                "NodePort addresses are now {node_ports:?}, {:?} applied",
                self.node_ports
            ));
        }
        Ok(found)
    }
}

fn add(total: &mut WriteStats, s: WriteStats) {
    total.writes += s.writes;
    total.deletes += s.deletes;
}

/// Every family of `plan`, encoded and placed at its id.
fn place_plan(
    dp: &mut Dataplane,
    plan: &ServicePortPlan,
    node_ports: &[IpAddr],
    shadows: &Shadows,
) -> Result<Vec<ServicePort>, EbpfError> {
    let mut out = Vec::with_capacity(plan.families.len());
    for fam in &plan.families {
        let ids = candidates(plan.id, fam.family);
        let mut sp = encode_family(plan, fam, node_ports, shadows, ids[0]);
        let keys: Vec<ServiceKey> = sp.entries.keys().copied().collect();
        let id = dp.place(ids, &keys)?;
        renumber(&mut sp, id);
        out.push(sp);
    }
    Ok(out)
}

/// The engine's errors in the contract's terms: a missing cgroup v2 mount makes the
/// engine unavailable; anything else is the kernel's answer, errno kept when there is one.
impl From<EbpfError> for EngineError {
    fn from(e: EbpfError) -> EngineError {
        if let EbpfError::NoCgroup2(_) = e {
            return EngineError::Unavailable {
                mode: Mode::Ebpf,
                reason: e.to_string(),
            };
        }
        let errno = errno_of(&e);
        let operation = e.to_string();
        EngineError::Kernel {
            operation,
            source: match errno {
                Some(n) => io::Error::from_raw_os_error(n),
                None => io::Error::other(e),
            },
        }
    }
}

/// The first errno in an error's source chain.
fn errno_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(n) = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(n);
        }
        if let Some(n) = err.downcast_ref::<nix::Error>() {
            return Some(*n as i32);
        }
        cur = err.source();
    }
    None
}

#[async_trait]
impl ProxyEngine for EbpfEngine {
    fn mode(&self) -> Mode {
        Mode::Ebpf
    }

    async fn prepare(&mut self) -> Result<(), EngineError> {
        Ok(tokio_block(|| self.load().map(drop))?)
    }

    async fn sync(
        &mut self,
        model: &NodeModel,
        changes: &ChangeSet,
    ) -> Result<SyncReport, EngineError> {
        // Removing a port needs its old plan (its ids): without one, rewrite everything.
        let unknown_removal = changes
            .removed
            .iter()
            .any(|n| !changes.previous.contains_key(n));
        let full = changes.full || self.needs_full || self.dataplane.is_none() || unknown_removal;
        let started = Instant::now();
        self.needs_full = true;
        let (written, stats) = tokio_block(|| {
            if full {
                self.full_sync(model)
            } else {
                self.partial_sync(model, changes)
            }
        })?;
        self.needs_full = false;
        self.last_writes = stats;
        let rules = self
            .dataplane
            .as_ref()
            .map_or(0, Dataplane::applied_objects);
        Ok(SyncReport {
            full,
            service_ports_written: written,
            service_ports_removed: if full { 0 } else { changes.removed.len() },
            rules,
            rules_by_table: Vec::new(),
            apply_time: started.elapsed(),
        })
    }

    async fn verify(&mut self, model: &NodeModel) -> Result<Drift, EngineError> {
        let found = tokio_block(|| self.drift(model))?;
        Ok(if found.is_empty() {
            Drift::None
        } else {
            Drift::Found(found.join("; "))
        })
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
        tokio_block(|| crate::inspect::inspect(&self.options, model, plan, &mut out))?;
        Ok(out)
    }

    async fn cleanup(&mut self) -> Result<(), EngineError> {
        // Our own descriptors go first, so unpinning really detaches.
        self.dataplane = None;
        self.interfaces = None;
        self.node_ports.clear();
        self.shadows = Shadows::default();
        self.needs_full = true;
        loader::cleanup(&self.options.pin_root)?;
        Ok(())
    }
}

/// Runs blocking map work: on a multi-threaded tokio runtime, without stalling the
/// other tasks; elsewhere (tests, a current-thread runtime) right here.
fn tokio_block<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl std::fmt::Debug for EbpfEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfEngine")
            .field("options", &self.options)
            .field("loaded", &self.dataplane.is_some())
            .field("interfaces", &self.interfaces)
            .finish()
    }
}
