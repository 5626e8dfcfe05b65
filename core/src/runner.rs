//! The sync runner: turns state changes into engine syncs.
//!
//! - changes are coalesced: a sync starts no sooner than `minSyncPeriod` after the last;
//! - every `syncPeriod` the engine's `verify` checks the kernel for drift (repaired when
//!   found) and a full resync is applied;
//! - a failed sync is retried with exponential backoff (1 s doubling up to
//!   `syncPeriod`) as a full sync; the rules applied before the failure stay in place.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use switchyard_crd::{EffectiveConfig, Mode};
use tokio::sync::{watch, Notify};

use crate::{
    changes::ChangeSet,
    engine::{Drift, ProxyEngine},
    health::Health,
    metrics::{Metrics, TrafficPolicyLabel},
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

/// The config in force for `node_name`: the selected ProxyConfig (defaults when none
/// matches), with the command-line override applied.
pub fn effective_config(
    state: &ClusterState,
    node_name: &str,
    source: &ConfigSource,
) -> EffectiveConfig {
    let labels = state
        .node(node_name)
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    let mut config = match selection::select(state.proxy_configs(), &labels) {
        Some(sel) => {
            if !sel.conflicts_with.is_empty() {
                tracing::warn!(
                    chosen = sel.config.metadata.name.as_deref().unwrap_or(""),
                    others = ?sel.conflicts_with,
                    "ConfigConflict: several ProxyConfigs select this node with the same priority"
                );
            }
            // Sources only admit valid configs.
            sel.config.spec.effective().unwrap_or_default()
        }
        None => EffectiveConfig::default(),
    };
    if let Some(mode) = source.mode_override {
        config.mode = mode;
    }
    config
}

pub struct SyncRunner {
    engine: Box<dyn ProxyEngine>,
    state: Arc<Mutex<ClusterState>>,
    notify: Arc<Notify>,
    node_name: String,
    config_source: ConfigSource,
    health: Health,
    metrics: Metrics,
    /// The model the kernel holds; `None` when unknown (start, after a failure).
    applied: Option<NodeModel>,
    /// healthCheckNodePort servers, reconciled after every successful sync.
    service_health: ServiceHealthServers,
}

/// Outcome of one pass, for tests and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    Synced { full: bool, service_ports: usize },
    Unchanged,
    Failed(String),
}

impl SyncRunner {
    pub fn new(
        engine: Box<dyn ProxyEngine>,
        state: Arc<Mutex<ClusterState>>,
        notify: Arc<Notify>,
        node_name: impl Into<String>,
        config_source: ConfigSource,
        health: Health,
        metrics: Metrics,
    ) -> Self {
        SyncRunner {
            engine,
            state,
            notify,
            node_name: node_name.into(),
            config_source,
            service_health: ServiceHealthServers::new(health.clone()),
            health,
            metrics,
            applied: None,
        }
    }

    pub fn mode(&self) -> Mode {
        self.engine.mode()
    }

    fn config(&self) -> EffectiveConfig {
        let state = self.state.lock().expect("state lock poisoned");
        effective_config(&state, &self.node_name, &self.config_source)
    }

    /// Builds the model and applies what changed (everything when `full`).
    pub async fn sync_once(&mut self, full: bool, pending_since: Option<Instant>) -> Pass {
        let started = Instant::now();
        let config = self.config();
        self.health.set_sync_period(config.sync_period);
        if config.mode != Mode::Auto && config.mode != self.engine.mode() {
            tracing::warn!(
                requested = %config.mode,
                running = %self.engine.mode(),
                "the ProxyConfig asks for another mode; live engine switching is not built yet, restart the agent to switch"
            );
        }
        let model = {
            let state = self.state.lock().expect("state lock poisoned");
            NodeModel::build(&state, &self.node_name, &config)
        };
        let changes = match (&self.applied, full) {
            (Some(old), false) => ChangeSet::between(old, &model),
            _ => ChangeSet::full(&model),
        };
        if changes.is_empty() {
            self.health.synced();
            return Pass::Unchanged;
        }
        match self.engine.sync(&model, &changes).await {
            Ok(report) => {
                let elapsed = started.elapsed();
                self.record_success(&model, &changes, elapsed, pending_since);
                tracing::info!(
                    mode = %self.engine.mode(),
                    full = report.full,
                    written = report.service_ports_written,
                    removed = report.service_ports_removed,
                    service_ports = model.services.len(),
                    endpoints = model.endpoint_count(),
                    apply_ms = report.apply_time.as_secs_f64() * 1e3,
                    total_ms = elapsed.as_secs_f64() * 1e3,
                    "synced"
                );
                self.service_health.reconcile(&model);
                let pass = Pass::Synced {
                    full: changes.full,
                    service_ports: changes.len(),
                };
                self.applied = Some(model);
                pass
            }
            Err(e) => {
                self.metrics.sync_failures.inc();
                self.applied = None;
                tracing::error!(mode = %self.engine.mode(), error = %e, "sync failed; previous rules stay in place, retrying with a full sync");
                Pass::Failed(e.to_string())
            }
        }
    }

    fn record_success(
        &self,
        model: &NodeModel,
        changes: &ChangeSet,
        elapsed: Duration,
        pending_since: Option<Instant>,
    ) {
        let m = &self.metrics;
        m.sync_duration.observe(elapsed.as_secs_f64());
        if let Some(p) = pending_since {
            m.network_programming_duration
                .observe(p.elapsed().as_secs_f64());
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        m.last_sync_timestamp.set(now.as_secs_f64());
        if changes.full {
            m.full_syncs.inc();
        } else {
            m.partial_syncs.inc();
        }
        // Service vs endpoint changes, as kube-proxy counts them.
        let old = self.applied.as_ref();
        let mut service_changes = (changes.added.len() + changes.removed.len()) as u64;
        let mut endpoint_changes = 0u64;
        for name in &changes.changed {
            let (Some(o), Some(n)) = (
                old.and_then(|o| o.services.get(name)),
                model.services.get(name),
            ) else {
                continue;
            };
            if o.cluster_endpoints != n.cluster_endpoints || o.local_endpoints != n.local_endpoints
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
        if !changes.full {
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
    }

    /// Asks the engine whether the kernel still holds the applied rules.
    pub async fn check_drift(&mut self) -> Option<String> {
        let model = self.applied.clone()?;
        match self.engine.verify(&model).await {
            Ok(Drift::None) => None,
            Ok(Drift::Found(what)) => {
                self.metrics.drift_repairs.inc();
                tracing::warn!(mode = %self.engine.mode(), drift = %what, "kernel rules drifted from what was applied; repairing with a full sync");
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
        let mut next_periodic = Instant::now() + self.config().sync_period;
        self.health.queued();
        loop {
            let config = self.config();
            let now = Instant::now();
            let mut wake = next_periodic;
            if now >= next_periodic {
                // Drift is logged and counted by check_drift; the periodic full
                // rewrite that follows repairs it.
                self.check_drift().await;
                force_full = true;
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
                        Pass::Failed(_) => {
                            retry_at = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(config.sync_period);
                            force_full = true;
                        }
                        Pass::Synced { .. } | Pass::Unchanged => {
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
    //! Runner logic against a recording engine (the dataplane itself is tested by each
    //! engine against a real kernel).
    use super::*;
    use crate::{engine::EngineError, engine::SyncReport, state::Object};
    use async_trait::async_trait;

    #[derive(Default)]
    struct Calls {
        syncs: Vec<(bool, usize)>,
        fail_next: bool,
    }

    struct Recording(Arc<Mutex<Calls>>);

    #[async_trait]
    impl ProxyEngine for Recording {
        fn mode(&self) -> Mode {
            Mode::Nftables
        }
        async fn sync(
            &mut self,
            _: &NodeModel,
            changes: &ChangeSet,
        ) -> Result<SyncReport, EngineError> {
            let mut c = self.0.lock().unwrap();
            if std::mem::take(&mut c.fail_next) {
                return Err(EngineError::Apply {
                    tool: "test".into(),
                    message: "refused".into(),
                });
            }
            c.syncs.push((changes.full, changes.len()));
            Ok(SyncReport::default())
        }
        async fn verify(&mut self, _: &NodeModel) -> Result<Drift, EngineError> {
            Ok(Drift::None)
        }
        async fn cleanup(&mut self) -> Result<(), EngineError> {
            Ok(())
        }
    }

    fn service(name: &str, ip: &str) -> Object {
        Object::Service(Box::new(
            serde_yaml::from_str(&format!(
                "metadata: {{name: {name}, namespace: n}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}"
            ))
            .unwrap(),
        ))
    }

    fn runner() -> (
        SyncRunner,
        Arc<Mutex<Calls>>,
        Arc<Mutex<ClusterState>>,
        Health,
    ) {
        let calls = Arc::new(Mutex::new(Calls::default()));
        let state = Arc::new(Mutex::new(ClusterState::default()));
        let health = Health::new(Duration::from_secs(30));
        let r = SyncRunner::new(
            Box::new(Recording(calls.clone())),
            state.clone(),
            Arc::new(Notify::new()),
            "node",
            ConfigSource::default(),
            health.clone(),
            Metrics::new(),
        );
        (r, calls, state, health)
    }

    #[tokio::test]
    async fn first_sync_full_then_partial_then_full_after_failure() {
        let (mut r, calls, state, health) = runner();
        state.lock().unwrap().upsert(service("a", "10.96.0.1"));
        assert!(!health.verdict().healthy);
        assert_eq!(
            r.sync_once(false, None).await,
            Pass::Synced {
                full: true,
                service_ports: 1
            }
        );
        assert!(health.verdict().healthy);
        assert_eq!(r.sync_once(false, None).await, Pass::Unchanged);

        state.lock().unwrap().upsert(service("b", "10.96.0.2"));
        assert_eq!(
            r.sync_once(false, None).await,
            Pass::Synced {
                full: false,
                service_ports: 1
            }
        );

        calls.lock().unwrap().fail_next = true;
        state.lock().unwrap().upsert(service("c", "10.96.0.3"));
        assert!(matches!(r.sync_once(false, None).await, Pass::Failed(_)));
        // After a failure the kernel state is unknown: the next sync rewrites everything.
        assert_eq!(
            r.sync_once(false, None).await,
            Pass::Synced {
                full: true,
                service_ports: 3
            }
        );
        assert_eq!(
            calls.lock().unwrap().syncs,
            vec![(true, 1), (false, 1), (true, 3)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_debounced_by_min_sync_period() {
        let (r, calls, state, _) = runner();
        let notify = r.notify.clone();
        state.lock().unwrap().upsert(Object::ProxyConfig(Box::new(
            ProxyConfigFixture::with_min_sync("2s"),
        )));
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(r.run(rx));
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
        assert_eq!(
            calls.lock().unwrap().syncs,
            vec![(true, 0), (false, 5)],
            "one coalesced sync"
        );
        tx.send(true).unwrap();
        task.await.unwrap();
    }

    struct ProxyConfigFixture;
    impl ProxyConfigFixture {
        fn with_min_sync(d: &str) -> switchyard_crd::ProxyConfig {
            switchyard_crd::ProxyConfig::new(
                "default",
                switchyard_crd::ProxyConfigSpec {
                    mode: Mode::Nftables,
                    min_sync_period: Some(d.into()),
                    ..Default::default()
                },
            )
        }
    }
}
