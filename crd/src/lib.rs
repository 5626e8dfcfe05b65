//! The `switchyard.dev/v1alpha1` API: the `ProxyConfig` resource an operator writes to
//! pick a dataplane engine for a pool of nodes, its defaults (kube-proxy's), and the
//! validation every source applies before a config is used.
//!
//! This crate owns types and their meaning only; it never talks to an API server or a
//! kernel.

mod duration;
mod proxy_config;

pub use duration::{parse_duration, DurationError};
pub use proxy_config::{
    ConfigError, ConntrackConfig, EbpfConfig, EffectiveConfig, IpvsConfig, Mode, ProxyConfig,
    ProxyConfigSpec, ProxyConfigStatus,
};
