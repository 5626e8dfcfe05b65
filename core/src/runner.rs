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
//!   is retired (removed, or kept draining while connections it translates end: see
//!   [`crate::retiring`]).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use switchyard_crd::{EffectiveConfig, Mode, ModeCapability};
use tokio::{
    sync::{watch, Notify},
    time::Instant as TokioInstant,
};

use switchyard_model::{
    ChangeSet, Drift, EngineError, FamilyPlan, NodeModel, ProxyEngine, Retirement, ServicePortPlan,
    SyncReport, Target,
};

use crate::{
    engine_choice::{choose, EngineChoice},
    health::Health,
    metrics::{FallbackLabels, Metrics, ModeLabel, TableLabel, TrafficPolicyLabel},
    programming_latency::{LatencySummary, ProgrammingLatency},
    retiring::{RetiringEngines, RETIRE_CHECK},
    selection,
    service_health::ServiceHealthServers,
    state::{model_config, ClusterState},
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
    /// Engines whose block (`ipvs`, `ebpf`) the ProxyConfig sets.
    pub engine_blocks: Vec<Mode>,
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
        Some(sel) => {
            let spec = &sel.config.spec;
            let blocks = [
                (Mode::Ipvs, spec.ipvs.is_some()),
                (Mode::Ebpf, spec.ebpf.is_some()),
            ];
            SelectedConfig {
                config: spec.effective().unwrap_or_default(),
                name: sel.config.metadata.name.clone(),
                conflicts_with: sel.conflicts_with,
                engine_blocks: blocks
                    .iter()
                    .filter(|(_, set)| *set)
                    .map(|(m, _)| *m)
                    .collect(),
            }
        }
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

/// Builds engines by mode; implemented where the engine crates are known (the binary's
/// engine registry).
pub trait EngineFactory: Send + Sync {
    /// Builds `mode`'s engine, configured from its block of `config`.
    fn build(
        &self,
        mode: Mode,
        config: &EffectiveConfig,
    ) -> Result<Box<dyn ProxyEngine>, EngineError>;

    /// Whether `mode`'s engine built from `old` must be rebuilt for `new` (its block of
    /// the ProxyConfig changed). The rebuild is make-before-break, like a mode switch.
    fn settings_changed(
        &self,
        _mode: Mode,
        _old: &EffectiveConfig,
        _new: &EffectiveConfig,
    ) -> bool {
        false
    }

    /// One engine per kind of kernel state any engine of this binary can leave behind
    /// (see [`ProxyEngine::owner`]), used only for `cleanup`: what a previous process in
    /// another mode left.
    fn leftover_cleaners(&self) -> Vec<Box<dyn ProxyEngine>> {
        Vec::new()
    }

    /// The modes `auto` picks from, best first.
    fn auto_preference(&self) -> Vec<Mode>;
}

/// Removes conntrack entries that would keep UDP clients talking to endpoints that are
/// gone (implemented over netlink outside core). Called after the new rules are in.
pub trait StaleFlowCleaner: Send {
    /// `changes.previous` holds the old plans of what changed; returns how many flows
    /// were deleted.
    fn clean(&mut self, changes: &ChangeSet, new: &NodeModel) -> Result<usize, EngineError>;
}

/// Why a pass failed. The engine's error is kept as its source.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("building the {mode} engine: {source}")]
    Build {
        mode: Mode,
        #[source]
        source: EngineError,
    },
    #[error("preparing the {mode} engine: {source}")]
    Prepare {
        mode: Mode,
        #[source]
        source: EngineError,
    },
    #[error("{mode} sync failed: {source}")]
    Sync {
        mode: Mode,
        #[source]
        source: EngineError,
    },
    #[error("verifying the new {mode} engine: {source}")]
    Verify {
        mode: Mode,
        #[source]
        source: EngineError,
    },
    #[error("the new {mode} engine did not verify: {drift}")]
    Unverified { mode: Mode, drift: String },
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
    /// ProxyConfig blocks this node does not use (`ipvs` while nftables runs...), each
    /// with why.
    pub unused_settings: Vec<String>,
    /// Recent network programming latency (see `programming_latency`).
    pub network_programming: Option<LatencySummary>,
}

/// The engine programming the node and the config it was built with.
struct ActiveEngine {
    engine: Box<dyn ProxyEngine>,
    built_with: EffectiveConfig,
}

pub struct SyncRunner {
    engine: Option<ActiveEngine>,
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
    /// Engines retired by a switch (or leftovers) that still drain their connections.
    retiring: RetiringEngines,
    /// The engine started with this process was not verified before it was reported
    /// synced: the run loop checks it for drift right after that first sync.
    unverified_start: bool,
    /// What the last successful engine call applied, and its report (`None` after a
    /// switch, whose sync is the new engine's start).
    last_applied: ChangeSet,
    last_report: Option<SyncReport>,
    /// Endpoint changes waiting to be programmed, and the recent latencies.
    programming: ProgrammingLatency,
}

/// The engine blocks of the ProxyConfig that the engine running here does not read.
fn unused_settings(
    blocks: &[Mode],
    active: Option<Mode>,
    capabilities: &[ModeCapability],
) -> Vec<String> {
    blocks
        .iter()
        .filter(|m| Some(**m) != active)
        .map(|m| {
            let why = match capabilities.iter().find(|c| c.mode == *m) {
                Some(c) if !c.available => format!("the {m} engine cannot run here: {}", c.detail),
                _ => format!("the {m} engine is not the one running"),
            };
            format!("spec.{m}: validated, unused: {why}")
        })
        .collect()
}

/// A successful pass, as the bookkeeping after it needs to know it.
struct Finished {
    elapsed: Duration,
    /// The model was built for the first time (a restarted agent has no previous model).
    first_model: bool,
}

/// Prepares and programs (fully) a new engine, and verifies it when `verify`; returns
/// what its sync did.
async fn start(
    engine: &mut dyn ProxyEngine,
    mode: Mode,
    model: &NodeModel,
    verify: bool,
) -> Result<SyncReport, SyncError> {
    engine
        .prepare()
        .await
        .map_err(|source| SyncError::Prepare { mode, source })?;
    let report = engine
        .sync(model, &ChangeSet::full(model))
        .await
        .map_err(|source| SyncError::Sync { mode, source })?;
    if !verify {
        return Ok(report);
    }
    match engine
        .verify(model)
        .await
        .map_err(|source| SyncError::Verify { mode, source })?
    {
        Drift::None => Ok(report),
        Drift::Found(drift) => Err(SyncError::Unverified { mode, drift }),
    }
}

/// Service and endpoint changes in `changes`, as kube-proxy counts them: a port whose
/// backends changed is an endpoint change; one that changed otherwise (or appeared, or
/// went) a service change.
fn count_changes(model: &NodeModel, changes: &ChangeSet) -> (u64, u64) {
    let mut services = (changes.added.len() + changes.removed.len()) as u64;
    let mut endpoints = 0u64;
    for name in &changes.changed {
        let (Some(old), Some(new)) = (changes.previous.get(name), model.services.get(name)) else {
            continue;
        };
        let backends = |p: &ServicePortPlan| {
            p.families
                .iter()
                .map(FamilyPlan::backends)
                .collect::<Vec<_>>()
        };
        if backends(old) != backends(new) {
            endpoints += 1;
        }
        if shape(old) != shape(new) {
            services += 1;
        }
    }
    (services, endpoints)
}

/// A plan with every target reduced to its kind: what a service change alters.
fn shape(plan: &ServicePortPlan) -> ServicePortPlan {
    let mut p = plan.clone();
    for f in &mut p.families {
        for t in [&mut f.internal, &mut f.external] {
            if matches!(t, Target::Endpoints(_)) {
                *t = Target::Reject;
            }
        }
        f.short_circuit = None;
    }
    p.health_check = None;
    p
}

/// Service ports whose external (then internal) traffic is dropped for lack of local
/// endpoints (`kubeproxy_sync_proxy_rules_no_local_endpoints_total`).
fn no_local_endpoints(model: &NodeModel) -> (i64, i64) {
    let (mut external, mut internal) = (0, 0);
    for plan in model.services.values() {
        let drops = |pick: fn(&FamilyPlan) -> &Target| {
            plan.families.iter().any(|f| *pick(f) == Target::Drop)
        };
        external += i64::from(drops(|f| &f.external));
        internal += i64::from(drops(|f| &f.internal));
    }
    (external, internal)
}

/// Outcome of one pass, for tests and logs.
#[derive(Debug)]
pub enum Pass {
    Synced {
        full: bool,
        service_ports: usize,
    },
    Unchanged,
    Failed(SyncError),
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
            retiring: RetiringEngines::default(),
            unverified_start: false,
            last_applied: ChangeSet::default(),
            last_report: None,
            programming: ProgrammingLatency::default(),
        }
    }

    /// Cleans stale UDP conntrack flows after each sync with `cleaner`.
    pub fn with_stale_flow_cleaner(mut self, cleaner: Box<dyn StaleFlowCleaner>) -> Self {
        self.stale_flows = Some(cleaner);
        self
    }

    /// The mode of the engine programming the node, if any.
    pub fn mode(&self) -> Option<Mode> {
        self.engine.as_ref().map(|e| e.engine.mode())
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

    /// Makes `mode`'s engine, built from `config`, the active one, make-before-break: the
    /// new engine is prepared, fully programmed and verified before the old one is
    /// retired (unless both own the same kernel objects: a rebuild of the same engine
    /// for new settings takes its predecessor's objects over).
    ///
    /// The engine this process starts with (no old one) is not verified before it is
    /// reported synced: its sync either adopted what the kernel held (a read-back and a
    /// comparison already) or wrote it in netlink transactions the kernel acknowledged.
    /// Its first drift check runs right after that sync instead (see
    /// [`SyncRunner::run`]); a read-back of 50k services costs 1.5 s of a cold start.
    ///
    /// When the new engine fails to start:
    /// - during a live switch, the old engine keeps serving and whatever the new one
    ///   left (a stale table of a previous run, half of a two-family apply) is removed;
    /// - at process start there is no old engine, and what the kernel holds is most
    ///   likely a previous process's working ruleset: it is left in place, the new engine
    ///   becomes the active one without being in sync, and the next passes retry it with
    ///   full syncs. Cleaning up here would turn one refused transaction (an xtables lock
    ///   held for 5 s, one nft rejection) into an outage.
    async fn switch_to(
        &mut self,
        mode: Mode,
        config: &EffectiveConfig,
        model: &NodeModel,
    ) -> Result<SyncReport, SyncError> {
        let mut engine = self
            .factory
            .build(mode, config)
            .map_err(|source| SyncError::Build { mode, source })?;
        let live_switch = self.engine.is_some();
        let report = match start(engine.as_mut(), mode, model, live_switch).await {
            Ok(report) => report,
            Err(e) => {
                let other_owner = self
                    .engine
                    .as_ref()
                    .map(|old| old.engine.owner() != engine.owner());
                match other_owner {
                    Some(true) => {
                        if let Err(c) = engine.cleanup().await {
                            tracing::warn!(mode = %mode, error = %c, "cleaning up the engine that failed to start");
                        }
                    }
                    Some(false) => {}
                    None => {
                        tracing::warn!(mode = %mode, "first sync failed: the rules already in the kernel stay in place; retrying");
                        self.engine = Some(ActiveEngine {
                            engine,
                            built_with: config.clone(),
                        });
                    }
                }
                return Err(e);
            }
        };
        // A draining engine of the new one's owner was just taken over by it.
        self.retiring.adopt(&engine.owner());
        self.unverified_start = !live_switch;
        let from = self.engine.take();
        if let Some(old) = from {
            let old_mode = old.engine.mode();
            if old.engine.owner() != engine.owner() {
                if let Err(e) = self.retiring.retire(old.engine).await {
                    tracing::warn!(mode = %old_mode, error = %e, "cleaning up the previous engine's rules failed; they may linger until `switchyard cleanup`");
                }
                tracing::info!(from = %old_mode, to = %mode, "switched engine (make-before-break)");
            } else {
                tracing::info!(mode = %mode, "rebuilt the engine for its new settings");
            }
        } else {
            tracing::info!(mode = %mode, "engine started");
        }
        self.engine = Some(ActiveEngine {
            engine,
            built_with: config.clone(),
        });
        Ok(report)
    }

    /// Removes what other engines left on the node (a previous process in another mode
    /// or iptables backend): nobody owns those rules any more, and they would keep
    /// routing to whatever endpoints they knew. Runs once, after the active engine's
    /// first successful sync (make-before-break, as a live switch does). An engine
    /// whose connections in flight need its state keeps it draining (see
    /// [`crate::retiring`]): it takes no new connection, so that counts as removed.
    async fn remove_leftovers(&mut self) {
        let Some(active) = self.engine.as_ref() else {
            return;
        };
        let keep = active.engine.owner();
        let mut done = true;
        for other in self.factory.leftover_cleaners() {
            if other.owner() == keep {
                continue;
            }
            let owner = other.owner();
            match self.retiring.retire(other).await {
                Ok(Retirement::Done) => {
                    tracing::debug!(%owner, "no leftovers of another engine remain")
                }
                // Kept for the connections in flight it carries; no new one goes there.
                Ok(Retirement::Draining { .. }) => {}
                // Its tools are not installed: it cannot have left anything.
                Err(EngineError::Spawn { .. }) => {}
                Err(e) => {
                    done = false;
                    tracing::warn!(%owner, error = %e, "removing another engine's leftover rules failed; retrying after the next sync")
                }
            }
        }
        self.leftovers_removed = done;
    }

    /// Brings the model up to date with the state: only the Services that changed are
    /// recomputed, unless something node-wide changed. Returns the difference.
    fn refresh_model(&mut self, config: &EffectiveConfig) -> ChangeSet {
        let mut state = self.state.lock().expect("state lock poisoned");
        let mut changes = state.take_changes();
        self.programming.changed(
            std::mem::take(&mut changes.trigger_times)
                .into_values()
                .flatten(),
        );
        if self.model_built && !changes.global {
            return self.model.update_services(&*state, &changes.services);
        }
        let node = state.node_facts(&self.node_name);
        let new = NodeModel::build(&*state, &node, &model_config(config));
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
    pub async fn sync_once(&mut self, full: bool) -> Pass {
        let started = Instant::now();
        let selected = self.selected();
        let config = &selected.config;
        self.health.set_sync_period(config.sync_period);
        if !selected.conflicts_with.is_empty() {
            tracing::warn!(chosen = ?selected.name, others = ?selected.conflicts_with, "ConfigConflict: several ProxyConfigs select this node with the same priority");
        }
        let first_model = !self.model_built;
        let diff = self.refresh_model(config);
        let choice = choose(
            config.mode,
            &config.fallback,
            &self.capabilities,
            &self.factory.auto_preference(),
        );
        self.report_choice(&choice);
        let unused = unused_settings(&selected.engine_blocks, choice.mode(), &self.capabilities);
        self.status.send_modify(|s| {
            s.config_name.clone_from(&selected.name);
            s.conflicts_with.clone_from(&selected.conflicts_with);
            s.choice = Some(choice.clone());
            if s.unused_settings != unused {
                for u in &unused {
                    tracing::warn!(setting = %u, "ProxyConfig setting unused on this node");
                }
                s.unused_settings = unused;
            }
        });
        let Some(mode) = choice.mode() else {
            let EngineChoice::Degraded { reason, .. } = choice else {
                unreachable!()
            };
            self.in_sync = false;
            return Pass::Degraded(reason);
        };
        let model = std::mem::take(&mut self.model);
        let pass = self.apply(mode, config, &model, diff, full).await;
        // Other engines' leftovers go right after this process's first sync (make before
        // break) and before the node reports healthy: a leftover netfilter DNAT would
        // otherwise keep steering traffic to old endpoints ahead of the new engine (IPVS
        // runs after prerouting) while /healthz already says synced.
        if matches!(pass, Pass::Synced { .. } | Pass::Unchanged) && !self.leftovers_removed {
            self.remove_leftovers().await;
        }
        match &pass {
            Pass::Synced { .. } => {
                let done = Finished {
                    elapsed: started.elapsed(),
                    first_model,
                };
                self.record_success(&model, done);
                self.record_programmed();
            }
            Pass::Unchanged => {
                tracing::debug!("sync pass: the model did not change");
                self.health.synced();
                self.record_programmed();
            }
            Pass::Failed(e) => self.record_failure(e),
            Pass::Degraded(_) => {}
        }
        self.model = model;
        pass
    }

    /// Whether the active engine is `mode`'s, built for `config`'s settings.
    fn engine_fits(&self, mode: Mode, config: &EffectiveConfig) -> bool {
        self.engine.as_ref().is_some_and(|a| {
            a.engine.mode() == mode && !self.factory.settings_changed(mode, &a.built_with, config)
        })
    }

    /// Applies `diff` (everything when `full` or out of sync), switching engines first
    /// when the chosen one is not running.
    async fn apply(
        &mut self,
        mode: Mode,
        config: &EffectiveConfig,
        model: &NodeModel,
        diff: ChangeSet,
        full: bool,
    ) -> Pass {
        if !self.engine_fits(mode, config) {
            return match self.switch_to(mode, config, model).await {
                Ok(report) => {
                    self.last_applied = diff.into_full();
                    self.last_report = Some(report);
                    Pass::Synced {
                        full: true,
                        service_ports: model.services.len(),
                    }
                }
                Err(e) => Pass::Failed(e),
            };
        }
        let changes = if full || !self.in_sync {
            diff.into_full()
        } else {
            diff
        };
        if changes.is_empty() {
            return Pass::Unchanged;
        }
        let active = self.engine.as_mut().expect("engine present: it fits");
        match active.engine.sync(model, &changes).await {
            Ok(report) => {
                let service_ports = if changes.full {
                    model.services.len()
                } else {
                    changes.len()
                };
                self.last_applied = changes;
                self.last_report = Some(report);
                Pass::Synced {
                    full: self.last_applied.full,
                    service_ports,
                }
            }
            Err(source) => Pass::Failed(SyncError::Sync { mode, source }),
        }
    }

    /// The pending endpoint changes are in the kernel: their latencies are observed.
    fn record_programmed(&mut self) {
        let histogram = &self.metrics.network_programming_duration;
        if let Some(summary) = self.programming.programmed(histogram) {
            self.status
                .send_modify(|s| s.network_programming = Some(summary));
        }
    }

    fn record_failure(&mut self, error: &SyncError) {
        self.metrics.sync_failures.inc();
        self.in_sync = false;
        tracing::error!(mode = ?self.mode(), %error, "sync failed; previous rules stay in place, retrying with a full sync");
        let text = error.to_string();
        self.status.send_modify(|s| s.last_error = Some(text));
    }

    /// Metrics, health, status, health check servers and stale-flow cleanup after a
    /// successful sync of `model` (what it applied is in `last_applied`).
    fn record_success(&mut self, model: &NodeModel, done: Finished) {
        self.in_sync = true;
        let changes = std::mem::take(&mut self.last_applied);
        let report = self.last_report.take();
        self.log_sync(model, &changes, report.as_ref(), &done);
        self.observe_sync(model, &changes, report.as_ref(), &done);
        self.health.synced();
        self.service_health.reconcile(model);
        self.status.send_modify(|s| {
            s.last_sync = Some(SystemTime::now());
            s.last_sync_duration = Some(done.elapsed);
            s.service_ports = model.services.len();
            s.endpoints = model.endpoint_count();
            if let Some(r) = &report {
                s.rules = Some(r.rules);
            }
            s.last_error = None;
        });
        // A restarted agent has no previous model: existing flows are left alone.
        if let (Some(cleaner), false) = (self.stale_flows.as_mut(), done.first_model) {
            match cleaner.clean(&changes, model) {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "deleted stale UDP conntrack flows"),
                Err(e) => tracing::warn!(error = %e, "stale UDP conntrack cleanup failed"),
            }
        }
    }

    fn log_sync(
        &self,
        model: &NodeModel,
        changes: &ChangeSet,
        report: Option<&SyncReport>,
        done: &Finished,
    ) {
        tracing::info!(
            mode = ?self.mode(),
            full = changes.full,
            written = report.map_or(model.services.len(), |r| r.service_ports_written),
            removed = report.map_or(0, |r| r.service_ports_removed),
            service_ports = model.services.len(),
            endpoints = model.endpoint_count(),
            apply_ms = report.map(|r| r.apply_time.as_secs_f64() * 1e3),
            total_ms = done.elapsed.as_secs_f64() * 1e3,
            "synced"
        );
    }

    /// kube-proxy's sync metrics.
    fn observe_sync(
        &self,
        model: &NodeModel,
        changes: &ChangeSet,
        report: Option<&SyncReport>,
        done: &Finished,
    ) {
        let m = &self.metrics;
        m.sync_duration.observe(done.elapsed.as_secs_f64());
        m.last_sync_timestamp.set(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
        );
        if changes.full {
            m.full_syncs.inc();
        } else {
            m.partial_syncs.inc();
        }
        if !done.first_model {
            let (services, endpoints) = count_changes(model, changes);
            m.service_changes.inc_by(services);
            m.endpoint_changes.inc_by(endpoints);
        }
        let (external, internal) = no_local_endpoints(model);
        for (policy, n) in [("External", external), ("Internal", internal)] {
            m.no_local_endpoints
                .get_or_create(&TrafficPolicyLabel {
                    traffic_policy: policy.into(),
                })
                .set(n);
        }
        if let Some(r) = report {
            for (table, n) in &r.rules_by_table {
                m.iptables_rules
                    .get_or_create(&TableLabel {
                        table: table.clone(),
                    })
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
            }
        }
        m.service_ports.set(model.services.len() as i64);
        m.endpoints.set(model.endpoint_count() as i64);
    }

    /// Asks the engine whether the kernel still holds the applied rules.
    pub async fn check_drift(&mut self) -> Option<String> {
        if !self.in_sync {
            return None;
        }
        let engine = &mut self.engine.as_mut()?.engine;
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

    /// Runs until `shutdown` turns true. Rules stay in place on return. Its schedule
    /// runs on tokio's clock (paused in tests), never the wall clock.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut pending = true;
        let mut force_full = true;
        let mut last_attempt: Option<TokioInstant> = None;
        let mut retry_at: Option<TokioInstant> = None;
        let mut backoff = Duration::from_secs(1);
        let mut next_periodic = TokioInstant::now() + self.selected().config.sync_period;
        let mut last_full: Option<TokioInstant> = None;
        // In the past when an engine starts draining: its first check comes at once.
        let mut next_drain_check = TokioInstant::now();
        self.health.queued();
        loop {
            let config = self.selected().config;
            let now = TokioInstant::now();
            let mut wake = next_periodic;
            if !self.retiring.is_empty() {
                if now >= next_drain_check {
                    self.retiring.check().await;
                    next_drain_check = TokioInstant::now() + RETIRE_CHECK;
                    continue;
                }
                wake = wake.min(next_drain_check);
            }
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
                    match self.sync_once(force_full).await {
                        Pass::Failed(_) | Pass::Degraded(_) => {
                            retry_at = Some(TokioInstant::now() + backoff);
                            backoff = (backoff * 2).min(config.sync_period);
                            force_full = true;
                        }
                        Pass::Synced { .. } | Pass::Unchanged => {
                            if force_full {
                                last_full = Some(TokioInstant::now());
                            }
                            if std::mem::take(&mut self.unverified_start) {
                                next_periodic = TokioInstant::now();
                            }
                            pending = false;
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
                    self.health.queued();
                }
                _ = tokio::time::sleep_until(wake) => {}
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
        /// Engines asked to verify, in order.
        verifies: Vec<Mode>,
        /// Syncs to refuse from now on.
        fail_next: usize,
        drift_next: bool,
        /// When set, each cleanup records whether the node was reported healthy then.
        health: Option<Health>,
        healthy_at_cleanup: Vec<bool>,
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
                return Err(EngineError::Tool {
                    tool: "test".into(),
                    exit: Some(1),
                    stderr: "refused".into(),
                });
            }
            c.syncs.push((self.0, changes.full, changes.len()));
            Ok(SyncReport::default())
        }
        async fn verify(&mut self, _: &NodeModel) -> Result<Drift, EngineError> {
            self.1.lock().unwrap().verifies.push(self.0);
            if std::mem::take(&mut self.1.lock().unwrap().drift_next) {
                return Ok(Drift::Found("table deleted".into()));
            }
            Ok(Drift::None)
        }
        async fn cleanup(&mut self) -> Result<(), EngineError> {
            let mut calls = self.1.lock().unwrap();
            calls.cleanups.push(self.0);
            if let Some(healthy) = calls.health.as_ref().map(|h| h.verdict().healthy) {
                calls.healthy_at_cleanup.push(healthy);
            }
            Ok(())
        }
        async fn inspect(
            &mut self,
            _: &NodeModel,
            _: &switchyard_model::ServicePortName,
        ) -> Result<switchyard_model::PortInspection, EngineError> {
            Ok(switchyard_model::PortInspection::new(self.0.to_string()))
        }
    }

    fn assert_synced(pass: Pass, full: bool, service_ports: usize) {
        match pass {
            Pass::Synced {
                full: f,
                service_ports: n,
            } => assert_eq!((f, n), (full, service_ports)),
            other => panic!("expected a sync, got {other:?}"),
        }
    }

    struct Factory(Arc<Mutex<Calls>>);
    impl EngineFactory for Factory {
        fn build(
            &self,
            mode: Mode,
            _: &EffectiveConfig,
        ) -> Result<Box<dyn ProxyEngine>, EngineError> {
            Ok(Box::new(Recording(mode, self.0.clone())))
        }
        fn auto_preference(&self) -> Vec<Mode> {
            vec![Mode::Ebpf, Mode::Nftables, Mode::Ipvs, Mode::Iptables]
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
        assert_synced(runner.sync_once(false).await, true, 1);
        assert!(health.verdict().healthy);
        assert!(matches!(runner.sync_once(false).await, Pass::Unchanged));

        state.lock().unwrap().upsert(service("b", "10.96.0.2"));
        assert_synced(runner.sync_once(false).await, false, 1);

        calls.lock().unwrap().fail_next = 1;
        state.lock().unwrap().upsert(service("c", "10.96.0.3"));
        assert!(matches!(runner.sync_once(false).await, Pass::Failed(_)));
        // After a failure the kernel state is unknown: the next sync rewrites everything.
        assert_synced(runner.sync_once(false).await, true, 3);
        let n = Mode::Nftables;
        assert_eq!(
            calls.lock().unwrap().syncs,
            vec![(n, true, 1), (n, false, 1), (n, true, 0)],
            "after the failure the engine rewrites everything from the model"
        );
    }

    /// Issue 12 part 3: network programming latency runs from the slice's trigger-time
    /// annotation (not from when the runner saw it) to the end of the pass that
    /// programmed it, and a failed pass keeps it pending.
    #[tokio::test]
    async fn programming_latency_starts_at_the_trigger_time() {
        let Fixture {
            mut runner,
            calls,
            state,
            metrics,
            ..
        } = fixture("mode: nftables");
        state.lock().unwrap().upsert(service("a", "10.96.0.1"));
        runner.sync_once(false).await;
        let triggered = k8s_openapi::jiff::Timestamp::now();
        std::thread::sleep(Duration::from_millis(300));
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_yaml::from_str(&format!(
            "metadata: {{name: a-1, namespace: n, labels: {{kubernetes.io/service-name: a}}, \
             annotations: {{endpoints.kubernetes.io/last-change-trigger-time: '{triggered}'}}}}\n\
             addressType: IPv4\nendpoints: [{{addresses: [10.1.0.1]}}]\nports: [{{port: 8080}}]"
        ))
        .unwrap();
        state
            .lock()
            .unwrap()
            .upsert(Object::EndpointSlice(Box::new(slice)));
        calls.lock().unwrap().fail_next = 1;
        assert!(matches!(runner.sync_once(false).await, Pass::Failed(_)));
        assert_eq!(runner.status().borrow().network_programming, None);
        assert_synced(runner.sync_once(false).await, true, 1);
        let summary = runner.status().borrow().network_programming.unwrap();
        assert_eq!(summary.samples, 1);
        assert!(
            summary.p99 >= Duration::from_millis(300) && summary.p99 < Duration::from_secs(30),
            "{summary:?}"
        );
        let text = metrics.render();
        assert!(
            text.contains("kubeproxy_network_programming_duration_seconds_count 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn unavailable_mode_falls_back_loudly() {
        let Fixture {
            mut runner,
            metrics,
            ..
        } = fixture("mode: ipvs\nfallback: [nftables]");
        assert!(matches!(runner.sync_once(false).await, Pass::Synced { .. }));
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
        assert!(matches!(runner.sync_once(false).await, Pass::Synced { .. }));
        state.lock().unwrap().upsert(config("mode: ipvs"));
        assert!(matches!(runner.sync_once(false).await, Pass::Degraded(r) if r.contains("ip_vs")));
        assert!(!health.verdict().healthy);
        assert!(
            !calls.lock().unwrap().cleanups.contains(&Mode::Nftables),
            "previous rules stay"
        );
        assert_eq!(runner.mode(), Some(Mode::Nftables));
    }

    /// Issue 9 item 5: an engine block for an engine that does not run here is validated
    /// and reported as unused.
    #[tokio::test]
    async fn engine_blocks_of_other_engines_are_reported_unused() {
        let Fixture { mut runner, .. } = fixture("mode: nftables\nipvs: {scheduler: wrr}");
        runner.sync_once(false).await;
        let unused = runner.status().borrow().unused_settings.clone();
        assert_eq!(unused.len(), 1, "{unused:?}");
        assert!(unused[0].starts_with("spec.ipvs:"), "{unused:?}");
        assert!(unused[0].contains("ip_vs"), "names why: {unused:?}");
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
            assert!(matches!(runner.sync_once(false).await, Pass::Failed(_)));
            assert!(!health.verdict().healthy);
        }
        assert!(
            calls.lock().unwrap().cleanups.is_empty(),
            "nothing may be cleaned up while the first sync fails"
        );
        assert_eq!(runner.mode(), Some(Mode::Nftables), "the engine stays");
        assert_synced(runner.sync_once(false).await, true, 1);
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
        assert!(matches!(runner.sync_once(false).await, Pass::Failed(_)));
        assert!(calls.lock().unwrap().cleanups.is_empty());
        assert!(matches!(runner.sync_once(false).await, Pass::Synced { .. }));
        assert_eq!(calls.lock().unwrap().cleanups, vec![Mode::Nftables]);
        assert!(matches!(runner.sync_once(false).await, Pass::Unchanged));
        assert_eq!(
            calls.lock().unwrap().cleanups,
            vec![Mode::Nftables],
            "once per process"
        );
    }

    /// After a restart into another mode the node is reported healthy only once the
    /// previous mode's leftovers are gone: a leftover netfilter DNAT runs ahead of IPVS
    /// and would keep answering from old endpoints (found by the IPVS while-down row).
    #[tokio::test]
    async fn leftovers_go_before_the_node_reports_healthy() {
        let Fixture {
            mut runner,
            calls,
            health,
            ..
        } = fixture("mode: iptables");
        calls.lock().unwrap().health = Some(health.clone());
        assert!(!health.verdict().healthy);
        assert!(matches!(runner.sync_once(false).await, Pass::Synced { .. }));
        let c = calls.lock().unwrap();
        assert_eq!(c.cleanups, vec![Mode::Nftables]);
        assert_eq!(c.healthy_at_cleanup, vec![false], "removed before healthy");
        assert!(health.verdict().healthy, "healthy after the pass");
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
        runner.sync_once(false).await;
        calls.lock().unwrap().cleanups.clear();
        state.lock().unwrap().upsert(config("mode: iptables"));
        calls.lock().unwrap().fail_next = 1;
        assert!(matches!(runner.sync_once(false).await, Pass::Failed(_)));
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
        runner.sync_once(false).await;
        state.lock().unwrap().upsert(config("mode: iptables"));
        assert!(matches!(
            runner.sync_once(false).await,
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

    /// The engine a process starts with is reported synced after its sync, and checked
    /// for drift right after (not a syncPeriod later); a live switch verifies the new
    /// engine before the old one goes.
    #[tokio::test(start_paused = true)]
    async fn first_engine_is_checked_right_after_its_sync_a_switch_before() {
        let Fixture {
            runner,
            calls,
            state,
            health,
            ..
        } = fixture("mode: nftables\nsyncPeriod: 60s\nminSyncPeriod: 0s");
        state.lock().unwrap().upsert(service("a", "10.96.0.1"));
        calls.lock().unwrap().drift_next = true;
        let notify = runner.notify.clone();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(runner.run(rx));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let n = Mode::Nftables;
        {
            let c = calls.lock().unwrap();
            assert_eq!(c.verifies, vec![n], "one check, right after the first sync");
            assert_eq!(
                c.syncs,
                vec![(n, true, 1), (n, true, 0)],
                "the drift it found repaired at once"
            );
        }
        assert!(health.verdict().healthy);
        state
            .lock()
            .unwrap()
            .upsert(config("mode: iptables\nsyncPeriod: 60s\nminSyncPeriod: 0s"));
        notify.notify_one();
        tokio::time::sleep(Duration::from_millis(10)).await;
        {
            let c = calls.lock().unwrap();
            assert_eq!(
                c.verifies,
                vec![n, Mode::Iptables],
                "verified at the switch"
            );
            assert_eq!(c.cleanups.last(), Some(&n), "then the old engine went");
        }
        tx.send(true).unwrap();
        task.await.unwrap();
    }
}
