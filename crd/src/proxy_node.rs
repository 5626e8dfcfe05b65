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
    /// The conntrack table is more than 90 % full (until back below 85 %): new flows
    /// are dropped once it is full.
    pub const CONNTRACK_PRESSURE: &str = "ConntrackPressure";
    /// The kernel refused settings of the ProxyConfig `conntrack` block.
    pub const CONNTRACK_SETTINGS_REFUSED: &str = "ConntrackSettingsRefused";
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
    printcolumn = r#"{"name":"Missing","type":"string","priority":1,"description":"What the requested mode lacks on this node","jsonPath":".status.missingFeatures"}"#,
    printcolumn = r#"{"name":"Conntrack","type":"integer","priority":1,"description":"Conntrack table fill, percent","jsonPath":".status.conntrack.usagePercent"}"#,
    printcolumn = r#"{"name":"Prog-P99","type":"number","priority":1,"description":"Network programming latency, 99th percentile, seconds","jsonPath":".status.networkProgrammingLatency.p99Seconds"}"#,
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

/// The node's conntrack table (see the agent's conntrack monitor).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConntrackTableStatus {
    /// `nf_conntrack_count` at the last poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<i64>,
    /// `nf_conntrack_max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Entries as a whole percentage of the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_percent: Option<i64>,
    /// Settings of the ProxyConfig `conntrack` block the kernel refused, each with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// Why the table could not be read, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

/// Recent network programming latency: from an endpoint change (the EndpointSlice's
/// `endpoints.kubernetes.io/last-change-trigger-time`, else when the node saw it) to the
/// kernel holding it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProgrammingLatencyStatus {
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    /// Changes summarized.
    pub samples: i64,
    /// How far back the summary looks.
    pub window_seconds: i64,
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
    /// What the requested mode lacks on this node (its capability's `missing`, joined
    /// by commas), e.g. "ip_vs,ip_vs_rr"; `switchyard probe` prints the fix for each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_features: Option<String>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_programming_latency: Option<ProgrammingLatencyStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackTableStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
