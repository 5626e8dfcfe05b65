//! The `switchyard.dev/v1alpha1` API: the `ProxyConfig` resource an operator writes to
//! pick a dataplane engine for a pool of nodes, its defaults (kube-proxy's), and the
//! validation every source applies before a config is used.
//!
//! `ProxyNode` is the per-node status the agent writes. CRDs are generated from these
//! types ([`crds`]); the Helm chart's copies are checked against them by a test.
//!
//! This crate owns types and their meaning only; it never talks to an API server or a
//! kernel.

pub mod bounds;
mod duration;
mod engine_config;
mod proxy_config;
mod proxy_node;

pub use proxy_node::{
    condition, ConntrackTableStatus, ModeCapability, ProgrammingLatencyStatus, ProxyNode,
    ProxyNodeSpec, ProxyNodeStatus,
};

/// Every CRD Switchyard defines, as one multi-document YAML (what `switchyard crd` prints
/// and what the Helm chart ships).
pub fn crds_yaml() -> String {
    use kube::CustomResourceExt;
    let mut out = String::new();
    for crd in [ProxyConfig::crd(), ProxyNode::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).expect("CRDs serialize"));
    }
    out
}

pub use duration::{parse_duration, DurationError};
pub use engine_config::{
    ConntrackConfig, ConntrackSettings, EbpfConfig, EbpfSettings, IpvsConfig, IpvsScheduler,
    IpvsSchedulerFlag, IpvsSettings,
};
pub use proxy_config::{
    ConfigError, EffectiveConfig, Mode, ProxyConfig, ProxyConfigSpec, ProxyConfigStatus,
};
