//! `ProxyNode`: one per node, named after it and owned by its Node; the node agent
//! writes its status (config in force, requested and active mode, fallback and why, what
//! the kernel probe found, last sync). The operator folds these into `ProxyConfig`
//! status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Mode;

/// Condition types on a ProxyNode (and, aggregated, on a ProxyConfig), and how a
/// condition is (re)stated.
pub mod condition {
    use k8s_openapi::{
        apimachinery::pkg::apis::meta::v1::{Condition, Time},
        jiff::Timestamp,
    };

    /// The condition `type_` with status True/False, keeping the transition time of
    /// `previous` when its status did not change.
    pub fn state(
        previous: &[Condition],
        type_: &str,
        on: bool,
        reason: &str,
        message: String,
    ) -> Condition {
        let status = if on { "True" } else { "False" }.to_string();
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(Timestamp::now()));
        Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            last_transition_time,
            observed_generation: None,
        }
    }

    /// A sync succeeded recently and the active engine is the requested one or a fallback.
    pub const READY: &str = "Ready";
    /// The requested mode is unavailable here and a fallback mode runs.
    pub const FALLBACK_ACTIVE: &str = "FallbackActive";
    /// No usable engine: previous rules are kept, healthz answers 503.
    pub const DEGRADED: &str = "Degraded";
    /// Several ProxyConfigs select this node with the same priority.
    pub const CONFIG_CONFLICT: &str = "ConfigConflict";
    /// The ProxyConfig sets a block (`ipvs`, `ebpf`) for an engine that does not run
    /// here: validated, and reported as unused.
    pub const SETTINGS_UNUSED: &str = "SettingsUnused";
}

#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "ProxyNode",
    shortname = "pxn",
    status = "ProxyNodeStatus",
    printcolumn = r#"{"name":"Config","type":"string","jsonPath":".status.config"}"#,
    printcolumn = r#"{"name":"Requested","type":"string","jsonPath":".status.requestedMode"}"#,
    printcolumn = r#"{"name":"Active","type":"string","jsonPath":".status.activeMode"}"#,
    printcolumn = r#"{"name":"Fallback","type":"boolean","jsonPath":".status.fallbackActive"}"#,
    printcolumn = r#"{"name":"Last Sync","type":"date","jsonPath":".status.lastSyncTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ProxyNodeSpec {
    /// The Node this status belongs to (same as the object's name).
    pub node_name: String,
}

/// What the kernel probe found for one mode.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModeCapability {
    pub mode: Mode,
    /// The kernel supports it and Switchyard has an engine for it.
    pub available: bool,
    /// What is missing (kernel modules, tools, features), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// One line: why it is unavailable, or notes (e.g. the iptables backend).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyNodeStatus {
    /// The ProxyConfig in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_mode: Option<Mode>,
    #[serde(default)]
    pub fallback_active: bool,
    /// Why the fallback runs, e.g. "ipvs unavailable: missing kernel modules ip_vs, ip_vs_rr".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<ModeCapability>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_duration_seconds: Option<f64>,
    #[serde(default)]
    pub service_ports: i64,
    #[serde(default)]
    pub endpoints: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
