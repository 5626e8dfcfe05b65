//! `IptablesEngine`: the `ProxyEngine` for iptables. `prepare` resolves the backend (nft
//! or legacy) and reads `nf_conntrack_tcp_be_liberal`. Each sync is one
//! `iptables-restore --noflush --wait` transaction per family (IPv4, then IPv6). A full
//! sync reads the tables back once (`*-save`) to find stale chains and missing jumps,
//! then rewrites every chain of the engine; a partial sync rewrites only the chains of
//! the changed service ports and patches their rules in the shared chains. Any failure
//! makes the next sync a full one.

use std::{collections::HashSet, time::Instant};

use async_trait::async_trait;
use switchyard_model::{
    kernel_has_ipv6, ChangeSet, Drift, EngineError, IpFamily, Mode, NodeModel, Owner,
    PortInspection, ProxyEngine, ServicePortName, SyncReport,
};

use crate::{
    apply,
    backend::{detect_backend, Backend, Binaries},
    chains::{ChainPrefix, Chains, Table},
    port::FamilyContext,
    record::Applied,
    render::{
        has_list_all, large_cluster, render_cleanup, render_family_full, render_family_partial,
        without_list_all, KernelChains, Shape,
    },
    verify,
};

const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

/// The sysctl that makes conntrack accept out-of-window TCP packets; when set, upstream
/// does not drop INVALID packets (they are not invalid to it).
const TCP_BE_LIBERAL: &str = "net/netfilter/nf_conntrack_tcp_be_liberal";

/// How the engine runs the iptables tools, and what it owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IptOptions {
    /// Run the tools inside this network namespace (`ip netns exec NAME ...`).
    pub netns: Option<String>,
    /// Which backend; `Detect` decides in `prepare` (see [`detect_backend`]).
    pub backend: Backend,
    /// Whether to program IPv6 with `ip6tables`: false on a kernel without IPv6
    /// (booted with `ipv6.disable=1`), where every `ip6tables-restore` fails. Default:
    /// what [`kernel_has_ipv6`] finds.
    pub ipv6: bool,
    /// The prefix of every chain the engine creates, its ownership parameter (default
    /// `SY-`): engines with different prefixes never touch each other's chains.
    pub chain_prefix: ChainPrefix,
}

impl Default for IptOptions {
    fn default() -> Self {
        IptOptions {
            netns: None,
            backend: Backend::default(),
            ipv6: kernel_has_ipv6(),
            chain_prefix: ChainPrefix::default(),
        }
    }
}

/// Per family (`IpFamily::index`), per table (`Table::index`): chain names.
type PerFamily = [[HashSet<String>; 2]; 2];

/// The iptables dataplane engine.
#[derive(Debug)]
pub struct IptablesEngine {
    options: IptOptions,
    chains: Chains,
    /// The concrete backend, once chosen.
    backend: Option<Backend>,
    /// Whether forwarded INVALID packets are dropped; known after `prepare`.
    drop_invalid: Option<bool>,
    /// What the kernel holds, as far as the engine knows; `None` before the first
    /// successful sync and after a failure or cleanup (so the next sync is full).
    applied: Option<Applied>,
    /// Every per-port chain that may exist because the engine declared it (applied, or
    /// sent in a failed transaction). `None` until the tables were read once. Lets
    /// later full syncs on iptables-nft skip the slow `*-save`.
    known: Option<PerFamily>,
}

impl IptablesEngine {
    pub fn new(options: IptOptions) -> IptablesEngine {
        let backend = match options.backend {
            Backend::Detect => None,
            b => Some(b),
        };
        IptablesEngine {
            chains: Chains::new(&options.chain_prefix),
            options,
            backend,
            drop_invalid: None,
            applied: None,
            known: None,
        }
    }

    pub fn options(&self) -> &IptOptions {
        &self.options
    }

    /// The names of the engine's chains.
    pub fn chains(&self) -> &Chains {
        &self.chains
    }

    /// The families this engine programs: both, or IPv4 alone on a kernel without IPv6.
    fn families(&self) -> &'static [IpFamily] {
        if self.options.ipv6 {
            &FAMILIES
        } else {
            &FAMILIES[..1]
        }
    }

    /// The backend in use (`None` until `prepare` detected it, with `Detect`).
    pub fn backend(&self) -> Option<Backend> {
        self.backend
    }

    /// The binaries in use, once the backend is known.
    pub fn binaries(&self) -> Option<Binaries> {
        self.backend.and_then(Backend::binaries)
    }

    /// Whether the next sync will rewrite everything whatever it is asked.
    pub fn next_sync_is_full(&self) -> bool {
        self.applied.is_none()
    }

    /// Whether forwarded packets conntrack finds INVALID are dropped (`None` before
    /// `prepare`).
    pub fn drops_invalid(&self) -> Option<bool> {
        self.drop_invalid
    }

    fn netns(&self) -> Option<&str> {
        self.options.netns.as_deref()
    }

    fn shape(&self) -> Shape {
        if self.backend == Some(Backend::Nft) {
            Shape::NftListFirst
        } else {
            Shape::Plain
        }
    }

    async fn resolve_backend(&mut self) -> Result<Binaries, EngineError> {
        if self.backend.is_none() {
            let netns = self.options.netns.clone();
            let b = tokio::task::spawn_blocking(move || detect_backend(netns.as_deref()))
                .await
                .map_err(|e| EngineError::Unavailable {
                    mode: Mode::Iptables,
                    reason: format!("backend detection failed: {e}"),
                })?;
            tracing::info!(backend = b.as_str(), "iptables backend detected");
            self.backend = Some(b);
        }
        Ok(self
            .binaries()
            .expect("a resolved backend is Nft or Legacy"))
    }

    /// The binaries, after preparing if nobody did.
    async fn prepared(&mut self) -> Result<(Binaries, bool), EngineError> {
        if self.drop_invalid.is_none() {
            self.prepare().await?;
        }
        let bins = self.binaries().expect("prepare resolved the backend");
        Ok((bins, self.drop_invalid.unwrap_or(true)))
    }

    fn context<'a>(
        &'a self,
        model: &NodeModel,
        family: IpFamily,
        large: bool,
        drop_invalid: bool,
    ) -> FamilyContext<'a> {
        FamilyContext::new(model, family, &self.chains, large, drop_invalid)
    }

    /// What the kernel holds of ours in one family, for a full sync: from `*-save`,
    /// or, with iptables-nft once the chains are known, from the builtin chains only.
    async fn kernel_chains(
        &self,
        bins: &Binaries,
        family: IpFamily,
    ) -> Result<KernelChains, EngineError> {
        let netns = self.netns();
        let known = match (&self.known, self.backend) {
            (Some(known), Some(Backend::Nft)) => &known[family.index()],
            _ => {
                let saved = apply::save(netns, bins.save(family)).await?;
                return Ok(KernelChains::parse(&saved, &self.chains));
            }
        };
        // Only the builtin chains, for the jumps; the fixed chains are declared anyway.
        let mut text = String::new();
        for (table, builtins) in [
            ("filter", &["INPUT", "FORWARD", "OUTPUT"][..]),
            ("nat", &["PREROUTING", "OUTPUT", "POSTROUTING"][..]),
        ] {
            text.push_str(&format!("*{table}\n"));
            for b in builtins {
                if let Some(l) = apply::list_chain(netns, bins.iptables(family), table, b).await? {
                    text.push_str(&l);
                }
            }
        }
        let mut kernel = KernelChains::parse(&text, &self.chains);
        kernel.chains = known.clone();
        Ok(kernel)
    }

    async fn full_sync(
        &mut self,
        model: &NodeModel,
        bins: Binaries,
        drop_invalid: bool,
    ) -> Result<Applied, EngineError> {
        let large = large_cluster(model);
        let mut applied = Applied {
            large,
            drop_invalid,
            ..Default::default()
        };
        let mut texts = Vec::new();
        for &family in self.families() {
            let kernel = self.kernel_chains(&bins, family).await?;
            let ctx = self.context(model, family, large, drop_invalid);
            let (text, record) = render_family_full(model, &ctx, &kernel, self.shape());
            let known = &mut self.known.get_or_insert_with(Default::default)[family.index()];
            for t in Table::BOTH {
                // Stale chains found in the kernel are deleted by this transaction, but
                // remain possible until it succeeds.
                let chains = &self.chains;
                let stale = kernel.chains[t.index()]
                    .iter()
                    .filter(|c| chains.is_port_chain(c));
                known[t.index()].extend(stale.cloned());
                known[t.index()].extend(record.port_chains(t).cloned());
            }
            *applied.family_mut(family) = record;
            texts.push((family, text));
        }
        for (family, text) in texts {
            restore_shaped(self.netns(), bins.restore(family), &text).await?;
        }
        Ok(applied)
    }

    async fn partial_sync(
        &mut self,
        model: &NodeModel,
        changes: &ChangeSet,
        bins: Binaries,
        mut applied: Applied,
    ) -> Result<Applied, EngineError> {
        let mut partials = Vec::new();
        for &family in self.families() {
            let ctx = self.context(model, family, applied.large, applied.drop_invalid);
            let p = render_family_partial(model, changes, applied.family(family), &ctx);
            partials.push((family, p));
        }
        if let Some(known) = &mut self.known {
            for (family, p) in &partials {
                for r in p.updates.iter().filter_map(|(_, r)| r.as_ref()) {
                    for t in Table::BOTH {
                        known[family.index()][t.index()].extend(r.chains(t).iter().cloned());
                    }
                }
            }
        }
        for (family, p) in &partials {
            if !p.text.is_empty() {
                apply::restore(self.netns(), bins.restore(*family), &p.text).await?;
            }
        }
        for (family, p) in partials {
            let rec = applied.family_mut(family);
            for (name, port) in p.updates {
                if let (Some(known), Some(old)) = (&mut self.known, rec.ports.get(&name)) {
                    for t in Table::BOTH {
                        let kept: HashSet<&String> =
                            port.iter().flat_map(|r| r.chains(t)).collect();
                        let known = &mut known[family.index()][t.index()];
                        for c in old.chains(t).iter().filter(|c| !kept.contains(c)) {
                            known.remove(c);
                        }
                    }
                }
                rec.set(name, port);
            }
        }
        Ok(applied)
    }

    /// After a successful sync: the chains that exist are exactly the record's.
    fn settle_known(&mut self) {
        let families = self.families();
        if let (Some(known), Some(applied)) = (&mut self.known, &self.applied) {
            for &family in families {
                for t in Table::BOTH {
                    known[family.index()][t.index()] =
                        applied.family(family).port_chains(t).cloned().collect();
                }
            }
        }
    }

    fn report(
        &self,
        full: bool,
        changes: &ChangeSet,
        written: usize,
        start: Instant,
    ) -> SyncReport {
        let applied = self
            .applied
            .as_ref()
            .expect("called after a successful sync");
        let rules_by_table = applied.rules_by_table(&self.chains, self.families());
        SyncReport {
            full,
            service_ports_written: written,
            service_ports_removed: changes.removed.len(),
            rules: rules_by_table.iter().map(|(_, n)| n).sum(),
            rules_by_table,
            apply_time: start.elapsed(),
        }
    }
}

/// The exit status iptables-nft-restore gives when the kernel side of a transaction
/// fails — measured with iptables 1.8.9: a table it cannot list ("incompatible, use
/// 'nft' tool") and a chain that cannot be deleted exit 1; input it cannot parse exits
/// 2, a held xtables lock 4.
const RESTORE_FAILED: i32 = 1;

/// `apply::restore`, and for input with a [`LIST_ALL`](crate::render::LIST_ALL) line
/// that failed in the kernel (iptables-nft cannot list a table holding rules made with
/// `nft`), the same input without that line: the same transaction, only slower to load.
async fn restore_shaped(netns: Option<&str>, tool: &str, text: &str) -> Result<(), EngineError> {
    match apply::restore(netns, tool, text).await {
        Err(EngineError::Tool {
            exit: Some(RESTORE_FAILED),
            stderr,
            ..
        }) if has_list_all(text) => {
            tracing::warn!(
                %stderr,
                "iptables-nft-restore failed with the table listing; retrying without it (slow at scale)"
            );
            apply::restore(netns, tool, &without_list_all(text)).await
        }
        r => r,
    }
}

#[async_trait]
impl ProxyEngine for IptablesEngine {
    fn mode(&self) -> Mode {
        Mode::Iptables
    }

    /// `iptables-nft` or `iptables-legacy` once the backend is known (`iptables` before),
    /// followed by the chain prefix in parentheses when it is not the default.
    fn owner(&self) -> Owner {
        let base = match self.backend {
            Some(b) => format!("iptables-{}", b.as_str()),
            None => "iptables".to_string(),
        };
        if self.options.chain_prefix.is_default() {
            base
        } else {
            format!("{base} ({})", self.options.chain_prefix)
        }
    }

    async fn sync(
        &mut self,
        model: &NodeModel,
        changes: &ChangeSet,
    ) -> Result<SyncReport, EngineError> {
        let (bins, drop_invalid) = self.prepared().await?;
        let large = large_cluster(model);
        // Forget the record first: if anything fails, the next sync is full.
        let previous = self
            .applied
            .take()
            .filter(|a| !changes.full && a.large == large && a.drop_invalid == drop_invalid);
        let start = Instant::now();
        let Some(previous) = previous else {
            self.applied = Some(self.full_sync(model, bins, drop_invalid).await?);
            self.settle_known();
            let report = self.report(true, changes, model.services.len(), start);
            tracing::debug!(apply_time = ?report.apply_time, rules = report.rules, "iptables full sync");
            return Ok(report);
        };
        self.applied = Some(self.partial_sync(model, changes, bins, previous).await?);
        let written = changes.added.len() + changes.changed.len();
        let report = self.report(false, changes, written, start);
        tracing::debug!(apply_time = ?report.apply_time, rules = report.rules, "iptables partial sync");
        Ok(report)
    }

    async fn prepare(&mut self) -> Result<(), EngineError> {
        let bins = self.resolve_backend().await?;
        // The tools run at all (a missing package fails here, not at the first sync).
        apply::version(self.netns(), bins.iptables(IpFamily::V4)).await?;
        let liberal = apply::sysctl(self.netns(), TCP_BE_LIBERAL).await?;
        self.drop_invalid = Some(liberal.as_deref() != Some("1"));
        tracing::debug!(?liberal, "nf_conntrack_tcp_be_liberal");
        Ok(())
    }

    async fn verify(&mut self, _model: &NodeModel) -> Result<Drift, EngineError> {
        let Some(applied) = &self.applied else {
            return Ok(Drift::Found(
                "no successful sync since start, failure or cleanup".to_string(),
            ));
        };
        let bins = self
            .binaries()
            .expect("a successful sync resolved the backend");
        let mut found = Vec::new();
        for &family in self.families() {
            let record = applied.family(family);
            let d = if self.backend == Some(Backend::Nft) {
                verify::compare_targeted(self.netns(), &bins, family, record, &self.chains).await?
            } else {
                let saved = apply::save(self.netns(), bins.save(family)).await?;
                verify::compare(family, &saved, record, &self.chains)
            };
            found.extend(d);
        }
        Ok(verify::drift(found))
    }

    async fn inspect(
        &mut self,
        model: &NodeModel,
        port: &ServicePortName,
    ) -> Result<PortInspection, EngineError> {
        let bins = self.resolve_backend().await?;
        let (mut out, plan) = match PortInspection::of_port(self.owner(), model, port) {
            Ok(start) => start,
            Err(not_in_model) => return Ok(not_in_model),
        };
        for f in &plan.families {
            if f.family == IpFamily::V6 && !self.options.ipv6 {
                continue;
            }
            let saved = apply::save(self.netns(), bins.save(f.family)).await?;
            crate::inspect::compare_family(model, &self.chains, f.family, plan, &saved, &mut out);
        }
        Ok(out)
    }

    async fn cleanup(&mut self) -> Result<(), EngineError> {
        self.applied = None;
        self.known = None;
        // With `Detect`, clean both backends: rules may have been made through either.
        let backends: Vec<Backend> = match self.options.backend {
            Backend::Detect => vec![Backend::Nft, Backend::Legacy],
            b => vec![b],
        };
        let explicit = self.options.backend != Backend::Detect;
        for backend in backends {
            let bins = backend.binaries().expect("concrete backend");
            for &family in self.families() {
                let saved = match apply::save(self.netns(), bins.save(family)).await {
                    Ok(s) => s,
                    // A backend whose tools are missing holds nothing of ours.
                    Err(EngineError::Spawn { .. }) if !explicit => continue,
                    Err(e) => return Err(e),
                };
                let shape = if backend == Backend::Nft {
                    Shape::NftListFirst
                } else {
                    Shape::Plain
                };
                if let Some(text) = render_cleanup(&saved, shape, &self.chains) {
                    restore_shaped(self.netns(), bins.restore(family), &text).await?;
                }
            }
        }
        Ok(())
    }
}
