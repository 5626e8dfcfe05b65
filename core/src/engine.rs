//! The contract between core and every dataplane engine. An engine owns kernel state and
//! nothing else: it never reads the Kubernetes API and never derives service semantics.

use std::time::Duration;

use async_trait::async_trait;
use switchyard_crd::Mode;

use crate::{changes::ChangeSet, model::NodeModel};

/// What one successful sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Whether the whole ruleset was rewritten.
    pub full: bool,
    /// Service ports written (added or changed) and removed.
    pub service_ports_written: usize,
    pub service_ports_removed: usize,
    /// Rules (or equivalent kernel objects) now programmed, when the engine knows.
    pub rules: usize,
    /// Time spent applying to the kernel.
    pub apply_time: Duration,
}

/// Whether the kernel still holds what the engine applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    None,
    /// Something differs; the text says what.
    Found(String),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The kernel or its tool refused what was sent.
    #[error("{tool} failed: {message}")]
    Apply { tool: String, message: String },
    /// A tool could not be run at all.
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    /// This engine cannot run on this node.
    #[error("{mode} engine unavailable: {reason}")]
    Unavailable { mode: Mode, reason: String },
}

#[async_trait]
pub trait ProxyEngine: Send {
    fn mode(&self) -> Mode;

    /// Brings the kernel to `model`. `changes` says what differs from the model last
    /// applied successfully; `changes.full` asks for a rewrite of everything. On error
    /// the previously applied rules must still be in place.
    async fn sync(
        &mut self,
        model: &NodeModel,
        changes: &ChangeSet,
    ) -> Result<SyncReport, EngineError>;

    /// Checks that the kernel still holds what was last applied.
    async fn verify(&mut self, model: &NodeModel) -> Result<Drift, EngineError>;

    /// Removes everything this engine ever created on this node.
    async fn cleanup(&mut self) -> Result<(), EngineError>;

    /// Rules programmed per kernel table, for engines that count them (iptables:
    /// `kubeproxy_sync_proxy_rules_iptables_total{table}`).
    fn rule_counts(&self) -> Vec<(String, usize)> {
        Vec::new()
    }
}
