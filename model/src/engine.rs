//! The contract between the runner and every dataplane engine. An engine owns kernel
//! state and nothing else: it never reads the Kubernetes API and never decides Service
//! semantics (the model's plans do); it encodes plans into kernel objects.

use std::{io, time::Duration};

use async_trait::async_trait;

use crate::{
    changes::ChangeSet, inspect::PortInspection, mode::Mode, model::NodeModel,
    name::ServicePortName,
};

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
    /// Rules per kernel table, for engines that count them so (iptables:
    /// `kubeproxy_sync_proxy_rules_iptables_total{table}`).
    pub rules_by_table: Vec<(String, usize)>,
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

/// What [`ProxyEngine::retire`] left on the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retirement {
    /// Nothing of this engine's owner is left.
    Done,
    /// Some state stays because connections still in flight depend on it; `connections`
    /// counts them. The runner asks again later.
    Draining { connections: u64 },
}

/// Why an engine could not do what it was asked. Each variant keeps its source, so
/// callers branch on what happened, never on message text.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A dataplane tool (`nft`, `iptables-restore`...) ran and failed.
    #[error("{tool} failed ({}): {stderr}", exit_text(*.exit))]
    Tool {
        tool: String,
        /// Its exit status; `None` when a signal ended it.
        exit: Option<i32>,
        /// What it wrote to stderr (bounded).
        stderr: String,
    },
    /// A tool could not be run at all (not installed, not executable).
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: String,
        #[source]
        source: io::Error,
    },
    /// The kernel refused or failed a request (netlink, bpf, sysfs): `source` carries
    /// the errno (`raw_os_error`), or `InvalidData` for a reply that makes no sense.
    #[error("{operation}: {source}")]
    Kernel {
        operation: String,
        #[source]
        source: io::Error,
    },
    /// This engine cannot run on this node.
    #[error("{mode} engine unavailable: {reason}")]
    Unavailable { mode: Mode, reason: String },
}

fn exit_text(exit: Option<i32>) -> String {
    match exit {
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_string(),
    }
}

impl EngineError {
    /// A kernel error from an errno (as netlink answers carry it, negated or not).
    pub fn errno(operation: impl Into<String>, errno: i32) -> EngineError {
        EngineError::Kernel {
            operation: operation.into(),
            source: io::Error::from_raw_os_error(errno.abs()),
        }
    }

    /// A kernel reply this code cannot make sense of.
    pub fn malformed(operation: impl Into<String>, what: impl Into<String>) -> EngineError {
        EngineError::Kernel {
            operation: operation.into(),
            source: io::Error::new(io::ErrorKind::InvalidData, what.into()),
        }
    }

    /// The errno of a kernel error.
    pub fn os_error(&self) -> Option<i32> {
        match self {
            EngineError::Kernel { source, .. } | EngineError::Spawn { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

/// Names the kernel state an engine programs: `nftables`, `iptables-nft`,
/// `iptables-legacy`, `ipvs`, `ebpf`. Two engines with different owners never delete
/// each other's objects; at start the runner removes what other owners left.
pub type Owner = String;

#[async_trait]
pub trait ProxyEngine: Send {
    fn mode(&self) -> Mode;

    /// What this engine programs (see [`Owner`]); may be refined by `prepare` (the
    /// iptables backend is only known then).
    fn owner(&self) -> Owner {
        self.mode().to_string()
    }

    /// Gets the node ready before the first sync: resolves tools and backends, loads
    /// and attaches programs, creates interfaces, sets sysctls. Idempotent; changes no
    /// service's traffic.
    async fn prepare(&mut self) -> Result<(), EngineError> {
        Ok(())
    }

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

    /// Removes everything this engine's owner ever created on this node.
    async fn cleanup(&mut self) -> Result<(), EngineError>;

    /// Takes this engine out of service once another engine serves the node (a live
    /// switch, or a previous mode's leftovers at start). By default `cleanup`: where
    /// conntrack holds the NAT of established connections (netfilter), or the client's
    /// socket does (eBPF), they outlive the rules. An engine whose connections are
    /// translated by its own state instead (IPVS: its connection table, which dies with
    /// the virtual server) removes what no connection uses and keeps the rest, reporting
    /// [`Retirement::Draining`]; the runner calls again until `Done`, and calls
    /// `cleanup` once its drain bound has passed.
    async fn retire(&mut self) -> Result<Retirement, EngineError> {
        self.cleanup().await.map(|()| Retirement::Done)
    }

    /// Reads back what the kernel holds for service port `port` of `model` and compares
    /// it with what this engine would write for its plan (`switchyard explain`). Only
    /// reads: it works on an engine that was never prepared nor synced, in another
    /// process than the one that programmed the kernel. A port the model lacks
    /// inspects as what the kernel holds for it, all of it a disagreement.
    async fn inspect(
        &mut self,
        model: &NodeModel,
        port: &ServicePortName,
    ) -> Result<PortInspection, EngineError>;
}

/// Whether this kernel has IPv6 at all. A kernel booted with `ipv6.disable=1` has no
/// `/proc/sys/net/ipv6` (in any network namespace), and no IPv6 netfilter hooks: engines
/// then program IPv4 only, as kube-proxy runs single-stack there.
pub fn kernel_has_ipv6() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists()
}
