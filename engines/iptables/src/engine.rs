//! `IptablesEngine`: the `ProxyEngine` for iptables. Each sync is one
//! `iptables-restore --noflush --wait` transaction per family (IPv4, then IPv6). A full
//! sync reads the tables back once (`*-save`) to find stale chains and missing jumps,
//! then rewrites every `SY-` chain; a partial sync rewrites only the chains of the
//! changed service ports and patches their rules in the shared chains. Any failure
//! makes the next sync a full one.

use std::{collections::HashSet, time::Instant};

use async_trait::async_trait;
use switchyard_core::{
    engine::kernel_has_ipv6, ChangeSet, Drift, EngineError, IpFamily, NodeModel, ProxyEngine,
    SyncReport,
};
use switchyard_crd::Mode;

use crate::{
    apply,
    backend::{detect_backend, Backend, Binaries},
    record::Applied,
    render::{
        large_cluster, render_cleanup, render_family_full, render_family_partial, without_list_all,
        KernelChains, Shape, LIST_ALL,
    },
    verify,
};

const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

/// How the engine runs the iptables tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IptOptions {
    /// Run the tools inside this network namespace (`ip netns exec NAME ...`).
    pub netns: Option<String>,
    /// Which backend; `Detect` decides at the first sync (see [`detect_backend`]).
    pub backend: Backend,
    /// Whether to program IPv6 with `ip6tables`: false on a kernel without IPv6
    /// (booted with `ipv6.disable=1`), where every `ip6tables-restore` fails. Default:
    /// what [`kernel_has_ipv6`] finds.
    pub ipv6: bool,
}

impl Default for IptOptions {
    fn default() -> Self {
        IptOptions {
            netns: None,
            backend: Backend::default(),
            ipv6: kernel_has_ipv6(),
        }
    }
}

/// The iptables dataplane engine.
#[derive(Debug)]
pub struct IptablesEngine {
    options: IptOptions,
    /// The concrete backend, once chosen.
    backend: Option<Backend>,
    /// What the kernel holds, as far as the engine knows; `None` before the first
    /// successful sync and after a failure or cleanup (so the next sync is full).
    applied: Option<Applied>,
    /// Per family (v4, v6): every per-port nat chain that may exist because the engine
    /// declared it (applied, or sent in a failed transaction). `None` until the tables
    /// were read once. Lets later full syncs on iptables-nft skip the slow `*-save`.
    known: Option<[HashSet<String>; 2]>,
}

fn index(family: IpFamily) -> usize {
    match family {
        IpFamily::V4 => 0,
        IpFamily::V6 => 1,
    }
}

impl IptablesEngine {
    pub fn new(options: IptOptions) -> IptablesEngine {
        let backend = match options.backend {
            Backend::Detect => None,
            b => Some(b),
        };
        IptablesEngine {
            options,
            backend,
            applied: None,
            known: None,
        }
    }

    pub fn options(&self) -> &IptOptions {
        &self.options
    }

    /// The families this engine programs: both, or IPv4 alone on a kernel without IPv6.
    fn families(&self) -> &'static [IpFamily] {
        if self.options.ipv6 {
            &FAMILIES
        } else {
            &FAMILIES[..1]
        }
    }

    /// The backend in use (`None` until detected at the first sync, with `Detect`).
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

    /// Rules now programmed per table (`filter`, `nat`), both families together, for
    /// `kubeproxy_sync_proxy_rules_iptables_total{table}`. Zero before a sync.
    pub fn rule_counts(&self) -> Vec<(String, usize)> {
        self.applied
            .as_ref()
            .map(Applied::rule_counts)
            .unwrap_or_else(|| {
                Applied::default()
                    .rule_counts()
                    .into_iter()
                    .map(|(t, _)| (t, 0))
                    .collect()
            })
    }

    fn netns(&self) -> Option<&str> {
        self.options.netns.as_deref()
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

    /// What the kernel holds of ours in one family, for a full sync: from `*-save`,
    /// or, with iptables-nft once the chains are known, from the small filter table and
    /// the nat builtin chains only.
    async fn inspect(
        &self,
        bins: &Binaries,
        family: IpFamily,
    ) -> Result<KernelChains, EngineError> {
        let netns = self.netns();
        let known = match (&self.known, self.backend) {
            (Some(known), Some(Backend::Nft)) => &known[index(family)],
            _ => {
                let saved = apply::save(netns, bins.save(family)).await?;
                return Ok(KernelChains::parse(&saved));
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
        let mut kernel = KernelChains::parse(&text);
        kernel.nat = known.clone();
        Ok(kernel)
    }

    async fn full_sync(
        &mut self,
        model: &NodeModel,
        bins: Binaries,
    ) -> Result<Applied, EngineError> {
        let large = large_cluster(model);
        let mut applied = Applied {
            large,
            ..Default::default()
        };
        let mut texts = Vec::new();
        for &family in self.families() {
            let kernel = self.inspect(&bins, family).await?;
            let shape = if self.backend == Some(Backend::Nft) {
                Shape::NftListFirst
            } else {
                Shape::Plain
            };
            let (text, record) = render_family_full(model, family, large, &kernel, shape);
            let known = self.known.get_or_insert_with(Default::default);
            let known = &mut known[index(family)];
            // Stale chains found in the kernel are deleted by this transaction, but
            // remain possible until it succeeds.
            known.extend(kernel.nat.iter().filter(|c| is_port_chain(c)).cloned());
            known.extend(record.port_chains().cloned());
            *applied.family_mut(family) = record;
            texts.push((family, text));
        }
        for (family, text) in texts {
            restore_shaped(self.netns(), bins.restore(family), &text).await?;
        }
        Ok(applied)
    }

    /// After a successful sync: the chains that exist are exactly the record's.
    fn settle_known(&mut self) {
        let families = self.families();
        if let (Some(known), Some(applied)) = (&mut self.known, &self.applied) {
            for &family in families {
                known[index(family)] = applied.family(family).port_chains().cloned().collect();
            }
        }
    }
}

/// `apply::restore`, and for input with a [`LIST_ALL`] line that iptables-nft refuses
/// (a table holding rules it cannot represent, made with `nft`), the same input without
/// that line: the same transaction, only slower to load.
async fn restore_shaped(netns: Option<&str>, tool: &str, text: &str) -> Result<(), EngineError> {
    match apply::restore(netns, tool, text).await {
        Err(EngineError::Apply { message, .. })
            if message.contains("incompatible") && text.contains(&format!("\n{LIST_ALL}")) =>
        {
            tracing::warn!(
                %message,
                "iptables-nft cannot list a table; restoring without the listing (slow at scale)"
            );
            apply::restore(netns, tool, &without_list_all(text)).await
        }
        r => r,
    }
}

/// Whether a chain name is a per-port chain (not one of the fixed chains).
fn is_port_chain(chain: &str) -> bool {
    ["SY-SVC-", "SY-SVL-", "SY-EXT-", "SY-FW-", "SY-SEP-"]
        .iter()
        .any(|p| chain.starts_with(p))
}

#[async_trait]
impl ProxyEngine for IptablesEngine {
    fn mode(&self) -> Mode {
        Mode::Iptables
    }

    fn owner(&self) -> String {
        match self.backend {
            Some(b) => format!("iptables-{}", b.as_str()),
            // Not resolved yet: it may own either backend's chains.
            None => "iptables".to_string(),
        }
    }

    fn rule_counts(&self) -> Vec<(String, usize)> {
        IptablesEngine::rule_counts(self)
    }

    async fn sync(
        &mut self,
        model: &NodeModel,
        changes: &ChangeSet,
    ) -> Result<SyncReport, EngineError> {
        let bins = self.resolve_backend().await?;
        let large = large_cluster(model);
        let full = changes.full || self.applied.as_ref().is_none_or(|a| a.large != large);
        // Forget the record first: if anything fails, the next sync is full.
        let previous = self.applied.take();
        let start = Instant::now();
        if full {
            let applied = self.full_sync(model, bins).await?;
            let apply_time = start.elapsed();
            let rules = applied.rule_count();
            self.applied = Some(applied);
            self.settle_known();
            tracing::debug!(?apply_time, rules, "iptables full sync");
            return Ok(SyncReport {
                full: true,
                service_ports_written: model.services.len(),
                service_ports_removed: changes.removed.len(),
                rules,
                apply_time,
            });
        }
        let mut applied = previous.expect("checked above");
        let mut partials = Vec::new();
        for &family in self.families() {
            partials.push((
                family,
                render_family_partial(model, changes, &applied, family),
            ));
        }
        if let Some(known) = &mut self.known {
            for (family, p) in &partials {
                known[index(*family)].extend(
                    p.updates
                        .iter()
                        .flat_map(|(_, r)| r.iter().flat_map(|r| r.chains.iter().cloned())),
                );
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
                    let known = &mut known[index(family)];
                    let kept: HashSet<&String> = port.iter().flat_map(|r| &r.chains).collect();
                    for c in old.chains.iter().filter(|c| !kept.contains(c)) {
                        known.remove(c);
                    }
                }
                rec.set(name, port);
            }
        }
        let apply_time = start.elapsed();
        let rules = applied.rule_count();
        self.applied = Some(applied);
        tracing::debug!(?apply_time, rules, "iptables partial sync");
        Ok(SyncReport {
            full: false,
            service_ports_written: changes.added.len() + changes.changed.len(),
            service_ports_removed: changes.removed.len(),
            rules,
            apply_time,
        })
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
                verify::compare_targeted(self.netns(), &bins, family, record).await?
            } else {
                let saved = apply::save(self.netns(), bins.save(family)).await?;
                verify::compare(family, &saved, record)
            };
            found.extend(d);
        }
        Ok(verify::drift(found))
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
                if let Some(text) = render_cleanup(&saved, shape) {
                    restore_shaped(self.netns(), bins.restore(family), &text).await?;
                }
            }
        }
        Ok(())
    }
}
