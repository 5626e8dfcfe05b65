//! The sync runner: turns state changes into engine syncs, and owns which engine runs.
//!
//! - changes are coalesced: a sync starts no sooner than `minSyncPeriod` after the last;
//! - every `syncPeriod` a sync runs and the engine's `verify` checks the kernel for
//!   drift (counted and logged); drift is repaired at once by a full rewrite, and
//!   without drift the rewrite is full once an hour (upstream's `FullSyncPeriod`);
//! - a failed sync is retried with exponential backoff (1 s doubling up to
//!   `syncPeriod`) as a full sync; the rules applied before the failure stay in place;
//! - the engine follows the ProxyConfig: requested mode, else the first available
//!   fallback (reported), else degraded (rules kept, healthz 503). A mode change switches
//!   engines make-before-break: the new one is programmed and verified, then the old one
//!   is cleaned up.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use switchyard_crd::{EffectiveConfig, Mode, ModeCapability};
use tokio::sync::{watch, Notify};

use crate::{
    changes::ChangeSet,
    engine::{Drift, EngineError, ProxyEngine},
    engine_choice::{choose, EngineChoice},
    health::Health,
    metrics::{FallbackLabels, Metrics, ModeLabel, TrafficPolicyLabel},
    model::NodeModel,
    selection,
    service_health::ServiceHealthServers,
    state::ClusterState,
};

/// Where the node's effective config comes from.
#[derive(Clone, Debug, Default)]
pub struct ConfigSource {
    /// `--mode` given on the command line: overrides the ProxyConfig's mode.
    pub mode_override: Option<Mode>,
}

/// The config in force for a node and where it came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SelectedConfig {
    pub config: EffectiveConfig,
    /// Name of the ProxyConfig in force (`None`: defaults, no config selects the node).
    pub name: Option<String>,
    /// Other configs selecting the node with the same priority.
    pub conflicts_with: Vec<String>,
}

/// The config in force for `node_name`: the selected ProxyConfig (defaults when none
/// matches), with the command-line override applied.
pub fn effective_config(
    state: &ClusterState,
    node_name: &str,
    source: &ConfigSource,
) -> SelectedConfig {
    let labels = state
        .node(node_name)
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    let mut selected = match selection::select(state.proxy_configs(), &labels) {
        // Sources only admit valid configs.
        Some(sel) => SelectedConfig {
            config: sel.config.spec.effective().unwrap_or_default(),
            name: sel.config.metadata.name.clone(),
            conflicts_with: sel.conflicts_with,
        },
        None => SelectedConfig::default(),
    };
    if let Some(mode) = source.mode_override {
        selected.config.mode = mode;
        selected.config.fallback.retain(|m| *m != mode);
    }
    selected
}

/// How often a full rewrite happens when nothing drifted (upstream kube-proxy's
/// `FullSyncPeriod`).
pub const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

/// Builds engines by mode; implemented where the engine crates are known (the binary).
pub trait EngineFactory: Send + Sync {
    fn build(&self, mode: Mode) -> Result<Box<dyn ProxyEngine>, EngineError>;

    /// One engine per kind of kernel state any engine of this binary can leave behind
    /// (see [`ProxyEngine::owner`]), used only for `cleanup`: what a previous process in
    /// another mode left.
    fn leftover_cleaners(&self) -> Vec<Box<dyn ProxyEngine>> {
        Vec::new()
    }
}

/// Removes conntrack entries that would keep UDP clients talking to endpoints that are
/// gone (implemented over netlink outside core). Called after the new rules are in.
pub trait StaleFlowCleaner: Send {
    /// `old` is the model applied before `new`; returns how many flows were deleted.
    fn clean(
        &mut self,
        old: &NodeModel,
        new: &NodeModel,
        changes: &ChangeSet,
    ) -> Result<usize, String>;
}

/// What the node reports about itself (ProxyNode status, events, logs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeStatus {
    pub config_name: Option<String>,
    pub conflicts_with: Vec<String>,
    pub choice: Option<EngineChoice>,
    pub capabilities: Vec<ModeCapability>,
    pub last_sync: Option<SystemTime>,
    pub last_sync_duration: Option<Duration>,
    pub service_ports: usize,
    pub endpoints: usize,
    pub rules: Option<usize>,
    pub last_error: Option<String>,
}

pub struct SyncRunner {
    engine: Option<Box<dyn ProxyEngine>>,
    factory: Arc<dyn EngineFactory>,
    capabilities: Vec<ModeCapability>,
    state: Arc<Mutex<ClusterState>>,
    notify: Arc<Notify>,
    node_name: String,
    config_source: ConfigSource,
    health: Health,
    metrics: Metrics,
    /// The desired model, kept up to date with the state in place.
    model: NodeModel,
    model_built: bool,
    /// The kernel holds `model` (false at start, after a failure or while degraded:
    /// the next sync is full).
    in_sync: bool,
    /// healthCheckNodePort servers, reconciled after every successful sync.
    service_health: ServiceHealthServers,
    status: watch::Sender<NodeStatus>,
    /// Metric labels set for the current choice, to reset on change.
    reported: Option<EngineChoice>,
    stale_flows: Option<Box<dyn StaleFlowCleaner>>,
    /// Other engines' leftovers were removed after this process's first sync.
    leftovers_removed: bool,
}

/// Outcome of one pass, for tests and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    Synced {
        full: bool,
        service_ports: usize,
    },
    Unchanged,
    Failed(String),
    /// No usable engine; nothing was touched.
    Degraded(String),
}

impl SyncRunner {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        factory: Arc<dyn EngineFactory>,
        capabilities: Vec<ModeCapability>,
        state: Arc<Mutex<ClusterState>>,
        notify: Arc<Notify>,
        node_name: impl Into<String>,
        config_source: ConfigSource,
        health: Health,
        metrics: Metrics,
    ) -> Self {
        let (status, _) = watch::channel(NodeStatus {
            capabilities: capabilities.clone(),
            ..NodeStatus::default()
        });
        SyncRunner {
            engine: None,
            factory,
            capabilities,
            state,
            notify,
            node_name: node_name.into(),
            config_source,
            service_health: ServiceHealthServers::new(health.clone()),
            health,
            metrics,
            model: NodeModel::default(),
            model_built: false,
            in_sync: false,
            status,
            reported: None,
            stale_flows: None,
            leftovers_removed: false,
        }
    }

    /// Cleans stale UDP conntrack flows after each sync with `cleaner`.
    pub fn with_stale_flow_cleaner(mut self, cleaner: Box<dyn StaleFlowCleaner>) -> Self {
        self.stale_flows = Some(cleaner);
        self
    }

    /// The mode of the engine programming the node, if any.
    pub fn mode(&self) -> Option<Mode> {
        self.engine.as_ref().map(|e| e.mode())
    }

    /// Follows the node's status as syncs happen.
    pub fn status(&self) -> watch::Receiver<NodeStatus> {
        self.status.subscribe()
    }

    fn selected(&self) -> SelectedConfig {
        let state = self.state.lock().expect("state lock poisoned");
        effective_config(&state, &self.node_name, &self.config_source)
    }

    /// Sets the metrics and health for a new engine choice, and logs it once.
    fn report_choice(&mut self, choice: &EngineChoice) {
        if self.reported.as_ref() == Some(choice) {
            return;
        }
        if let Some(old) = self.reported.take() {
            if let Some(m) = old.mode() {
                self.metrics
                    .active_engine
                    .get_or_create(&ModeLabel {
                        mode: m.to_string(),
                    })
                    .set(0);
                self.metrics
                    .engine_fallback
                    .get_or_create(&FallbackLabels {
                        requested: old.requested().to_string(),
                        active: m.to_string(),
                    })
                    .set(0);
            }
        }
        match choice {
            EngineChoice::Run {
                requested,
                mode,
                fallback_reason,
            } => {
                self.health.set_degraded(None);
                self.metrics
                    .active_engine
                    .get_or_create(&ModeLabel {
                        mode: mode.to_string(),
                    })
                    .set(1);
                self.metrics
                    .engine_fallback
                    .get_or_create(&FallbackLabels {
                        requested: requested.to_string(),
                        active: mode.to_string(),
                    })
                    .set(i64::from(fallback_reason.is_some()));
                match fallback_reason {
                    Some(reason) => {
                        tracing::warn!(requested = %requested, active = %mode, %reason, "FALLBACK ACTIVE: the requested mode cannot run on this node")
                    }
                    None => tracing::info!(mode = %mode, "engine selected"),
                }
            }
            EngineChoice::Degraded { requested, reason } => {
                self.health.set_degraded(Some(reason.clone()));
                tracing::error!(requested = %requested, %reason, "DEGRADED: no usable engine; previous rules stay in place");
            }
        }
        self.reported = Some(choice.clone());
    }

    /// Makes `mode`'s engine the active one, make-before-break: the new engine is fully
    /// programmed and verified before the old one is cleaned up.
    ///
    /// When the new engine fails to start:
    /// - during a live switch, the old engine keeps serving and whatever the new one
    ///   left (a stale table of a previous run, half of a two-family apply) is removed;
    /// - at process start there is no old engine, and what the kernel holds is most
    ///   likely a previous process's working ruleset: it is left in place, the new engine
    ///   becomes the active one without being in sync, and the next passes retry it with
    ///   full syncs. Cleaning up here would turn one refused transaction (an xtables lock
    ///   held for 5 s, one nft rejection) into an outage.
    async fn switch_to(&mut self, mode: Mode, model: &NodeModel) -> Result<(), String> {
        let mut engine = self.factory.build(mode).map_err(|e| e.to_string())?;
        let from = self.mode();
        let result = async {
            engine
                .sync(model, &ChangeSet::full(model))
                .await
                .map_err(|e| e.to_string())?;
            match engine.verify(model).await.map_err(|e| e.to_string())? {
                Drift::None => Ok(()),
                Drift::Found(what) => Err(format!("new {mode} engine did not verify: {what}")),
            }
        }
        .await;
        if let Err(e) = result {
            if self.engine.is_some() {
                if let Err(c) = engine.cleanup().await {
                    tracing::warn!(mode = %mode, error = %c, "cleaning up the engine that failed to start");
                }
            } else {
                tracing::warn!(mode = %mode, "first sync failed: the rules already in the kernel stay in place; retrying");
                self.engine = Some(engine);
            }
            return Err(e);
        }
        if let Some(mut old) = self.engine.take() {
            if let Err(e) = old.cleanup().await {
                tracing::warn!(mode = %old.mode(), error = %e, "cleaning up the previous engine's rules failed; they may linger until `switchyard cleanup`");
            }
        }
        match from {
            Some(from) => {
                tracing::info!(from = %from, to = %mode, "switched engine (make-before-break)")
            }
            None => tracing::info!(mode = %mode, "engine started"),
        }
        self.engine = Some(engine);
        Ok(())
    }

    /// Removes what other engines left on the node (a previous process in another mode
    /// or iptables backend): nobody owns those rules any more, and they would keep
    /// routing to whatever endpoints they knew. Runs once, after the active engine's
    /// first successful sync (make-before-break, as a live switch does).
    async fn remove_leftovers(&mut self) {
        let Some(active) = self.engine.as_ref() else {
            return;
        };
        let keep = active.owner();
        let mut done = true;
        for mut other in self.factory.leftover_cleaners() {
            if other.owner() == keep {
                continue;
            }
            match other.cleanup().await {
                Ok(()) => {
                    tracing::debug!(owner = %other.owner(), "no leftovers of another engine remain")
                }
                // Its tools are not installed: it cannot have left anything.
                Err(EngineError::Spawn { .. }) => {}
                Err(e) => {
                    done = false;
                    tracing::warn!(owner = %other.owner(), error = %e, "removing another engine's leftover rules failed; retrying after the next sync")
                }
            }
        }
        self.leftovers_removed = done;
    }

    /// Brings the model up to date with the state: only the Services that changed are
    /// recomputed, unless something node-wide changed. Returns the difference.
    fn refresh_model(&mut self, config: &EffectiveConfig) -> ChangeSet {
        let mut state = self.state.lock().expect("state lock poisoned");
        let changes = state.take_changes();
        if self.model_built && !changes.global {
            return self.model.update_services(&state, &changes.services);
        }
        let new = NodeModel::build(&state, &self.node_name, config);
        let diff = if self.model_built {
            ChangeSet::between(&self.model, &new)
        } else {
            ChangeSet::full(&new)
        };
        self.model = new;
        self.model_built = true;
        diff
    }

    /// Builds the model and applies what changed (everything when `full`).
    pub async fn sync_once(&mut self, full: bool, pending_since: Option<Instant>) -> Pass {
        let started = Instant::now();
        let selected = self.selected();
        let config = &selected.config;
        self.health.set_sync_period(config.sync_period);
        if !selected.conflicts_with.is_empty() {
            tracing::warn!(chosen = ?selected.name, others = ?selected.conflicts_with, "ConfigConflict: several ProxyConfigs select this node with the same priority");
        }
        let first_model = !self.model_built;
        let diff = self.refresh_model(config);
        let choice = choose(config.mode, &config.fallback, &self.capabilities);
        self.report_choice(&choice);
        self.status.send_modify(|s| {
            s.config_name.clone_from(&selected.name);
            s.conflicts_with.clone_from(&selected.conflicts_with);
            s.choice = Some(choice.clone());
        });
        let Some(mode) = choice.mode() else {
            let EngineChoice::Degraded { reason, .. } = choice else {
                unreachable!()
            };
            self.in_sync = false;
            return Pass::Degraded(reason);
        };
        let model = std::mem::take(&mut self.model);
        let pass = self
            .apply(
                mode,
                &model,
                diff,
                full,
                first_model,
                started,
                pending_since,
            )
            .await;
        self.model = model;
        if matches!(pass, Pass::Synced { .. } | Pass::Unchanged) && !self.leftovers_removed {
            self.remove_leftovers().await;
        }
        pass
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &mut self,
        mode: Mode,
        model: &NodeModel,
        diff: ChangeSet,
        full: bool,
        first_model: bool,
        started: Instant,
        pending_since: Option<Instant>,
    ) -> Pass {
        if self.mode() != Some(mode) {
            return match self.switch_to(mode, model).await {
                Ok(()) => {
                    tracing::info!(
                        mode = %mode,
                        full = true,
                        service_ports = model.services.len(),
                        endpoints = model.endpoint_count(),
                        total_ms = started.elapsed().as_secs_f64() * 1e3,
                        "synced"
                    );
                    self.record_success(
                        model,
                        &diff,
                        first_model,
                        started.elapsed(),
                        pending_since,
                        None,
                    );
                    Pass::Synced {
                        full: true,
                        service_ports: model.services.len(),
                    }
                }
                Err(e) => self.record_failure(format!("starting the {mode} engine: {e}")),
            };
        }
        let changes = if full || !self.in_sync {
            diff.clone().into_full()
        } else {
            diff.clone()
        };
        if changes.is_empty() {
            self.health.synced();
            return Pass::Unchanged;
        }
        let engine = self.engine.as_mut().expect("engine present: mode matched");
        match engine.sync(model, &changes).await {
            Ok(report) => {
                let elapsed = started.elapsed();
                tracing::info!(
                    mode = %mode,
                    full = report.full,
                    written = report.service_ports_written,
                    removed = report.service_ports_removed,
                    service_ports = model.services.len(),
                    endpoints = model.endpoint_count(),
                    apply_ms = report.apply_time.as_secs_f64() * 1e3,
                    total_ms = elapsed.as_secs_f64() * 1e3,
                    "synced"
                );
                self.record_success(
                    model,
                    &diff,
                    first_model,
                    elapsed,
                    pending_since,
                    Some(report.rules),
                );
                Pass::Synced {
                    full: changes.full,
                    service_ports: if changes.full {
                        model.services.len()
                    } else {
                        changes.len()
                    },
                }
            }
            Err(e) => self.record_failure(e.to_string()),
        }
    }

    fn record_failure(&mut self, error: String) -> Pass {
        self.metrics.sync_failures.inc();
        self.in_sync = false;
        tracing::error!(mode = ?self.mode(), %error, "sync failed; previous rules stay in place, retrying with a full sync");
        self.status
            .send_modify(|s| s.last_error = Some(error.clone()));
        Pass::Failed(error)
    }

    /// Metrics, health, status and stale-flow cleanup after a successful sync. `diff`
    /// is the model difference this sync applied (its `previous` holds the old ports).
    fn record_success(
        &mut self,
        model: &NodeModel,
        diff: &ChangeSet,
        first_model: bool,
        elapsed: Duration,
        pending_since: Option<Instant>,
        rules: Option<usize>,
    ) {
        self.in_sync = true;
        let m = &self.metrics;
        m.sync_duration.observe(elapsed.as_secs_f64());
        if let Some(p) = pending_since {
            m.network_programming_duration
                .observe(p.elapsed().as_secs_f64());
        }
        let now = SystemTime::now();
        m.last_sync_timestamp.set(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
        );
        if diff.full {
            m.full_syncs.inc();
        } else {
            m.partial_syncs.inc();
        }
        // Service vs endpoint changes, as kube-proxy counts them.
        if !first_model {
            let mut service_changes = (diff.added.len() + diff.removed.len()) as u64;
            let mut endpoint_changes = 0u64;
            for name in &diff.changed {
                let (Some(o), Some(n)) = (diff.previous.get(name), model.services.get(name)) else {
                    continue;
                };
                if o.cluster_endpoints != n.cluster_endpoints
                    || o.local_endpoints != n.local_endpoints
                {
                    endpoint_changes += 1;
                }
                let mut o2 = o.clone();
                o2.cluster_endpoints.clone_from(&n.cluster_endpoints);
                o2.local_endpoints.clone_from(&n.local_endpoints);
                if &o2 != n {
                    service_changes += 1;
                }
            }
            m.service_changes.inc_by(service_changes);
            m.endpoint_changes.inc_by(endpoint_changes);
        }
        let (mut ext, mut int) = (0, 0);
        for sp in model.services.values() {
            if sp.external_policy_local
                && sp.local_endpoints.is_empty()
                && !sp.cluster_endpoints.is_empty()
            {
                ext += 1;
            }
            if sp.internal_policy_local
                && sp.local_endpoints.is_empty()
                && !sp.cluster_endpoints.is_empty()
            {
                int += 1;
            }
        }
        m.no_local_endpoints
            .get_or_create(&TrafficPolicyLabel {
                traffic_policy: "External".into(),
            })
            .set(ext);
        m.no_local_endpoints
            .get_or_create(&TrafficPolicyLabel {
                traffic_policy: "Internal".into(),
            })
            .set(int);
        m.service_ports.set(model.services.len() as i64);
        m.endpoints.set(model.endpoint_count() as i64);
        self.health.synced();
        self.service_health.reconcile(model);
        self.status.send_modify(|s| {
            s.last_sync = Some(now);
            s.last_sync_duration = Some(elapsed);
            s.service_ports = model.services.len();
            s.endpoints = model.endpoint_count();
            if rules.is_some() {
                s.rules = rules;
            }
            s.last_error = None;
        });
        // A restarted agent has no previous model: existing flows are left alone.
        if let (Some(cleaner), false) = (self.stale_flows.as_mut(), first_model) {
            let old = NodeModel {
                services: diff.previous.clone(),
                node_name: model.node_name.clone(),
                node_ips: model.node_ips.clone(),
                node_port_addresses: model.node_port_addresses.clone(),
                cluster_cidrs: model.cluster_cidrs.clone(),
                masquerade_all: model.masquerade_all,
            };
            let changes = ChangeSet {
                full: false,
                ..diff.clone()
            };
            match cleaner.clean(&old, model, &changes) {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "deleted stale UDP conntrack flows"),
                Err(e) => tracing::warn!(error = %e, "stale UDP conntrack cleanup failed"),
            }
        }
    }

    /// Asks the engine whether the kernel still holds the applied rules.
    pub async fn check_drift(&mut self) -> Option<String> {
        if !self.in_sync {
            return None;
        }
        let engine = self.engine.as_mut()?;
        match engine.verify(&self.model).await {
            Ok(Drift::None) => None,
            Ok(Drift::Found(what)) => {
                self.metrics.drift_repairs.inc();
                tracing::warn!(mode = %engine.mode(), drift = %what, "kernel rules drifted from what was applied; repairing with a full sync");
                Some(what)
            }
            Err(e) => {
                tracing::warn!(error = %e, "drift check failed; the periodic full sync follows");
                Some(e.to_string())
            }
        }
    }

    /// Runs until `shutdown` turns true. Rules stay in place on return.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut pending = true;
        let mut pending_since = Some(Instant::now());
        let mut force_full = true;
        let mut last_attempt: Option<Instant> = None;
        let mut retry_at: Option<Instant> = None;
        let mut backoff = Duration::from_secs(1);
        let mut next_periodic = Instant::now() + self.selected().config.sync_period;
        let mut last_full: Option<Instant> = None;
        self.health.queued();
        loop {
            let config = self.selected().config;
            let now = Instant::now();
            let mut wake = next_periodic;
            if now >= next_periodic {
                // Every syncPeriod: a sync, and a drift check whose findings (logged and
                // counted by check_drift) are repaired by a full rewrite at once. Without
                // drift the rewrite is full only once per FULL_SYNC_PERIOD, as upstream:
                // rewriting 50k services every 30 s would cost a third of a core.
                let drift = self.check_drift().await.is_some();
                if drift || last_full.is_none_or(|t| t.elapsed() >= FULL_SYNC_PERIOD) {
                    force_full = true;
                }
                pending = true;
                next_periodic = now + config.sync_period;
                continue;
            }
            if pending {
                let earliest = last_attempt
                    .map(|t| t + config.min_sync_period)
                    .unwrap_or(now)
                    .max(retry_at.unwrap_or(now));
                if earliest <= now {
                    last_attempt = Some(now);
                    match self.sync_once(force_full, pending_since).await {
                        Pass::Failed(_) | Pass::Degraded(_) => {
                            retry_at = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(config.sync_period);
                            force_full = true;
                        }
                        Pass::Synced { .. } | Pass::Unchanged => {
                            if force_full {
                                last_full = Some(Instant::now());
                            }
                            pending = false;
                            pending_since = None;
                            force_full = false;
                            retry_at = None;
                            backoff = Duration::from_secs(1);
                        }
                    }
                    continue;
                }
                wake = wake.min(earliest);
            }
            tokio::select! {
                _ = self.notify.notified() => {
                    pending = true;
                    pending_since.get_or_insert_with(Instant::now);
                    self.health.queued();
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        tracing::info!("stopping; dataplane rules stay in place");
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Runner logic against recording engines (the dataplane itself is tested by each
    //! engine against a real kernel).
    use super::*;
    use crate::{engine::SyncReport, state::Object};
    use async_trait::async_trait;

    #[derive(Default)]
    struct Calls {
        /// (mode, full, service ports) per sync.
        syncs: Vec<(Mode, bool, usize)>,
        cleanups: Vec<Mode>,
        /// Syncs to refuse from now on.
        fail_next: usize,
        drift_next: bool,
    }

    struct Recording(Mode, Arc<Mutex<Calls>>);

    #[async_trait]
    impl ProxyEngine for Recording {
        fn mode(&self) -> Mode {
            self.0
        }
        async fn sync(
            &mut self,
            _: &NodeModel,
            changes: &ChangeSet,
        ) -> Result<SyncReport, EngineError> {
            let mut c = self.1.lock().unwrap();
            if c.fail_next > 0 {
                c.fail_next -= 1;
                return Err(EngineError::Apply {
                    tool: "test".into(),
                    message: "refused".into(),
                });
            }
            c.syncs.push((self.0, changes.full, changes.len()));
            Ok(SyncReport::default())
        }
        async fn verify(&mut self, _: &NodeModel) -> Result<Drift, EngineError> {
            if std::mem::take(&mut self.1.lock().unwrap().drift_next) {
                return Ok(Drift::Found("table deleted".into()));
            }
            Ok(Drift::None)
        }
        async fn cleanup(&mut self) -> Result<(), EngineError> {
            self.1.lock().unwrap().cleanups.push(self.0);
            Ok(())
        }
    }

    struct Factory(Arc<Mutex<Calls>>);
    impl EngineFactory for Factory {
        fn build(&self, mode: Mode) -> Result<Box<dyn ProxyEngine>, EngineError> {
            Ok(Box::new(Recording(mode, self.0.clone())))
        }
        fn leftover_cleaners(&self) -> Vec<Box<dyn ProxyEngine>> {
            [Mode::Iptables, Mode::Nftables]
                .into_iter()
                .map(|m| Box::new(Recording(m, self.0.clone())) as Box<dyn ProxyEngine>)
                .collect()
        }
    }

    fn caps() -> Vec<ModeCapability> {
        let cap = |mode, available: bool| ModeCapability {
            mode,
            available,
            missing: if available {
                vec![]
            } else {
                vec!["ip_vs".into()]
            },
            detail: if available {
                String::new()
            } else {
                "missing kernel modules ip_vs".into()
            },
        };
        vec![
            cap(Mode::Iptables, true),
            cap(Mode::Nftables, true),
            cap(Mode::Ipvs, false),
            cap(Mode::Ebpf, false),
        ]
    }

    fn service(name: &str, ip: &str) -> Object {
        Object::Service(Box::new(
            serde_yaml::from_str(&format!(
                "metadata: {{name: {name}, namespace: n}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}"
            ))
            .unwrap(),
        ))
    }

    fn config(spec: &str) -> Object {
        Object::ProxyConfig(Box::new(switchyard_crd::ProxyConfig::new(
            "default",
            serde_yaml::from_str(spec).unwrap(),
        )))
    }

    struct Fixture {
        runner: SyncRunner,
        calls: Arc<Mutex<Calls>>,
        state: Arc<Mutex<ClusterState>>,
        health: Health,
        metrics: Metrics,
    }

    fn fixture(spec: &str) -> Fixture {
        let calls = Arc::new(Mutex::new(Calls::default()));
        let state = Arc::new(Mutex::new(ClusterState::default()));
        state.lock().unwrap().upsert(config(spec));
        let health = Health::new(Duration::from_secs(30));
        let metrics = Metrics::new();
        let runner = SyncRunner::new(
            Arc::new(Factory(calls.clone())),
            caps(),
            state.clone(),
            Arc::new(Notify::new()),
            "node",
            ConfigSource::default(),
            health.clone(),
            metrics.clone(),
        );
        Fixture {
            runner,
            calls,
            state,
            health,
            metrics,
        }
    }

    #[tokio::test]
    async fn first_sync_full_then_partial_then_full_after_failure() {
        let Fixture {
            mut runner,
            calls,
            state,
            health,
            ..
        } = fixture("mode: nftables");
        state.lock().unwrap().upsert(service("a", "10.96.0.1"));
        assert!(!health.verdict().healthy);
        assert_eq!(
            runner.sync_once(false, None).await,
            Pass::Synced {
                full: true,
                service_ports: 1
            }
        );
        assert!(health.verdict().healthy);
        assert_eq!(runner.sync_once(false, None).await, Pass::Unchanged);

        state.lock().unwrap().upsert(service("b", "10.96.0.2"));
        assert_eq!(
            runner.sync_once(false, None).await,
            Pass::Synced {
                full: false,
                service_ports: 1
            }
        );

        calls.lock().unwrap().fail_next = 1;
        state.lock().unwrap().upsert(service("c", "10.96.0.3"));
        assert!(matches!(
            runner.sync_once(false, None).await,
            Pass::Failed(_)
        ));
        // After a failure the kernel state is unknown: the next sync rewrites everything.
        assert_eq!(
            runner.sync_once(false, None).await,
            Pass::Synced {
                full: true,
                service_ports: 3
            }
        );
        let n = Mode::Nftables;
        assert_eq!(
            calls.lock().unwrap().syncs,
            vec![(n, true, 1), (n, false, 1), (n, true, 0)],
            "after the failure the engine rewrites everything from the model"
        );
    }

    #[tokio::test]
    async fn unavailable_mode_falls_back_loudly() {
        let Fixture {
            mut runner,
            metrics,
            ..
        } = fixture("mode: ipvs\nfallback: [nftables]");
        assert!(matches!(
            runner.sync_once(false, None).await,
            Pass::Synced { .. }
        ));
        assert_eq!(runner.mode(), Some(Mode::Nftables));
        let status = runner.status().borrow().clone();
        assert!(status.choice.as_ref().unwrap().is_fallback());
        let text = metrics.render();
        assert!(
            text.contains(r#"switchyard_engine_fallback{requested="ipvs",active="nftables"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn no_usable_fallback_degrades_and_keeps_rules() {
        let Fixture {
            mut runner,
            calls,
            state,
            health,
            ..
        } = fixture("mode: nftables");
        assert!(matches!(
            runner.sync_once(false, None).await,
            Pass::Synced { .. }
        ));
        state.lock().unwrap().upsert(config("mode: ipvs"));
        assert!(
            matches!(runner.sync_once(false, None).await, Pass::Degraded(r) if r.contains("ip_vs"))
        );
        assert!(!health.verdict().healthy);
        assert!(
            !calls.lock().unwrap().cleanups.contains(&Mode::Nftables),
            "previous rules stay"
        );
        assert_eq!(runner.mode(), Some(Mode::Nftables));
    }

    /// Issue 14 defect 1: a restarted agent whose first sync is refused must leave the
    /// previous process's rules in place and retry, never clean them up.
    #[tokio::test]
    async fn failed_first_sync_keeps_the_kernel_rules_and_retries() {
        let Fixture {
            mut runner,
            calls,
            state,
            health,
            ..
        } = fixture("mode: nftables");
        state.lock().unwrap().upsert(service("a", "10.96.0.1"));
        calls.lock().unwrap().fail_next = 2;
        for _ in 0..2 {
            assert!(matches!(
                runner.sync_once(false, None).await,
                Pass::Failed(_)
            ));
            assert!(!health.verdict().healthy);
        }
        assert!(
            calls.lock().unwrap().cleanups.is_empty(),
            "nothing may be cleaned up while the first sync fails"
        );
        assert_eq!(runner.mode(), Some(Mode::Nftables), "the engine stays");
        assert_eq!(
            runner.sync_once(false, None).await,
            Pass::Synced {
                full: true,
                service_ports: 1
            }
        );
        let c = calls.lock().unwrap();
        // A full rewrite (the retry's change set names nothing: the model was built).
        assert_eq!(c.syncs, vec![(Mode::Nftables, true, 0)]);
        // Only then are other engines' leftovers removed, never the active one's.
        assert_eq!(c.cleanups, vec![Mode::Iptables]);
    }

    /// Issue 14 defect 10: after a restart into another mode, the previous mode's rules
    /// are removed once the new engine has synced (and not before).
    #[tokio::test]
    async fn leftovers_of_other_engines_go_after_the_first_sync_only() {
        let Fixture {
            mut runner, calls, ..
        } = fixture("mode: iptables");
        calls.lock().unwrap().fail_next = 1;
        assert!(matches!(
            runner.sync_once(false, None).await,
            Pass::Failed(_)
        ));
        assert!(calls.lock().unwrap().cleanups.is_empty());
        assert!(matches!(
            runner.sync_once(false, None).await,
            Pass::Synced { .. }
        ));
        assert_eq!(calls.lock().unwrap().cleanups, vec![Mode::Nftables]);
        assert_eq!(runner.sync_once(false, None).await, Pass::Unchanged);
        assert_eq!(
            calls.lock().unwrap().cleanups,
            vec![Mode::Nftables],
            "once per process"
        );
    }

    /// A live switch whose new engine fails keeps the old engine serving and removes what
    /// the new one left.
    #[tokio::test]
    async fn failed_live_switch_keeps_the_old_engine() {
        let Fixture {
            mut runner,
            calls,
            state,
            ..
        } = fixture("mode: nftables");
        runner.sync_once(false, None).await;
        calls.lock().unwrap().cleanups.clear();
        state.lock().unwrap().upsert(config("mode: iptables"));
        calls.lock().unwrap().fail_next = 1;
        assert!(matches!(
            runner.sync_once(false, None).await,
            Pass::Failed(_)
        ));
        assert_eq!(runner.mode(), Some(Mode::Nftables));
        assert_eq!(calls.lock().unwrap().cleanups, vec![Mode::Iptables]);
    }

    #[tokio::test]
    async fn mode_change_switches_make_before_break() {
        let Fixture {
            mut runner,
            calls,
            state,
            ..
        } = fixture("mode: nftables");
        state.lock().unwrap().upsert(service("a", "10.96.0.1"));
        runner.sync_once(false, None).await;
        state.lock().unwrap().upsert(config("mode: iptables"));
        assert!(matches!(
            runner.sync_once(false, None).await,
            Pass::Synced { full: true, .. }
        ));
        assert_eq!(runner.mode(), Some(Mode::Iptables));
        let c = calls.lock().unwrap();
        // The new engine was programmed before the old one was cleaned up.
        assert_eq!(c.syncs.last(), Some(&(Mode::Iptables, true, 1)));
        // At start the other engine's leftovers; at the switch, the old engine.
        assert_eq!(c.cleanups, vec![Mode::Iptables, Mode::Nftables]);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_debounced_by_min_sync_period() {
        let Fixture {
            runner,
            calls,
            state,
            ..
        } = fixture("mode: nftables\nminSyncPeriod: 2s");
        let notify = runner.notify.clone();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(runner.run(rx));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(calls.lock().unwrap().syncs.len(), 1, "initial sync");
        for i in 0..5 {
            state
                .lock()
                .unwrap()
                .upsert(service(&format!("s{i}"), &format!("10.96.1.{i}")));
            notify.notify_one();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            calls.lock().unwrap().syncs.len(),
            1,
            "burst waits for minSyncPeriod"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let n = Mode::Nftables;
        assert_eq!(
            calls.lock().unwrap().syncs,
            vec![(n, true, 0), (n, false, 5)],
            "one coalesced sync"
        );
        tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_sync_repairs_drift_with_a_full_rewrite() {
        let Fixture {
            runner,
            calls,
            state,
            metrics,
            ..
        } = fixture("mode: nftables\nsyncPeriod: 2s\nminSyncPeriod: 0s");
        state.lock().unwrap().upsert(service("a", "10.96.0.1"));
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(runner.run(rx));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let n = Mode::Nftables;
        assert_eq!(calls.lock().unwrap().syncs, vec![(n, true, 1)]);
        // A period without drift: nothing to rewrite.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(
            calls.lock().unwrap().syncs.len(),
            1,
            "no drift, no change: no rewrite"
        );
        // The kernel lost the rules: the next period's check rewrites everything.
        calls.lock().unwrap().drift_next = true;
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert_eq!(
            calls.lock().unwrap().syncs,
            vec![(n, true, 1), (n, true, 0)]
        );
        assert!(metrics
            .render()
            .contains("switchyard_drift_repairs_total 1"));
        tx.send(true).unwrap();
        task.await.unwrap();
    }
}
