//! `ProxyConfig`: which engine a pool of nodes runs, and the kube-proxy options it runs
//! with. `EffectiveConfig` is the validated, defaulted form every other crate consumes.

use std::{net::SocketAddr, time::Duration};

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use switchyard_model::Mode;

use crate::duration::parse_duration;

/// Per-pool proxy configuration. Cluster-scoped; the agent on each node uses the
/// highest-priority config whose `nodeSelector` matches its Node.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "ProxyConfig",
    shortname = "pxc",
    status = "ProxyConfigStatus",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodesSelected"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.nodesReady"}"#,
    printcolumn = r#"{"name":"Fallback","type":"integer","jsonPath":".status.nodesOnFallback"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!has(self.fallback) || !(self.mode in self.fallback)").message("fallback may not repeat mode"))]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfigSpec {
    /// Which nodes this config governs; empty selects every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Higher wins when several configs select a node.
    #[serde(default)]
    pub priority: i32,
    /// Requested engine (default `iptables`, as kube-proxy).
    #[serde(default)]
    pub mode: Mode,
    /// Ordered engines to use when `mode` is unavailable on a node; empty = none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<Mode>,
    /// Full resync and drift-check period (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(r"self.matches('^([0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h))+$')").message("must be a duration such as 30s, 1m30s or 500ms"))]
    pub sync_period: Option<String>,
    /// Minimum time between two syncs (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(r"self.matches('^(0|([0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h))+)$')").message("must be a duration such as 1s or 500ms"))]
    pub min_sync_period: Option<String>,
    /// Pod CIDRs for local-traffic detection; empty = no detector.
    #[serde(
        default,
        rename = "clusterCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cluster_cidrs: Vec<String>,
    /// SNAT every packet sent to a service VIP.
    #[serde(default)]
    pub masquerade_all: bool,
    /// CIDRs (or `primary`) of node addresses that accept NodePort traffic; empty = the
    /// node's primary IPs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(a, a == 'primary' || isCIDR(a))").message("every entry must be a CIDR or \"primary\""))]
    pub node_port_addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipvs: Option<IpvsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebpf: Option<EbpfConfig>,
    /// Default `0.0.0.0:10256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthz_bind_address: Option<String>,
    /// Default `127.0.0.1:10249`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_bind_address: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IpvsConfig {
    /// IPVS scheduler (`rr`, `wrr`, `lc`, `sh`, ...); default `rr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_fin_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_timeout: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConntrackConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_core: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_established_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_close_wait_timeout: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EbpfConfig {
    /// Capacity of the service map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_services: Option<u32>,
    /// Capacity of the backend map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_endpoints: Option<u32>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfigStatus {
    #[serde(default)]
    pub nodes_selected: i32,
    #[serde(default)]
    pub nodes_ready: i32,
    #[serde(default)]
    pub nodes_on_fallback: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A ProxyConfig field that cannot be used, named by its JSON path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("spec.{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

/// A `ProxyConfigSpec` with defaults applied and every value parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectiveConfig {
    pub mode: Mode,
    pub fallback: Vec<Mode>,
    pub sync_period: Duration,
    pub min_sync_period: Duration,
    pub cluster_cidrs: Vec<IpNet>,
    pub masquerade_all: bool,
    /// Parsed `nodePortAddresses`: CIDRs, plus whether `primary` was listed. Both empty
    /// means "the node's primary IPs".
    pub node_port_cidrs: Vec<IpNet>,
    pub node_port_primary: bool,
    pub healthz_bind_address: SocketAddr,
    pub metrics_bind_address: SocketAddr,
}

impl Default for EffectiveConfig {
    fn default() -> Self {
        ProxyConfigSpec::default()
            .effective()
            .expect("defaults are valid")
    }
}

impl ProxyConfigSpec {
    /// Applies kube-proxy's defaults and validates every field; the first problem found
    /// is returned with the field it concerns.
    pub fn effective(&self) -> Result<EffectiveConfig, ConfigError> {
        let bad = |field: &str, message: String| ConfigError {
            field: field.to_string(),
            message,
        };
        let duration = |field: &str, value: &Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|e| bad(field, e.to_string())),
        };
        let sync_period = duration("syncPeriod", &self.sync_period, Duration::from_secs(30))?;
        if sync_period.is_zero() {
            return Err(bad("syncPeriod", "must be greater than zero".into()));
        }
        let min_sync_period = duration(
            "minSyncPeriod",
            &self.min_sync_period,
            Duration::from_secs(1),
        )?;
        if min_sync_period > sync_period {
            return Err(bad(
                "minSyncPeriod",
                "must not be longer than syncPeriod".into(),
            ));
        }
        if self.fallback.contains(&self.mode) {
            return Err(bad(
                "fallback",
                format!("repeats the requested mode {}", self.mode),
            ));
        }
        if self.fallback.contains(&Mode::Auto) {
            return Err(bad("fallback", "may not contain auto".into()));
        }
        for (i, m) in self.fallback.iter().enumerate() {
            if self.fallback[..i].contains(m) {
                return Err(bad(
                    &format!("fallback[{i}]"),
                    format!("{m} is listed twice"),
                ));
            }
        }
        let mut cluster_cidrs = Vec::new();
        for (i, c) in self.cluster_cidrs.iter().enumerate() {
            let net: IpNet = c.trim().parse().map_err(|_| {
                bad(
                    &format!("clusterCIDRs[{i}]"),
                    format!("{c:?} is not a CIDR"),
                )
            })?;
            cluster_cidrs.push(net.trunc());
        }
        let mut node_port_cidrs = Vec::new();
        let mut node_port_primary = false;
        for (i, c) in self.node_port_addresses.iter().enumerate() {
            if c.trim() == "primary" {
                node_port_primary = true;
                continue;
            }
            let net: IpNet = c.trim().parse().map_err(|_| {
                bad(
                    &format!("nodePortAddresses[{i}]"),
                    format!("{c:?} is neither a CIDR nor \"primary\""),
                )
            })?;
            node_port_cidrs.push(net.trunc());
        }
        let addr = |field: &str, value: &Option<String>, default: &str| {
            let s = value.as_deref().unwrap_or(default);
            s.parse::<SocketAddr>()
                .map_err(|_| bad(field, format!("{s:?} is not an ip:port address")))
        };
        Ok(EffectiveConfig {
            mode: self.mode,
            fallback: self.fallback.clone(),
            sync_period,
            min_sync_period,
            cluster_cidrs,
            masquerade_all: self.masquerade_all,
            node_port_cidrs,
            node_port_primary,
            healthz_bind_address: addr(
                "healthzBindAddress",
                &self.healthz_bind_address,
                "0.0.0.0:10256",
            )?,
            metrics_bind_address: addr(
                "metricsBindAddress",
                &self.metrics_bind_address,
                "127.0.0.1:10249",
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_kube_proxy() {
        let c = EffectiveConfig::default();
        assert_eq!(c.mode, Mode::Iptables);
        assert_eq!(c.sync_period, Duration::from_secs(30));
        assert_eq!(c.min_sync_period, Duration::from_secs(1));
        assert!(c.cluster_cidrs.is_empty());
        assert_eq!(c.healthz_bind_address.to_string(), "0.0.0.0:10256");
        assert_eq!(c.metrics_bind_address.to_string(), "127.0.0.1:10249");
    }

    #[test]
    fn parses_yaml_spec() {
        let spec: ProxyConfigSpec = serde_yaml::from_str(
            "mode: nftables\nfallback: [iptables]\nclusterCIDRs: [10.0.0.0/8]\nnodePortAddresses: [primary, 192.168.0.0/24]\nsyncPeriod: 1m\n",
        )
        .unwrap();
        let c = spec.effective().unwrap();
        assert_eq!(c.mode, Mode::Nftables);
        assert_eq!(c.fallback, vec![Mode::Iptables]);
        assert_eq!(c.sync_period, Duration::from_secs(60));
        assert!(c.node_port_primary);
        assert_eq!(c.node_port_cidrs.len(), 1);
    }

    #[test]
    fn errors_name_the_field() {
        let spec = ProxyConfigSpec {
            cluster_cidrs: vec!["10.0.0.0/8".into(), "banana".into()],
            ..Default::default()
        };
        assert_eq!(spec.effective().unwrap_err().field, "clusterCIDRs[1]");
        let spec = ProxyConfigSpec {
            mode: Mode::Ipvs,
            fallback: vec![Mode::Ipvs],
            ..Default::default()
        };
        assert_eq!(spec.effective().unwrap_err().field, "fallback");
        let spec = ProxyConfigSpec {
            sync_period: Some("soon".into()),
            ..Default::default()
        };
        assert_eq!(spec.effective().unwrap_err().field, "syncPeriod");
    }
}

#[cfg(test)]
mod crd_tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_has_columns_and_rules() {
        let y = serde_yaml::to_string(&ProxyConfig::crd()).unwrap();
        for needle in [
            "Mode",
            "nodesOnFallback",
            "fallback may not repeat mode",
            "isCIDR",
            "pxc",
            "enum",
            "must be a duration",
        ] {
            assert!(y.contains(needle), "{needle} missing from\n{y}");
        }
    }
}
