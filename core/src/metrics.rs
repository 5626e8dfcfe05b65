//! The node's Prometheus metrics. Names shared with upstream kube-proxy keep their
//! `kubeproxy_` names so existing dashboards and alerts work; Switchyard's own are
//! `switchyard_*`.

use std::sync::Arc;

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    pub requested: String,
    pub active: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficPolicyLabel {
    pub traffic_policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SettingLabel {
    pub setting: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: String,
}

/// Every metric the node exports; cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub sync_duration: Histogram,
    pub network_programming_duration: Histogram,
    pub last_sync_timestamp: Gauge<f64, AtomicU64>,
    pub service_changes: Counter,
    pub endpoint_changes: Counter,
    pub no_local_endpoints: Family<TrafficPolicyLabel, Gauge>,
    pub iptables_rules: Family<TableLabel, Gauge>,
    pub sync_failures: Counter,
    pub full_syncs: Counter,
    pub partial_syncs: Counter,
    pub drift_repairs: Counter,
    pub invalid_objects: Family<KindLabel, Counter>,
    pub unparseable_files: Counter,
    pub active_engine: Family<ModeLabel, Gauge>,
    pub engine_fallback: Family<FallbackLabels, Gauge>,
    pub service_ports: Gauge,
    pub endpoints: Gauge,
    pub conntrack_entries: Gauge,
    pub conntrack_limit: Gauge,
    pub conntrack_pressure: Gauge,
    pub conntrack_refused: Family<SettingLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn sync_buckets() -> impl Iterator<Item = f64> {
    // 1 ms .. ~16 s, as kube-proxy's exponential buckets.
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            sync_duration: Histogram::new(sync_buckets()),
            network_programming_duration: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 20),
            ),
            last_sync_timestamp: Gauge::default(),
            service_changes: Counter::default(),
            endpoint_changes: Counter::default(),
            no_local_endpoints: Family::default(),
            iptables_rules: Family::default(),
            sync_failures: Counter::default(),
            full_syncs: Counter::default(),
            partial_syncs: Counter::default(),
            drift_repairs: Counter::default(),
            invalid_objects: Family::default(),
            unparseable_files: Counter::default(),
            active_engine: Family::default(),
            engine_fallback: Family::default(),
            service_ports: Gauge::default(),
            endpoints: Gauge::default(),
            conntrack_entries: Gauge::default(),
            conntrack_limit: Gauge::default(),
            conntrack_pressure: Gauge::default(),
            conntrack_refused: Family::default(),
        };
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync_duration.clone(),
        );
        r.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.network_programming_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_sync_timestamp.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            m.service_changes.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            m.endpoint_changes.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            m.no_local_endpoints.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_iptables_total",
            "Number of proxy iptables rules programmed",
            m.iptables_rules.clone(),
        );
        r.register(
            "switchyard_sync_failures",
            "Syncs the engine failed to apply (previous rules kept)",
            m.sync_failures.clone(),
        );
        r.register(
            "switchyard_full_syncs",
            "Full rewrites applied",
            m.full_syncs.clone(),
        );
        r.register(
            "switchyard_partial_syncs",
            "Partial (changed service ports only) syncs applied",
            m.partial_syncs.clone(),
        );
        r.register(
            "switchyard_drift_repairs",
            "Times the kernel no longer held the applied rules and they were rewritten",
            m.drift_repairs.clone(),
        );
        r.register(
            "switchyard_invalid_objects",
            "Objects skipped because a field was invalid",
            m.invalid_objects.clone(),
        );
        r.register(
            "switchyard_unparseable_files",
            "Manifest files skipped because they did not parse",
            m.unparseable_files.clone(),
        );
        r.register(
            "switchyard_engine_active",
            "1 for the dataplane engine programming this node",
            m.active_engine.clone(),
        );
        r.register(
            "switchyard_engine_fallback",
            "1 when the requested engine is unavailable and a fallback runs",
            m.engine_fallback.clone(),
        );
        r.register(
            "switchyard_service_ports",
            "Service ports programmed",
            m.service_ports.clone(),
        );
        r.register(
            "switchyard_endpoints",
            "Endpoints programmed",
            m.endpoints.clone(),
        );
        r.register(
            "switchyard_conntrack_entries",
            "Entries in the node's conntrack table (nf_conntrack_count)",
            m.conntrack_entries.clone(),
        );
        r.register(
            "switchyard_conntrack_entries_limit",
            "Size limit of the node's conntrack table (nf_conntrack_max)",
            m.conntrack_limit.clone(),
        );
        r.register(
            "switchyard_conntrack_pressure",
            "1 while the conntrack table is more than 90% full (until back below 85%)",
            m.conntrack_pressure.clone(),
        );
        r.register(
            "switchyard_conntrack_setting_refused",
            "1 for each conntrack setting of the ProxyConfig the kernel refused",
            m.conntrack_refused.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn invalid_object(&self, kind: &str) {
        self.invalid_objects
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_upstream_names() {
        let m = Metrics::new();
        m.sync_duration.observe(0.01);
        m.service_changes.inc();
        m.endpoint_changes.inc();
        m.no_local_endpoints
            .get_or_create(&TrafficPolicyLabel {
                traffic_policy: "External".into(),
            })
            .set(1);
        m.iptables_rules
            .get_or_create(&TableLabel {
                table: "nat".into(),
            })
            .set(7);
        m.invalid_object("Service");
        let text = m.render();
        for name in [
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
            "kubeproxy_network_programming_duration_seconds_bucket",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds ",
            "kubeproxy_sync_proxy_rules_service_changes_total 1",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 1",
            r#"kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="External"} 1"#,
            r#"kubeproxy_sync_proxy_rules_iptables_total{table="nat"} 7"#,
            r#"switchyard_invalid_objects_total{kind="Service"} 1"#,
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
