//! `ProxyConfig`: which engine a pool of nodes runs, and the kube-proxy options it runs
//! with. `EffectiveConfig` is the validated, defaulted form every other crate consumes.

use std::{net::SocketAddr, time::Duration};

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use switchyard_model::Mode;

use crate::bounds::{self, DurationLimit};
use crate::duration::parse_duration;
use crate::engine_config::{
    engine_settings, ConntrackConfig, ConntrackSettings, EbpfConfig, EbpfSettings, IpvsConfig,
    IpvsSettings,
};

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
    /// Higher wins when several configs select a node; a tie is a conflict reported on
    /// the nodes.
    #[serde(default)]
    pub priority: i32,
    /// Requested engine: iptables (default, as kube-proxy), nftables, ipvs, ebpf, or auto
    /// (the best one each node supports).
    #[serde(default)]
    pub mode: Mode,
    /// Ordered engines to use when `mode` is unavailable on a node; empty = none (the
    /// node reports Degraded and keeps its previous rules). No repeats, no `auto`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[x_kube(validation = Rule::new("!('auto' in self)").message("fallback may not contain auto"))]
    pub fallback: Vec<Mode>,
    /// Full resync and drift-check period (default `30s`, at most `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounds::sync_duration)]
    pub sync_period: Option<String>,
    /// Minimum time between two syncs (default `1s`, at most `1h`, not above
    /// `syncPeriod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounds::min_sync_duration)]
    pub min_sync_period: Option<String>,
    /// Pod CIDRs for local-traffic detection; empty = no detector.
    #[serde(
        default,
        rename = "clusterCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = 16), transform = bounds::cidr_list)]
    pub cluster_cidrs: Vec<String>,
    /// SNAT every packet sent to a service VIP.
    #[serde(default)]
    pub masquerade_all: bool,
    /// CIDRs (or `primary`) of node addresses that accept NodePort traffic; empty = the
    /// node's primary IPs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), transform = node_port_addresses_items)]
    #[x_kube(validation = Rule::new("self.all(a, a == 'primary' || isCIDR(a))").message("every entry must be a CIDR or \"primary\""))]
    pub node_port_addresses: Vec<String>,
    /// IPVS engine tuning (scheduler, flags, strict ARP, timeouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipvs: Option<IpvsConfig>,
    /// Conntrack table size and timeouts, applied by every engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackConfig>,
    /// eBPF engine tuning (cgroup, map sizes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebpf: Option<EbpfConfig>,
    /// `ip:port` of the health server (default `0.0.0.0:10256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub healthz_bind_address: Option<String>,
    /// `ip:port` of the metrics server (default `127.0.0.1:10249`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub metrics_bind_address: Option<String>,
}

fn node_port_addresses_items(schema: &mut schemars::Schema) {
    bounds::bound_items(schema, bounds::MAX_CIDR_LENGTH);
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
    /// The `ipvs` block (defaults when absent), for the IPVS engine.
    pub ipvs: IpvsSettings,
    /// The `conntrack` block, for every engine's conntrack sizing.
    pub conntrack: ConntrackSettings,
    /// The `ebpf` block, for the eBPF engine.
    pub ebpf: EbpfSettings,
}

impl Default for EffectiveConfig {
    fn default() -> Self {
        ProxyConfigSpec::default()
            .effective()
            .expect("defaults are valid")
    }
}

fn bad(field: &str, message: String) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        message,
    }
}

fn duration_field(
    field: &str,
    value: &Option<String>,
    default: Duration,
    limit: DurationLimit,
) -> Result<Duration, ConfigError> {
    let Some(s) = value else {
        return Ok(default);
    };
    if s.len() > bounds::MAX_DURATION_LENGTH {
        return Err(bad(
            field,
            format!("longer than {} characters", bounds::MAX_DURATION_LENGTH),
        ));
    }
    let d = parse_duration(s).map_err(|e| bad(field, e.to_string()))?;
    limit.check(d).map_err(|m| bad(field, m))
}

fn bind_address(
    field: &str,
    value: &Option<String>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let s = value.as_deref().unwrap_or(default);
    if s.len() > bounds::MAX_ADDRESS_LENGTH {
        return Err(bad(
            field,
            format!("longer than {} characters", bounds::MAX_ADDRESS_LENGTH),
        ));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| bad(field, format!("{s:?} is not an ip:port address")))
}

impl ProxyConfigSpec {
    fn check_fallback(&self) -> Result<(), ConfigError> {
        if self.fallback.len() > bounds::MAX_FALLBACK {
            return Err(bad(
                "fallback",
                format!(
                    "{} entries, at most {} allowed",
                    self.fallback.len(),
                    bounds::MAX_FALLBACK
                ),
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
        Ok(())
    }

    fn node_port_addresses(&self) -> Result<(Vec<IpNet>, bool), ConfigError> {
        if self.node_port_addresses.len() > bounds::MAX_NODE_PORT_ADDRESSES {
            return Err(bad(
                "nodePortAddresses",
                format!(
                    "{} entries, at most {} allowed",
                    self.node_port_addresses.len(),
                    bounds::MAX_NODE_PORT_ADDRESSES
                ),
            ));
        }
        let mut cidrs = Vec::new();
        let mut primary = false;
        for (i, c) in self.node_port_addresses.iter().enumerate() {
            if c.trim() == "primary" {
                primary = true;
                continue;
            }
            let net: IpNet = c.trim().parse().map_err(|_| {
                bad(
                    &format!("nodePortAddresses[{i}]"),
                    format!("{c:?} is neither a CIDR nor \"primary\""),
                )
            })?;
            cidrs.push(net.trunc());
        }
        Ok((cidrs, primary))
    }

    /// Applies kube-proxy's defaults and validates every field, with the same bounds the
    /// CRD schema states ([`crate::bounds`]); the first problem found is returned with
    /// the field it concerns.
    pub fn effective(&self) -> Result<EffectiveConfig, ConfigError> {
        let sync_period = duration_field(
            "syncPeriod",
            &self.sync_period,
            Duration::from_secs(30),
            DurationLimit::SYNC,
        )?;
        let min_sync_period = duration_field(
            "minSyncPeriod",
            &self.min_sync_period,
            Duration::from_secs(1),
            DurationLimit::MIN_SYNC,
        )?;
        if min_sync_period > sync_period {
            return Err(bad(
                "minSyncPeriod",
                "must not be longer than syncPeriod".into(),
            ));
        }
        self.check_fallback()?;
        let cluster_cidrs =
            crate::engine_config::cidrs("clusterCIDRs", &self.cluster_cidrs, bounds::MAX_CIDRS)?;
        let (node_port_cidrs, node_port_primary) = self.node_port_addresses()?;
        let (ipvs, conntrack, ebpf) = engine_settings(&self.ipvs, &self.conntrack, &self.ebpf)?;
        Ok(EffectiveConfig {
            mode: self.mode,
            fallback: self.fallback.clone(),
            sync_period,
            min_sync_period,
            cluster_cidrs,
            masquerade_all: self.masquerade_all,
            node_port_cidrs,
            node_port_primary,
            healthz_bind_address: bind_address(
                "healthzBindAddress",
                &self.healthz_bind_address,
                "0.0.0.0:10256",
            )?,
            metrics_bind_address: bind_address(
                "metricsBindAddress",
                &self.metrics_bind_address,
                "127.0.0.1:10249",
            )?,
            ipvs,
            conntrack,
            ebpf,
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
        let spec = ProxyConfigSpec {
            ipvs: Some(IpvsConfig {
                udp_timeout: Some("25h".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            spec.effective().unwrap_err().to_string(),
            "spec.ipvs.udpTimeout: 90000s is longer than the maximum 24h"
        );
    }

    /// Issue 14 defect 3: an overflowing period is a field error, never a panic, and
    /// nothing beyond the ceiling reaches the runner's `Instant + period`.
    #[test]
    fn huge_durations_are_field_errors() {
        for (value, fragment) in [
            ("99999999999999999999h", "too large"),
            ("3000000000000000h", "longer than the maximum 1h"),
            ("2h", "longer than the maximum 1h"),
            ("0", "greater than zero"),
        ] {
            let spec = ProxyConfigSpec {
                sync_period: Some(value.into()),
                ..Default::default()
            };
            let e = spec.effective().unwrap_err();
            assert_eq!(e.field, "syncPeriod", "{value}");
            assert!(e.message.contains(fragment), "{value}: {e}");
        }
        let spec = ProxyConfigSpec {
            sync_period: Some("1h".into()),
            min_sync_period: Some("0".into()),
            ..Default::default()
        };
        let c = spec.effective().unwrap();
        assert_eq!(c.sync_period, Duration::from_secs(3600));
        assert_eq!(c.min_sync_period, Duration::ZERO);
    }

    #[test]
    fn lists_are_bounded() {
        let spec = ProxyConfigSpec {
            cluster_cidrs: vec!["10.0.0.0/8".into(); 17],
            ..Default::default()
        };
        assert_eq!(spec.effective().unwrap_err().field, "clusterCIDRs");
        let spec = ProxyConfigSpec {
            healthz_bind_address: Some(format!("{}:1", "1".repeat(70))),
            ..Default::default()
        };
        assert_eq!(spec.effective().unwrap_err().field, "healthzBindAddress");
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
            "maxItems: 16",
            "maxLength: 64",
            "x-kubernetes-list-type: set",
            "duration(self) <= duration('1h')",
            "strictARP",
            "cgroupPath",
            "tcpEstablishedTimeout",
        ] {
            assert!(y.contains(needle), "{needle} missing from\n{y}");
        }
    }
}
